"""The registry's native API over HTTP: adapter versions with their files and digests, soft delete, aliases
and rollback, endpoints (write-only credentials, shared ones read-only and without an address), the
compatibility refusal, deployments and undeploys, auto-deploy policies, and team isolation on every route.

The push itself runs in a control worker and is tested in test_registry_push; here deploy messages go to a
control queue no worker consumes, and the tests read them off it.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.test import override_settings
from rest_framework.test import APIClient
from tailor.registry.models import AdapterAlias, AutoDeployPolicy, Deployment, InferenceEndpoint
from tailor.teams.models import Team
from tailor.tuning.models import Adapter, BaseModel

from tests.s3server import TEST_CREDENTIALS, running_s3_server
from tests.tailor.adapter_factories import WEIGHTS
from tests.tailor.jobs_factories import take_messages
from tests.tailor.processes import delete_queue
from tests.tailor.registry_factories import (
    DeploymentFactory,
    InferenceEndpointFactory,
    adapter_of,
    healthy_vllm,
    llama_base,
)
from workers.app import DEPLOY_TASK, UNDEPLOY_TASK

pytestmark = pytest.mark.django_db

ADAPTER_FIELDS = {
    "id", "object", "family", "version", "base_model", "revision", "job", "created_at", "rank", "alpha",
    "target_modules", "formats", "size_bytes", "files", "metrics", "lineage", "aliases", "deployments",
    "deleted_at",
}  # fmt: skip
DEPLOYMENT_FIELDS = {
    "id", "object", "adapter", "endpoint", "status", "served_name", "reason_code", "last_error", "attempts",
    "auto", "requested_at", "live_at", "finished_at",
}  # fmt: skip


@pytest.fixture(autouse=True)
def control_queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Deploy and undeploy messages land in a queue of this test's own that no worker consumes."""
    name = f"control-registry-api-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TAILOR_CONTROL_QUEUE", name)
    yield name
    delete_queue(name)


def sent_tasks(queue: str, *, expect: int, timeout: float = 5) -> list[tuple[str, list[Any]]]:
    """(task name, args) of the messages waiting in `queue`, taken off it; waits for `expect` of them."""
    return [(task, args) for task, args, _ in take_messages(queue, expect=expect, timeout=timeout)]


@pytest.fixture
def base(db: None) -> BaseModel:
    return llama_base()


# Where the operators' shared server is: nothing listens there, and no team may learn the address.
SHARED_URL = "http://127.0.0.1:19"


@pytest.fixture
def shared(base: BaseModel) -> InferenceEndpoint:
    """An operators' endpoint every team may deploy to."""
    return InferenceEndpointFactory(
        team=None, name="shared", base_url=SHARED_URL, credential="operator-token"
    )


@pytest.fixture
def own(team: Team, base: BaseModel) -> InferenceEndpoint:
    return InferenceEndpointFactory(team=team, name="mine", credential="team-token")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Adapters -------------------------------------------------------------------------------------------------


def test_adapters_list_newest_first_in_pages_and_by_family(api_client, team, base) -> None:
    first, second, third = (adapter_of(team, base) for _ in range(3))
    other_family = adapter_of(team, llama_base("tailor-small"))

    page = api_client.get("/api/v1/adapters", {"limit": 2}).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [a["id"] for a in page["data"]] == [other_family.name, third.name]
    rest = api_client.get("/api/v1/adapters", {"limit": 2, "after": page["last_id"]}).json()
    assert [a["id"] for a in rest["data"]] == [second.name, first.name] and rest["has_more"] is False

    family = api_client.get("/api/v1/adapters", {"family": first.family}).json()["data"]
    assert [(a["id"], a["version"]) for a in family] == [(third.name, 3), (second.name, 2), (first.name, 1)]

    shown = family[-1]
    assert set(shown) == ADAPTER_FIELDS
    assert shown["object"] == "adapter" and shown["family"] == first.family
    assert shown["base_model"] == "tailor-tiny" and shown["revision"] == base.revision
    assert shown["job"] == first.job.public_id and isinstance(shown["created_at"], int)
    assert (shown["rank"], shown["alpha"], shown["target_modules"]) == (8, 16.0, ["q_proj", "v_proj"])
    assert shown["formats"] == ["peft-safetensors"] and shown["deleted_at"] is None
    assert shown["files"]["adapter_model.safetensors"] == {"sha256": sha256(WEIGHTS), "bytes": len(WEIGHTS)}
    assert shown["size_bytes"] == sum(entry["bytes"] for entry in shown["files"].values())
    assert shown["lineage"]["job"] == first.job.public_id and shown["metrics"] == {"train_loss": 1.25}
    assert shown["aliases"] == [] and shown["deployments"] == []

    missing = api_client.get("/api/v1/adapters", {"after": "ft:nothing:here"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "after"


def test_an_adapter_is_found_by_name_or_alias_with_its_aliases_and_deployments(
    api_client, team, base, own
) -> None:
    adapter = adapter_of(team, base)
    AdapterAlias.objects.create(team=team, family=adapter.family, name="production", adapter=adapter)
    live = DeploymentFactory(adapter=adapter, endpoint=own)
    DeploymentFactory(adapter=adapter, endpoint=own, status=Deployment.Status.UNDEPLOYED)

    by_name = api_client.get(f"/api/v1/adapters/{adapter.name}")
    assert by_name.status_code == 200, by_name.content
    shown = by_name.json()
    assert shown["id"] == adapter.name and ":" in shown["id"]
    assert shown["aliases"] == [f"{adapter.family}@production"]
    assert shown["deployments"] == [
        {
            "id": live.public_id,
            "endpoint": {"id": own.public_id, "name": "mine", "kind": "vllm"},
            "status": "live",
        }
    ]
    assert api_client.get(f"/api/v1/adapters/{adapter.family}@production").json() == shown
    unknown = api_client.get(f"/api/v1/adapters/{adapter.family}:ftjob-nothing")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert api_client.get(f"/api/v1/adapters/{adapter.family}@staging").status_code == 404


def test_delete_hides_the_adapter_from_every_list_and_refuses_while_an_alias_points_at_it(
    api_client, team, base, control_queue
) -> None:
    keep, doomed = adapter_of(team, base), adapter_of(team, base)
    alias = AdapterAlias.objects.create(team=team, family=doomed.family, name="production", adapter=doomed)

    refused = api_client.delete(f"/api/v1/adapters/{doomed.name}")
    assert refused.status_code == 409, refused.content
    assert f"{doomed.family}@production" in refused.json()["error"]["message"]
    alias.delete()

    deleted = api_client.delete(f"/api/v1/adapters/{doomed.name}")
    assert deleted.status_code == 200 and isinstance(deleted.json()["deleted_at"], int)
    assert [a["id"] for a in api_client.get("/api/v1/adapters").json()["data"]] == [keep.name]
    assert api_client.get(f"/api/v1/adapters/{doomed.name}").status_code == 404
    assert api_client.get(f"/api/v1/adapters/{doomed.name}/download").status_code == 404
    models = [m["id"] for m in api_client.get("/v1/models").json()["data"]]
    assert keep.name in models and doomed.name not in models
    assert api_client.get(f"/v1/models/{doomed.name}").status_code == 404

    listed = api_client.get("/api/v1/adapters", {"include_deleted": "true"}).json()["data"]
    assert [a["id"] for a in listed] == [doomed.name, keep.name]
    shown = api_client.get(f"/api/v1/adapters/{doomed.name}", {"include_deleted": "true"}).json()
    assert shown["deleted_at"] == deleted.json()["deleted_at"]
    assert api_client.delete(f"/api/v1/adapters/{doomed.name}").status_code == 404


def test_a_file_streams_with_its_length_name_and_digest(api_client, team, base) -> None:
    adapter = adapter_of(team, base)
    response = api_client.get(f"/api/v1/adapters/{adapter.name}/files/adapter_model.safetensors")
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert body == WEIGHTS
    assert response["Content-Length"] == str(len(WEIGHTS))
    assert response["Content-Disposition"] == 'attachment; filename="adapter_model.safetensors"'
    assert response["X-Tailor-Sha256"] == sha256(WEIGHTS)
    assert (
        response["Repr-Digest"] == f"sha-256=:{base64.b64encode(hashlib.sha256(WEIGHTS).digest()).decode()}:"
    )

    # Only the files the adapter's manifest lists, by their plain names.
    for bad in ("metrics.csv", "tailor_adapter.json", "..%2F..%2Fconfig.json"):
        missing = api_client.get(f"/api/v1/adapters/{adapter.name}/files/{bad}")
        assert missing.status_code == 404, bad


def test_download_on_a_local_store_lists_stream_urls_that_return_the_digested_bytes(
    api_client, team, base
) -> None:
    adapter = adapter_of(team, base)
    response = api_client.get(f"/api/v1/adapters/{adapter.family}@production/download")
    assert response.status_code == 404, "no such alias yet"
    AdapterAlias.objects.create(team=team, family=adapter.family, name="production", adapter=adapter)

    listing = api_client.get(f"/api/v1/adapters/{adapter.family}@production/download").json()
    assert listing["adapter"] == adapter.name
    assert [f["name"] for f in listing["files"]] == sorted(adapter.files)
    for entry in listing["files"]:
        assert entry["expires_at"] is None and entry["url"].startswith("http://testserver/api/v1/adapters/")
        fetched = api_client.get(entry["url"])
        body = b"".join(fetched.streaming_content)
        assert (len(body), sha256(body)) == (entry["bytes"], entry["sha256"]), entry["name"]


@pytest.mark.integration
def test_download_on_s3_gives_presigned_urls_that_work_without_a_key(api_client, team, base) -> None:
    import boto3
    from botocore.config import Config

    with running_s3_server() as endpoint, pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": TEST_CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": TEST_CREDENTIALS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": TEST_CREDENTIALS["region_name"],
        }.items():
            mp.setenv(key, value)
        bucket = f"tailor-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}), **TEST_CREDENTIALS
        ).create_bucket(Bucket=bucket)
        with override_settings(TAILOR_STORAGE_URL=f"s3://{bucket}/tailor", TAILOR_DOWNLOAD_URL_SECONDS=120):
            llama_base("tailor-s3")
            adapter = adapter_of(team, BaseModel.objects.get(name="tailor-s3"))
            before = int(time.time())
            listing = api_client.get(f"/api/v1/adapters/{adapter.name}/download").json()
            for entry in listing["files"]:
                assert (
                    entry["url"].startswith(endpoint) and before + 110 <= entry["expires_at"] <= before + 130
                )
                fetched = httpx.get(entry["url"], timeout=30)
                assert fetched.status_code == 200, fetched.text
                assert (len(fetched.content), sha256(fetched.content)) == (entry["bytes"], entry["sha256"])
            streamed = api_client.get(f"/api/v1/adapters/{adapter.name}/files/adapter_model.safetensors")
            assert b"".join(streamed.streaming_content) == WEIGHTS


# Aliases --------------------------------------------------------------------------------------------------


def test_an_alias_is_set_moved_back_listed_and_deleted(api_client, team, base) -> None:
    first, second = adapter_of(team, base), adapter_of(team, base)
    created = api_client.post(
        "/api/v1/aliases", {"name": "production", "adapter": second.name}, format="json"
    )
    assert created.status_code == 200, created.content
    alias = created.json()
    model_id = f"{first.family}@production"
    assert alias == {
        "id": model_id,
        "object": "adapter.alias",
        "name": "production",
        "family": first.family,
        "adapter": second.name,
        "version": 2,
        "updated_at": alias["updated_at"],
    }
    assert model_id in [m["id"] for m in api_client.get("/v1/models").json()["data"]]

    rollback = api_client.post(
        "/api/v1/aliases", {"name": "production", "adapter": first.name}, format="json"
    )
    assert rollback.status_code == 200 and rollback.json()["version"] == 1
    assert AdapterAlias.objects.get().adapter == first
    assert api_client.get(f"/api/v1/aliases/{model_id}").json()["adapter"] == first.name
    listed = api_client.get("/api/v1/aliases", {"family": first.family}).json()
    assert listed["object"] == "list" and [a["id"] for a in listed["data"]] == [model_id]
    assert api_client.get("/api/v1/aliases", {"family": "ft:other"}).json()["data"] == []

    invalid = api_client.post("/api/v1/aliases", {"name": "Prod!", "adapter": first.name}, format="json")
    assert invalid.status_code == 400 and invalid.json()["error"]["param"] == "name"
    unknown = api_client.post("/api/v1/aliases", {"name": "x", "adapter": "ft:nope"}, format="json")
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "adapter"

    assert api_client.delete(f"/api/v1/aliases/{model_id}").status_code == 204
    assert api_client.get(f"/api/v1/aliases/{model_id}").status_code == 404
    assert Adapter.objects.filter(pk=first.pk, deleted_at__isnull=True).exists()


# Endpoints ------------------------------------------------------------------------------------------------


def _no_credential_anywhere(response: Any, *secrets: str) -> dict[str, Any]:
    text = response.content.decode()
    for secret in secrets:
        assert secret not in text
    assert '"credential"' not in text
    return response.json()


def test_an_endpoint_is_registered_changed_and_removed_without_its_credential_ever_shown(
    api_client, base, shared
) -> None:
    created = api_client.post(
        "/api/v1/endpoints",
        {
            "name": "team-vllm",
            "kind": "vllm",
            "base_url": "http://127.0.0.1:9/v1/",
            "credential": "very-secret-token",
            "served_models": {"tailor-tiny": "TinyLlama"},
            "max_lora_rank": 64,
            "max_adapters": 4,
            "delivery": "shared_volume",
            "adapter_root": "/srv/adapters",
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    endpoint = _no_credential_anywhere(created, "very-secret-token")
    assert endpoint["object"] == "inference_endpoint" and endpoint["id"].startswith("ep-")
    assert endpoint["shared"] is False and endpoint["has_credential"] is True
    assert endpoint["base_url"] == "http://127.0.0.1:9", "trailing /v1 and slash are dropped"
    assert endpoint["served_adapter_root"] == "/srv/adapters" and endpoint["health"] == "unknown"
    assert InferenceEndpoint.objects.get(public_id=endpoint["id"]).credential == "very-secret-token"

    listed = api_client.get("/api/v1/endpoints")
    shown = {
        e["name"]: e for e in _no_credential_anywhere(listed, "very-secret-token", "operator-token")["data"]
    }
    assert set(shown) == {"team-vllm", "shared"}
    assert shown["shared"]["shared"] is True and shown["shared"]["has_credential"] is True
    assert shown["shared"]["base_url"] is None and shown["shared"]["adapter_root"] is None
    assert SHARED_URL not in listed.content.decode()
    assert api_client.get("/api/v1/endpoints/team-vllm").json()["id"] == endpoint["id"], "by name too"

    changed = api_client.patch(
        f"/api/v1/endpoints/{endpoint['id']}", {"max_lora_rank": 128, "credential": "rotated"}, format="json"
    )
    assert changed.status_code == 200, changed.content
    assert _no_credential_anywhere(changed, "rotated")["max_lora_rank"] == 128
    assert InferenceEndpoint.objects.get(public_id=endpoint["id"]).credential == "rotated"
    cleared = api_client.patch(f"/api/v1/endpoints/{endpoint['id']}", {"credential": ""}, format="json")
    assert cleared.json()["has_credential"] is False

    bad_rank = api_client.patch(f"/api/v1/endpoints/{endpoint['id']}", {"max_lora_rank": 48}, format="json")
    assert bad_rank.status_code == 400 and bad_rank.json()["error"]["param"] == "max_lora_rank"
    duplicate = api_client.post(
        "/api/v1/endpoints",
        {"name": "team-vllm", "kind": "vllm", "base_url": "http://127.0.0.1:9", "served_models": ["tailor-tiny"],
         "adapter_root": "/srv/adapters"},
        format="json",
    )  # fmt: skip
    assert duplicate.status_code == 409
    unknown_model = api_client.post(
        "/api/v1/endpoints",
        {"name": "x", "kind": "ollama", "base_url": "http://127.0.0.1:9", "served_models": ["nope"]},
        format="json",
    )
    assert unknown_model.status_code == 400 and unknown_model.json()["error"]["param"] == "served_models"

    assert api_client.delete(f"/api/v1/endpoints/{endpoint['id']}").status_code == 204
    assert api_client.get(f"/api/v1/endpoints/{endpoint['id']}").status_code == 404


def test_shared_endpoints_are_read_only_to_teams(api_client, shared) -> None:
    assert api_client.get(f"/api/v1/endpoints/{shared.public_id}").json()["shared"] is True
    changed = api_client.patch(f"/api/v1/endpoints/{shared.public_id}", {"max_lora_rank": 8}, format="json")
    assert changed.status_code == 403 and changed.json()["error"]["type"] == "permission_error"
    assert api_client.delete(f"/api/v1/endpoints/{shared.public_id}").status_code == 403
    shared.refresh_from_db()
    assert shared.max_lora_rank == 64


def test_an_endpoint_with_active_deployments_is_not_removed(api_client, team, base, own) -> None:
    DeploymentFactory(adapter=adapter_of(team, base), endpoint=own)
    refused = api_client.delete(f"/api/v1/endpoints/{own.public_id}")
    assert refused.status_code == 409 and "undeploy" in refused.json()["error"]["message"]


@pytest.fixture
def vllm_server() -> Iterator[str]:
    with healthy_vllm(token="team-token") as url:
        yield url


def test_check_asks_the_server_now_and_records_its_health(api_client, own, shared, vllm_server) -> None:
    InferenceEndpoint.objects.filter(pk=own.pk).update(base_url=vllm_server)
    healthy = api_client.post(f"/api/v1/endpoints/{own.public_id}/check")
    assert healthy.status_code == 200, healthy.content
    shown = _no_credential_anywhere(healthy, "team-token")
    assert shown["health"] == "healthy" and shown["health_error"] == ""
    assert abs(shown["health_checked_at"] - time.time()) < 30

    InferenceEndpoint.objects.filter(pk=own.pk).update(credential="wrong")
    refused = api_client.post(f"/api/v1/endpoints/{own.public_id}/check").json()
    assert refused["health"] == "unhealthy" and "401" in refused["health_error"]

    # The shared endpoint's server is unreachable; the error says so without its internal address.
    down = api_client.post(f"/api/v1/endpoints/{shared.public_id}/check")
    assert down.status_code == 200
    shown = down.json()
    assert shown["health"] == "unhealthy" and shown["health_error"]
    assert SHARED_URL not in down.content.decode() and "<endpoint shared>" in shown["health_error"]
    assert SHARED_URL in InferenceEndpoint.objects.get(pk=shared.pk).health_error


# Deployments ----------------------------------------------------------------------------------------------


def test_deploy_creates_a_pending_deployment_and_sends_the_push(
    api_client, team, base, own, shared, control_queue, django_capture_on_commit_callbacks
) -> None:
    adapter = adapter_of(team, base)
    with django_capture_on_commit_callbacks(execute=True):
        created = api_client.post(
            "/api/v1/deployments", {"adapter": adapter.name, "endpoint": "shared"}, format="json"
        )
    assert created.status_code == 201, created.content
    deployment = created.json()
    assert set(deployment) == DEPLOYMENT_FIELDS
    assert deployment["object"] == "deployment" and deployment["id"].startswith("dep-")
    assert deployment["adapter"] == adapter.name and deployment["status"] == "pending"
    assert deployment["endpoint"] == {"id": shared.public_id, "name": "shared", "kind": "vllm"}
    assert deployment["served_name"] == adapter.name and deployment["auto"] is False
    assert deployment["attempts"] == 0 and deployment["live_at"] is None and deployment["finished_at"] is None
    assert sent_tasks(control_queue, expect=1) == [(DEPLOY_TASK, [deployment["id"]])]

    again = api_client.post("/api/v1/deployments", {"adapter": adapter.name, "endpoint": shared.public_id})
    assert again.json()["id"] == deployment["id"], "an active deployment is not duplicated"
    with django_capture_on_commit_callbacks(execute=True):
        second = api_client.post(
            "/api/v1/deployments", {"adapter": adapter.name, "endpoint": own.public_id}, format="json"
        ).json()

    everything = api_client.get("/api/v1/deployments").json()
    assert [d["id"] for d in everything["data"]] == [second["id"], deployment["id"]]
    by_endpoint = api_client.get("/api/v1/deployments", {"endpoint": "mine"}).json()["data"]
    assert [d["id"] for d in by_endpoint] == [second["id"]]
    by_adapter = api_client.get("/api/v1/deployments", {"adapter": adapter.name, "status": "pending"}).json()
    assert len(by_adapter["data"]) == 2
    assert api_client.get("/api/v1/deployments", {"status": "live"}).json()["data"] == []
    bad_status = api_client.get("/api/v1/deployments", {"status": "exploded"})
    assert bad_status.status_code == 400 and bad_status.json()["error"]["param"] == "status"
    paged = api_client.get("/api/v1/deployments", {"limit": 1}).json()
    assert paged["has_more"] is True
    rest = api_client.get("/api/v1/deployments", {"limit": 1, "after": paged["last_id"]}).json()
    assert [d["id"] for d in rest["data"]] == [deployment["id"]] and rest["has_more"] is False
    assert api_client.get(f"/api/v1/deployments/{deployment['id']}").json()["status"] == "pending"


def test_an_incompatible_adapter_is_refused_with_every_reason_and_nothing_is_created(
    api_client, team, base, own, control_queue, django_capture_on_commit_callbacks
) -> None:
    wide = adapter_of(team, base, r=128, use_dora=True)
    with django_capture_on_commit_callbacks(execute=True):
        refused = api_client.post(
            "/api/v1/deployments", {"adapter": wide.name, "endpoint": own.public_id}, format="json"
        )
    assert refused.status_code == 400, refused.content
    error = refused.json()["error"]
    assert error["code"] == "incompatible_adapter" and error["param"] == "adapter"
    assert "rank 128" in error["message"] and "64" in error["message"]
    assert "DoRA" in error["message"], "every reason is listed, not just the first"
    assert not Deployment.objects.exists()
    assert sent_tasks(control_queue, expect=0, timeout=1) == []


def test_deploying_a_deleted_or_unknown_adapter_or_to_an_unknown_endpoint_is_not_found(
    api_client, team, base, own
) -> None:
    adapter = adapter_of(team, base)
    unknown_endpoint = api_client.post("/api/v1/deployments", {"adapter": adapter.name, "endpoint": "nope"})
    assert unknown_endpoint.status_code == 404 and unknown_endpoint.json()["error"]["param"] == "endpoint"
    api_client.delete(f"/api/v1/adapters/{adapter.name}")
    gone = api_client.post("/api/v1/deployments", {"adapter": adapter.name, "endpoint": own.public_id})
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "adapter"
    missing = api_client.post("/api/v1/deployments", {"endpoint": own.public_id}, format="json")
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_required_parameter"


def test_undeploy_stops_a_pending_deployment_and_sends_a_live_one_to_be_unloaded(
    api_client, team, base, own, control_queue, django_capture_on_commit_callbacks
) -> None:
    adapter = adapter_of(team, base)
    pending = DeploymentFactory(adapter=adapter, endpoint=own, status=Deployment.Status.PENDING, live_at=None)
    stopped = api_client.delete(f"/api/v1/deployments/{pending.public_id}")
    assert stopped.status_code == 202 and stopped.json()["status"] == "undeployed"
    assert isinstance(stopped.json()["finished_at"], int)

    live = DeploymentFactory(adapter=adapter, endpoint=own)
    with django_capture_on_commit_callbacks(execute=True):
        undeploying = api_client.post(f"/api/v1/deployments/{live.public_id}/undeploy")
    assert undeploying.status_code == 202 and undeploying.json()["status"] == "undeploying"
    assert sent_tasks(control_queue, expect=1) == [(UNDEPLOY_TASK, [live.public_id])]
    shown = api_client.get(f"/api/v1/adapters/{adapter.name}").json()["deployments"]
    assert [(d["id"], d["status"]) for d in shown] == [(live.public_id, "undeploying")]


def test_a_shared_endpoints_address_is_redacted_from_deployment_errors(
    api_client, team, base, shared
) -> None:
    failed = DeploymentFactory(
        adapter=adapter_of(team, base),
        endpoint=shared,
        status=Deployment.Status.FAILED,
        reason_code="load_failed",
        last_error=f"vLLM at {SHARED_URL} refused the adapter: bad rank",
    )
    shown = api_client.get(f"/api/v1/deployments/{failed.public_id}").json()
    assert shown["last_error"] == "vLLM at <endpoint shared> refused the adapter: bad rank"
    assert shown["reason_code"] == "load_failed"


# Auto-deploy policies -------------------------------------------------------------------------------------


def test_auto_deploy_policies_are_created_listed_and_deleted(api_client, team, base, shared, own) -> None:
    everything = api_client.post("/api/v1/deploy_policies", {"endpoint": "shared"}, format="json")
    assert everything.status_code == 201, everything.content
    policy = everything.json()
    assert policy["object"] == "deploy_policy" and policy["id"].startswith("adp-")
    assert policy["endpoint"] == {"id": shared.public_id, "name": "shared", "kind": "vllm"}
    assert policy["base_model"] is None and policy["enabled"] is True
    tiny_only = api_client.post(
        "/api/v1/deploy_policies", {"endpoint": own.public_id, "base_model": "tailor-tiny"}, format="json"
    ).json()
    assert tiny_only["base_model"] == "tailor-tiny"
    unknown = api_client.post(
        "/api/v1/deploy_policies", {"endpoint": own.public_id, "base_model": "nope"}, format="json"
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "base_model"

    listed = api_client.get("/api/v1/deploy_policies").json()
    assert [p["id"] for p in listed["data"]] == [policy["id"], tiny_only["id"]]
    assert api_client.get(f"/api/v1/deploy_policies/{policy['id']}").json() == policy
    assert api_client.delete(f"/api/v1/deploy_policies/{policy['id']}").status_code == 204
    assert list(AutoDeployPolicy.objects.values_list("public_id", flat=True)) == [tiny_only["id"]]


# Isolation and scopes -------------------------------------------------------------------------------------


def test_another_teams_objects_answer_404_on_every_route(
    api_client, other_client, team, other_team, base, own, shared
) -> None:
    adapter = adapter_of(team, base)
    alias = AdapterAlias.objects.create(team=team, family=adapter.family, name="production", adapter=adapter)
    deployment = DeploymentFactory(adapter=adapter, endpoint=own)
    policy = AutoDeployPolicy.objects.create(team=team, endpoint=own)
    theirs = adapter_of(other_team, base)

    name, model_id = adapter.name, alias.model_id
    routes = [
        ("get", f"/api/v1/adapters/{name}"),
        ("get", f"/api/v1/adapters/{model_id}"),
        ("delete", f"/api/v1/adapters/{name}"),
        ("get", f"/api/v1/adapters/{name}/files/adapter_model.safetensors"),
        ("get", f"/api/v1/adapters/{name}/download"),
        ("get", f"/api/v1/aliases/{model_id}"),
        ("delete", f"/api/v1/aliases/{model_id}"),
        ("get", f"/api/v1/endpoints/{own.public_id}"),
        ("get", "/api/v1/endpoints/mine"),
        ("patch", f"/api/v1/endpoints/{own.public_id}"),
        ("delete", f"/api/v1/endpoints/{own.public_id}"),
        ("post", f"/api/v1/endpoints/{own.public_id}/check"),
        ("get", f"/api/v1/deployments/{deployment.public_id}"),
        ("delete", f"/api/v1/deployments/{deployment.public_id}"),
        ("post", f"/api/v1/deployments/{deployment.public_id}/undeploy"),
        ("get", f"/api/v1/deploy_policies/{policy.public_id}"),
        ("delete", f"/api/v1/deploy_policies/{policy.public_id}"),
    ]
    for method, url in routes:
        response = getattr(other_client, method)(url, {}, format="json")
        assert response.status_code == 404, (method, url, response.content)
        assert response.json()["error"]["code"] == "not_found", (method, url)
    writes = [
        ("/api/v1/aliases", {"name": "production", "adapter": name}),
        ("/api/v1/deployments", {"adapter": name, "endpoint": "shared"}),
        ("/api/v1/deployments", {"adapter": theirs.name, "endpoint": own.public_id}),
        ("/api/v1/deploy_policies", {"endpoint": own.public_id}),
    ]
    for url, payload in writes:
        assert other_client.post(url, payload, format="json").status_code == 404, (url, payload)
    reads = {
        "/api/v1/adapters": [theirs.name],
        "/api/v1/aliases": [],
        "/api/v1/deployments": [],
        "/api/v1/deploy_policies": [],
        "/api/v1/endpoints": [shared.public_id],
    }
    for url, expected in reads.items():
        assert [item["id"] for item in other_client.get(url).json()["data"]] == expected, url
    filtered = other_client.get("/api/v1/deployments", {"adapter": name})
    assert filtered.status_code == 404

    # Nothing changed for the owner.
    assert api_client.get(f"/api/v1/adapters/{name}").json()["aliases"] == [model_id]
    assert api_client.get(f"/api/v1/deployments/{deployment.public_id}").json()["status"] == "live"
    assert AutoDeployPolicy.objects.filter(pk=policy.pk).exists()
    assert Deployment.objects.filter(team=other_team).count() == 0


def test_a_read_only_key_reads_but_may_not_write(read_only_client, team, base, own) -> None:
    adapter = adapter_of(team, base)
    assert read_only_client.get("/api/v1/adapters").status_code == 200
    assert read_only_client.get(f"/api/v1/adapters/{adapter.name}").status_code == 200
    assert read_only_client.get("/api/v1/endpoints").status_code == 200
    writes = [
        ("delete", f"/api/v1/adapters/{adapter.name}", None),
        ("post", "/api/v1/aliases", {"name": "production", "adapter": adapter.name}),
        ("post", "/api/v1/endpoints", {"name": "x", "kind": "vllm"}),
        ("patch", f"/api/v1/endpoints/{own.public_id}", {"enabled": False}),
        ("post", f"/api/v1/endpoints/{own.public_id}/check", None),
        ("post", "/api/v1/deployments", {"adapter": adapter.name, "endpoint": own.public_id}),
        ("post", "/api/v1/deploy_policies", {"endpoint": own.public_id}),
    ]
    for method, url, payload in writes:
        response = getattr(read_only_client, method)(url, payload, format="json")
        assert response.status_code == 403, (method, url)
        assert response.json()["error"]["code"] == "insufficient_permissions"
    assert Adapter.objects.get(pk=adapter.pk).deleted_at is None and not Deployment.objects.exists()


def test_no_key_is_401(base) -> None:
    response = APIClient().get("/api/v1/adapters")
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"
