"""Object store: one small interface over a local directory (`file://`) and S3 (`s3://`).

Datasets, adapters, checkpoints and exports live here. The control plane and GPU workers open
the same store from one URL (`TAILOR_STORAGE_URL`) and hand each team a view of its own prefix:

    store = open_store("s3://tailor/prod", endpoint_url="http://minio:9000")
    team = store.child("teams/42")
    team.put("files/file-abc.jsonl", upload, max_bytes=512 * 1024 * 1024)

Modelled on mlflow's artifact repositories: the backend is chosen by URL scheme, boto3 is
imported only for S3 stores, and every key is checked so that no view reaches outside its root.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

from gpu_runner.storage.base import ObjectInfo, ObjectStore, ReadableStream, StoredObject
from gpu_runner.storage.errors import InvalidKey, ObjectNotFound, ObjectTooLarge, StorageError
from gpu_runner.storage.keys import check_key, check_prefix
from gpu_runner.storage.local import LocalObjectStore
from gpu_runner.storage.s3 import S3ObjectStore, s3_client

__all__ = [
    "InvalidKey",
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectTooLarge",
    "ReadableStream",
    "S3ObjectStore",
    "StorageError",
    "StoredObject",
    "check_key",
    "open_store",
]


def open_store(url: str, *, endpoint_url: str | None = None, **client_options: Any) -> ObjectStore:
    """Open the object store at `url`.

    - `file:///abs/dir` or a plain path: a `LocalObjectStore` in that directory.
    - `s3://bucket/prefix`: an `S3ObjectStore`. `endpoint_url` (default: AWS_ENDPOINT_URL) points
      at MinIO, R2 or Ceph; `client_options` go to `boto3.client("s3", …)`
      (e.g. `aws_access_key_id`, `region_name`, `config`). See `s3_client` for the environment
      variables read.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"storage URL {url!r} names no bucket; expected s3://bucket/prefix")
        if parsed.query or parsed.fragment:
            raise ValueError(f"storage URL {url!r} has a query or fragment; expected s3://bucket/prefix")
        prefix = check_prefix(urllib.parse.unquote(parsed.path).lstrip("/"))
        client = s3_client(endpoint_url, **client_options)
        return S3ObjectStore(parsed.netloc, prefix, client=client)
    if endpoint_url is not None or client_options:
        raise ValueError(f"endpoint_url and client options apply to s3:// stores only, not {url!r}")
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"storage URL {url!r} names host {parsed.netloc!r}; file URLs must be local")
        path = urllib.parse.unquote(parsed.path)
        if not path.startswith("/"):
            raise ValueError(f"storage URL {url!r} must hold an absolute path (file:///abs/dir)")
        return LocalObjectStore(Path(path))
    if parsed.scheme == "":  # a plain path
        if not url:
            raise ValueError("storage URL is empty")
        return LocalObjectStore(Path(url))
    raise ValueError(
        f"unsupported storage URL scheme {parsed.scheme!r} in {url!r}; expected file:// or s3://"
    )
