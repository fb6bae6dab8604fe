"""Object store in a local directory: the embedded default, and a volume shared with vLLM.

Objects are plain files at `<root>/<key>`, so a directory of adapter files can be handed to a
server that reads its own filesystem. Each upload goes to a temporary file beside its target and is
moved into place with `os.replace`, so readers never see half an object.

The SHA-256 recorded at upload lives in an extended attribute of the file itself (it moves with
the file on `os.replace`, and no sidecar file appears in the directory). It is trusted only while
the file's size and modification time match what was recorded; otherwise, and on file systems
without user extended attributes, `sha256()` reads the file again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from gpu_runner.storage.base import (
    CHUNK_SIZE,
    ObjectInfo,
    ObjectStore,
    ReadableStream,
    StoredObject,
    StrPath,
    UploadMeter,
    atomic_file,
    check_expiry,
    sha256_of_stream,
)
from gpu_runner.storage.errors import ObjectNotFound, StorageError
from gpu_runner.storage.keys import PARTIAL_UPLOAD_MARKER, check_key, check_prefix, join_key

SHA256_XATTR = "user.tailor.sha256"


def _record_sha256(fd: int, sha256: str) -> None:
    """Remember the digest of the file open at `fd`, tied to its current size and mtime."""
    if not hasattr(os, "setxattr"):  # not on macOS or Windows: sha256() recomputes there
        return
    status = os.fstat(fd)
    with contextlib.suppress(OSError):  # e.g. a file system mounted without user xattrs
        os.setxattr(fd, SHA256_XATTR, f"{sha256}:{status.st_size}:{status.st_mtime_ns}".encode())


def _recorded_sha256(path: Path, status: os.stat_result) -> str | None:
    if not hasattr(os, "getxattr"):
        return None
    try:
        sha256, size, mtime_ns = os.getxattr(path, SHA256_XATTR).decode().split(":")
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    # A file changed in place since the upload (same inode, new bytes) no longer matches.
    if int(size) != status.st_size or int(mtime_ns) != status.st_mtime_ns or len(sha256) != 64:
        return None
    return sha256


class LocalObjectStore(ObjectStore):
    """Objects as files under a directory (created on first write)."""

    def __init__(self, directory: StrPath, prefix: str = "") -> None:
        self._directory = Path(directory).expanduser().resolve()
        self._prefix = check_prefix(prefix)
        self._root = self._directory.joinpath(*self._prefix.split("/")) if self._prefix else self._directory

    def __repr__(self) -> str:
        return f"LocalObjectStore({self._root.as_uri()!r})"

    @property
    def root(self) -> Path:
        """The directory holding this store's objects."""
        return self._root

    def _path(self, key: str) -> Path:
        return self._root.joinpath(*check_key(key).split("/"))

    def child(self, prefix: str) -> LocalObjectStore:
        """A view rooted at `prefix` below this store's root."""
        return LocalObjectStore(
            self._directory, join_key(self._prefix, check_key(check_prefix(prefix), what="prefix"))
        )

    def put(
        self,
        key: str,
        stream: ReadableStream,
        *,
        max_bytes: int | None = None,
        content_type: str | None = None,
    ) -> StoredObject:
        """Write the stream to a temporary file beside the target, then move it into place.

        `content_type` is accepted for symmetry with S3 and not stored: files carry no media type.
        """
        path = self._path(key)
        meter = UploadMeter(stream, key=key, max_bytes=max_bytes)
        try:
            with atomic_file(path) as handle:
                while chunk := meter.read(CHUNK_SIZE):
                    handle.write(chunk)
                handle.flush()
                _record_sha256(handle.fileno(), meter.hexdigest())
        except IsADirectoryError as error:
            raise StorageError(f"cannot store {key!r}: it is a folder holding other objects") from error
        except (NotADirectoryError, FileExistsError) as error:
            raise StorageError(f"cannot store {key!r}: a parent segment is already an object") from error
        return StoredObject(key=key, size=meter.size, sha256=meter.hexdigest())

    def open(self, key: str) -> BinaryIO:
        """Open the file for reading; raises `ObjectNotFound`."""
        path = self._path(key)
        try:
            return path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
            raise ObjectNotFound(f"no object {key!r} in {self!r}", key=key) from error

    def _stat(self, key: str) -> tuple[Path, os.stat_result]:
        path = self._path(key)
        try:
            status = path.stat()
        except (FileNotFoundError, NotADirectoryError) as error:
            raise ObjectNotFound(f"no object {key!r} in {self!r}", key=key) from error
        if not stat.S_ISREG(status.st_mode):
            raise ObjectNotFound(f"no object {key!r} in {self!r} (it is a folder)", key=key)
        return path, status

    def exists(self, key: str) -> bool:
        """Whether a file exists at `key`."""
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        """File size in bytes."""
        return self._stat(key)[1].st_size

    def sha256(self, key: str) -> str:
        """The digest recorded at upload while the file is unchanged, else read the file again."""
        path, status = self._stat(key)
        recorded = _recorded_sha256(path, status)
        if recorded is not None:
            return recorded
        with self.open(key) as reader:
            return sha256_of_stream(reader)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Walk the folder depth-first in key order; in-flight uploads and symbolic links are skipped."""
        prefix = check_prefix(prefix)
        start = self._root.joinpath(*prefix.split("/")) if prefix else self._root
        yield from self._walk(start, prefix)

    def _walk(self, folder: Path, prefix: str) -> Iterator[ObjectInfo]:
        try:
            # Comparing folders as "name/" makes a depth-first walk yield keys in plain string order,
            # the order S3 lists them in ("a-b" < "a/c" < "a0").
            entries = sorted(
                os.scandir(folder),
                key=lambda entry: entry.name + "/" if entry.is_dir(follow_symlinks=False) else entry.name,
            )
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith(PARTIAL_UPLOAD_MARKER) or entry.is_symlink():
                continue
            key = join_key(prefix, entry.name)
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), key)
            elif entry.is_file(follow_symlinks=False):
                try:
                    status = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # deleted while listing
                    continue
                yield ObjectInfo(
                    key=key,
                    size=status.st_size,
                    last_modified=dt.datetime.fromtimestamp(status.st_mtime, tz=dt.UTC),
                )

    def delete(self, key: str) -> None:
        """Remove the file and the folders it leaves empty (up to the store's root)."""
        path = self._path(key)
        if path.is_dir() and not path.is_symlink():
            return
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        self._remove_empty_parents(path.parent)

    def _remove_empty_parents(self, folder: Path) -> None:
        while folder != self._root and self._root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty (or already gone): stop climbing
                return
            folder = folder.parent

    def presign_get(self, key: str, *, expires_in: int = 900, filename: str | None = None) -> str:
        """The file's `file://` URI; local files need no signature, so nothing expires."""
        check_expiry(expires_in)
        return self.uri(key)

    def presign_put(self, key: str, *, expires_in: int = 900) -> str:
        """The target file's `file://` URI (writers on this host write there directly)."""
        check_expiry(expires_in)
        return self.uri(key)

    def uri(self, key: str) -> str:
        """`file:///absolute/path/to/key`."""
        return self._path(key).as_uri()
