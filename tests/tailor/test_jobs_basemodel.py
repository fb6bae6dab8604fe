"""`tailor basemodel add`: a local model directory is uploaded under models/<name>/<revision>/ and
registered with its shape, parameter count and chat template; the revision follows the weights. Also:
the tuning and webhooks models have their migrations."""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from tailor.core.objectstore import object_store
from tailor.tuning.models import BaseModel

from tests.tailor.factories import TeamFactory

pytestmark = pytest.mark.django_db

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "tie_word_embeddings": False,
}
TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"


def write_safetensors(path: Path, shapes: dict[str, list[int]]) -> int:
    """A float32 safetensors file of zeros, written by hand (no torch); returns its element count."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"\0" * offset)
    return offset // 4


def model_dir(root: Path, *, scale: int = 1) -> tuple[Path, int]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(CONFIG))
    (root / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    (root / "tokenizer.json").write_text("{}")
    count = write_safetensors(
        root / "model.safetensors",
        {
            "model.embed_tokens.weight": [256, 64],
            "lm_head.weight": [256, 64],
            "layer.weight": [64, 128 * scale],
        },
    )
    return root, count


def add(*args: str) -> dict:
    out = io.StringIO()
    call_command("basemodel", "add", *args, stdout=out, stderr=io.StringIO())
    return json.loads(out.getvalue())


def test_add_uploads_and_registers_a_local_model(tmp_path: Path) -> None:
    source, count = model_dir(tmp_path / "m")
    shown = add("acme/tiny-1", "--source", str(source))
    revision = hashlib.sha256((source / "model.safetensors").read_bytes()).hexdigest()[:12]
    base = BaseModel.objects.get(name="acme/tiny-1")
    assert (base.revision, base.parameters, base.prefix) == (
        revision,
        count,
        f"models/acme/tiny-1/{revision}",
    )
    assert base.architecture == {
        "hidden_size": 64,
        "num_layers": 2,
        "vocab_size": 256,
        "intermediate_size": 128,
        "kv_hidden_size": 32,
        "tie_word_embeddings": False,
    }
    assert base.chat_template == TEMPLATE and base.available_to_all and shown["teams"] is None
    store = object_store()
    assert sorted(info.key for info in store.list(base.prefix)) == [
        f"{base.prefix}/{name}"
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    ]
    assert store.get_bytes(f"{base.prefix}/model.safetensors") == (source / "model.safetensors").read_bytes()

    # Same weights again: same row, same revision. New weights: a new revision under a new prefix.
    add("acme/tiny-1", "--source", str(source))
    assert BaseModel.objects.filter(name="acme/tiny-1").count() == 1
    model_dir(source, scale=2)
    add("acme/tiny-1", "--source", str(source))
    updated = BaseModel.objects.get(name="acme/tiny-1")
    assert updated.revision != revision and store.exists(f"{updated.prefix}/model.safetensors")


def test_add_for_some_teams_only(tmp_path: Path) -> None:
    first, second = TeamFactory(), TeamFactory()
    source, _ = model_dir(tmp_path / "m")
    shown = add("private-base", "--source", str(source), "--teams", first.slug, second.slug)
    base = BaseModel.objects.get(name="private-base")
    assert not base.available_to_all and set(base.teams.all()) == {first, second}
    assert shown["teams"] == sorted([first.slug, second.slug])
    with pytest.raises(CommandError, match="No team with slug 'nobody'"):
        add("other", "--source", str(source), "--teams", "nobody")


def test_add_registers_a_model_already_in_the_object_store(tmp_path: Path, storage_url: str) -> None:
    source, count = model_dir(tmp_path / "m")
    object_store().put_dir(source, "models/shared/v1")
    add("shared", "--source", f"{storage_url.rstrip('/')}/models/shared/v1")
    base = BaseModel.objects.get(name="shared")
    assert base.prefix == "models/shared/v1" and base.parameters == count


def test_add_refuses_what_cannot_train(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(CONFIG))
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CommandError, match="pickled"):
        add("p", "--source", str(pickled))
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    with pytest.raises(CommandError, match="no config.json"):
        add("q", "--source", str(no_config))
    with pytest.raises(CommandError, match="huggingface-cli download meta-llama/Llama-3.2-1B"):
        add("r", "--source", "meta-llama/Llama-3.2-1B")
    source, _ = model_dir(tmp_path / "m")
    with pytest.raises(CommandError, match="no ':'"):
        add("ft:bad", "--source", str(source))
    assert not BaseModel.objects.exists()


def test_no_model_change_lacks_a_migration() -> None:
    out = io.StringIO()
    try:
        call_command("makemigrations", "teams", "tuning", "webhooks", "--check", "--dry-run", stdout=out)
    except SystemExit as exc:
        pytest.fail(f"missing migrations:\n{out.getvalue()}")
        raise AssertionError from exc
