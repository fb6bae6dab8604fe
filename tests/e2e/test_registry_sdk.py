"""From a finished job to a chat with the fine-tuned model, end to end: real control worker, beat and GPU
worker processes, Tailor's development serving endpoint (`tailor serve`, which speaks vLLM's LoRA API)
as a shared endpoint with auto-deploy for every team, and the official openai SDK against Tailor's own
base URL for training and inference alike.

Covered: a job succeeds → its adapter is deployed automatically (shared volume + load + smoke) → the
deployment is `live` → `client.chat.completions.create(model=job.fine_tuned_model)` answers held-out
prompts in the trained JSON format while the base model does not (both rates asserted); streaming through
the gateway; a second version of the same family, an alias and a rollback by moving the alias; a rank
above the endpoint's limit refused with the reason and nothing pushed; another team can neither see, call
nor deploy the adapter; undeploy unloads it from the server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import NotFoundError, OpenAI
from tailor.registry.models import Deployment, InferenceEndpoint
from tailor.tuning.models import BaseModel

from gpu_runner.task import format_match, load_task_prompts
from tests.e2e.harness import QUICK, Platform, upload, wait_job
from tests.tailor.factories import TeamFactory, issue_key
from tests.tailor.processes import PlatformProcess, free_port, start_platform_process, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.training, pytest.mark.django_db(transaction=True)]

# The shipped task: 320 examples, 3 epochs of 8 → 120 steps, enough for the adapter to answer held-out
# prompts in the task's JSON shape (gpu_runner/examples/sft.json uses the same settings).
TASK_TRAINING = {
    "n_epochs": 3,
    "batch_size": 8,
    "learning_rate": 0.002,
    "lora_r": 16,
    "quantization": "nf4",
    "max_seq_length": 512,
    "gradient_checkpointing": False,
}
HELD_OUT = 20
DEPLOY_TIMEOUT = 120


@pytest.fixture(scope="module")
def dev_server(platform: Platform, tiny_model_dir: Path) -> Iterator[tuple[PlatformProcess, str, Path]]:
    """`tailor serve` on the tiny model: the development endpoint, reading adapters from `adapters`."""
    port = free_port()
    adapters = platform.home / "served-adapters"
    adapters.mkdir()
    server = start_platform_process(
        "dev-server",
        [
            "serve",
            "--model",
            str(tiny_model_dir),
            "--served-model-name",
            "tailor-tiny",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-loras",
            "4",
            "--max-lora-rank",
            "64",
        ],
        platform.env,
        platform.home,
        ready=lambda proc: "serving tailor-tiny on" in proc.log(),
        timeout=120,
    )
    try:
        yield server, f"http://127.0.0.1:{port}", adapters
    finally:
        server.stop()


@pytest.fixture
def shared_endpoint(dev_server: tuple[PlatformProcess, str, Path], client: OpenAI) -> InferenceEndpoint:
    """The development server registered as a shared endpoint with auto-deploy for every team (as
    `make demo` does), after `client` registered the base model."""
    _, url, adapters = dev_server
    assert BaseModel.objects.filter(name="tailor-tiny").exists()
    return InferenceEndpoint.objects.create(
        team=None,
        name="dev",
        kind=InferenceEndpoint.Kind.VLLM,
        base_url=url,
        served_models={"tailor-tiny": "tailor-tiny"},
        max_lora_rank=64,
        delivery=InferenceEndpoint.Delivery.SHARED_VOLUME,
        adapter_root=str(adapters),
        served_adapter_root=str(adapters),
        auto_deploy_all_teams=True,
    )


def api(client: OpenAI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """Tailor's native API (/api/v1) with the client's key."""
    root = str(client.base_url).rstrip("/").removesuffix("/v1")
    return httpx.request(
        method,
        f"{root}/api/v1{path}",
        headers={"Authorization": f"Bearer {client.api_key}"},
        timeout=30,
        **kwargs,
    )


def live_deployment(client: OpenAI, platform: Platform, model: str) -> dict[str, Any]:
    def live() -> dict[str, Any] | None:
        listed = api(client, "GET", "/deployments", params={"adapter": model}).json()["data"]
        if any(d["status"] == "failed" for d in listed):
            pytest.fail(f"deployment failed: {listed}\n{platform.logs()}")
        return next((d for d in listed if d["status"] == "live"), None)

    return wait_for(live, timeout=DEPLOY_TIMEOUT, interval=0.3, message=f"{model} live\n{platform.logs()}")


def answers(client: OpenAI, model: str, prompts: list[list[dict[str, Any]]]) -> list[str]:
    replies = []
    for messages in prompts:
        completion = client.chat.completions.create(
            model=model, messages=messages, max_tokens=48, temperature=0
        )
        assert completion.model == model
        replies.append(completion.choices[0].message.content or "")
    return replies


def rate(replies: list[str]) -> float:
    return sum(format_match(reply) for reply in replies) / len(replies)


def train(client: OpenAI, platform: Platform, training: str, hyperparameters: dict[str, Any]) -> Any:
    created = client.fine_tuning.jobs.create(
        model="tailor-tiny",
        training_file=training,
        suffix="support",
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    )
    job = wait_job(client, platform, created.id, "succeeded", "failed", "cancelled", timeout=600)
    assert job.status == "succeeded", (job.error, platform.logs())
    return job


def served_models(url: str) -> list[str]:
    return [card["id"] for card in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]


def test_a_finished_job_is_served_and_answers_in_the_trained_format(
    client: OpenAI,
    platform: Platform,
    shared_endpoint: InferenceEndpoint,
    dev_server: tuple[PlatformProcess, str, Path],
) -> None:
    _, server_url, adapters = dev_server
    prompts = load_task_prompts("heldout")[:HELD_OUT]

    # 1. Train on the task; the shared endpoint's auto-deploy makes the adapter live without a request.
    job = train(client, platform, upload(client, "train.jsonl", 320), TASK_TRAINING)
    seen_succeeded = time.monotonic()
    first = live_deployment(client, platform, job.fine_tuned_model)
    print(f"\njob seen succeeded → deployment seen live: {time.monotonic() - seen_succeeded:.2f} s")
    assert first["auto"] is True and first["endpoint"]["name"] == "dev" and first["attempts"] == 1
    assert job.fine_tuned_model in served_models(server_url)
    assert any(adapters.iterdir()), "the adapter folder was written under the shared volume"

    # 2. Chat through Tailor's own base URL: the adapter answers in the trained format, the base does not.
    tuned = answers(client, job.fine_tuned_model, prompts)
    base = answers(client, "tailor-tiny", prompts)
    tuned_rate, base_rate = rate(tuned), rate(base)
    print(
        f"held-out format match over {len(prompts)} prompts: base {base_rate:.2f}, fine-tuned {tuned_rate:.2f}"
    )
    print(f"e.g. base {base[0]!r}\n     fine-tuned {tuned[0]!r}")
    assert tuned_rate >= 0.8, tuned[:5]
    assert base_rate <= 0.2, base[:5]

    # Streaming through the gateway assembles to the same greedy answer.
    stream = client.chat.completions.create(
        model=job.fine_tuned_model, messages=prompts[0], max_tokens=48, temperature=0, stream=True
    )
    chunks = list(stream)
    assert len(chunks) > 2 and all(chunk.model == job.fine_tuned_model for chunk in chunks)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == tuned[0]

    # 3. Another team sees nothing of it: not listed, not callable, not deployable.
    other = OpenAI(base_url=client.base_url, api_key=issue_key(TeamFactory()).secret, max_retries=0)
    assert job.fine_tuned_model not in [m.id for m in other.models.list()]
    with pytest.raises(NotFoundError):
        other.chat.completions.create(model=job.fine_tuned_model, messages=prompts[0], max_tokens=4)
    refused = api(other, "POST", "/deployments", json={"adapter": job.fine_tuned_model, "endpoint": "dev"})
    assert refused.status_code == 404, refused.text
    assert api(other, "GET", f"/adapters/{job.fine_tuned_model}").status_code == 404

    # 4. An endpoint whose max LoRA rank is below the adapter's rank refuses it, with the reason; nothing
    # reaches the server.
    narrow = api(
        client,
        "POST",
        "/endpoints",
        json={
            "name": "narrow",
            "kind": "vllm",
            "base_url": server_url,
            "served_models": {"tailor-tiny": "tailor-tiny"},
            "max_lora_rank": 8,
            "delivery": "shared_volume",
            "adapter_root": str(adapters),
        },
    )
    assert narrow.status_code == 201, narrow.text
    before = served_models(server_url)
    refused = api(
        client, "POST", "/deployments", json={"adapter": job.fine_tuned_model, "endpoint": "narrow"}
    )
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert (
        error["code"] == "incompatible_adapter" and "rank 16" in error["message"] and "8" in error["message"]
    )
    assert served_models(server_url) == before
    assert not Deployment.objects.filter(endpoint__name="narrow").exists()

    # 5. A second version of the family, an alias, and a rollback by moving the alias.
    second = train(
        client, platform, upload(client, "train.jsonl", 24), {**QUICK, "lora_r": 8, "quantization": "nf4"}
    )
    live_deployment(client, platform, second.fine_tuned_model)
    versions = api(
        client, "GET", "/adapters", params={"family": job.fine_tuned_model.rsplit(":", 1)[0]}
    ).json()
    assert [a["version"] for a in versions["data"]] == [2, 1]
    moved = api(client, "POST", "/aliases", json={"name": "production", "adapter": second.fine_tuned_model})
    assert moved.status_code in (200, 201), moved.text
    alias = moved.json()["id"]
    assert alias == f"{job.fine_tuned_model.rsplit(':', 1)[0]}@production"
    assert alias in [m.id for m in client.models.list()]
    probe = prompts[:3]
    on_v2, direct_v1, direct_v2 = (
        answers(client, alias, probe),
        tuned[:3],
        answers(client, second.fine_tuned_model, probe),
    )
    assert on_v2 == direct_v2 and direct_v1 != direct_v2
    rollback = api(client, "POST", "/aliases", json={"name": "production", "adapter": job.fine_tuned_model})
    assert rollback.status_code in (200, 201) and rollback.json()["version"] == 1, rollback.text
    assert answers(client, alias, probe) == direct_v1

    # 6. Undeploy: the server no longer holds it and the gateway says it is not deployed.
    undeployed = api(client, "DELETE", f"/deployments/{first['id']}")
    assert undeployed.status_code in (200, 202), undeployed.text
    wait_for(
        lambda: api(client, "GET", f"/deployments/{first['id']}").json()["status"] == "undeployed",
        timeout=60,
        message=f"undeployed\n{platform.logs()}",
    )
    assert job.fine_tuned_model not in served_models(server_url)
    with pytest.raises(NotFoundError) as gone:
        client.chat.completions.create(model=job.fine_tuned_model, messages=prompts[0], max_tokens=4)
    assert "not deployed" in json.dumps(gone.value.body)
