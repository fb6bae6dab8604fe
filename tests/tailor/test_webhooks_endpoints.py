"""The native webhooks API: registering a URL shows its secret once, private destinations are refused
unless the operator allows them, and every endpoint answers another team with 404."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_register_shows_the_secret_once(api_client, settings) -> None:
    settings.TAILOR_WEBHOOK_ALLOW_PRIVATE = True
    response = api_client.post(
        "/api/v1/webhooks",
        {"url": "http://127.0.0.1:9/hook", "event_types": ["fine_tuning.job.succeeded"], "description": "ci"},
        format="json",
    )
    assert response.status_code == 200, response.content
    created = response.json()
    assert created["object"] == "webhook_endpoint" and created["id"].startswith("wh_")
    assert created["secret"].startswith("whsec_") and created["event_types"] == ["fine_tuning.job.succeeded"]
    shown = api_client.get(f"/api/v1/webhooks/{created['id']}").json()
    assert "secret" not in shown and created["secret"].startswith(shown["secret_hint"].rstrip("…"))
    assert [e["id"] for e in api_client.get("/api/v1/webhooks").json()["data"]] == [created["id"]]

    rotated = api_client.post(f"/api/v1/webhooks/{created['id']}/rotate_secret").json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    disabled = api_client.patch(f"/api/v1/webhooks/{created['id']}", {"enabled": False}, format="json").json()
    assert disabled["enabled"] is False
    assert api_client.delete(f"/api/v1/webhooks/{created['id']}").status_code == 204
    assert api_client.get(f"/api/v1/webhooks/{created['id']}").status_code == 404


def test_private_destinations_are_refused_by_default(api_client, settings) -> None:
    settings.TAILOR_WEBHOOK_ALLOW_PRIVATE = False
    for url in (
        "http://127.0.0.1/hook",
        "http://169.254.169.254/latest",
        "http://10.0.0.5/x",
        "ftp://example.com/x",
    ):
        response = api_client.post("/api/v1/webhooks", {"url": url}, format="json")
        body = response.json()["error"]
        assert response.status_code == 400 and body["param"] == "url", url
    response = api_client.post("/api/v1/webhooks", {"url": "http://169.254.169.254/latest"}, format="json")
    assert "link-local" in response.json()["error"]["message"]


def test_unknown_event_types_are_refused(api_client, settings) -> None:
    settings.TAILOR_WEBHOOK_ALLOW_PRIVATE = True
    response = api_client.post(
        "/api/v1/webhooks",
        {"url": "http://127.0.0.1/h", "event_types": ["fine_tuning.job.started"]},
        format="json",
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "event_types[0]"


def test_another_teams_endpoint_is_not_found(api_client, other_client, settings) -> None:
    settings.TAILOR_WEBHOOK_ALLOW_PRIVATE = True
    theirs = api_client.post("/api/v1/webhooks", {"url": "http://127.0.0.1/h"}, format="json").json()["id"]
    assert other_client.get(f"/api/v1/webhooks/{theirs}").status_code == 404
    assert other_client.get(f"/api/v1/webhooks/{theirs}/deliveries").status_code == 404
    assert (
        other_client.patch(f"/api/v1/webhooks/{theirs}", {"enabled": False}, format="json").status_code == 404
    )
    assert other_client.post(f"/api/v1/webhooks/{theirs}/rotate_secret").status_code == 404
    assert other_client.delete(f"/api/v1/webhooks/{theirs}").status_code == 404
    assert other_client.get("/api/v1/webhooks").json()["data"] == []
    assert api_client.get(f"/api/v1/webhooks/{theirs}").json()["enabled"] is True
