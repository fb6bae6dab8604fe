"""Fixtures for the data plane: a real S3 server on loopback and one object store per backend.

`store` is parametrised over every backend, so a test written once runs against a local directory
and against S3 over HTTP. `store_backend` adds what only a test needs: a look at what the backend
really holds (every file or key, pending multipart uploads), bypassing the store under test.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gpu_runner.storage import LocalObjectStore, ObjectStore, S3ObjectStore, open_store
from tests.s3server import TEST_CREDENTIALS, running_s3_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server running on 127.0.0.1 for the whole test session."""
    with running_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3_admin(s3_endpoint: str) -> Any:
    """A plain boto3 client on the test server, independent of the store under test."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=s3_endpoint, config=Config(s3={"addressing_style": "path"}), **TEST_CREDENTIALS
    )


@pytest.fixture
def s3_bucket(s3_admin: Any) -> str:
    """A fresh, empty bucket for one test."""
    bucket = f"tailor-test-{uuid.uuid4().hex[:16]}"
    s3_admin.create_bucket(Bucket=bucket)
    return bucket


@dataclass
class StoreBackend:
    """One backend under test, with ways to see what it really holds."""

    name: str
    store: ObjectStore
    local_dir: Path | None = None
    s3_admin: Any = None
    bucket: str | None = None

    def raw_names(self) -> list[str]:
        """Every file below the store's directory (hidden and temporary ones included) or every key in the bucket."""
        if self.local_dir is not None:
            if not self.local_dir.exists():
                return []
            return sorted(
                path.relative_to(self.local_dir).as_posix()
                for path in self.local_dir.rglob("*")
                if not path.is_dir()
            )
        paginator = self.s3_admin.get_paginator("list_objects_v2")
        return sorted(
            entry["Key"]
            for page in paginator.paginate(Bucket=self.bucket)
            for entry in page.get("Contents", [])
        )

    def pending_uploads(self) -> list[str]:
        """Multipart uploads started and neither completed nor aborted (always none for files)."""
        if self.local_dir is not None:
            return []
        response = self.s3_admin.list_multipart_uploads(Bucket=self.bucket)
        return [upload["Key"] for upload in response.get("Uploads", [])]

    @contextlib.contextmanager
    def count_requests(self) -> Iterator[Counter[str]]:
        """Count the S3 API operations the store sends inside the block (nothing for files)."""
        counts: Counter[str] = Counter()
        if not isinstance(self.store, S3ObjectStore):
            yield counts
            return

        def count(model: Any, **_: Any) -> None:
            counts[model.name] += 1

        events = self.store.client.meta.events
        events.register("before-call.s3", count)
        try:
            yield counts
        finally:
            events.unregister("before-call.s3", count)

    def recorded_sha256(self, key: str) -> str | None:
        """The digest stored with the object at upload (S3 metadata, or the file's extended attribute)."""
        if isinstance(self.store, LocalObjectStore):
            try:
                value = os.getxattr(self.store.root / key, "user.tailor.sha256")
            except (OSError, AttributeError):
                return None
            return value.decode().split(":")[0]
        assert isinstance(self.store, S3ObjectStore)
        head = self.s3_admin.head_object(Bucket=self.bucket, Key=f"{self.store.prefix}/{key}")
        return head.get("Metadata", {}).get("sha256")


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.integration)])
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    """An empty store rooted at a prefix ("root"), for each backend in turn."""
    if request.param == "file":
        local_dir = tmp_path / "objects"
        return StoreBackend("file", open_store((local_dir / "root").as_uri()), local_dir=local_dir)
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    store = open_store(f"s3://{bucket}/root", endpoint_url=endpoint, **TEST_CREDENTIALS)
    return StoreBackend("s3", store, s3_admin=request.getfixturevalue("s3_admin"), bucket=bucket)


@pytest.fixture
def store(store_backend: StoreBackend) -> ObjectStore:
    """An empty object store, once per backend."""
    return store_backend.store
