"""Moving a job's files between the object store and the GPU node, each one checked by its digest.

- `download_verified`: one object to a local file, hashed while it streams, compared with a digest.
- Checkpoints: the runner renames `checkpoint-<step>/` into place once complete, with its manifest
  `tailor_checkpoint.json` (sha256 and size of every other file) written last. The worker takes a
  snapshot of it with hard links (so the runner's rotation can delete its copy meanwhile), verifies the
  digests and uploads the files, the manifest last, so a reader of the store never sees a checkpoint
  whose manifest is present and whose files are not.
- The adapter directory: verified against `tailor_adapter.json` and uploaded with that manifest last.

The layout constants repeat `gpu_runner.train.checkpoints` and `gpu_runner.train.outputs`, which import
torch; a GPU worker only supervises the runner and must not load the training stack itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gpu_runner.storage import ObjectStore, StoredObject
from gpu_runner.storage.base import CHUNK_SIZE, atomic_file
from gpu_runner.storage.keys import check_key, check_prefix, join_key, relative_key

CHECKPOINT_DIR_PREFIX = "checkpoint-"
CHECKPOINT_MANIFEST = "tailor_checkpoint.json"
CHECKPOINT_FORMAT = "tailor-checkpoint/1"
ADAPTER_MANIFEST = "tailor_adapter.json"
METRICS_CSV = "metrics.csv"


class DigestMismatch(Exception):
    """A file's bytes do not match the digest (or size) it was recorded with."""


class IncompleteCheckpoint(Exception):
    """A checkpoint folder without a readable manifest, or whose files do not match it."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a local file, read in bounded chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(CHUNK_SIZE):
            digest.update(block)
    return digest.hexdigest()


def download_verified(store: ObjectStore, key: str, destination: Path, *, sha256: str | None) -> str:
    """Copy object `key` to `destination` (atomically) while hashing it; returns the hex sha256.

    With `sha256` given, a different digest raises `DigestMismatch` and nothing is left at `destination`.
    """
    digest = hashlib.sha256()
    try:
        with store.open(key) as reader, atomic_file(destination) as writer:
            while chunk := reader.read(CHUNK_SIZE):
                digest.update(chunk)
                writer.write(chunk)
            if sha256 is not None and digest.hexdigest() != sha256.lower():
                raise DigestMismatch(f"{key}: sha256 is {digest.hexdigest()}, expected {sha256.lower()}")
    except DigestMismatch:
        destination.unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def download_prefix(store: ObjectStore, prefix: str, local_dir: Path) -> dict[str, str]:
    """Download every object under folder `prefix` into `local_dir`, each checked against the digest the
    store recorded at upload. Returns `{relative path: sha256}`; an empty prefix raises `FileNotFoundError`."""
    prefix = check_prefix(prefix)
    digests: dict[str, str] = {}
    for info in store.list(prefix):
        # Keys listed from a bucket may come from other tools: "a/../../x" must not escape local_dir.
        relative = check_key(relative_key(info.key, prefix))
        expected = store.sha256(info.key)
        digests[relative] = download_verified(
            store, info.key, local_dir.joinpath(*relative.split("/")), sha256=expected
        )
    if not digests:
        raise FileNotFoundError(f"no objects under {prefix!r}")
    return digests


# --- checkpoints ----------------------------------------------------------------------------------------


def complete_checkpoints(checkpoint_dir: Path) -> Iterator[tuple[int, Path]]:
    """`(step, folder)` of every checkpoint folder that holds its manifest, oldest first.

    The runner renames a folder into place only when it is complete, so the manifest's presence is the
    signal; `snapshot_checkpoint` still verifies every digest before anything is uploaded.
    """
    if not checkpoint_dir.is_dir():
        return
    found = []
    for path in checkpoint_dir.iterdir():
        suffix = path.name[len(CHECKPOINT_DIR_PREFIX) :]
        if (
            path.name.startswith(CHECKPOINT_DIR_PREFIX)
            and suffix.isdigit()
            and (path / CHECKPOINT_MANIFEST).is_file()
        ):
            found.append((int(suffix), path))
    yield from sorted(found)


def verify_checkpoint(folder: Path) -> dict[str, Any]:
    """The manifest of a complete checkpoint; `IncompleteCheckpoint` when it is missing, unreadable or a
    file does not match its recorded sha256 and size."""
    try:
        manifest = json.loads((folder / CHECKPOINT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IncompleteCheckpoint(f"{folder.name}: no readable {CHECKPOINT_MANIFEST} ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise IncompleteCheckpoint(
            f"{folder.name}: {CHECKPOINT_MANIFEST} is not a {CHECKPOINT_FORMAT} manifest"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise IncompleteCheckpoint(f"{folder.name}: {CHECKPOINT_MANIFEST} lists no files")
    for name, info in files.items():
        path = folder / name
        try:
            if path.stat().st_size != info["bytes"] or sha256_file(path) != info["sha256"]:
                raise IncompleteCheckpoint(f"{folder.name}: {name} does not match its recorded sha256")
        except FileNotFoundError:
            raise IncompleteCheckpoint(f"{folder.name}: {name} is missing") from None
    return manifest


def snapshot_checkpoint(folder: Path, staging: Path) -> Path:
    """Hard-link (or, across file systems, copy) a complete checkpoint into `staging` and verify it there.

    The runner keeps only its newest few checkpoints and may delete `folder` at any moment; the links keep
    the bytes alive until the upload is done. Raises `IncompleteCheckpoint` if the folder vanished or
    does not verify.
    """
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        names = [entry.name for entry in os.scandir(folder) if entry.is_file(follow_symlinks=False)]
        for name in names:
            try:
                os.link(folder / name, staging / name)
            except OSError as exc:
                if isinstance(exc, FileNotFoundError):
                    raise
                shutil.copy2(folder / name, staging / name)
    except FileNotFoundError:
        shutil.rmtree(staging, ignore_errors=True)
        raise IncompleteCheckpoint(f"{folder.name} was removed before it could be uploaded") from None
    try:
        verify_checkpoint(staging)
    except IncompleteCheckpoint:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def upload_checkpoint(store: ObjectStore, folder: Path, prefix: str) -> list[StoredObject]:
    """Upload a verified checkpoint folder to `prefix`, its manifest last."""
    names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file())
    ordered = [name for name in names if name != CHECKPOINT_MANIFEST] + [CHECKPOINT_MANIFEST]
    return [store.put_file(join_key(prefix, name), folder / name) for name in ordered]


# --- the adapter ----------------------------------------------------------------------------------------


def read_adapter_manifest(output_dir: Path) -> dict[str, Any]:
    """`tailor_adapter.json` of a finished run, with every file it lists checked by sha256 and size.

    Raises `DigestMismatch` for a damaged file and `FileNotFoundError` when a file or the manifest
    (written last by the runner) is missing.
    """
    manifest = json.loads((output_dir / ADAPTER_MANIFEST).read_text(encoding="utf-8"))
    for name, info in (manifest.get("files") or {}).items():
        path = output_dir / check_key(name, what="adapter file")
        if not path.is_file():
            raise FileNotFoundError(f"adapter file {name} listed in {ADAPTER_MANIFEST} is missing")
        if (
            path.stat().st_size != info.get("bytes", path.stat().st_size)
            or sha256_file(path) != info["sha256"]
        ):
            raise DigestMismatch(f"adapter file {name} does not match its sha256 in {ADAPTER_MANIFEST}")
    return manifest


def upload_adapter(store: ObjectStore, output_dir: Path, prefix: str) -> list[StoredObject]:
    """Upload every file of the adapter directory to `prefix`, `tailor_adapter.json` last (its presence
    in the store means the adapter is complete, as on disk)."""
    files = sorted(
        path.relative_to(output_dir).as_posix() for path in output_dir.rglob("*") if path.is_file()
    )
    ordered = [name for name in files if name != ADAPTER_MANIFEST] + [ADAPTER_MANIFEST]
    return [store.put_file(join_key(prefix, name), output_dir / name) for name in ordered]
