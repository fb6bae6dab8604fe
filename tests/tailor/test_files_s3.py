"""The Files API and the control worker on an S3 object store, over HTTP to a real S3-protocol server
(moto on loopback): multipart uploads stream through, oversized ones leave no object and no pending
multipart upload, and a worker process configured only by environment reads the same bucket."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.test import override_settings
from tailor.core.objectstore import object_store
from tailor.files.models import File, new_file_id
from tailor.files.selectors import file_storage_key
from tailor.files.services import file_create, file_validate

from tests.s3server import TEST_CREDENTIALS, running_s3_server
from tests.tailor.factories import TeamFactory, bearer_client, issue_key
from tests.tailor.processes import delete_queue, platform_env, start_control_worker, wait_for

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
PREFIX = "tailor-prod"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A moto S3 server, a bucket, and the AWS_* environment a deployment would set."""
    import boto3
    from botocore.config import Config

    with running_s3_server() as endpoint, pytest.MonkeyPatch.context() as mp:
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": TEST_CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": TEST_CREDENTIALS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": TEST_CREDENTIALS["region_name"],
        }
        for key, value in env.items():
            mp.setenv(key, value)
        admin = boto3.client(
            "s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}), **TEST_CREDENTIALS
        )
        bucket = f"tailor-{uuid.uuid4().hex[:12]}"
        admin.create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/{PREFIX}"
        with override_settings(TAILOR_STORAGE_URL=url):
            yield {"url": url, "bucket": bucket, "admin": admin, "env": env}


def bucket_keys(s3: dict[str, Any]) -> set[str]:
    listing = s3["admin"].list_objects_v2(Bucket=s3["bucket"])
    return {item["Key"] for item in listing.get("Contents", [])}


def pending_multipart_uploads(s3: dict[str, Any]) -> list[dict[str, Any]]:
    return s3["admin"].list_multipart_uploads(Bucket=s3["bucket"]).get("Uploads", [])


def chat_jsonl(target_bytes: int) -> bytes:
    lines, size, i = [], 0, 0
    while size < target_bytes:
        line = (
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"question {i} " + "lorem " * 40},
                        {"role": "assistant", "content": f"answer {i}"},
                    ]
                }
            )
            + "\n"
        )
        lines.append(line)
        size += len(line)
        i += 1
    return "".join(lines).encode()


@pytest.mark.django_db
def test_multipart_upload_download_validate_delete_on_s3(
    s3: dict[str, Any], django_capture_on_commit_callbacks
) -> None:
    team = TeamFactory()
    client = bearer_client(issue_key(team).secret)
    data = chat_jsonl(20 * MiB)  # several S3 parts
    response = client.post(
        "/v1/files",
        {"file": SimpleUploadedFile("big.jsonl", data), "purpose": "fine-tune"},
        format="multipart",
    )
    assert response.status_code == 200, response.content
    file = File.objects.get(public_id=response.json()["id"])
    assert (file.bytes, file.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert f"{PREFIX}/{file.storage_key}" in bucket_keys(s3)
    download = client.get(f"/v1/files/{file.public_id}/content")
    assert hashlib.sha256(b"".join(download.streaming_content)).hexdigest() == file.sha256
    assert file_validate(file_id=file.public_id).status == "processed"
    with django_capture_on_commit_callbacks(execute=True):
        assert client.delete(f"/v1/files/{file.public_id}").status_code == 200
    assert f"{PREFIX}/{file.storage_key}" not in bucket_keys(s3)


@pytest.mark.django_db
def test_oversized_upload_leaves_no_object_and_no_pending_multipart(s3: dict[str, Any], settings) -> None:
    settings.TAILOR_MAX_UPLOAD_BYTES = 12 * MiB
    client = bearer_client(issue_key(TeamFactory()).secret)
    before = bucket_keys(s3)
    response = client.post(
        "/v1/files",
        {"file": SimpleUploadedFile("big.jsonl", b"x" * (13 * MiB)), "purpose": "fine-tune"},
        format="multipart",
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert bucket_keys(s3) == before
    assert pending_multipart_uploads(s3) == []


@pytest.mark.django_db(transaction=True)
def test_control_worker_validates_from_s3(s3: dict[str, Any], tmp_path: Path, monkeypatch) -> None:
    # A queue of its own: the session's control worker reads the local store and must not take this task.
    queue = f"control-s3-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TAILOR_CONTROL_QUEUE", queue)
    worker = start_control_worker(platform_env(tmp_path, s3["url"], **s3["env"]), tmp_path, name="s3-worker")
    try:
        team = TeamFactory()
        file_id = new_file_id()
        stored = object_store().put(file_storage_key(team=team, file_id=file_id), io.BytesIO(chat_jsonl(MiB)))
        with transaction.atomic():
            file_create(team=team, file_id=file_id, purpose="fine-tune", filename="t.jsonl", stored=stored)

        def settled() -> File | None:
            row = File.objects.get(public_id=file_id)
            return row if row.status != "uploaded" else None

        done = wait_for(settled, timeout=60, message="validation by the S3-configured worker")
        assert done.status == "processed", (done.status_details, worker.log()[-3000:])
    finally:
        worker.stop()
        delete_queue(queue)
