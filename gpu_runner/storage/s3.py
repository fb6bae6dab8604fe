"""Object store on S3 and S3-compatible services (MinIO, Cloudflare R2, Ceph RGW).

boto3 is imported only when an S3 store is opened, and clients are cached per configuration
(boto3 clients are thread-safe and expensive to build).

Uploads are hand-rolled rather than left to boto3's managed transfer: the digest must be computed
while the bytes stream through, an upload must stop at its size limit, and at most one part may be
held in memory. Small objects (below one part) go up in a single PutObject; larger ones as a
multipart upload, aborted on any error. S3 takes object metadata only when an upload starts,
before the digest of a streamed object is known, so after a multipart upload the object is copied
onto itself (server-side) to record its SHA-256 in its metadata.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from gpu_runner.storage.base import (
    ObjectInfo,
    ObjectStore,
    ReadableStream,
    StoredObject,
    UploadMeter,
    check_expiry,
    sha256_of_stream,
)
from gpu_runner.storage.errors import ObjectNotFound, StorageError
from gpu_runner.storage.keys import check_key, check_prefix, join_key

if TYPE_CHECKING:
    from botocore.client import BaseClient

MiB = 1024 * 1024
GiB = 1024 * MiB

DEFAULT_PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's lower bound for every part but the last
MAX_PARTS = 10_000
# Parts grow by one base size every 1,000 parts, so an upload of unknown length can reach
# 55,000 base parts (440 GiB at 8 MiB) within S3's 10,000-part limit.
PARTS_PER_SIZE_STEP = 1_000
MAX_SINGLE_COPY_BYTES = 5 * GiB  # larger objects are copied part by part
MAX_KEY_BYTES = 1024

SHA256_METADATA = "sha256"  # sent as the x-amz-meta-sha256 header
_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}

logger = logging.getLogger(__name__)

_clients: dict[Hashable, BaseClient] = {}
_clients_lock = threading.Lock()


def s3_client(endpoint_url: str | None = None, **client_options: Any) -> BaseClient:
    """A cached boto3 S3 client configured from arguments, falling back to the environment.

    Environment: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (MinIO, R2, Ceph), AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION or AWS_DEFAULT_REGION (else us-east-1);
    without keys, boto3's usual chain (profiles, instance roles) applies. With an endpoint,
    requests use path-style addressing, which S3-compatible servers expect, and send checksums only
    where S3 requires them, because several of those servers reject the checksum trailers that
    botocore adds by default since 1.36.
    """
    endpoint = (
        endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    )
    options: dict[str, Any] = {
        "region_name": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID") or None,
        "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
        "aws_session_token": os.environ.get("AWS_SESSION_TOKEN") or None,
    }
    options.update(client_options)
    cache_key: Hashable | None = (endpoint, tuple(sorted(options.items(), key=lambda item: item[0])))
    try:
        hash(cache_key)
    except TypeError:  # an unhashable option (e.g. a dict): build a client just for this call
        cache_key = None
    with _clients_lock:
        if cache_key is not None and cache_key in _clients:
            return _clients[cache_key]
        client = _build_client(endpoint, options)
        if cache_key is not None:
            _clients[cache_key] = client
        return client


def _build_client(endpoint: str | None, options: dict[str, Any]) -> BaseClient:
    import boto3
    from botocore.config import Config

    defaults: dict[str, Any] = {
        "signature_version": "s3v4",
        "retries": {"mode": "standard", "max_attempts": 5},
    }
    if endpoint:
        defaults["s3"] = {"addressing_style": "path"}
        defaults["request_checksum_calculation"] = "when_required"
        defaults["response_checksum_validation"] = "when_required"
    config = Config(**defaults)
    user_config = options.pop("config", None)
    if user_config is not None:
        config = config.merge(user_config)
    # A session per client: boto3's default session is shared state and not thread-safe to build.
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config, **options)


def _content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the exact UTF-8 name (RFC 6266)."""
    fallback = (
        filename.encode("ascii", "replace").decode().replace('"', "_").replace("\\", "_").replace("?", "_")
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"


class S3ObjectStore(ObjectStore):
    """Objects under `s3://<bucket>/<prefix>/`."""

    def __init__(
        self, bucket: str, prefix: str = "", *, client: BaseClient, part_size: int = DEFAULT_PART_SIZE
    ) -> None:
        if not bucket:
            raise ValueError("an S3 store needs a bucket name")
        if part_size < MIN_PART_SIZE:
            raise ValueError(
                f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum), got {part_size}"
            )
        self.bucket = bucket
        self.prefix = check_prefix(prefix)
        self.client = client
        self.part_size = part_size

    def __repr__(self) -> str:
        return f"S3ObjectStore({self._uri_of(self.prefix)!r})"

    def _uri_of(self, full_key: str) -> str:
        return f"s3://{self.bucket}/{full_key}"

    def _full_key(self, key: str) -> str:
        full_key = join_key(self.prefix, check_key(key))
        if len(full_key.encode("utf-8")) > MAX_KEY_BYTES:
            raise StorageError(
                f"key {key!r} is longer than S3's limit of {MAX_KEY_BYTES} bytes (with the prefix)"
            )
        return full_key

    @contextlib.contextmanager
    def _translated_errors(self, operation: str, key: str) -> Iterator[None]:
        """Turn botocore's errors into the store's: `ObjectNotFound` or `StorageError` naming the object."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as error:
            details = error.response.get("Error", {})
            code = str(details.get("Code", ""))
            if code in _NOT_FOUND_CODES:
                raise ObjectNotFound(f"no object {key!r} in {self!r}", key=key) from error
            if code == "NoSuchBucket":
                raise StorageError(f"bucket {self.bucket!r} does not exist ({operation} {key!r})") from error
            raise StorageError(
                f"{operation} {key!r} in {self!r} failed: {code or 'error'}: {details.get('Message', error)}"
            ) from error
        except BotoCoreError as error:
            raise StorageError(f"{operation} {key!r} in {self!r} failed: {error}") from error

    def child(self, prefix: str) -> S3ObjectStore:
        """A view rooted at `prefix` below this store's prefix, sharing the client."""
        prefix = check_key(check_prefix(prefix), what="prefix")
        return S3ObjectStore(
            self.bucket, join_key(self.prefix, prefix), client=self.client, part_size=self.part_size
        )

    def _part_size(self, part_number: int) -> int:
        return self.part_size * (1 + (part_number - 1) // PARTS_PER_SIZE_STEP)

    def put(
        self,
        key: str,
        stream: ReadableStream,
        *,
        max_bytes: int | None = None,
        content_type: str | None = None,
    ) -> StoredObject:
        """Upload in one request below one part's size, else as a multipart upload (aborted on error)."""
        full_key = self._full_key(key)
        meter = UploadMeter(stream, key=key, max_bytes=max_bytes)
        extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
        first_part = meter.read_part(self._part_size(1))
        if len(first_part) < self._part_size(1):
            with self._translated_errors("PutObject", key):
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=full_key,
                    Body=first_part,
                    Metadata={SHA256_METADATA: meter.hexdigest()},
                    **extra,
                )
            return StoredObject(key=key, size=meter.size, sha256=meter.hexdigest())

        with self._translated_errors("CreateMultipartUpload", key):
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=full_key, **extra)[
                "UploadId"
            ]
        # Handed over in a list so this frame drops its reference: one part at most is held.
        pending = [first_part]
        del first_part
        try:
            etag = self._upload_parts(key, full_key, upload_id, meter, pending)
        except BaseException:
            # Abandoned parts are billed storage until aborted; an abort that fails too must not hide
            # the original error.
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
            raise
        self._record_sha256(full_key, etag, meter.hexdigest(), extra)
        return StoredObject(key=key, size=meter.size, sha256=meter.hexdigest())

    def _upload_parts(
        self, key: str, full_key: str, upload_id: str, meter: UploadMeter, pending: list[bytearray]
    ) -> str:
        parts: list[dict[str, Any]] = []
        part, number = pending.pop(), 1
        while part:
            if number > MAX_PARTS:
                raise StorageError(f"object {key!r} needs more than S3's {MAX_PARTS} parts")
            with self._translated_errors("UploadPart", key):
                response = self.client.upload_part(
                    Bucket=self.bucket, Key=full_key, UploadId=upload_id, PartNumber=number, Body=part
                )
            parts.append({"ETag": response["ETag"], "PartNumber": number})
            number += 1
            part = bytearray()  # released before the next part is read
            part = meter.read_part(self._part_size(number))
        with self._translated_errors("CompleteMultipartUpload", key):
            response = self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        return str(response["ETag"])

    def _record_sha256(self, full_key: str, etag: str, sha256: str, extra: dict[str, Any]) -> None:
        """Copy the object onto itself with its digest in the metadata.

        The copy is conditional on the ETag just written: if another writer replaced the object in
        between, their object is left as it is (last writer wins). The object is already stored
        whole when this runs, so a failed copy is logged, not raised: `sha256()` then reads the
        object to compute the digest.
        """
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.copy(
                CopySource={"Bucket": self.bucket, "Key": full_key},
                Bucket=self.bucket,
                Key=full_key,
                ExtraArgs={
                    "CopySourceIfMatch": etag,
                    "MetadataDirective": "REPLACE",
                    "Metadata": {SHA256_METADATA: sha256},
                    **extra,
                },
                Config=TransferConfig(
                    multipart_threshold=MAX_SINGLE_COPY_BYTES, multipart_chunksize=512 * MiB
                ),
            )
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code")) not in {"PreconditionFailed", "412"}:
                logger.warning("could not record the SHA-256 of %s: %s", self._uri_of(full_key), error)
        except BotoCoreError as error:
            logger.warning("could not record the SHA-256 of %s: %s", self._uri_of(full_key), error)

    def open(self, key: str) -> BinaryIO:
        """A streaming reader over the GetObject body (a context manager); raises `ObjectNotFound`."""
        full_key = self._full_key(key)
        with self._translated_errors("GetObject", key):
            response = self.client.get_object(Bucket=self.bucket, Key=full_key)
        return cast(BinaryIO, response["Body"])

    def _head(self, key: str) -> dict[str, Any]:
        full_key = self._full_key(key)
        with self._translated_errors("HeadObject", key):
            return cast(dict[str, Any], self.client.head_object(Bucket=self.bucket, Key=full_key))

    def exists(self, key: str) -> bool:
        """HeadObject succeeds."""
        try:
            self._head(key)
        except ObjectNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        """ContentLength from HeadObject."""
        return int(self._head(key)["ContentLength"])

    def sha256(self, key: str) -> str:
        """The digest in the object's metadata; objects written by other tools are read and hashed."""
        recorded = str(self._head(key).get("Metadata", {}).get(SHA256_METADATA, "")).lower()
        if _HEX_SHA256.match(recorded):
            return recorded
        with self.open(key) as reader:
            return sha256_of_stream(reader)

    def _list_prefix(self, prefix: str) -> str:
        folder = join_key(self.prefix, check_prefix(prefix))
        return f"{folder}/" if folder else ""

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """ListObjectsV2 under the folder, page by page (S3 returns keys in order)."""
        list_prefix = self._list_prefix(prefix)
        root_length = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        with self._translated_errors("ListObjectsV2", prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=list_prefix):
                for entry in page.get("Contents", []):
                    if entry["Key"].endswith("/"):  # "folder" markers made by consoles are not objects
                        continue
                    yield ObjectInfo(
                        key=entry["Key"][root_length:],
                        size=int(entry["Size"]),
                        last_modified=entry["LastModified"].astimezone(dt.UTC),
                    )

    def delete(self, key: str) -> None:
        """DeleteObject (S3 reports success for missing keys too)."""
        full_key = self._full_key(key)
        with self._translated_errors("DeleteObject", key):
            self.client.delete_object(Bucket=self.bucket, Key=full_key)

    def delete_prefix(self, prefix: str) -> int:
        """DeleteObjects in batches of 1,000 (the API's limit) over the folder's listing."""
        if not check_prefix(prefix):
            raise ValueError("delete_prefix needs a non-empty prefix; refusing to delete the whole store")
        list_prefix = self._list_prefix(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        removed = 0
        with self._translated_errors("DeleteObjects", prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=list_prefix):
                batch = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
                if not batch:
                    continue
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
                if errors := response.get("Errors"):
                    first = errors[0]
                    raise StorageError(
                        f"could not delete {len(errors)} objects under {prefix!r} in {self!r}, "
                        f"e.g. {first.get('Key')!r}: {first.get('Code')}: {first.get('Message')}"
                    )
                removed += len(batch)
        return removed

    def presign_get(self, key: str, *, expires_in: int = 900, filename: str | None = None) -> str:
        """A presigned GetObject URL; with `filename`, browsers save the download under that name."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full_key(key)}
        if filename:
            params["ResponseContentDisposition"] = _content_disposition(filename)
        return self._presign("get_object", key, params, expires_in)

    def presign_put(self, key: str, *, expires_in: int = 900) -> str:
        """A presigned PutObject URL. Objects uploaded through it carry no recorded digest."""
        return self._presign(
            "put_object", key, {"Bucket": self.bucket, "Key": self._full_key(key)}, expires_in
        )

    def _presign(self, method: str, key: str, params: dict[str, Any], expires_in: int) -> str:
        check_expiry(expires_in)
        with self._translated_errors("presign", key):
            return str(self.client.generate_presigned_url(method, Params=params, ExpiresIn=expires_in))

    def uri(self, key: str) -> str:
        """`s3://bucket/prefix/key`."""
        return self._uri_of(self._full_key(key))
