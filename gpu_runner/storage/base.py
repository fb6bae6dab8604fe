"""The object store interface every backend implements, and the operations built on its primitives.

Backends (`LocalObjectStore`, `S3ObjectStore`) implement a small set of primitives: put, open,
exists, size, sha256, list, delete, presign, uri, child. Byte, file and directory transfers are
written once here on top of them, so they behave the same whatever the URL scheme.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import datetime as dt
import hashlib
import io
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from gpu_runner.storage.errors import ObjectNotFound, ObjectTooLarge, StorageError
from gpu_runner.storage.keys import PARTIAL_UPLOAD_MARKER, check_key, check_prefix, join_key, relative_key

# Size of each read from an upload stream and each write while copying; small enough that memory
# stays flat, large enough that system-call overhead does not show.
CHUNK_SIZE = 1024 * 1024

StrPath = str | os.PathLike[str]


class ReadableStream(Protocol):
    """What `put` reads from: any binary stream with `read(size)` (files, sockets, request bodies).

    A `readinto` method, where the stream has one, is used to avoid a copy.
    """

    def read(self, size: int = ..., /) -> bytes | None: ...


MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # the longest a SigV4 presigned URL may live


def check_expiry(expires_in: int) -> int:
    """Return `expires_in` if it is a lifetime a presigned URL can have (1 s to 7 days)."""
    if not 1 <= expires_in <= MAX_PRESIGN_SECONDS:
        raise ValueError(f"expires_in must be between 1 and {MAX_PRESIGN_SECONDS} seconds, got {expires_in}")
    return expires_in


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What an upload wrote: its key (relative to the store), size in bytes and SHA-256 (hex)."""

    key: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One entry of a listing: key relative to the store's root, size in bytes, last change (UTC)."""

    key: str
    size: int
    last_modified: dt.datetime


class UploadMeter:
    """Reads an upload stream in bounded chunks, hashing and counting on the fly.

    Raises `ObjectTooLarge` as soon as more than `max_bytes` have come through, so an oversized
    upload is refused after reading at most one chunk past the limit.
    """

    def __init__(self, stream: ReadableStream, *, key: str, max_bytes: int | None) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self._stream = stream
        self._key = key
        self._max_bytes = max_bytes
        self._hash = hashlib.sha256()
        self.size = 0

    def _account(self, data: bytes | bytearray | memoryview) -> None:
        self.size += len(data)
        if self._max_bytes is not None and self.size > self._max_bytes:
            raise ObjectTooLarge(
                f"object {self._key!r} is larger than the limit of {self._max_bytes} bytes",
                key=self._key,
                max_bytes=self._max_bytes,
            )
        self._hash.update(data)

    def _refuse(self, result: object, method: str) -> StorageError | TypeError:
        if result is None:
            return StorageError(f"upload stream for {self._key!r} is non-blocking and had no data ready")
        return TypeError(
            f"upload stream for {self._key!r} must be opened in binary mode; "
            f"{method}() returned {type(result).__name__}"
        )

    def _read_chunk(self, size: int) -> bytes | bytearray | memoryview:
        chunk = self._stream.read(size)
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise self._refuse(chunk, "read")
        return chunk

    def read(self, size: int = CHUNK_SIZE) -> bytes:
        """Return up to `size` bytes; b"" at the end of the stream."""
        chunk = self._read_chunk(size)
        self._account(chunk)
        return bytes(chunk)

    def read_part(self, size: int) -> bytearray:
        """Return `size` bytes, or fewer only at the end of the stream, in one buffer.

        Streams may return short reads (sockets, request bodies), so this loops; it reads straight
        into the buffer where the stream supports `readinto`, so a part is held once, not twice.
        """
        buffer = bytearray(size)
        filled = 0
        readinto = getattr(self._stream, "readinto", None)
        with memoryview(buffer) as view:
            while filled < size:
                if readinto is not None:
                    count = readinto(view[filled:])
                    if not isinstance(count, int):
                        raise self._refuse(count, "readinto")
                else:
                    chunk = self._read_chunk(size - filled)
                    count = len(chunk)
                    view[filled : filled + count] = chunk
                if not count:
                    break
                self._account(view[filled : filled + count])
                filled += count
        del buffer[filled:]  # in place: the view is released, so the buffer may shrink
        return buffer

    def hexdigest(self) -> str:
        """SHA-256 of everything read so far."""
        return self._hash.hexdigest()


def sha256_of_stream(stream: BinaryIO) -> str:
    """SHA-256 (hex) of a binary stream, read in bounded chunks."""
    digest = hashlib.sha256()
    while chunk := stream.read(CHUNK_SIZE):
        digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Write `path` through a temporary file beside it, moved into place only if the block succeeds.

    Readers see the old file or the whole new one, never a half-written one; on error the temporary
    file is removed. The file gets the usual permissions (0666 less the umask), not 0600, because
    other processes (vLLM reading an adapter, a worker under another user) read what is written here.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f"{PARTIAL_UPLOAD_MARKER}{secrets.token_hex(8)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


class ObjectStore(abc.ABC):
    """A flat namespace of objects under POSIX-style keys, rooted at a prefix.

    Keys and prefixes are relative to the store's root and checked by `gpu_runner.storage.keys`:
    nothing can address an object outside the root. A prefix names a folder ("runs/1" covers
    "runs/1/…", never "runs/10/…").
    """

    # -- primitives each backend implements -------------------------------------------------

    @abc.abstractmethod
    def child(self, prefix: str) -> ObjectStore:
        """A view of this store rooted at `prefix` (e.g. a team's "teams/<id>")."""

    @abc.abstractmethod
    def put(
        self,
        key: str,
        stream: ReadableStream,
        *,
        max_bytes: int | None = None,
        content_type: str | None = None,
    ) -> StoredObject:
        """Store the bytes of `stream` under `key`, replacing any object there.

        Streams in bounded chunks, hashing on the fly. More than `max_bytes` raises `ObjectTooLarge`
        and leaves nothing behind (an existing object at `key` is kept).
        """

    @abc.abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A streaming reader for the object (a context manager); raises `ObjectNotFound`."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists at `key`."""

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """Size of the object in bytes; raises `ObjectNotFound`."""

    @abc.abstractmethod
    def sha256(self, key: str) -> str:
        """SHA-256 (hex) of the object, from what `put` recorded, or recomputed by reading it."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under folder `prefix`, recursively, sorted by key; keys are relative to the root."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    @abc.abstractmethod
    def presign_get(self, key: str, *, expires_in: int = 900, filename: str | None = None) -> str:
        """A URL that downloads the object without credentials for `expires_in` seconds."""

    @abc.abstractmethod
    def presign_put(self, key: str, *, expires_in: int = 900) -> str:
        """A URL that uploads the object without credentials for `expires_in` seconds."""

    @abc.abstractmethod
    def uri(self, key: str) -> str:
        """The canonical URI of the object ("s3://bucket/prefix/key", "file:///…")."""

    # -- operations built on the primitives -------------------------------------------------

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under folder `prefix` and return how many were removed.

        The whole store cannot be wiped by accident: `prefix` must not be empty.
        """
        prefix = check_prefix(prefix)
        if not prefix:
            raise ValueError("delete_prefix needs a non-empty prefix; refusing to delete the whole store")
        removed = 0
        # Listed up front: deleting while a listing is being paged can skip entries.
        for info in builtins.list(self.list(prefix)):
            self.delete(info.key)
            removed += 1
        return removed

    def put_file(self, key: str, path: StrPath, *, content_type: str | None = None) -> StoredObject:
        """Upload a local file."""
        with open(path, "rb") as handle:
            return self.put(key, handle, content_type=content_type)

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> StoredObject:
        """Upload bytes held in memory."""
        return self.put(key, io.BytesIO(data), content_type=content_type)

    def get_bytes(self, key: str) -> bytes:
        """The whole object in memory; for small objects only."""
        with self.open(key) as reader:
            return reader.read()

    def download(self, key: str, path: StrPath) -> Path:
        """Copy the object to a local file, atomically (creating parent folders); returns the path."""
        destination = Path(path)
        with self.open(key) as reader, atomic_file(destination) as writer:
            while chunk := reader.read(CHUNK_SIZE):
                writer.write(chunk)
        return destination

    def put_dir(self, local_dir: StrPath, prefix: str) -> builtins.list[StoredObject]:
        """Upload every file below `local_dir` to folder `prefix` (an adapter or model directory).

        Symbolic links to files are followed (Hugging Face snapshots consist of them); links to
        folders are not. Returns what was stored, sorted by key.
        """
        root = Path(local_dir)
        if not root.is_dir():
            raise NotADirectoryError(f"{root} is not a directory")
        prefix = check_prefix(prefix)
        stored: builtins.list[StoredObject] = []
        for current, folders, files in os.walk(root):
            folders.sort()
            for name in sorted(files):
                local_path = Path(current, name)
                if not local_path.is_file():
                    continue
                relative = local_path.relative_to(root).as_posix()
                check_key(relative, what=f"file name {str(local_path)!r}")
                stored.append(self.put_file(join_key(prefix, relative), local_path))
        return sorted(stored, key=lambda obj: obj.key)

    def get_dir(self, prefix: str, local_dir: StrPath) -> builtins.list[Path]:
        """Download every object under folder `prefix` into `local_dir`, keeping relative paths.

        Raises `ObjectNotFound` when the prefix holds no objects, so a missing adapter is never
        mistaken for an empty one. Returns the written paths.
        """
        prefix = check_prefix(prefix)
        root = Path(local_dir)
        written: builtins.list[Path] = []
        for info in self.list(prefix):
            # Keys listed from a bucket may come from other tools; a key like "a/../../x" must not
            # write outside local_dir.
            relative = check_key(relative_key(info.key, prefix))
            written.append(self.download(info.key, root.joinpath(*relative.split("/"))))
        if not written:
            raise ObjectNotFound(f"no objects under {prefix or 'the root'!r} in {self!r}", key=prefix)
        return written
