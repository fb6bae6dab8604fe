"""Pushing adapters to inference endpoints, for real: a control worker process runs the push against
protocol-faithful doubles of vLLM and Ollama listening on loopback (tests/doubles), and each case ends
in the deployment's status and reason as a user would read them.

vLLM: shared-volume delivery (files verified and written where the server reads them, then
`/v1/load_lora_adapter`, then a smoke chat), transient 503s retried with backoff, an adapter the server
refuses (400 or 500 depending on the release), runtime LoRA updating switched off, a failed smoke rolled
back, undeploy. The endpoint agent (`tailor worker agent`) for servers that share no volume. Ollama:
blobs by digest, `/api/create` with the error arriving after a 200 as the last NDJSON line, a base
architecture Ollama cannot convert, a version without adapter support, undeploy with `/api/delete`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tailor.registry.models import Deployment, InferenceEndpoint
from tailor.registry.services import (
    IncompatibleAdapter,
    adapter_auto_deploy,
    deployment_create,
    deployment_undeploy,
    endpoint_check_health,
)
from tailor.tuning.models import Adapter, BaseModel

from tests.doubles.ollama import OllamaDouble
from tests.doubles.vllm import VLLMDouble
from tests.tailor.adapter_factories import WEIGHTS, llama_base, stored_adapter
from tests.tailor.factories import TeamFactory
from tests.tailor.processes import PlatformProcess, platform_env, start_platform_process, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def base(db: None) -> BaseModel:
    return llama_base()


@pytest.fixture
def vllm(tmp_path: Path) -> Iterator[VLLMDouble]:
    with VLLMDouble(max_lora_rank=64) as double:
        yield double


def vllm_endpoint(double: VLLMDouble, base: BaseModel, root: Path, **fields: Any) -> InferenceEndpoint:
    root.mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "team": None,
        "name": f"vllm-{uuid.uuid4().hex[:6]}",
        "kind": InferenceEndpoint.Kind.VLLM,
        "base_url": double.url,
        "served_models": {base.name: "tailor-tiny"},
        "max_lora_rank": 64,
        "delivery": InferenceEndpoint.Delivery.SHARED_VOLUME,
        "adapter_root": str(root),
        "served_adapter_root": str(root),
        **fields,
    }
    return InferenceEndpoint.objects.create(**values)


def settled(
    deployment: Deployment, *statuses: str, timeout: float = 60, worker: PlatformProcess
) -> Deployment:
    return wait_for(
        lambda: (row := Deployment.objects.get(pk=deployment.pk)).status in statuses and row,
        timeout=timeout,
        message=f"{deployment.public_id} to be {' or '.join(statuses)}\n{worker.log()[-3000:]}",
    )


def push(adapter: Adapter, endpoint: InferenceEndpoint, worker: PlatformProcess) -> Deployment:
    """Ask for the deployment as a client would and wait until the push settled."""
    requested = deployment_create(team=adapter.team, adapter=adapter, endpoint=endpoint)
    return settled(requested, "live", "failed", worker=worker)


def loads(double: Any) -> list[dict[str, Any]]:
    return [r["body"] for r in double.requests if r["path"] == "/v1/load_lora_adapter"]


# vLLM, shared volume --------------------------------------------------------------------------------------


def test_push_writes_verified_files_loads_smokes_and_goes_live(
    control_worker: PlatformProcess, vllm: VLLMDouble, base: BaseModel, tmp_path: Path
) -> None:
    endpoint = vllm_endpoint(vllm, base, tmp_path / "adapters")
    adapter = stored_adapter(TeamFactory(), base)
    deployment = push(adapter, endpoint, control_worker)
    assert deployment.status == "live", deployment.last_error
    assert deployment.attempts == 1 and deployment.live_at is not None and deployment.last_error == ""
    [load] = loads(vllm)
    assert load["lora_name"] == adapter.name and load["lora_path"] == deployment.adapter_path
    folder = Path(deployment.adapter_path)
    assert folder.parent == tmp_path / "adapters"
    assert (folder / "adapter_model.safetensors").read_bytes() == WEIGHTS
    assert not (folder / "metrics.csv").exists() and not any(
        p.name.startswith(".") for p in folder.parent.iterdir()
    )
    smoke = [r for r in vllm.requests if r["path"] == "/v1/chat/completions"]
    assert smoke and smoke[-1]["body"]["model"] == adapter.name
    assert adapter.name in [card["id"] for card in vllm.models()]


def test_transient_failures_are_retried_with_backoff(
    control_worker: PlatformProcess, vllm: VLLMDouble, base: BaseModel, tmp_path: Path
) -> None:
    endpoint = vllm_endpoint(vllm, base, tmp_path / "adapters")
    adapter = stored_adapter(TeamFactory(), base)
    vllm.fail_next(
        "/v1/load_lora_adapter",
        503,
        {"error": {"message": "busy", "type": "ServiceUnavailable", "code": 503}},
    )
    vllm.fail_next(
        "/v1/load_lora_adapter",
        503,
        {"error": {"message": "busy", "type": "ServiceUnavailable", "code": 503}},
    )
    deployment = push(adapter, endpoint, control_worker)
    assert deployment.status == "live", deployment.last_error
    assert deployment.attempts == 3


@pytest.mark.parametrize("invalid_status", [500, 400], ids=["vllm-main-500", "vllm-legacy-400"])
def test_an_adapter_the_server_refuses_fails_with_its_words(
    control_worker: PlatformProcess, base: BaseModel, tmp_path: Path, invalid_status: int
) -> None:
    # The gate lets use_rslora through; a server configured stricter than the endpoint says (rank 8 here
    # while the endpoint row claims 64) refuses, and the deployment says so in vLLM's own words.
    with VLLMDouble(max_lora_rank=8, invalid_adapter_status=invalid_status) as double:
        endpoint = vllm_endpoint(double, base, tmp_path / "adapters")
        adapter = stored_adapter(TeamFactory(), base, r=32, lora_alpha=64)
        deployment = push(adapter, endpoint, control_worker)
    assert deployment.status == "failed" and deployment.attempts == 1
    assert "LoRA rank 32 is greater than max_lora_rank 8" in deployment.last_error
    assert str(invalid_status) in deployment.last_error


def test_runtime_lora_updating_switched_off_is_explained(
    control_worker: PlatformProcess, base: BaseModel, tmp_path: Path
) -> None:
    with VLLMDouble(runtime_updating=False) as double:
        endpoint = vllm_endpoint(double, base, tmp_path / "adapters")
        adapter = stored_adapter(TeamFactory(), base)
        deployment = push(adapter, endpoint, control_worker)
    assert deployment.status == "failed" and deployment.reason_code == "runtime_lora_updating_disabled"
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in deployment.last_error


def test_a_failed_smoke_request_rolls_the_load_back(
    control_worker: PlatformProcess, base: BaseModel, tmp_path: Path
) -> None:
    team = TeamFactory()
    adapter = stored_adapter(team, base)
    with VLLMDouble(chat_fails_for={adapter.name}) as double:
        endpoint = vllm_endpoint(double, base, tmp_path / "adapters")
        deployment = push(adapter, endpoint, control_worker)
        assert deployment.status == "failed" and deployment.reason_code == "smoke_failed"
        assert "unloaded" in deployment.last_error
        assert adapter.name not in [card["id"] for card in double.models()]
        assert [
            r["body"]["lora_name"] for r in double.requests if r["path"] == "/v1/unload_lora_adapter"
        ] == [adapter.name]
    assert not any((tmp_path / "adapters").iterdir()), "the delivered files were removed too"


def test_undeploy_unloads_and_removes_the_files(
    control_worker: PlatformProcess, vllm: VLLMDouble, base: BaseModel, tmp_path: Path
) -> None:
    endpoint = vllm_endpoint(vllm, base, tmp_path / "adapters")
    adapter = stored_adapter(TeamFactory(), base)
    live = push(adapter, endpoint, control_worker)
    assert live.status == "live", live.last_error
    gone = settled(deployment_undeploy(deployment=live), "undeployed", worker=control_worker)
    assert gone.finished_at is not None
    assert adapter.name not in [card["id"] for card in vllm.models()]
    assert not Path(live.adapter_path).exists()


def test_adapters_a_restarted_server_forgot_are_pushed_again(
    control_worker: PlatformProcess, vllm: VLLMDouble, base: BaseModel, tmp_path: Path
) -> None:
    endpoint = vllm_endpoint(vllm, base, tmp_path / "adapters")
    adapter = stored_adapter(TeamFactory(), base)
    live = push(adapter, endpoint, control_worker)
    assert live.status == "live", live.last_error
    vllm.loras.clear()  # vLLM keeps runtime-loaded adapters in memory only: a restart forgets them

    checked = endpoint_check_health(endpoint=endpoint)
    assert checked.health == "healthy"
    again = settled(live, "live", "failed", worker=control_worker)
    assert again.status == "live" and len(loads(vllm)) == 2
    assert adapter.name in [card["id"] for card in vllm.models()]


def test_an_incompatible_adapter_is_refused_before_anything_is_pushed(
    vllm: VLLMDouble, base: BaseModel, tmp_path: Path
) -> None:
    endpoint = vllm_endpoint(vllm, base, tmp_path / "adapters", max_lora_rank=16)
    adapter = stored_adapter(TeamFactory(), base, r=64, lora_alpha=128, use_dora=True)
    with pytest.raises(IncompatibleAdapter) as refused:
        deployment_create(team=adapter.team, adapter=adapter, endpoint=endpoint)
    message = refused.value.message
    assert "64" in message and "16" in message and "DoRA" in message
    assert not Deployment.objects.exists() and vllm.requests == []

    # Through auto-deploy the refusal is recorded where the team sees it, and still nothing is pushed.
    endpoint.auto_deploy_all_teams = True
    endpoint.save()
    [recorded] = adapter_auto_deploy(adapter=adapter)
    assert recorded.status == "failed" and recorded.auto and "DoRA" in recorded.last_error
    assert vllm.requests == []


# The endpoint agent ------------------------------------------------------------------------------------


def test_the_endpoint_agent_delivers_to_a_server_that_shares_no_volume(
    control_worker: PlatformProcess, vllm: VLLMDouble, base: BaseModel, tmp_path: Path, storage_url: str
) -> None:
    name = f"agent-{uuid.uuid4().hex[:6]}"
    endpoint = vllm_endpoint(
        vllm, base, tmp_path / "unused", name=name, delivery=InferenceEndpoint.Delivery.AGENT
    )
    agent_dir = tmp_path / "agent-adapters"
    env = platform_env(
        tmp_path, storage_url, TAILOR_AGENT_API_URL=vllm.url, TAILOR_AGENT_ADAPTER_DIR=str(agent_dir)
    )
    for key in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE"):
        env.pop(key)  # an agent node has no database
    agent = start_platform_process(
        "agent", ["worker", "agent", "--endpoint", name], env, tmp_path, ready=lambda p: " ready." in p.log()
    )
    try:
        adapter = stored_adapter(TeamFactory(), base)
        deployment = push(adapter, endpoint, agent)
        assert deployment.status == "live", (deployment.last_error, agent.log()[-2000:])
        [load] = loads(vllm)
        assert Path(load["lora_path"]).parent == agent_dir
        assert (Path(load["lora_path"]) / "adapter_model.safetensors").read_bytes() == WEIGHTS
        gone = settled(deployment_undeploy(deployment=deployment), "undeployed", worker=agent)
        assert gone.status == "undeployed" and not Path(load["lora_path"]).exists()
    finally:
        agent.stop()


# Ollama ---------------------------------------------------------------------------------------------------


def ollama_endpoint(double: OllamaDouble, base: BaseModel) -> InferenceEndpoint:
    return InferenceEndpoint.objects.create(
        team=None,
        name=f"ollama-{uuid.uuid4().hex[:6]}",
        kind=InferenceEndpoint.Kind.OLLAMA,
        base_url=double.url,
        served_models={base.name: "llama3.2:1b"},
        max_lora_rank=64,
        delivery=InferenceEndpoint.Delivery.HTTP,
    )


def test_ollama_push_uploads_blobs_creates_the_model_and_undeploys(
    control_worker: PlatformProcess, base: BaseModel
) -> None:
    with OllamaDouble() as double:
        endpoint = ollama_endpoint(double, base)
        adapter = stored_adapter(TeamFactory(), base)
        deployment = push(adapter, endpoint, control_worker)
        assert deployment.status == "live", deployment.last_error
        creates = [r["body"] for r in double.requests if r["path"] == "/api/create"]
        assert creates[-1]["from"] == "llama3.2:1b" and creates[-1]["model"] == deployment.served_name
        endpoint.refresh_from_db()
        assert endpoint.server_version == double.version, "the Ollama version seen at push time is recorded"
        assert set(creates[-1]["adapters"]) == {"adapter_config.json", "adapter_model.safetensors"}
        assert (
            creates[-1]["adapters"]["adapter_model.safetensors"]
            == "sha256:" + hashlib.sha256(WEIGHTS).hexdigest()
        )
        assert deployment.served_name in [m["name"] for m in double.tags()]
        gone = settled(deployment_undeploy(deployment=deployment), "undeployed", worker=control_worker)
        assert gone.status == "undeployed" and deployment.served_name not in [
            m["name"] for m in double.tags()
        ]


def test_ollama_error_after_the_first_progress_line_fails_the_deployment(
    control_worker: PlatformProcess, base: BaseModel
) -> None:
    with OllamaDouble(architecture="qwen2") as double:
        endpoint = ollama_endpoint(double, base)
        adapter = stored_adapter(TeamFactory(), base)
        deployment = push(adapter, endpoint, control_worker)
    assert deployment.status == "failed" and "unsupported architecture" in deployment.last_error


def test_an_ollama_without_adapter_support_is_reported_as_such(
    control_worker: PlatformProcess, base: BaseModel
) -> None:
    with OllamaDouble(version="0.35.0", adapters_removed=True) as double:
        endpoint = ollama_endpoint(double, base)
        adapter = stored_adapter(TeamFactory(), base)
        deployment = push(adapter, endpoint, control_worker)
    assert deployment.status == "failed" and deployment.reason_code == "ollama_adapters_unsupported"
    assert "0.35.0" in deployment.last_error
