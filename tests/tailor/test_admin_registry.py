"""The registry's web admin: a team's owners and admins register endpoints (credential write-only) and
auto-deploy policies through the registry's services, deploy and undeploy adapter versions and move
aliases; members read deployments and aliases; shared endpoints are the operator's."""

from __future__ import annotations

import pytest
from django.test import Client
from tailor.registry.models import AdapterAlias, AutoDeployPolicy, Deployment, InferenceEndpoint
from tailor.registry.services import alias_set

from tests.browser.world import World, build_world
from tests.tailor.adapter_factories import stored_adapter

pytestmark = pytest.mark.django_db

ENDPOINTS = "/admin/registry/inferenceendpoint/"
ADAPTERS = "/admin/tuning/adapter/"
SECRET = "sk-endpoint-credential-1234"


@pytest.fixture(autouse=True)
def _unconsumed_control_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    # Deploy messages published after commit go to a queue no worker reads: nothing is pushed here.
    monkeypatch.setenv("TAILOR_CONTROL_QUEUE", "control-admin-registry-unconsumed")


@pytest.fixture
def world() -> World:
    return build_world()


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def endpoint_form(world: World, **fields) -> dict:
    return {
        "team": world.alpha.pk,
        "name": "team-vllm",
        "kind": "vllm",
        "base_url": "http://vllm.internal:8000/v1",
        "credential": SECRET,
        "served_models": f'{{"{world.extra["base"].name}": "tiny"}}',
        "max_lora_rank": 16,
        "delivery": "agent",
        "enabled": "on",
        **fields,
    }


def test_a_team_admin_registers_an_endpoint_whose_credential_is_never_shown(world: World) -> None:
    alice = signed_in(world.users["admin"])
    add_page = alice.get(f"{ENDPOINTS}add/").content.decode()
    assert 'name="adapter_root"' not in add_page  # paths on the platform's disk are the operator's

    response = alice.post(f"{ENDPOINTS}add/", endpoint_form(world))
    assert response.status_code == 302, response.content.decode()[:2000]
    endpoint = InferenceEndpoint.objects.get(name="team-vllm")
    # The service normalised the URL and kept the secret.
    assert endpoint.team == world.alpha and endpoint.base_url == "http://vllm.internal:8000"
    assert endpoint.credential == SECRET
    for page in (alice.get(ENDPOINTS), alice.get(f"{ENDPOINTS}{endpoint.pk}/change/")):
        assert SECRET not in page.content.decode()
    assert "set (write-only)" in alice.get(f"{ENDPOINTS}{endpoint.pk}/change/").content.decode()

    # Saving without typing a credential keeps it; typing one replaces it.
    form = endpoint_form(world, credential="", max_lora_rank=32)
    assert alice.post(f"{ENDPOINTS}{endpoint.pk}/change/", form).status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.credential == SECRET and endpoint.max_lora_rank == 32
    alice.post(f"{ENDPOINTS}{endpoint.pk}/change/", endpoint_form(world, credential="new-token"))
    endpoint.refresh_from_db()
    assert endpoint.credential == "new-token"


def test_the_services_refusals_show_on_the_form(world: World) -> None:
    alice = signed_in(world.users["admin"])
    rank = alice.post(f"{ENDPOINTS}add/", endpoint_form(world, max_lora_rank=7)).content.decode()
    assert "max_lora_rank must be one of vLLM&#x27;s values" in rank
    volume = alice.post(f"{ENDPOINTS}add/", endpoint_form(world, delivery="shared_volume")).content.decode()
    assert "shared_volume delivery needs adapter_root" in volume
    unknown = alice.post(
        f"{ENDPOINTS}add/", endpoint_form(world, served_models='{"nope": "x"}')
    ).content.decode()
    assert "served_models names unknown base models: nope" in unknown
    theirs = alice.post(f"{ENDPOINTS}add/", endpoint_form(world, team=world.beta.pk)).content.decode()
    assert "Select a valid choice" in theirs
    assert not InferenceEndpoint.objects.filter(name="team-vllm").exists()


def test_shared_endpoints_are_visible_to_teams_and_changed_only_by_superusers(world: World) -> None:
    shared = world.extra["endpoint"]
    alice = signed_in(world.users["admin"])
    assert "vllm-main" in alice.get(ENDPOINTS).content.decode()
    page = alice.get(f"{ENDPOINTS}{shared.pk}/change/").content.decode()
    assert 'name="_save"' not in page and 'name="base_url"' not in page
    assert alice.post(f"{ENDPOINTS}{shared.pk}/change/", endpoint_form(world)).status_code == 403
    assert alice.post(f"{ENDPOINTS}{shared.pk}/delete/", {"post": "yes"}).status_code == 403
    # Members see no endpoints at all.
    assert signed_in(world.users["member"]).get(ENDPOINTS).status_code == 403


def test_an_endpoint_with_live_adapters_cannot_be_deleted(world: World) -> None:
    operator = world.users["owner"]
    operator.is_superuser = True
    operator.save(update_fields=["is_superuser"])
    root = signed_in(operator)
    shared = world.extra["endpoint"]
    page = root.post(f"{ENDPOINTS}{shared.pk}/delete/", {"post": "yes"}).content.decode()
    assert "protected" in page.lower() and InferenceEndpoint.objects.filter(pk=shared.pk).exists()
    Deployment.objects.filter(endpoint=shared).update(status=Deployment.Status.UNDEPLOYED)
    assert root.post(f"{ENDPOINTS}{shared.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not InferenceEndpoint.objects.filter(pk=shared.pk).exists()


def test_auto_deploy_policies_for_the_teams_own_and_shared_endpoints(world: World) -> None:
    alice = signed_in(world.users["admin"])
    private = InferenceEndpoint.objects.create(
        team=world.beta, name="beta-only", kind="vllm", base_url="http://127.0.0.1:9", delivery="agent"
    )
    form = alice.get("/admin/registry/autodeploypolicy/add/").content.decode()
    assert "vllm-main" in form and "beta-only" not in form
    response = alice.post(
        "/admin/registry/autodeploypolicy/add/",
        {"team": world.alpha.pk, "endpoint": world.extra["endpoint"].pk, "enabled": "on"},
    )
    assert response.status_code == 302
    policy = AutoDeployPolicy.objects.get(team=world.alpha)
    assert policy.endpoint == world.extra["endpoint"] and policy.enabled
    forged = alice.post(
        "/admin/registry/autodeploypolicy/add/",
        {"team": world.alpha.pk, "endpoint": private.pk, "enabled": "on"},
    )
    assert "Select a valid choice" in forged.content.decode()
    assert (
        alice.post(f"/admin/registry/autodeploypolicy/{policy.pk}/delete/", {"post": "yes"}).status_code
        == 302
    )
    assert not AutoDeployPolicy.objects.filter(pk=policy.pk).exists()


def test_deploy_and_undeploy_an_adapter_version_from_the_admin(world: World) -> None:
    adapter = world.extra["adapter"]
    team_endpoint = InferenceEndpoint.objects.create(
        team=world.alpha,
        name="alpha-vllm",
        kind="vllm",
        base_url="http://127.0.0.1:9",
        served_models={world.extra["base"].name: "tiny"},
        max_lora_rank=64,
        delivery="agent",
    )
    alice = signed_in(world.users["admin"])
    step = alice.post(ADAPTERS, {"action": "deploy", "_selected_action": [adapter.pk]}).content.decode()
    assert "Deploy to an endpoint" in step and "alpha-vllm" in step
    done = alice.post(
        ADAPTERS,
        {"action": "deploy", "_selected_action": [adapter.pk], "apply": "1", "endpoint": team_endpoint.pk},
        follow=True,
    )
    assert "Deploying 1 adapter version to alpha-vllm." in done.content.decode()
    deployment = Deployment.objects.get(adapter=adapter, endpoint=team_endpoint)
    assert deployment.status == Deployment.Status.PENDING and deployment.team == world.alpha

    # An adapter the endpoint refuses (rank over its limit) is reported with the gate's reasons.
    big = stored_adapter(world.alpha, world.extra["base"], r=128, lora_alpha=256)
    refused = alice.post(
        ADAPTERS,
        {"action": "deploy", "_selected_action": [big.pk], "apply": "1", "endpoint": team_endpoint.pk},
        follow=True,
    ).content.decode()
    assert "cannot be deployed to endpoint" in refused and "rank" in refused
    assert not Deployment.objects.filter(adapter=big).exists()

    alice.post(
        ADAPTERS,
        {"action": "undeploy", "_selected_action": [adapter.pk], "apply": "1", "endpoint": ""},
        follow=True,
    )
    statuses = set(Deployment.objects.filter(adapter=adapter).values_list("status", flat=True))
    assert statuses <= {"undeploying", "undeployed"}


def test_members_read_deployments_and_aliases_but_change_nothing(world: World) -> None:
    adapter = world.extra["adapter"]
    alias_set(team=world.alpha, name="production", adapter=adapter)
    deployment = Deployment.objects.get(adapter=adapter)
    mia = signed_in(world.users["member"])
    assert adapter.name in mia.get("/admin/registry/deployment/").content.decode()
    assert "production" in mia.get("/admin/registry/adapteralias/").content.decode()
    page = mia.get(f"/admin/registry/deployment/{deployment.pk}/change/").content.decode()
    assert ">Undeploy<" not in page
    assert mia.post(f"/admin/registry/deployment/{deployment.pk}/do/undeploy/").status_code == 403
    mia.post(ADAPTERS, {"action": "deploy", "_selected_action": [adapter.pk], "apply": "1", "endpoint": 1})
    assert Deployment.objects.filter(adapter=adapter).count() == 1
    assert Deployment.objects.get(pk=deployment.pk).status == Deployment.Status.LIVE
    carol = signed_in(world.users["beta_owner"])
    assert carol.get(f"/admin/registry/deployment/{deployment.pk}/change/").status_code == 404
    assert carol.get(f"{ADAPTERS}{adapter.pk}/change/").status_code == 404


def test_pointing_and_moving_an_alias_is_the_rollback(world: World) -> None:
    v1 = world.extra["adapter"]
    v2 = stored_adapter(world.alpha, world.extra["base"])
    assert v2.family == v1.family and v2.version == v1.version + 1
    alice = signed_in(world.users["admin"])
    alice.post(
        ADAPTERS, {"action": "point_alias", "_selected_action": [v2.pk], "apply": "1", "name": "production"}
    )
    alias = AdapterAlias.objects.get(team=world.alpha, name="production")
    assert alias.adapter == v2
    step = alice.post(
        "/admin/registry/adapteralias/", {"action": "move", "_selected_action": [alias.pk]}
    ).content.decode()
    assert f"v{v1.version}: {v1.name}" in step
    alice.post(
        "/admin/registry/adapteralias/",
        {"action": "move", "_selected_action": [alias.pk], "apply": "1", "version": v1.pk},
    )
    alias.refresh_from_db()
    assert alias.adapter == v1
    bad = alice.post(
        ADAPTERS, {"action": "point_alias", "_selected_action": [v1.pk], "apply": "1", "name": "Not Valid!"}
    ).content.decode()
    assert "Enter a valid" in bad


def test_an_operator_registers_a_shared_volume_endpoint_for_every_team(world: World) -> None:
    operator = world.users["owner"]
    operator.is_superuser = True
    operator.save(update_fields=["is_superuser"])
    form = endpoint_form(
        world,
        team="",
        name="shared-vllm",
        delivery="shared_volume",
        adapter_root="/srv/tailor/adapters",
        served_adapter_root="/adapters",
        auto_deploy_all_teams="on",
    )
    response = signed_in(operator).post(f"{ENDPOINTS}add/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    endpoint = InferenceEndpoint.objects.get(name="shared-vllm")
    assert endpoint.team is None and endpoint.auto_deploy_all_teams
    assert (endpoint.adapter_root, endpoint.served_adapter_root) == ("/srv/tailor/adapters", "/adapters")
    # A team's admin sees it among the endpoints, read-only.
    page = signed_in(world.users["admin"]).get(f"{ENDPOINTS}{endpoint.pk}/change/").content.decode()
    assert "/srv/tailor/adapters" in page and 'name="_save"' not in page
