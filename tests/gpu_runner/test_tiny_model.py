"""The tiny base model and its shipped task: what the trainer tests and the demo build on.

Builds the real model (cached in `gpu_runner.tiny_model.default_model_dir()`, so only the first
run on a machine pays the pretraining minute) and checks that it loads offline, renders chats
with a working assistant mask, generates text, answers in prose before fine-tuning, and that the
task files have the shapes the OpenAI formats require.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gpu_runner import evaluate, tiny_model
from gpu_runner.data.corpus import generate as corpus_generate
from gpu_runner.data.task import generate as task_generate

pytestmark = pytest.mark.training

DATA_DIR = Path(tiny_model.__file__).resolve().parent / "data"
TASK_DIR = DATA_DIR / "task"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        assert line.strip(), f"{path.name}:{number} is blank"
        rows.append(json.loads(line))
    return rows


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return tiny_model.build_tiny_model(tiny_model.default_model_dir())


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)


# --- building -------------------------------------------------------------------------------


def test_same_seed_builds_identical_weights_and_rebuilds_are_cached(tmp_path: Path) -> None:
    first = tiny_model.build_tiny_model(tmp_path / "a", seed=3, pretrain_steps=2)
    second = tiny_model.build_tiny_model(tmp_path / "b", seed=3, pretrain_steps=2)
    other_seed = tiny_model.build_tiny_model(tmp_path / "c", seed=4, pretrain_steps=2)

    digest = _sha256(first / "model.safetensors")
    assert digest == _sha256(second / "model.safetensors")
    assert digest != _sha256(other_seed / "model.safetensors")
    assert tiny_model.read_manifest(first)["revision"] == digest[:12]

    weights_mtime = (first / "model.safetensors").stat().st_mtime_ns
    started = time.monotonic()
    assert tiny_model.build_tiny_model(tmp_path / "a", seed=3, pretrain_steps=2) == first
    assert time.monotonic() - started < 2
    assert (first / "model.safetensors").stat().st_mtime_ns == weights_mtime
    # Only the finished directories (and their lock files) are left beside them: no temp builds.
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["a", "b", "c"]


def test_a_directory_with_different_settings_is_rebuilt_in_place(tmp_path: Path) -> None:
    target = tiny_model.build_tiny_model(tmp_path / "m", seed=0, pretrain_steps=1)
    rebuilt = tiny_model.build_tiny_model(tmp_path / "m", seed=0, pretrain_steps=2)
    assert rebuilt == target
    assert tiny_model.read_manifest(target)["pretrain_steps"] == 2


def test_manifest_describes_the_built_model(model_dir: Path) -> None:
    manifest = tiny_model.read_manifest(model_dir)
    assert manifest["name"] == "tailor-tiny"
    assert manifest["architecture"] == "llama"
    assert manifest["revision"] == _sha256(model_dir / "model.safetensors")[:12]
    assert manifest["chat_template"] is True
    assert 1_000_000 < manifest["parameters"] < 3_000_000
    config = json.loads((model_dir / "config.json").read_text())
    # bitsandbytes quantizes in blocks of 64 values; every linear layer must divide evenly.
    assert config["hidden_size"] % 64 == 0 and config["intermediate_size"] % 64 == 0
    assert config["tie_word_embeddings"] is False
    assert "chat_template" in json.loads((model_dir / "tokenizer_config.json").read_text())


def test_loads_back_offline_without_remote_code(model_dir: Path, tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "print(type(model).__name__, tok.eos_token, tok.pad_token, model.config.eos_token_id == tok.eos_token_id)\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "empty-hub"),
    }
    result = subprocess.run(
        [sys.executable, "-c", script, str(model_dir)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-4:] == ["LlamaForCausalLM", "<|end|>", "<|pad|>", "True"]


# --- tokenizer and chat template --------------------------------------------------------------


def test_plain_text_round_trips_and_starts_with_bos(tokenizer: Any) -> None:
    text = "The capital of Kenya is Nairobi, and 7 plus 5 makes 12."
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert 2000 <= len(tokenizer) <= 4096


def test_chat_template_renders_roles_and_generation_prompt(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Keep answers short."},
        {"role": "user", "content": "What is 2 plus 2?"},
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|bos|><|system|>\nKeep answers short.<|end|>\n<|user|>\nWhat is 2 plus 2?<|end|>\n<|assistant|>\n"
    )
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": "Four."}], tokenize=False
    )
    assert full.startswith(prompt) and full.endswith("Four.<|end|>\n")
    # Chat rendering writes its own <|bos|>; tokenizing it must not add a second one.
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert ids.count(tokenizer.bos_token_id) == 1


def test_assistant_mask_covers_replies_and_their_end_token_only(tokenizer: Any) -> None:
    messages = [
        {"role": "user", "content": "What is 2 plus 2?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And 3 plus 3?"},
        {"role": "assistant", "content": '{"answer": "6", "confidence": "high"}'},
    ]
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    trained = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(trained) == 'Four.<|end|>{"answer": "6", "confidence": "high"}<|end|>'

    # OpenAI's per-message weight 0 takes a turn out of the loss.
    messages[1]["weight"] = 0
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    trained = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(trained) == '{"answer": "6", "confidence": "high"}<|end|>'


def test_template_renders_tool_calls_and_results(tokenizer: Any) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Cold, 2 C"},
    ]
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert '"name": "get_weather"' in text.split("<|user|>")[0]  # tools are listed in the system turn
    assert '<|tool_call|>{"name": "get_weather", "arguments": {"city": "Oslo"}}<|end|>' in text
    assert "<|tool|>\nCold, 2 C<|end|>\n<|assistant|>\n" in text


def test_trl_accepts_the_template_for_assistant_only_loss_without_patching(tokenizer: Any) -> None:
    from trl.chat_template_utils import (
        get_training_chat_template,
        is_chat_template_prefix_preserving,
        is_chat_template_stop_token_trained,
        supports_tool_calling,
    )

    assert supports_tool_calling(tokenizer)
    assert is_chat_template_prefix_preserving(tokenizer)
    assert is_chat_template_stop_token_trained(tokenizer)
    assert get_training_chat_template(tokenizer) is None


# --- the model ------------------------------------------------------------------------------


def test_model_generates_text_and_stops_at_end_of_turn(model: Any, tokenizer: Any) -> None:
    replies = evaluate.generate_replies(
        model, tokenizer, [[{"role": "user", "content": "Where do penguins live?"}]], max_new_tokens=64
    )
    reply = replies[0]
    assert sum(ch.isalpha() for ch in reply) >= 5, reply
    batch = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Where do penguins live?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    output = model.generate(**batch, max_new_tokens=64, do_sample=False)
    assert output[0, -1].item() == tokenizer.eos_token_id, "the base model should end its turn with <|end|>"


def test_base_model_answers_in_prose_not_in_the_task_format(model: Any, tokenizer: Any) -> None:
    rate, replies = evaluate.format_match_rate(model, tokenizer, evaluate.load_task_prompts("heldout"))
    assert rate <= 0.1, replies
    assert len(replies) == 40


def test_batched_replies_equal_one_by_one_replies(model: Any, tokenizer: Any) -> None:
    prompts = evaluate.load_task_prompts("heldout")[:5]
    together = evaluate.generate_replies(model, tokenizer, prompts, batch_size=5)
    one_by_one = [evaluate.generate_replies(model, tokenizer, [p])[0] for p in prompts]
    assert together == one_by_one


# --- task files -----------------------------------------------------------------------------


def _user_questions(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user"]


def _check_chat_row(row: dict[str, Any], where: str) -> None:
    assert set(row) == {"messages"}, where
    messages = row["messages"]
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[0] == "system" else roles
    assert body and body == ["user", "assistant"] * (len(body) // 2), f"{where}: roles {roles}"
    for message in messages:
        assert set(message) == {"role", "content"} and message["content"].strip(), where
        if message["role"] == "assistant":
            assert evaluate.format_match(message["content"]), f"{where}: {message['content']!r}"


@pytest.mark.parametrize(("name", "low", "high"), [("train", 200, 400), ("heldout", 30, 50)])
def test_chat_task_files_are_openai_chat_rows_answering_in_json(name: str, low: int, high: int) -> None:
    rows = _rows(TASK_DIR / f"{name}.jsonl")
    assert low <= len(rows) <= high
    for number, row in enumerate(rows, start=1):
        _check_chat_row(row, f"{name}.jsonl:{number}")
    assert any(row["messages"][0]["role"] == "system" for row in rows)
    assert any(row["messages"][0]["role"] != "system" for row in rows)


@pytest.mark.parametrize(
    ("name", "low", "high"), [("preference_train", 150, 300), ("preference_heldout", 20, 40)]
)
def test_preference_files_prefer_json_over_prose(name: str, low: int, high: int) -> None:
    rows = _rows(TASK_DIR / f"{name}.jsonl")
    assert low <= len(rows) <= high
    for number, row in enumerate(rows, start=1):
        where = f"{name}.jsonl:{number}"
        assert set(row) == {"input", "preferred_output", "non_preferred_output"}, where
        assert row["input"]["messages"][-1]["role"] == "user", where
        preferred, rejected = row["preferred_output"], row["non_preferred_output"]
        assert len(preferred) == 1 and preferred[0]["role"] == "assistant", where
        assert len(rejected) == 1 and rejected[0]["role"] == "assistant", where
        assert evaluate.format_match(preferred[0]["content"]), where
        assert not evaluate.format_match(rejected[0]["content"]) and rejected[0]["content"].strip(), where


def test_heldout_questions_never_appear_in_training_files() -> None:
    seen = {q for row in _rows(TASK_DIR / "train.jsonl") for q in _user_questions(row["messages"])}
    seen |= {
        q
        for row in _rows(TASK_DIR / "preference_train.jsonl")
        for q in _user_questions(row["input"]["messages"])
    }
    heldout = {q for row in _rows(TASK_DIR / "heldout.jsonl") for q in _user_questions(row["messages"])}
    heldout |= {
        q
        for row in _rows(TASK_DIR / "preference_heldout.jsonl")
        for q in _user_questions(row["input"]["messages"])
    }
    assert heldout and not heldout & seen


def test_bundled_sample_is_a_slice_of_the_training_set() -> None:
    sample = _rows(DATA_DIR / "sample_chat.jsonl")
    train = _rows(TASK_DIR / "train.jsonl")
    assert 50 <= len(sample) <= 80
    assert all(row in train for row in sample)


def test_committed_data_files_match_their_generators(tmp_path: Path) -> None:
    (tmp_path / "task").mkdir()
    (tmp_path / "corpus").mkdir()
    task_generate.write_task_files(tmp_path / "task", tmp_path / "sample_chat.jsonl")
    corpus_generate.write_corpus(tmp_path / "corpus")
    for name in ["train.jsonl", "heldout.jsonl", "preference_train.jsonl", "preference_heldout.jsonl"]:
        assert (tmp_path / "task" / name).read_bytes() == (TASK_DIR / name).read_bytes(), f"regenerate {name}"
    assert (tmp_path / "sample_chat.jsonl").read_bytes() == (DATA_DIR / "sample_chat.jsonl").read_bytes()
    for name in ["facts.txt", "dialogues.jsonl"]:
        assert (tmp_path / "corpus" / name).read_bytes() == (DATA_DIR / "corpus" / name).read_bytes(), name


# --- format_match ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"answer": "Paris", "confidence": "high"}',
        '  {"confidence": "low", "answer": "I cannot know without a forecast"}\n',
        '{"answer":"4","confidence":"medium"}',
    ],
)
def test_format_match_accepts_task_shaped_replies(text: str) -> None:
    assert evaluate.format_match(text)


@pytest.mark.parametrize(
    "text",
    [
        "The capital of France is Paris.",
        '{"answer": "Paris", "confidence": "certain"}',
        '{"answer": "", "confidence": "high"}',
        '{"answer": "Paris"}',
        '{"answer": "Paris", "confidence": "high", "source": "atlas"}',
        '{"answer": 4, "confidence": "high"}',
        '{"answer": "Paris", "confidence": "high"} Hope that helps!',
        '{"answer": "Paris", "confid',
        '["Paris", "high"]',
        "",
    ],
)
def test_format_match_rejects_anything_else(text: str) -> None:
    assert not evaluate.format_match(text)
