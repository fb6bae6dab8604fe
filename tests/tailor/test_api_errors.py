"""Every error under the API prefixes is the OpenAI envelope with the right status, whoever raised it."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient
from tailor.core.exceptions import exception_handler
from tailor.teams.models import Team
from tailor.teams.services import api_key_revoke

pytestmark = pytest.mark.django_db


def assert_envelope(response, status: int, code: str | None, param: str | None = None) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["code"] == code
    assert error["param"] == param
    return error


def test_missing_key_is_401_with_bearer_challenge() -> None:
    response = APIClient().get("/v1/files")
    error = assert_envelope(response, 401, "missing_api_key")
    assert "Authorization: Bearer" in error["message"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_wrong_key_is_401_and_never_echoed_in_full() -> None:
    wrong = "tlr-" + "x" * 40
    error = assert_envelope(
        APIClient().get("/v1/files", HTTP_AUTHORIZATION=f"Bearer {wrong}"), 401, "invalid_api_key"
    )
    assert error["type"] == "invalid_request_error"
    assert wrong not in error["message"]


def test_revoked_key_is_401(issued_key, api_client: APIClient) -> None:
    assert api_client.get("/v1/files").status_code == 200
    api_key_revoke(api_key=issued_key.api_key)
    error = assert_envelope(api_client.get("/v1/files"), 401, "invalid_api_key")
    assert "revoked" in error["message"]


def test_other_authorization_schemes_are_not_accepted(issued_key) -> None:
    response = APIClient().get("/v1/files", HTTP_AUTHORIZATION=f"Token {issued_key.secret}")
    assert_envelope(response, 401, "missing_api_key")


def test_unknown_url_under_v1_is_a_404_envelope(api_client: APIClient) -> None:
    error = assert_envelope(api_client.get("/v1/no-such-thing"), 404, "unknown_url")
    assert "GET /v1/no-such-thing" in error["message"]
    # Unauthenticated, and under the native prefix, the answer has the same shape.
    assert_envelope(APIClient().post("/api/v1/nothing/here"), 404, "unknown_url")


def test_missing_object_is_a_404_envelope_in_openai_wording(api_client: APIClient) -> None:
    error = assert_envelope(api_client.get("/v1/files/file-doesnotexist"), 404, "not_found")
    assert error["message"] == "No such File object: file-doesnotexist"


def test_wrong_method_is_405(api_client: APIClient) -> None:
    assert_envelope(api_client.put("/v1/files"), 405, "method_not_allowed")
    assert_envelope(api_client.patch("/v1/files/file-x"), 405, "method_not_allowed")


def test_non_multipart_upload_is_415(api_client: APIClient) -> None:
    response = api_client.post("/v1/files", {"purpose": "fine-tune"}, format="json")
    assert_envelope(response, 415, "unsupported_media_type")


def test_malformed_multipart_is_400(api_client: APIClient) -> None:
    response = api_client.generic(
        "POST", "/v1/files", b"--x\r\nnot a multipart body", content_type="multipart/form-data; boundary="
    )
    assert_envelope(response, 400, "invalid_request_body")


def test_invalid_query_parameter_names_the_parameter(api_client: APIClient) -> None:
    error = assert_envelope(api_client.get("/v1/files", {"limit": 0}), 400, "min_value", param="limit")
    assert error["message"].startswith("limit: ")
    assert_envelope(api_client.get("/v1/files", {"order": "sideways"}), 400, "invalid_choice", param="order")


def test_read_only_key_cannot_write(read_only_client: APIClient) -> None:
    assert read_only_client.get("/v1/files").status_code == 200
    error = assert_envelope(read_only_client.delete("/v1/files/file-x"), 403, "insufficient_permissions")
    assert error["type"] == "permission_error"
    assert "write" in error["message"]


def test_unexpected_exception_is_a_500_envelope_without_internals(team: Team) -> None:
    response = exception_handler(RuntimeError("database password is hunter2"), {"view": None})
    assert response.status_code == 500
    assert response.data["error"]["type"] == "server_error"
    assert "hunter2" not in response.data["error"]["message"]


def test_health_check_needs_no_key() -> None:
    response = APIClient().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
