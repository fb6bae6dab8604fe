"""The OpenAPI document builds cleanly and describes the OpenAI-compatible surface."""

from __future__ import annotations

import io

import pytest
import yaml
from django.core.management import call_command
from rest_framework.test import APIClient


def test_schema_builds_without_warnings_or_errors() -> None:
    out = io.StringIO()
    # --fail-on-warn turns every drf-spectacular warning and error into a failure.
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    schema = yaml.safe_load(out.getvalue())
    paths = schema["paths"]
    assert set(paths["/v1/files"]) >= {"get", "post"}
    assert set(paths["/v1/files/{file_id}"]) >= {"get", "delete"}
    assert "get" in paths["/v1/files/{file_id}/content"]
    assert "get" in paths["/api/v1/files/{file_id}/report"]
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    components = schema["components"]["schemas"]
    file_object = components["FileObject"]["properties"]
    object_ref = file_object["object"]["allOf"][0]["$ref"].rsplit("/", 1)[-1]
    assert components[object_ref]["enum"] == ["file"]
    assert file_object["created_at"]["type"] == "integer"
    upload = paths["/v1/files"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload


@pytest.mark.django_db
def test_schema_is_served_without_a_key() -> None:
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    assert response.json()["info"]["title"] == "Tailor API"
