"""The streaming upload handler: bytes flow to the object store chunk by chunk, never whole in memory,
and an aborted or oversized upload leaves nothing behind."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Iterator

import pytest
from django.core.files.uploadhandler import SkipFile, StopFutureHandlers, StopUpload
from django.test import RequestFactory
from tailor.core.objectstore import object_store
from tailor.files.uploads import CHUNK_SIZE, ObjectStoreUploadHandler, StoredUpload

MiB = 1024 * 1024


def chunks(total: int, size: int = CHUNK_SIZE) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield (bytes([sent // size % 251]) * n)
        sent += n


def start(key: str, max_bytes: int) -> ObjectStoreUploadHandler:
    handler = ObjectStoreUploadHandler(
        RequestFactory().post("/v1/files"), store=object_store(), key=key, max_bytes=max_bytes
    )
    with pytest.raises(StopFutureHandlers):
        handler.new_file("file", "big.jsonl", "application/jsonl", None)
    return handler


def feed(handler: ObjectStoreUploadHandler, total: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    for chunk in chunks(total):
        digest.update(chunk)
        handler.receive_data_chunk(chunk, offset)
        offset += len(chunk)
    return digest.hexdigest()


def test_upload_streams_without_holding_the_file_in_memory() -> None:
    total = 64 * MiB
    handler = start("tests/uploads/streamed.bin", max_bytes=512 * MiB)
    tracemalloc.start()
    try:
        expected = feed(handler, total)
        upload = handler.file_complete(total)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(upload, StoredUpload)
    assert (upload.stored.size, upload.stored.sha256) == (total, expected)
    assert upload.name == "big.jsonl" and upload.size == total
    # A few chunks in flight, not the 64 MiB file.
    assert peak < 8 * MiB, (
        f"peak Python allocation {peak / MiB:.1f} MiB while streaming {total / MiB:.0f} MiB"
    )
    assert object_store().exists("tests/uploads/streamed.bin")


def test_exceeding_the_limit_stops_the_upload_and_stores_nothing() -> None:
    handler = start("tests/uploads/too-big.bin", max_bytes=3 * CHUNK_SIZE)
    with pytest.raises(StopUpload):
        feed(handler, 10 * CHUNK_SIZE)
    assert handler.too_large and handler.stored is None
    assert not object_store().exists("tests/uploads/too-big.bin")


def test_discarding_an_upload_removes_everything() -> None:
    handler = start("tests/uploads/aborted.bin", max_bytes=512 * MiB)
    feed(handler, 2 * MiB)
    handler.discard()
    assert not object_store().exists("tests/uploads/aborted.bin")
    completed = start("tests/uploads/completed-then-discarded.bin", max_bytes=512 * MiB)
    feed(completed, MiB)
    completed.file_complete(MiB)
    completed.discard()
    assert not object_store().exists("tests/uploads/completed-then-discarded.bin")


def test_only_the_first_part_named_file_is_stored() -> None:
    handler = start("tests/uploads/first.bin", max_bytes=MiB)
    feed(handler, 1000)
    with pytest.raises(SkipFile):
        handler.new_file("file", "second.jsonl", "application/jsonl", None)
    assert handler.file_complete(1000).name == "big.jsonl"
    other_field = ObjectStoreUploadHandler(
        RequestFactory().post("/"), store=object_store(), key="tests/uploads/x", max_bytes=MiB
    )
    with pytest.raises(SkipFile):
        other_field.new_file("attachment", "a.txt", "text/plain", None)
    handler.discard()
