"""Delivery of an adapter folder to where an inference server reads it: a volume shared with vLLM, or the
endpoint agent's folder beside it.

`materialize` copies the adapter's files from the object store into a hidden temporary folder inside the
destination, checks every file's size and SHA-256 against the registry's manifest, flushes it to disk
and renames the folder into place in one step. A server therefore never sees a half-written or corrupt
adapter, a failed delivery leaves nothing behind, and delivering the same adapter again keeps the folder
that is already there.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gpu_runner.endpoints.errors import EndpointError
from gpu_runner.storage import ObjectNotFound, ObjectStore, StorageError

CHUNK_SIZE = 1024 * 1024
# Hidden names: a server scanning the folder (vLLM's filesystem resolver) never picks up work in progress.
_PARTIAL = ".partial-"
_TRASH = ".removing-"


def _check_dir_name(dest_root: Path, dir_name: str) -> Path:
    if (
        not dir_name
        or dir_name in (".", "..")
        or dir_name.startswith(".")
        or "/" in dir_name
        or "\\" in dir_name
        or "\x00" in dir_name
    ):
        raise ValueError(f"adapter folder name {dir_name!r} must be one plain path component")
    target = dest_root / dir_name
    if os.path.dirname(os.path.abspath(target)) != os.path.abspath(dest_root):
        raise ValueError(f"adapter folder {dir_name!r} escapes {dest_root}")
    return target


def _check_file_name(name: str) -> str:
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise ValueError(f"adapter file name {name!r} must be a relative path inside the adapter folder")
    return name


def _expected(files: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, int | None]]:
    expected = {}
    for name, entry in files.items():
        digest = str(entry.get("sha256") or "").lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"adapter file {name!r} has no valid sha256 in its manifest entry {entry!r}")
        size = entry.get("bytes")
        expected[_check_file_name(name)] = (digest, int(size) if size is not None else None)
    if not expected:
        raise ValueError("an adapter delivery needs at least one file")
    return expected


def _file_matches(path: Path, digest: str, size: int | None) -> bool:
    try:
        if not path.is_file() or (size is not None and path.stat().st_size != size):
            return False
        hasher = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK_SIZE):
                hasher.update(chunk)
    except OSError:
        return False
    return hasher.hexdigest() == digest


def _folder_matches(folder: Path, expected: Mapping[str, tuple[str, int | None]]) -> bool:
    return folder.is_dir() and all(
        _file_matches(folder / name, digest, size) for name, (digest, size) in expected.items()
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_verified(
    store: ObjectStore, key: str, name: str, target: Path, digest: str, size: int | None
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.sha256()
    written = 0
    try:
        with store.open(key) as source, target.open("xb") as sink:
            while chunk := source.read(CHUNK_SIZE):
                hasher.update(chunk)
                written += len(chunk)
                if size is not None and written > size:
                    break  # no need to read on: it is already too long
                sink.write(chunk)
            sink.flush()
            os.fsync(sink.fileno())
    except ObjectNotFound as exc:
        raise EndpointError(
            f"adapter file {name!r} is missing from the object store ({key})",
            transient=False,
            status=None,
            reason_code="adapter_file_missing",
        ) from exc
    except StorageError as exc:
        raise EndpointError(
            f"reading adapter file {name!r} from the object store failed: {exc}",
            transient=True,
            status=None,
            reason_code="storage_unavailable",
        ) from exc
    if size is not None and written != size:
        raise EndpointError(
            f"adapter file {name!r} in the object store has {'more than ' if written > size else ''}"
            f"{written} bytes, but its manifest says {size}; the stored adapter is corrupt or was replaced",
            transient=False,
            status=None,
            reason_code="adapter_digest_mismatch",
        )
    actual = hasher.hexdigest()
    if actual != digest:
        raise EndpointError(
            f"adapter file {name!r} in the object store has SHA-256 {actual}, but its manifest says "
            f"{digest}; the stored adapter is corrupt or was replaced",
            transient=False,
            status=None,
            reason_code="adapter_digest_mismatch",
        )


def materialize(
    *,
    store: ObjectStore,
    prefix: str,
    files: Mapping[str, Mapping[str, Any]],
    dest_root: Path,
    dir_name: str,
) -> Path:
    """Write the adapter files `files` (name → `{"sha256", "bytes"}`) found under `prefix` in `store` to
    `dest_root/dir_name`, verified, and return that folder.

    Idempotent: a folder already holding these exact files is kept as it is; one holding other contents
    is replaced in one rename. A missing or corrupt file raises a permanent `EndpointError` naming it
    (`adapter_file_missing`, `adapter_digest_mismatch`) and leaves nothing behind; an object store that
    cannot be read raises a transient one (`storage_unavailable`)."""
    dest_root = Path(dest_root)
    target = _check_dir_name(dest_root, dir_name)
    expected = _expected(files)
    if _folder_matches(target, expected):
        return target
    try:
        dest_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EndpointError(
            f"cannot create the adapter folder root {dest_root}: {exc}",
            transient=False,
            status=None,
            reason_code="delivery_failed",
        ) from exc
    staging = dest_root / f"{_PARTIAL}{dir_name}-{secrets.token_hex(6)}"
    try:
        # Plain mkdir, not mkdtemp: the server (often another user or container) must be able to read it.
        staging.mkdir(mode=0o755)
        for name, (digest, size) in expected.items():
            _copy_verified(
                store, posixpath.join(prefix.rstrip("/"), name), name, staging / name, digest, size
            )
        _fsync_dir(staging)
        _install(staging, target, expected)
        _fsync_dir(dest_root)
    except OSError as exc:
        raise EndpointError(
            f"writing the adapter folder {target} failed: {exc}",
            transient=False,
            status=None,
            reason_code="delivery_failed",
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _install(staging: Path, target: Path, expected: Mapping[str, tuple[str, int | None]]) -> None:
    """Move the verified folder into place; a concurrent delivery of the same files may have won."""
    try:
        os.rename(staging, target)
        return
    except OSError:
        if not target.exists():
            raise
    if _folder_matches(target, expected):
        return  # someone delivered the same adapter meanwhile
    # Stale or different contents: swap them out, so the name never points at a partial folder.
    trash = target.parent / f"{_TRASH}{target.name}-{secrets.token_hex(6)}"
    os.rename(target, trash)
    try:
        os.rename(staging, target)
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def remove(dest_root: Path, dir_name: str) -> bool:
    """Remove the delivered folder `dest_root/dir_name`. True if it existed; False if there was nothing
    to remove. The folder is first renamed to a hidden name, so it disappears at once."""
    target = _check_dir_name(Path(dest_root), dir_name)
    if not target.exists():
        return False
    trash = target.parent / f"{_TRASH}{dir_name}-{secrets.token_hex(6)}"
    try:
        os.rename(target, trash)
    except FileNotFoundError:
        return False
    shutil.rmtree(trash, ignore_errors=True)
    with contextlib.suppress(OSError):
        _fsync_dir(target.parent)
    return True
