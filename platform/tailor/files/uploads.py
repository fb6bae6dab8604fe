"""Streaming uploads: multipart file bytes go from the socket to the object store as they arrive.

Django's default upload handlers keep a file in memory or spool it to a temporary file. This handler
instead feeds each chunk through a small bounded pipe to a thread running `store.put`, so an upload
never sits whole in memory or on local disk, whatever its size; the store hashes and counts the bytes
on the way. The size limit is enforced per chunk, and an upload over it leaves nothing stored.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, SkipFile, StopFutureHandlers, StopUpload
from django.http import HttpRequest

from gpu_runner.storage import ObjectNotFound, ObjectStore, StoredObject

logger = logging.getLogger(__name__)

CHUNK_SIZE = 256 * 1024
# Chunks in flight between the request thread and the store writer: a bounded queue means bounded memory.
PIPE_DEPTH = 4
# Multipart framing and the small form fields around the file, allowed above the file size limit before
# a request is refused on its Content-Length alone.
MULTIPART_OVERHEAD = 1024 * 1024


class UploadAborted(Exception):
    """The request side gave up on an upload (client went away, size limit, parse error)."""


class StoredUpload(UploadedFile):
    """What `request.FILES["file"]` holds: the upload's name and type, and where its bytes now live."""

    def __init__(
        self,
        *,
        stored: StoredObject,
        name: str,
        content_type: str,
        charset: str | None,
        content_type_extra: dict[str, Any] | None,
    ) -> None:
        super().__init__(
            file=None,
            name=name,
            content_type=content_type,
            size=stored.size,
            charset=charset,
            content_type_extra=content_type_extra,
        )
        self.stored = stored

    def open(self, mode: str | None = None) -> StoredUpload:  # pragma: no cover - the bytes are in the store
        raise io.UnsupportedOperation("a streamed upload is read back from the object store")

    def close(self) -> None:
        """Nothing local to close."""


class _BytePipe(io.RawIOBase):
    """A bounded blocking pipe of byte chunks: the request thread feeds it, `store.put` reads it."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=depth)
        self._pending = memoryview(b"")
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            if self._eof:
                return 0
            item = self._queue.get()
            if item is None:
                self._eof = True
                return 0
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            self._pending = memoryview(item)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def put(self, item: bytes | BaseException | None, writer: threading.Thread) -> bool:
        """Queue an item, waiting for room while the writer lives; False if the writer has stopped."""
        while True:
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                if not writer.is_alive():
                    return False


class ObjectStoreUploadHandler(FileUploadHandler):
    """Upload handler that streams the multipart field `upload_field` into `store` under `key`.

    After parsing, `stored` is set (and `request.FILES[upload_field]` is a `StoredUpload`), or
    `too_large` is True and nothing is stored. Call `discard()` whenever the request fails afterwards.
    """

    chunk_size = CHUNK_SIZE

    def __init__(
        self,
        request: HttpRequest,
        *,
        store: ObjectStore,
        key: str,
        max_bytes: int,
        upload_field: str = "file",
    ) -> None:
        super().__init__(request)
        self.store = store
        self.key = key
        self.max_bytes = max_bytes
        self.upload_field = upload_field
        self.stored: StoredObject | None = None
        self.too_large = False
        self._pipe: _BytePipe | None = None
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None

    # Django's upload handler protocol -------------------------------------------------------------

    def new_file(
        self,
        field_name: str,
        file_name: str,
        content_type: str,
        content_length: int | None,
        charset: str | None = None,
        content_type_extra: dict[str, Any] | None = None,
    ) -> None:
        if field_name != self.upload_field or self._writer is not None:
            # Only one file per request, in the expected field; anything else is skipped unread.
            raise SkipFile()
        super().new_file(field_name, file_name, content_type, content_length, charset, content_type_extra)
        self._pipe = _BytePipe(PIPE_DEPTH)
        reader = io.BufferedReader(self._pipe, buffer_size=CHUNK_SIZE)
        self._writer = threading.Thread(
            target=self._write, args=(reader,), name=f"upload-{self.key}", daemon=True
        )
        self._writer.start()
        raise StopFutureHandlers()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        if self._writer is None:
            return None
        if start + len(raw_data) > self.max_bytes:
            self.too_large = True
            self._stop_writer(UploadAborted(f"upload exceeds {self.max_bytes} bytes"))
            # Read (and drop) the rest of the request so the client receives the 413 instead of a reset.
            raise StopUpload(connection_reset=False)
        assert self._pipe is not None
        if not self._pipe.put(raw_data, self._writer):
            self._raise_writer_error()
        return None

    def file_complete(self, file_size: int) -> StoredUpload | None:
        if self._writer is None or self._pipe is None:
            return None
        if not self._pipe.put(None, self._writer):
            self._raise_writer_error()
        self._writer.join()
        if self._writer_error is not None:
            self._raise_writer_error()
        assert self.stored is not None
        return StoredUpload(
            stored=self.stored,
            name=self.file_name or "upload",
            content_type=self.content_type or "",
            charset=self.charset,
            content_type_extra=self.content_type_extra,
        )

    def upload_interrupted(self) -> None:
        # The request body ended before the file part did.
        self.discard()

    # Cleanup ---------------------------------------------------------------------------------------

    def discard(self) -> None:
        """Stop any write in progress and remove whatever reached the store."""
        self._stop_writer(UploadAborted("upload discarded"))
        if self._writer is not None:
            try:
                self.store.delete(self.key)
            except ObjectNotFound:
                pass
            except Exception:  # noqa: BLE001 - cleanup must not hide the original error
                logger.exception("could not remove discarded upload %s", self.key)
        self.stored = None

    # Internals -------------------------------------------------------------------------------------

    def _write(self, reader: io.BufferedReader) -> None:
        try:
            self.stored = self.store.put(
                self.key, reader, max_bytes=self.max_bytes, content_type=self.content_type or None
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the request thread
            self._writer_error = exc

    def _stop_writer(self, reason: BaseException) -> None:
        if self._writer is None or self._pipe is None or not self._writer.is_alive():
            return
        self._pipe.put(reason, self._writer)
        self._writer.join()

    def _raise_writer_error(self) -> None:
        if self._writer is not None:
            self._writer.join()
        error = self._writer_error or UploadAborted("the object store writer stopped")
        raise error
