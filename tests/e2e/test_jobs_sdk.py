"""Fine-tuning end to end through the official openai SDK: a live API server, a real control worker, beat,
and `tailor worker gpu` processes training the tiny model for real (QLoRA: NF4 4-bit base on the CPU).

Covered: upload → create → poll → succeeded for SFT (events with metrics, checkpoints, the results CSV,
the fine-tuned model in /v1/models, a signed webhook the SDK verifies) and for DPO; cancelling a running
job; pausing and resuming one, which continues from its checkpoint; `kill -9` of the GPU worker in the
middle of training, after which a second worker resumes from the newest checkpoint and the job ends with
exactly one adapter, unchanged by a redelivered `job_finished`.

Leases are short here (TAILOR_LEASE_SECONDS=10, heartbeats every 2 s, reconciler every 2 s) so that a
lost worker is noticed within seconds.
"""

from __future__ import annotations

import csv
import io
import signal
from typing import Any

import httpx
import pytest
from openai import OpenAI
from tailor.tuning.models import Adapter, FineTuningJob

from tests.e2e.harness import LONG, LONG_STEPS, QUICK, TRAINING_TIMEOUT, Platform, upload, wait_job
from tests.tailor.processes import wait_for
from tests.tailor.webhook_receiver import webhook_receiver
from workers.app import JOB_FINISHED_TASK, app

pytestmark = [pytest.mark.integration, pytest.mark.training, pytest.mark.django_db(transaction=True)]


def internal_status(job_id: str) -> str:
    return FineTuningJob.objects.get(public_id=job_id).status


def all_events(client: OpenAI, job_id: str) -> list[Any]:
    """Every event, oldest first (the API pages newest first; the SDK follows `after` by itself)."""
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100))))


def first_checkpoint(client: OpenAI, platform: Platform, job_id: str) -> int:
    return wait_for(
        lambda: [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job_id)],
        timeout=TRAINING_TIMEOUT,
        interval=0.3,
        message=f"a checkpoint of {job_id}\n{platform.logs()}",
    )[0]


def test_supervised_qlora_job_end_to_end(client: OpenAI, platform: Platform, live_server: Any) -> None:
    with webhook_receiver() as receiver:
        registered = httpx.post(
            f"{live_server.url}/api/v1/webhooks",
            json={"url": receiver.url},
            headers={"Authorization": f"Bearer {client.api_key}"},
        ).json()
        training, validation = upload(client, "train.jsonl", 24), upload(client, "heldout.jsonl", 10)
        created = client.fine_tuning.jobs.create(
            model="tailor-tiny",
            training_file=training,
            validation_file=validation,
            suffix="e2e",
            seed=7,
            metadata={"suite": "e2e"},
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {**QUICK, "lora_r": 8, "quantization": "nf4"}},
            },
        )
        assert created.status in ("validating_files", "queued") and created.id.startswith("ftjob-")
        job = wait_job(client, platform, created.id, "succeeded", "failed", "cancelled")
        assert job.status == "succeeded", (job.error, platform.logs())
        assert receiver.arrived.wait(30), platform.logs()

    assert job.fine_tuned_model == f"ft:tailor-tiny:{job.organization_id}:e2e:{job.id[-8:]}"
    assert job.hyperparameters.n_epochs == 1 and job.hyperparameters.batch_size == 4
    shown = job.method.supervised.hyperparameters.model_dump()
    assert shown["lora_r"] == 8 and shown["quantization"] == "nf4" and shown["lora_alpha"] == 16
    assert job.trained_tokens and job.trained_tokens > 0 and job.finished_at >= job.created_at
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"suite": "e2e"})] == [job.id]

    events = all_events(client, job.id)
    messages = [e.message for e in events]
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert "Fine-tuning job started" in messages and messages[-1].startswith("New fine-tuned model created")
    metrics = [e.data for e in events if e.type == "metrics" and e.data.get("train_loss") is not None]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6] and all(m["total_steps"] == 6 for m in metrics)
    assert all(m["train_loss"] > 0 and 0 <= m["train_mean_token_accuracy"] <= 1 for m in metrics)
    assert any(e.type == "metrics" and e.data.get("valid_loss") is not None for e in events)

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints and checkpoints[0].step_number == 6 and checkpoints[0].id.startswith("ftckpt-")
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-6"

    [results] = job.result_files
    rows = list(csv.DictReader(io.StringIO(client.files.content(results).text)))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert set(rows[0]) == {"step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"}
    assert rows[-1]["valid_loss"] != ""

    assert job.fine_tuned_model in [m.id for m in client.models.list()]
    adapter = Adapter.objects.get(job__public_id=job.id)
    assert (adapter.name, adapter.rank, adapter.alpha) == (job.fine_tuned_model, 8, 16)
    assert "adapter_model.safetensors" in adapter.files

    [request] = receiver.requests
    event = OpenAI(api_key="unused", webhook_secret=registered["secret"]).webhooks.unwrap(
        request.body, request.headers
    )
    assert (event.type, event.data.id) == ("fine_tuning.job.succeeded", job.id)


def test_dpo_job_end_to_end(client: OpenAI, platform: Platform) -> None:
    training = upload(client, "preference_train.jsonl", 16)
    created = client.fine_tuning.jobs.create(
        model="tailor-tiny",
        training_file=training,
        method={"type": "dpo", "dpo": {"hyperparameters": {**QUICK, "beta": 0.1}}},
    )
    job = wait_job(client, platform, created.id, "succeeded", "failed", "cancelled")
    assert job.status == "succeeded", (job.error, platform.logs())
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1
    assert job.fine_tuned_model and job.result_files
    metrics = [e.data for e in all_events(client, job.id) if e.type == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and "reward_margin" in metrics[-1]
    assert Adapter.objects.filter(job__public_id=job.id).count() == 1


def test_cancel_a_running_job(client: OpenAI, platform: Platform) -> None:
    created = client.fine_tuning.jobs.create(
        model="tailor-tiny",
        training_file=upload(client, "train.jsonl", 64),
        method={"type": "supervised", "supervised": {"hyperparameters": LONG}},
    )
    wait_for(
        lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(created.id)),
        timeout=TRAINING_TIMEOUT,
        message=f"training to begin\n{platform.logs()}",
    )
    assert client.fine_tuning.jobs.cancel(created.id).status == "cancelled"
    wait_for(
        lambda: internal_status(created.id) == "cancelled",
        timeout=60,
        message=f"the runner to stop\n{platform.logs()}",
    )
    job = client.fine_tuning.jobs.retrieve(created.id)
    assert job.status == "cancelled" and job.finished_at and job.fine_tuned_model is None
    steps = [e.data["step"] for e in all_events(client, job.id) if e.type == "metrics"]
    assert max(steps) < LONG_STEPS  # stopped before the end
    assert not Adapter.objects.filter(job__public_id=job.id).exists()


def test_pause_and_resume_continue_from_the_checkpoint(client: OpenAI, platform: Platform) -> None:
    created = client.fine_tuning.jobs.create(
        model="tailor-tiny",
        training_file=upload(client, "train.jsonl", 64),
        method={"type": "supervised", "supervised": {"hyperparameters": LONG}},
    )
    first_checkpoint(client, platform, created.id)
    assert client.fine_tuning.jobs.pause(created.id).status == "paused"
    wait_for(
        lambda: internal_status(created.id) == "paused", timeout=60, message=f"the pause\n{platform.logs()}"
    )
    paused_at = max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(created.id))
    assert paused_at < LONG_STEPS

    assert client.fine_tuning.jobs.resume(created.id).status == "queued"
    job = wait_job(client, platform, created.id, "succeeded", "failed", "cancelled")
    assert job.status == "succeeded", (job.error, platform.logs())

    messages = [(e.message, e.data) for e in all_events(client, job.id)]
    resumed_at = next(
        i for i, (m, _) in enumerate(messages) if m == f"Resuming from checkpoint at step {paused_at}"
    )
    before = [d["step"] for m, d in messages[:resumed_at] if m.startswith("Step ") and "training loss" in m]
    after = [d["step"] for m, d in messages[resumed_at:] if m.startswith("Step ") and "training loss" in m]
    assert max(before) >= paused_at and after[0] == paused_at + 1 and after[-1] == LONG_STEPS
    assert after == list(range(paused_at + 1, LONG_STEPS + 1))  # continued, not restarted
    assert Adapter.objects.filter(job__public_id=job.id).count() == 1


def test_a_killed_gpu_worker_is_replaced_and_the_job_resumes(client: OpenAI, platform: Platform) -> None:
    created = client.fine_tuning.jobs.create(
        model="tailor-tiny",
        training_file=upload(client, "train.jsonl", 64),
        method={"type": "supervised", "supervised": {"hyperparameters": LONG}},
    )
    first_checkpoint(client, platform, created.id)
    killed = platform.gpu
    assert killed is not None
    killed.process.send_signal(signal.SIGKILL)
    killed.process.wait(timeout=30)
    platform.gpu = platform.start_gpu_worker()

    job = wait_job(client, platform, created.id, "succeeded", "failed", "cancelled")
    assert job.status == "succeeded", (job.error, platform.logs())
    messages = [e.message for e in all_events(client, job.id)]
    lost = next(m for m in messages if m.startswith("Lost contact with the worker"))
    step = int(lost.rsplit("checkpoint at step ", 1)[1])
    assert f"Resuming from checkpoint at step {step}" in messages
    assert "Fine-tuning job started (attempt 2)" in messages
    row = FineTuningJob.objects.get(public_id=job.id)
    assert (row.attempt, row.lost_attempts) == (2, 1)
    assert Adapter.objects.filter(job=row).count() == 1

    # The finished report delivered again changes nothing.
    result = {
        "adapter_prefix": Adapter.objects.get(job=row).prefix,
        "metrics_key": f"teams/{row.team_id}/jobs/{job.id}/metrics.csv",
    }
    again = app.send_task(
        JOB_FINISHED_TASK, kwargs={"job_id": job.id, "attempt": 2, "outcome": "succeeded", "result": result}
    )
    wait_for(
        lambda: f"[{again.id}] succeeded" in platform.control.log(),
        timeout=30,
        message="the duplicate report",
    )
    assert Adapter.objects.filter(job=row).count() == 1
    assert FineTuningJob.objects.get(pk=row.pk).updated_at == row.updated_at
    assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
