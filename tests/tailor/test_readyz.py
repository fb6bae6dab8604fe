"""`GET /readyz` tells a load balancer whether this API process can serve: 200 when the database, the
broker and the object store answer, 503 naming each one that does not and why — within a bounded time
even when a dependency hangs. `/healthz` stays the cheap liveness check."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import Client

from tests.s3server import TEST_CREDENTIALS, running_s3_server
from workers.app import app

pytestmark = pytest.mark.django_db


def readyz(client: Client | None = None) -> tuple[int, dict]:
    response = (client or Client()).get("/readyz")
    assert response["Content-Type"] == "application/json"
    return response.status_code, response.json()


def use_broker(monkeypatch: pytest.MonkeyPatch, url: str, options: dict[str, object] | None = None) -> None:
    """Point the Celery app at another broker for one test (the environment's URL wins in Celery)."""
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.setitem(app.conf, "broker_url", url)
    monkeypatch.setitem(app.conf, "broker_transport_options", options or {})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ready_when_database_broker_and_object_store_answer() -> None:
    status, body = readyz()
    assert status == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "object_store"}
    assert all(check["status"] == "ok" for check in body["checks"].values())


def test_an_unreachable_redis_broker_is_named(monkeypatch) -> None:
    use_broker(monkeypatch, f"redis://127.0.0.1:{closed_port()}/0")
    status, body = readyz()
    assert status == 503
    assert body["status"] == "unavailable" and body["failing"] == ["broker"]
    assert body["checks"]["broker"]["status"] == "failing"
    assert "ConnectionError" in body["checks"]["broker"]["detail"]
    assert body["checks"]["database"]["status"] == "ok" and body["checks"]["object_store"]["status"] == "ok"


def test_a_missing_filesystem_broker_folder_is_named(monkeypatch, tmp_path: Path) -> None:
    missing = tmp_path / "no-broker"
    use_broker(
        monkeypatch, "filesystem://", {"data_folder_in": str(missing), "data_folder_out": str(missing)}
    )
    status, body = readyz()
    assert (status, body["failing"]) == (503, ["broker"])
    assert str(missing) in body["checks"]["broker"]["detail"]

    missing.mkdir()
    assert readyz()[0] == 200


def test_a_broker_that_never_answers_fails_within_the_timeout(monkeypatch, settings) -> None:
    settings.TAILOR_READYZ_TIMEOUT = 0.5
    with socket.socket() as silent:  # accepts connections (the backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        use_broker(monkeypatch, f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        started = time.monotonic()
        status, body = readyz()
        elapsed = time.monotonic() - started
    assert (status, body["failing"]) == (503, ["broker"])
    assert "Timeout" in body["checks"]["broker"]["detail"]
    assert elapsed < 3


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("ftp://objects.example.com/tailor", "unsupported storage URL scheme"),
        ("file://{file}", "is not a folder"),
    ],
)
def test_a_broken_storage_url_is_named(settings, tmp_path: Path, url: str, detail: str) -> None:
    not_a_folder = tmp_path / "plain-file"
    not_a_folder.write_text("")
    settings.TAILOR_STORAGE_URL = url.format(file=not_a_folder)
    status, body = readyz()
    assert (status, body["failing"]) == (503, ["object_store"])
    assert detail in body["checks"]["object_store"]["detail"]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with running_s3_server() as endpoint:
        yield endpoint


@pytest.mark.integration
def test_an_s3_store_is_ready_only_when_its_bucket_lists(settings, monkeypatch, s3_endpoint: str) -> None:
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_CREDENTIALS["aws_secret_access_key"])
    bucket = f"ready-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, **TEST_CREDENTIALS).create_bucket(Bucket=bucket)

    settings.TAILOR_STORAGE_URL = f"s3://{bucket}/prod"
    status, body = readyz()
    assert status == 200, body
    assert body["checks"]["object_store"]["detail"] == f"listed s3://{bucket}/prod"

    settings.TAILOR_STORAGE_URL = f"s3://{bucket}-missing/prod"
    status, body = readyz()
    assert (status, body["failing"]) == (503, ["object_store"])
    assert "NoSuchBucket" in body["checks"]["object_store"]["detail"]


def test_readyz_answers_probes_addressed_to_the_pod_ip() -> None:
    assert readyz(Client(HTTP_HOST="10.12.0.7:8000"))[0] == 200


def test_healthz_stays_the_database_only_liveness_check(monkeypatch) -> None:
    use_broker(monkeypatch, f"redis://127.0.0.1:{closed_port()}/0")
    response = Client().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
