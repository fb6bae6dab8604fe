"""The Files API through DRF's test client: upload, list with cursor paging, retrieve, download, delete,
team isolation and upload limits. (tests/e2e drives the same endpoints with the openai SDK.)"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient
from tailor.core.objectstore import object_store
from tailor.files.models import File

pytestmark = pytest.mark.django_db


def chat_jsonl(n: int = 12, tag: str = "") -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"question {tag}{i}"},
                {"role": "assistant", "content": f"answer {tag}{i}"},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def upload(client: APIClient, data: bytes, *, name: str = "train.jsonl", purpose: str = "fine-tune", **extra):
    form = {
        "file": SimpleUploadedFile(name, data, content_type="application/jsonl"),
        "purpose": purpose,
        **extra,
    }
    return client.post("/v1/files", form, format="multipart")


@pytest.fixture
def stored_paths(storage_url: str):
    """Every file currently in the local object store (temporary files included)."""
    root = Path(unquote(urlsplit(storage_url).path))
    return lambda: {p for p in root.rglob("*") if p.is_file()}


def test_upload_returns_openai_file_object_and_stores_the_bytes(api_client: APIClient, team) -> None:
    data = chat_jsonl()
    response = upload(api_client, data)
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {
        "id",
        "object",
        "bytes",
        "created_at",
        "expires_at",
        "filename",
        "purpose",
        "status",
        "status_details",
    }
    assert body["id"].startswith("file-") and len(body["id"]) == 29
    assert body["object"] == "file"
    assert body["bytes"] == len(data)
    assert isinstance(body["created_at"], int) and abs(body["created_at"] - timezone.now().timestamp()) < 60
    assert (body["filename"], body["purpose"], body["status"]) == ("train.jsonl", "fine-tune", "uploaded")
    row = File.objects.get(public_id=body["id"])
    assert row.team == team
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    with object_store().open(row.storage_key) as stream:
        assert stream.read() == data


@pytest.mark.parametrize("purpose", ["assistants", "batch", "vision", "user_data", "evals"])
def test_every_sdk_purpose_is_accepted(api_client: APIClient, purpose: str) -> None:
    response = upload(api_client, b"anything", name="f.bin", purpose=purpose)
    assert response.status_code == 200, response.content
    # Only training data is validated; other files are ready as stored.
    assert response.json()["status"] == "processed"


def test_upload_queues_validation_after_commit(
    api_client: APIClient, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        response = upload(api_client, chat_jsonl())
    assert response.status_code == 200
    assert len(callbacks) == 1
    assert callbacks[0].args == (response.json()["id"],)


def test_expires_after_sets_expires_at(api_client: APIClient) -> None:
    response = upload(
        api_client, chat_jsonl(), **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["expires_at"] - body["created_at"] in (3599, 3600, 3601)


def test_expires_after_out_of_range_names_the_nested_parameter(api_client: APIClient, stored_paths) -> None:
    before = stored_paths()
    response = upload(
        api_client, chat_jsonl(), **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "expires_after[seconds]"
    assert stored_paths() == before


def test_invalid_purpose_is_refused_and_leaves_nothing_stored(api_client: APIClient, stored_paths) -> None:
    before = stored_paths()
    response = upload(api_client, chat_jsonl(), purpose="fine_tune")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "purpose" and error["code"] == "invalid_choice"
    assert stored_paths() == before
    assert not File.objects.exists()


def test_missing_file_part_is_a_400(api_client: APIClient) -> None:
    response = api_client.post("/v1/files", {"purpose": "fine-tune"}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"
    assert response.json()["error"]["code"] == "missing_required_parameter"


def test_upload_over_the_limit_is_413_and_leaves_nothing(
    api_client: APIClient, settings, stored_paths
) -> None:
    settings.TAILOR_MAX_UPLOAD_BYTES = 100_000
    before = stored_paths()
    response = upload(api_client, b"x" * 100_001)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "file_too_large" and error["param"] == "file"
    assert "100,000 bytes" in error["message"]
    assert stored_paths() == before
    assert not File.objects.exists()
    # Exactly at the limit is fine.
    assert upload(api_client, b"x" * 100_000).status_code == 200


def test_oversized_content_length_is_refused_before_reading(api_client: APIClient, settings) -> None:
    settings.TAILOR_MAX_UPLOAD_BYTES = 1000
    response = api_client.generic(
        "POST",
        "/v1/files",
        b"",
        content_type="multipart/form-data; boundary=b",
        CONTENT_LENGTH=str(50 * 1024 * 1024),
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"


def test_list_pages_by_last_id_in_both_orders(api_client: APIClient) -> None:
    ids = [upload(api_client, chat_jsonl(tag=str(i))).json()["id"] for i in range(5)]

    def walk(order: str) -> list[str]:
        seen, after = [], None
        while True:
            params = {"limit": 2, "order": order, **({"after": after} if after else {})}
            page = api_client.get("/v1/files", params).json()
            assert page["object"] == "list" and len(page["data"]) <= 2
            seen += [item["id"] for item in page["data"]]
            if page["data"]:
                assert (page["first_id"], page["last_id"]) == (page["data"][0]["id"], page["data"][-1]["id"])
            if not page["has_more"]:
                return seen
            after = page["last_id"]

    assert walk("asc") == ids
    assert walk("desc") == ids[::-1]
    # Default: newest first, everything on one page.
    default = api_client.get("/v1/files").json()
    assert [item["id"] for item in default["data"]] == ids[::-1] and default["has_more"] is False


def test_list_filters_by_purpose_and_hides_deleted_and_expired(api_client: APIClient) -> None:
    tune = upload(api_client, chat_jsonl()).json()["id"]
    batch = upload(api_client, b"{}", purpose="batch").json()["id"]
    gone = upload(api_client, chat_jsonl()).json()["id"]
    expired = upload(api_client, chat_jsonl()).json()["id"]
    api_client.delete(f"/v1/files/{gone}")
    File.objects.filter(public_id=expired).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert [f["id"] for f in api_client.get("/v1/files", {"purpose": "batch"}).json()["data"]] == [batch]
    assert {f["id"] for f in api_client.get("/v1/files").json()["data"]} == {tune, batch}
    assert api_client.get(f"/v1/files/{expired}").status_code == 404
    # A deleted file still works as a cursor: paging continues past it.
    after_gone = api_client.get("/v1/files", {"after": gone, "order": "asc"}).json()["data"]
    assert [f["id"] for f in after_gone] == []
    assert [f["id"] for f in api_client.get("/v1/files", {"after": tune, "order": "asc"}).json()["data"]] == [
        batch
    ]


def test_unknown_cursor_is_a_400_naming_after(api_client: APIClient) -> None:
    response = api_client.get("/v1/files", {"after": "file-unknown"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "after"


def test_retrieve_and_download(api_client: APIClient) -> None:
    data = chat_jsonl(30)
    file_id = upload(api_client, data, name="my data.jsonl").json()["id"]
    assert api_client.get(f"/v1/files/{file_id}").json()["filename"] == "my data.jsonl"
    response = api_client.get(f"/v1/files/{file_id}/content", HTTP_ACCEPT="application/binary")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == data
    assert response["Content-Length"] == str(len(data))
    assert response["Content-Disposition"].startswith("attachment;")


def test_delete_removes_bytes_and_hides_the_file(
    api_client: APIClient, django_capture_on_commit_callbacks
) -> None:
    file_id = upload(api_client, chat_jsonl()).json()["id"]
    key = File.objects.get(public_id=file_id).storage_key
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.delete(f"/v1/files/{file_id}")
    assert response.status_code == 200
    assert response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert not object_store().exists(key)
    assert File.objects.get(public_id=file_id).status == "deleted"
    for method, path in [
        ("get", f"/v1/files/{file_id}"),
        ("get", f"/v1/files/{file_id}/content"),
        ("delete", f"/v1/files/{file_id}"),
        ("get", f"/api/v1/files/{file_id}/report"),
    ]:
        assert getattr(api_client, method)(path).status_code == 404


def test_another_teams_file_answers_exactly_like_a_missing_one(
    api_client: APIClient, other_client: APIClient
) -> None:
    file_id = upload(api_client, chat_jsonl()).json()["id"]
    missing_id = "file-" + "0" * 24
    for method, suffix in [("get", ""), ("get", "/content"), ("delete", ""), ("get", "/report")]:
        prefix = "/api/v1/files/" if suffix == "/report" else "/v1/files/"
        theirs = getattr(other_client, method)(f"{prefix}{file_id}{suffix}")
        missing = getattr(other_client, method)(f"{prefix}{missing_id}{suffix}")
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["error"]["message"].replace(file_id, "ID") == missing.json()["error"][
            "message"
        ].replace(missing_id, "ID")
    assert other_client.get("/v1/files").json()["data"] == []
    assert other_client.get("/v1/files", {"after": file_id}).status_code == 400
    assert api_client.get(f"/v1/files/{file_id}").status_code == 200


def test_report_before_validation_says_so(api_client: APIClient) -> None:
    file_id = upload(api_client, chat_jsonl()).json()["id"]
    report = api_client.get(f"/api/v1/files/{file_id}/report").json()
    assert report["object"] == "file.validation_report"
    assert report["status"] == "uploaded" and report["ok"] is None and report["errors"] is None


def test_key_use_is_recorded(api_client: APIClient, issued_key) -> None:
    api_client.get("/v1/files")
    issued_key.api_key.refresh_from_db()
    assert issued_key.api_key.last_used_at is not None
