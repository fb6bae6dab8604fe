"""The GPU worker's parts that need no broker or training run: reading the event stream as it grows, the
stop marker's fencing by attempt, checkpoint snapshots that survive the runner's rotation, the model cache
and its digest checks, and the error a job reports for each way a runner can end."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest

from gpu_runner.storage import LocalObjectStore, open_store
from workers.gpu.artifacts import (
    DigestMismatch,
    IncompleteCheckpoint,
    complete_checkpoints,
    snapshot_checkpoint,
    upload_checkpoint,
)
from workers.gpu.cache import CACHE_MANIFEST, ModelCache
from workers.gpu.job import Dispatch, _failure
from workers.gpu.runner import EventTail, RunnerEnd, read_stop_marker


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    opened = open_store((tmp_path / "objects").as_uri())
    assert isinstance(opened, LocalObjectStore)
    return opened


def event_line(kind: str, **data: object) -> str:
    return json.dumps({"type": kind, "created_at": 1.0, "level": "info", "message": kind, "data": data}) + "\n"


def test_event_tail_numbers_complete_lines_and_waits_for_a_partial_one(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read() == []  # the runner has not created the file yet
    with open(path, "w") as stream:
        stream.write(event_line("started"))
        half = event_line("metrics", step=1)
        stream.write(half[:20])
        stream.flush()
        assert [(e["seq"], e["type"]) for e in tail.read()] == [(1, "started")]
        stream.write(half[20:] + "not json\n" + event_line("completed"))
        stream.flush()
        events = tail.read()
    # A malformed line is skipped but keeps its number, so `seq` stays the line number.
    assert [(e["seq"], e["type"]) for e in events] == [(2, "metrics"), (4, "completed")]
    assert events[0]["data"] == {"step": 1}
    tail.close()


def test_stop_marker_counts_only_for_its_attempt(store: LocalObjectStore) -> None:
    key = "teams/1/jobs/ftjob-x/control/stop.json"
    assert read_stop_marker(store, key, 2) is None
    store.put_bytes(key, json.dumps({"action": "pause", "attempt": 1}).encode())
    assert read_stop_marker(store, key, 2) is None  # an earlier attempt's pause
    store.put_bytes(key, json.dumps({"action": "pause", "attempt": 2}).encode())
    assert read_stop_marker(store, key, 2) == "pause"
    store.put_bytes(key, json.dumps({"action": "explode", "attempt": 2}).encode())
    assert read_stop_marker(store, key, 2) is None
    store.put_bytes(key, b"{not json")
    assert read_stop_marker(store, key, 2) is None


def write_checkpoint(folder: Path, step: int, files: dict[str, bytes]) -> Path:
    """A checkpoint laid out as gpu_runner writes it: files, then the manifest with their digests."""
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    for name, data in files.items():
        (checkpoint / name).write_bytes(data)
    manifest = {"format": "tailor-checkpoint/1", "step": step,
                "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                          for name, data in files.items()}}
    (checkpoint / "tailor_checkpoint.json").write_text(json.dumps(manifest))
    return checkpoint


def test_a_checkpoint_snapshot_survives_rotation_and_uploads_manifest_last(tmp_path: Path,
                                                                           store: LocalObjectStore) -> None:
    checkpoints = tmp_path / "checkpoints"
    write_checkpoint(checkpoints, 4, {"adapter_model.safetensors": b"w" * 1000, "optimizer.json": b"{}"})
    (checkpoints / ".tmp-checkpoint-8-123").mkdir()  # being written: never listed
    (checkpoint,) = [path for _, path in complete_checkpoints(checkpoints)]
    snapshot = snapshot_checkpoint(checkpoint, tmp_path / "staging" / "step-4")
    for path in checkpoint.iterdir():  # the runner rotates it away meanwhile
        path.unlink()
    checkpoint.rmdir()
    stored = upload_checkpoint(store, snapshot, "jobs/x/checkpoints/step-4")
    assert [s.key.rsplit("/", 1)[1] for s in stored][-1] == "tailor_checkpoint.json"
    assert store.get_bytes("jobs/x/checkpoints/step-4/adapter_model.safetensors") == b"w" * 1000


def test_a_damaged_checkpoint_is_not_uploaded(tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "checkpoints", 2, {"adapter_model.safetensors": b"abc"})
    (checkpoint / "adapter_model.safetensors").write_bytes(b"abd")
    with pytest.raises(IncompleteCheckpoint, match="adapter_model.safetensors does not match"):
        snapshot_checkpoint(checkpoint, tmp_path / "staging" / "step-2")
    assert not (tmp_path / "staging" / "step-2").exists()


def test_model_cache_downloads_once_and_refuses_damaged_files(tmp_path: Path, store: LocalObjectStore) -> None:
    store.put_bytes("models/org/tiny/r1/config.json", b'{"a": 1}')
    store.put_bytes("models/org/tiny/r1/model.safetensors", b"weights")
    cache = ModelCache(tmp_path / "cache")
    path = cache.fetch(store, name="org/tiny", revision="r1", prefix="models/org/tiny/r1")
    assert path == tmp_path / "cache" / "org--tiny" / "r1"
    assert (path / "model.safetensors").read_bytes() == b"weights" and (path / CACHE_MANIFEST).is_file()
    store.delete_prefix("models/org/tiny/r1")  # a cached revision never goes back to the store
    assert cache.fetch(store, name="org/tiny", revision="r1", prefix="models/org/tiny/r1") == path

    store.put_bytes("models/org/tiny/r2/model.safetensors", b"weights")
    damaged = store.root / "models/org/tiny/r2/model.safetensors"
    before = damaged.stat()
    with open(damaged, "r+b") as stream:  # bit rot: the bytes change, the file's size and times do not
        stream.write(b"W")
    os.utime(damaged, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(DigestMismatch):
        cache.fetch(store, name="org/tiny", revision="r2", prefix="models/org/tiny/r2")
    assert sorted(os.listdir(tmp_path / "cache" / "org--tiny")) == ["r1"]  # no half-filled folder left
    with pytest.raises(ValueError, match="cannot name a cache folder"):
        cache.path_for("tiny", "../../etc")


def test_dispatch_keys_cannot_leave_the_store_and_a_revision_is_optional() -> None:
    message = {"job_id": "ftjob-1", "attempt": 1, "output_prefix": "teams/1/jobs/ftjob-1",
               "base_model": {"name": "m", "revision": "r", "prefix": "models/m/r"},
               "training_file": {"key": "teams/1/files/../../2/files/f", "sha256": "0" * 64}, "spec": {}}
    with pytest.raises(ValueError, match="training_file.key"):
        Dispatch.model_validate(message)
    message["training_file"] = {"key": "teams/1/files/f", "sha256": "0" * 64}
    message["base_model"] = {"name": "m", "revision": None, "prefix": "models/m/upload-3"}
    unversioned = Dispatch.model_validate(message).base_model
    assert unversioned.cache_revision.startswith("prefix-")  # a model without revision is cached by location


def end(returncode: int, error: dict | None = None, tail: str = "") -> RunnerEnd:
    return RunnerEnd(returncode=returncode, stop_action=None, shutdown=False, killed_by_supervisor=False,
                     completed=None, error=error, log_tail=tail)


def test_a_failed_run_reports_the_runners_error_else_a_clear_one_of_ours() -> None:
    error = {"type": "error", "message": "training_file line 3: unknown role", "level": "error",
             "data": {"code": "invalid_training_file", "param": "training_file", "line": 3}}
    assert _failure(end(2, error)).as_error() == {"code": "invalid_training_file", "param": "training_file",
                                                  "message": "training_file line 3: unknown role"}
    assert _failure(end(4)).code == "out_of_memory"
    oom_killed = _failure(end(-signal.SIGKILL))
    assert oom_killed.code == "out_of_memory" and "out-of-memory killer" in oom_killed.message
    crashed = _failure(end(-signal.SIGSEGV, tail="Fatal Python error: Segmentation fault"))
    assert crashed.code == "internal_error" and "SIGSEGV" in crashed.message and "Segmentation" in crashed.message
    silent = _failure(end(1, tail="Traceback ...\nImportError: no module named trl"))
    assert silent.code == "internal_error" and "exited with code 1" in silent.message
    assert "no module named trl" in silent.message
