"""The registry's bookkeeping without a server: versions of a family, aliases and rollback, soft delete
and purge, auto-deploy policies, the sync of operator-listed endpoints, and the routing table the
gateway reads."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from tailor.core.errors import Conflict, InvalidRequest, NotFound
from tailor.core.objectstore import object_store
from tailor.registry.models import AutoDeployPolicy, Deployment, InferenceEndpoint
from tailor.registry.selectors import route_for_model
from tailor.registry.services import (
    adapter_auto_deploy,
    adapter_delete,
    adapters_purge,
    alias_set,
    deployment_undeploy,
    deployments_due,
    endpoints_sync,
    policy_create,
)
from tailor.tuning.models import Adapter, BaseModel

from tests.tailor.adapter_factories import llama_base, stored_adapter
from tests.tailor.factories import TeamFactory
from tests.tailor.jobs_factories import BaseModelFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _unconsumed_control_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    # Deploy messages published after commit go to a queue no worker reads: nothing is pushed here.
    monkeypatch.setenv("TAILOR_CONTROL_QUEUE", "control-registry-unconsumed")


@pytest.fixture
def base(db: None) -> BaseModel:
    return llama_base()


def endpoint(base: BaseModel, **fields: Any) -> InferenceEndpoint:
    values: dict[str, Any] = {
        "team": None,
        "name": "dev",
        "kind": "vllm",
        "base_url": "http://127.0.0.1:9",
        "served_models": {base.name: "served-base"},
        "max_lora_rank": 64,
        "delivery": "shared_volume",
        "adapter_root": "/srv/adapters",
        **fields,
    }
    return InferenceEndpoint.objects.create(**values)


def test_adapters_of_one_family_are_numbered_versions(base: BaseModel) -> None:
    team = TeamFactory()
    first, second = stored_adapter(team, base), stored_adapter(team, base)
    assert first.family == second.family and (first.version, second.version) == (1, 2)
    assert stored_adapter(TeamFactory(), base).version == 1, "versions count per team"


def test_an_alias_moves_between_versions_and_routes_with_them(base: BaseModel) -> None:
    team = TeamFactory()
    first, second = stored_adapter(team, base), stored_adapter(team, base)
    ep = endpoint(base)
    for adapter in (first, second):
        Deployment.objects.create(
            team=team, adapter=adapter, endpoint=ep, status="live", served_name=f"s{adapter.version}"
        )
    alias = alias_set(team=team, name="production", adapter=second)
    assert alias.model_id == f"{first.family}@production"
    assert route_for_model(team=team, model=alias.model_id).served_name == "s2"
    moved = alias_set(team=team, name="production", adapter=first)
    assert moved.pk == alias.pk and route_for_model(team=team, model=alias.model_id).served_name == "s1"
    with pytest.raises(InvalidRequest):
        alias_set(team=team, name="Not Valid!", adapter=first)
    with pytest.raises(NotFound):
        alias_set(team=TeamFactory(), name="production", adapter=first)


def test_delete_hides_the_adapter_undeploys_it_and_purge_removes_its_objects(base: BaseModel) -> None:
    team = TeamFactory()
    adapter = stored_adapter(team, base)
    ep = endpoint(base)
    pending = Deployment.objects.create(team=team, adapter=adapter, endpoint=ep, served_name="x")
    alias = alias_set(team=team, name="production", adapter=adapter)
    with pytest.raises(Conflict) as refused:
        adapter_delete(team=team, adapter=adapter)
    assert alias.model_id in refused.value.message
    alias.delete()

    adapter_delete(team=team, adapter=adapter)
    adapter.refresh_from_db()
    pending.refresh_from_db()
    assert adapter.deleted_at is not None and pending.status == "undeployed"
    with pytest.raises(NotFound):
        route_for_model(team=team, model=adapter.name)
    assert object_store().exists(f"{adapter.prefix}/adapter_model.safetensors")
    assert adapters_purge() == 1
    adapter.refresh_from_db()
    assert adapter.purged_at is not None
    assert not object_store().exists(f"{adapter.prefix}/adapter_model.safetensors")
    assert adapters_purge() == 0


def test_purge_waits_while_a_deployment_still_serves_the_adapter(base: BaseModel) -> None:
    team = TeamFactory()
    adapter = stored_adapter(team, base)
    Deployment.objects.create(
        team=team, adapter=adapter, endpoint=endpoint(base), status="undeploying", served_name="x"
    )
    Adapter.objects.filter(pk=adapter.pk).update(deleted_at=timezone.now())
    assert adapters_purge() == 0
    assert object_store().exists(f"{adapter.prefix}/adapter_config.json")


def test_auto_deploy_follows_policies_and_shared_endpoints(base: BaseModel) -> None:
    team = TeamFactory()
    own = endpoint(base, team=team, name="own")
    endpoint(base, name="shared-auto", auto_deploy_all_teams=True)
    endpoint(base, name="shared-manual")
    endpoint(BaseModelFactory(name="other-base"), name="other", auto_deploy_all_teams=True, served_models={})
    policy_create(team=team, endpoint=own)
    made = adapter_auto_deploy(adapter=stored_adapter(team, base))
    assert sorted(d.endpoint.name for d in made) == ["own", "shared-auto"]
    assert all(d.status == "pending" and d.auto for d in made)


def test_a_policy_for_another_teams_endpoint_is_refused(base: BaseModel) -> None:
    theirs = endpoint(base, team=TeamFactory(), name="theirs")
    with pytest.raises(NotFound):
        policy_create(team=TeamFactory(), endpoint=theirs)
    assert not AutoDeployPolicy.objects.exists()


def test_undeploying_a_pending_deployment_just_stops_it(base: BaseModel) -> None:
    team = TeamFactory()
    deployment = Deployment.objects.create(
        team=team, adapter=stored_adapter(team, base), endpoint=endpoint(base), served_name="x"
    )
    assert deployment_undeploy(deployment=deployment).status == "undeployed"


def test_the_sweep_resends_due_retries_and_stalled_pushes(base: BaseModel, settings: Any) -> None:
    team = TeamFactory()
    ep = endpoint(base)
    due = Deployment.objects.create(
        team=team,
        adapter=stored_adapter(team, base),
        endpoint=ep,
        served_name="a",
        next_attempt_at=timezone.now() - timedelta(seconds=1),
    )
    later = Deployment.objects.create(
        team=team,
        adapter=stored_adapter(team, base),
        endpoint=ep,
        served_name="b",
        next_attempt_at=timezone.now() + timedelta(minutes=5),
    )
    stalled = Deployment.objects.create(
        team=team,
        adapter=stored_adapter(team, base),
        endpoint=ep,
        served_name="c",
        status="deploying",
        attempts=1,
    )
    Deployment.objects.filter(pk=stalled.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    sent = deployments_due()
    assert due.public_id in sent and stalled.public_id in sent and later.public_id not in sent
    stalled.refresh_from_db()
    assert stalled.status == "pending"


def test_endpoints_sync_creates_then_updates_and_names_a_bad_entry(base: BaseModel) -> None:
    entry = {
        "name": "vllm",
        "kind": "vllm",
        "url": "http://vllm:8000/v1",
        "base_models": {base.name: "meta/base"},
        "adapter_root": "/var/lib/tailor/adapters",
        "served_adapter_root": "/adapters",
        "max_lora_rank": 64,
        "auto_deploy": True,
    }
    [created] = endpoints_sync(entries=[entry])
    assert created.shared and created.base_url == "http://vllm:8000" and created.auto_deploy_all_teams
    [updated] = endpoints_sync(entries=[{**entry, "max_lora_rank": 128}])
    assert updated.pk == created.pk and updated.max_lora_rank == 128
    with pytest.raises(InvalidRequest) as bad:
        endpoints_sync(entries=[entry, {**entry, "name": "bad", "max_lora_rank": 100}])
    assert "entry 2" in bad.value.message and "max_lora_rank" in bad.value.message
    # A fresh stack lists its base models before anyone registered them: the endpoint is kept.
    [early] = endpoints_sync(entries=[{**entry, "base_models": {"not-registered-yet": "x"}}])
    assert early.served_models == {"not-registered-yet": "x"}


def test_routing_keeps_teams_apart_and_prefers_healthy_endpoints(base: BaseModel) -> None:
    team, other = TeamFactory(), TeamFactory()
    adapter = stored_adapter(team, base)
    sick = endpoint(base, name="sick", health="unhealthy")
    well = endpoint(base, name="well", health="healthy")
    Deployment.objects.create(team=team, adapter=adapter, endpoint=sick, status="live", served_name="on-sick")
    Deployment.objects.create(team=team, adapter=adapter, endpoint=well, status="live", served_name="on-well")
    assert route_for_model(team=team, model=adapter.name).endpoint_name == "well"
    with pytest.raises(NotFound) as hidden:
        route_for_model(team=other, model=adapter.name)
    assert hidden.value.code == "model_not_found"
    private = endpoint(base, team=other, name="private", served_models={base.name: "their-base"})
    assert route_for_model(team=other, model=base.name).endpoint_name == private.name
    assert route_for_model(team=team, model=base.name).endpoint_name in ("sick", "well")
