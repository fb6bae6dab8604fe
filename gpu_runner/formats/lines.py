"""Physical lines of a JSONL byte stream, read in bounded chunks.

Uploads and object-store bodies are arbitrary: a file may hold one 500 MB line without a newline. The
reader never holds more than one chunk plus one line of at most `max_line_bytes`; a longer line is
reported as `None` and skipped up to its newline without being kept. Any object with `read(n) -> bytes`
works (open files, `io.BytesIO`, Django uploads, boto3 bodies), so no `readline` implementation is
relied on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, Protocol

DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
UTF8_BOM = b"\xef\xbb\xbf"


class ReadableBytes(Protocol):
    """Anything with a binary `read`."""

    def read(self, size: int = -1, /) -> bytes: ...


class PhysicalLines:
    """Iterate the physical lines (split on `\\n`, without it) of a binary stream.

    Yields `bytes` for each line, or `None` for a line longer than `max_line_bytes` (its content is
    discarded as it is read). A final line without a newline is yielded; a trailing newline does not
    add an empty line. `bytes_read` counts every byte consumed so far.
    """

    def __init__(
        self,
        stream: BinaryIO | ReadableBytes,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        if max_line_bytes < 1 or chunk_bytes < 1:
            raise ValueError("max_line_bytes and chunk_bytes must be positive")
        self._stream = stream
        self.max_line_bytes = max_line_bytes
        self.chunk_bytes = chunk_bytes
        self.bytes_read = 0

    def __iter__(self) -> Iterator[bytes | None]:
        read = self._stream.read
        limit = self.max_line_bytes
        chunk_bytes = self.chunk_bytes
        # The start of a line that continues into the next chunk, kept as pieces so that a long
        # line is joined once instead of being copied on every chunk.
        pending: list[bytes] = []
        pending_len = 0
        skipping = False
        while True:
            chunk = read(chunk_bytes)
            if not chunk:
                break
            if type(chunk) is not bytes:
                if isinstance(chunk, str):
                    raise TypeError("expected a binary stream but read() returned str; open the file in 'rb' mode")
                chunk = bytes(chunk)
            self.bytes_read += len(chunk)
            start = 0
            if skipping or pending:
                newline = chunk.find(b"\n")
                if newline < 0:
                    if not skipping:
                        pending.append(chunk)
                        pending_len += len(chunk)
                        if pending_len > limit:
                            pending, pending_len, skipping = [], 0, True
                            yield None
                    continue
                if skipping:
                    skipping = False
                else:
                    pending.append(chunk[:newline])
                    line = b"".join(pending)
                    pending, pending_len = [], 0
                    yield line if len(line) <= limit else None
                start = newline + 1
            lines = (chunk[start:] if start else chunk).split(b"\n")
            tail = lines.pop()
            for line in lines:
                yield line if len(line) <= limit else None
            if tail:
                if len(tail) > limit:
                    skipping = True
                    yield None
                else:
                    pending, pending_len = [tail], len(tail)
        if pending:
            line = b"".join(pending)
            yield line if len(line) <= limit else None
