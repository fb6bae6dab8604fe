"""Delivering adapter folders from the object store to where a server reads them: verified, atomic,
idempotent, and leaving nothing behind when a file is missing or corrupt."""

from __future__ import annotations

import hashlib
import json
import stat
import threading
from pathlib import Path

import pytest

from gpu_runner.endpoints.delivery import materialize, remove
from gpu_runner.endpoints.errors import EndpointError
from gpu_runner.endpoints.vllm import VLLMClient
from gpu_runner.storage import ObjectStore, open_store
from tests.doubles.adapters import lora_shapes, peft_config, safetensors_bytes
from tests.doubles.vllm import VLLMDouble

PREFIX = "teams/acme/jobs/ftjob-1/adapter"
CONFIG = b'{"peft_type": "LORA", "r": 8}'
WEIGHTS = safetensors_bytes(lora_shapes(["q_proj", "v_proj"]))


def manifest(files: dict[str, bytes]) -> dict[str, dict[str, object]]:
    return {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in files.items()
    }


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    store = open_store((tmp_path / "objects").as_uri())
    store.put_bytes(f"{PREFIX}/adapter_config.json", CONFIG)
    store.put_bytes(f"{PREFIX}/adapter_model.safetensors", WEIGHTS)
    return store


FILES = {"adapter_config.json": CONFIG, "adapter_model.safetensors": WEIGHTS}


def test_files_are_written_verified_and_readable(store: ObjectStore, tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    folder = materialize(
        store=store, prefix=PREFIX, files=manifest(FILES), dest_root=root, dir_name="acme--ftjob-1"
    )
    assert folder == root / "acme--ftjob-1"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == FILES
    assert [p.name for p in root.iterdir()] == ["acme--ftjob-1"], "no staging folder is left"
    # Another user or container (the server) must be able to read it.
    assert stat.S_IMODE(folder.stat().st_mode) & 0o005 == 0o005
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o004 for p in folder.iterdir())


def test_a_second_delivery_keeps_the_folder(store: ObjectStore, tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    folder = materialize(store=store, prefix=PREFIX, files=manifest(FILES), dest_root=root, dir_name="a")
    inode = folder.stat().st_ino
    again = materialize(store=store, prefix=PREFIX + "/", files=manifest(FILES), dest_root=root, dir_name="a")
    assert again == folder and folder.stat().st_ino == inode


def test_a_folder_with_other_contents_is_replaced(store: ObjectStore, tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    stale = root / "a"
    stale.mkdir(parents=True)
    (stale / "adapter_model.safetensors").write_bytes(b"old weights")
    (stale / "leftover.txt").write_text("x")
    folder = materialize(store=store, prefix=PREFIX, files=manifest(FILES), dest_root=root, dir_name="a")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == FILES
    assert [p.name for p in root.iterdir()] == ["a"]


def test_a_corrupt_file_is_named_and_nothing_is_left_behind(store: ObjectStore, tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    files = manifest(FILES)
    files["adapter_model.safetensors"]["sha256"] = hashlib.sha256(b"what training wrote").hexdigest()
    with pytest.raises(EndpointError) as caught:
        materialize(store=store, prefix=PREFIX, files=files, dest_root=root, dir_name="a")
    error = caught.value
    assert (error.transient, error.status, error.reason_code) == (False, None, "adapter_digest_mismatch")
    assert "'adapter_model.safetensors'" in error.message
    assert hashlib.sha256(WEIGHTS).hexdigest() in error.message
    assert list(root.iterdir()) == []


def test_a_file_of_the_wrong_size_is_refused(store: ObjectStore, tmp_path: Path) -> None:
    files = manifest(FILES)
    files["adapter_config.json"]["bytes"] = 3
    with pytest.raises(EndpointError) as caught:
        materialize(store=store, prefix=PREFIX, files=files, dest_root=tmp_path / "r", dir_name="a")
    assert caught.value.reason_code == "adapter_digest_mismatch"
    assert "'adapter_config.json'" in caught.value.message and "manifest says 3" in caught.value.message
    assert list((tmp_path / "r").iterdir()) == []


def test_a_missing_file_is_a_permanent_error(store: ObjectStore, tmp_path: Path) -> None:
    files = manifest({**FILES, "tokenizer.json": b"{}"})
    with pytest.raises(EndpointError) as caught:
        materialize(store=store, prefix=PREFIX, files=files, dest_root=tmp_path / "r", dir_name="a")
    assert (caught.value.transient, caught.value.reason_code) == (False, "adapter_file_missing")
    assert "'tokenizer.json'" in caught.value.message
    assert list((tmp_path / "r").iterdir()) == []


def test_a_failed_redelivery_keeps_the_served_folder(store: ObjectStore, tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    materialize(store=store, prefix=PREFIX, files=manifest(FILES), dest_root=root, dir_name="a")
    store.put_bytes(f"{PREFIX}/adapter_model.safetensors", b"tampered")
    changed = manifest({**FILES, "adapter_model.safetensors": b"expected"})
    with pytest.raises(EndpointError):
        materialize(store=store, prefix=PREFIX, files=changed, dest_root=root, dir_name="a")
    assert (root / "a" / "adapter_model.safetensors").read_bytes() == WEIGHTS
    assert [p.name for p in root.iterdir()] == ["a"]


@pytest.mark.parametrize("dir_name", ["..", "../escape", "a/b", "", ".hidden", "/abs"])
def test_folder_names_cannot_escape_the_root(store: ObjectStore, tmp_path: Path, dir_name: str) -> None:
    with pytest.raises(ValueError):
        materialize(
            store=store, prefix=PREFIX, files=manifest(FILES), dest_root=tmp_path / "r", dir_name=dir_name
        )
    with pytest.raises(ValueError):
        remove(tmp_path / "r", dir_name)
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("file_name", ["../x", "/etc/passwd", "a/../../x", ""])
def test_file_names_cannot_escape_the_folder(store: ObjectStore, tmp_path: Path, file_name: str) -> None:
    with pytest.raises(ValueError):
        materialize(
            store=store,
            prefix=PREFIX,
            files=manifest({file_name: b"x"}),
            dest_root=tmp_path / "r",
            dir_name="a",
        )


def test_concurrent_deliveries_of_the_same_adapter_agree(store: ObjectStore, tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    results: list[Path] = []
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            results.append(
                materialize(store=store, prefix=PREFIX, files=manifest(FILES), dest_root=root, dir_name="a")
            )
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and set(results) == {root / "a"}
    assert [p.name for p in root.iterdir()] == ["a"]
    assert (root / "a" / "adapter_model.safetensors").read_bytes() == WEIGHTS


def test_remove_is_idempotent(store: ObjectStore, tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    materialize(store=store, prefix=PREFIX, files=manifest(FILES), dest_root=root, dir_name="a")
    assert remove(root, "a") is True
    assert remove(root, "a") is False
    assert list(root.iterdir()) == []
    assert remove(tmp_path / "never-created", "a") is False


def test_a_delivered_folder_loads_in_the_vllm_double(store: ObjectStore, tmp_path: Path) -> None:
    config = json.dumps(peft_config()).encode()
    store.put_bytes(f"{PREFIX}/adapter_config.json", config)
    files = manifest({"adapter_config.json": config, "adapter_model.safetensors": WEIGHTS})
    folder = materialize(
        store=store, prefix=PREFIX, files=files, dest_root=tmp_path / "adapters", dir_name="a"
    )
    with VLLMDouble() as vllm:
        VLLMClient(vllm.url).load("ft:x", str(folder))
        assert vllm.loras["ft:x"].path == str(folder)
