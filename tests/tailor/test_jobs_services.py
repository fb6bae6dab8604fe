"""The job lifecycle through the services the API and the control worker call: creation, files that are
still validating, the reports of GPU workers (fenced by attempt, idempotent under redelivery), cancel,
pause and resume with their stop markers, and the reconciler."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone
from tailor.core.errors import InvalidRequest
from tailor.core.objectstore import object_store
from tailor.files.models import File
from tailor.tuning import protocol
from tailor.tuning.models import Adapter, Checkpoint, FineTuningJob, JobEvent
from tailor.tuning.scheduler import clean_orphaned_uploads, reconcile, schedule_jobs
from tailor.tuning.services import (
    job_cancel,
    job_create,
    job_pause,
    job_report_checkpoint,
    job_report_events,
    job_report_finished,
    job_report_heartbeat,
    job_report_started,
    job_resume,
    jobs_files_validated,
)
from tailor.webhooks.models import WebhookDelivery, WebhookEndpoint

from tests.tailor.jobs_factories import (
    BaseModelFactory,
    create_job,
    dataset_file,
    fresh,
    isolated_gpu_queue,
    runner_event,
    store_adapter,
    take_dispatches,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def gpu_queue(settings) -> Iterator[str]:
    yield from isolated_gpu_queue(settings)


Status = FineTuningJob.Status


def events_of(job: FineTuningJob) -> list[str]:
    """The job's event messages, oldest first."""
    return list(JobEvent.objects.filter(job=job).order_by("pk").values_list("message", flat=True))


def running_job(team, **kwargs) -> FineTuningJob:
    """A job dispatched (attempt 1) whose runner started."""
    job = create_job(team, **kwargs)
    assert job.public_id in schedule_jobs()
    assert job_report_started(job_id=job.public_id, attempt=1, worker="gpu-1")
    return fresh(job)


# Creation -------------------------------------------------------------------------------------------


def test_a_job_with_validated_files_is_queued_with_resolved_hyperparameters(team) -> None:
    training = dataset_file(team, examples=20)
    job = create_job(team, training=training, hyperparameters={"lora_r": 8, "batch_size": 4}, suffix="demo")
    assert job.status == Status.QUEUED and job.public_id.startswith("ftjob-")
    assert job.gpu_class == "default" and job.memory_estimate["total"] > 0
    # 20 examples × 3 epochs < 100: "auto" n_epochs is floor(100 / 20) = 5 (OpenAI's rule).
    resolved = job.resolved_hyperparameters
    assert (resolved["n_epochs"], resolved["batch_size"], resolved["lora_r"], resolved["lora_alpha"]) == (
        5,
        4,
        8,
        16,
    )
    assert resolved["learning_rate_multiplier"] == 1.0
    assert job.spec == {
        "spec_version": 1,
        "method": "supervised",
        "seed": job.seed,
        "hyperparameters": {"lora_r": 8, "batch_size": 4},
    }
    assert 0 <= job.seed < 2**31
    assert events_of(job) == [
        f"Created fine-tuning job: {job.public_id}",
        "Files validated, moving job to queued state",
    ]


def test_refused_up_front_with_the_field_named(team, other_team) -> None:
    base = BaseModelFactory()
    chat = dataset_file(team)
    cases = [
        ({"model": "no-such-model"}, "model"),
        ({"training_file": dataset_file(other_team).public_id}, "training_file"),
        ({"training_file": "file-" + "x" * 24}, "training_file"),
        (
            {"training_file": dataset_file(team, status=File.Status.ERROR, details="line 3: bad").public_id},
            "training_file",
        ),
        ({"training_file": dataset_file(team, data_format="preference").public_id}, "training_file"),
        ({"training_file": dataset_file(team, purpose=File.Purpose.BATCH).public_id}, "training_file"),
        ({"validation_file": chat.public_id}, "validation_file"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"lora_r": 0}}}},
            "method.supervised.hyperparameters.lora_r",
        ),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"lora_rank": 8}}}},
            "method.supervised.hyperparameters.lora_rank",
        ),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}},
            "method.supervised.hyperparameters.beta",
        ),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"method": {"type": "reinforcement"}}, "method.type"),
        ({"method": {"type": "dpo", "supervised": {}}}, "method.supervised"),
        # 80 GiB of activations fit no 24 GiB class.
        (
            {
                "method": {
                    "type": "supervised",
                    "supervised": {
                        "hyperparameters": {
                            "max_seq_length": 262_144,
                            "batch_size": 64,
                            "gradient_accumulation_steps": 1,
                            "gradient_checkpointing": False,
                        }
                    },
                }
            },
            "method.supervised.hyperparameters",
        ),
    ]
    for overrides, param in cases:
        request = {"model": base.name, "training_file": chat.public_id, **overrides}
        with pytest.raises(InvalidRequest) as refused:
            job_create(team=team, **request)
        assert refused.value.param == param, (overrides, refused.value.message)
    assert not FineTuningJob.objects.exists()


def test_refusal_messages_say_what_is_wrong(team, other_team) -> None:
    base = BaseModelFactory()
    bad = dataset_file(team, status=File.Status.ERROR, details="line 3: messages[1].role is missing")
    with pytest.raises(InvalidRequest, match="line 3: messages\\[1\\].role is missing"):
        job_create(team=team, model=base.name, training_file=bad.public_id)
    theirs = dataset_file(other_team)
    with pytest.raises(InvalidRequest, match=f"No such File object: {theirs.public_id}"):
        job_create(team=team, model=base.name, training_file=theirs.public_id)
    preference = dataset_file(team, data_format="preference")
    with pytest.raises(InvalidRequest, match="holds preference data; method supervised trains on chat"):
        job_create(team=team, model=base.name, training_file=preference.public_id)
    with pytest.raises(InvalidRequest, match="GiB") as memory:
        create_job(
            team,
            base=base,
            hyperparameters={
                "max_seq_length": 262_144,
                "batch_size": 64,
                "gradient_accumulation_steps": 1,
                "gradient_checkpointing": False,
            },
        )
    assert memory.value.code == "insufficient_gpu_memory"


def test_a_base_model_limited_to_other_teams_is_refused(team, other_team) -> None:
    base = BaseModelFactory(available_to_all=False)
    base.teams.set([other_team])
    with pytest.raises(InvalidRequest) as refused:
        create_job(team, base=base)
    assert refused.value.param == "model" and base.name not in refused.value.message.split("fine-tune:")[1]
    assert create_job(other_team, base=base).status == Status.QUEUED


def test_a_job_waits_for_its_files_and_queues_when_they_validate(team) -> None:
    training = dataset_file(team, status=File.Status.UPLOADED)
    job = create_job(team, training=training)
    assert job.status == Status.VALIDATING_FILES and job.resolved_hyperparameters is None
    assert events_of(job)[-1] == f"Validating training file: {training.public_id}"
    assert jobs_files_validated(file_id=training.public_id) == []  # still uploaded: nothing moves

    File.objects.filter(pk=training.pk).update(
        status=File.Status.PROCESSED,
        format="chat",
        validation_report={
            "ok": True,
            "format": "chat",
            "stats": {"example_count": 300, "tokens": {"max": 30}},
        },
    )
    assert jobs_files_validated(file_id=training.public_id) == [job.public_id]
    job = fresh(job)
    assert job.status == Status.QUEUED and job.resolved_hyperparameters["n_epochs"] == 3
    assert events_of(job)[-1] == "Files validated, moving job to queued state"


def test_a_job_fails_with_its_files_validation_errors(team) -> None:
    training = dataset_file(team, status=File.Status.UPLOADED)
    job = create_job(team, training=training)
    File.objects.filter(pk=training.pk).update(
        status=File.Status.ERROR, status_details="line 7: invalid JSON"
    )
    jobs_files_validated(file_id=training.public_id)
    job = fresh(job)
    assert job.status == Status.FAILED and job.finished_at is not None
    assert job.error == {
        "code": "invalid_training_file",
        "message": f"File {training.public_id} failed validation: line 7: invalid JSON",
        "param": "training_file",
    }


def test_a_validated_file_of_the_wrong_format_fails_the_waiting_job(team) -> None:
    training = dataset_file(team, status=File.Status.UPLOADED)
    job = create_job(team, training=training, method="dpo")
    File.objects.filter(pk=training.pk).update(status=File.Status.PROCESSED, format="chat")
    jobs_files_validated(file_id=training.public_id)
    job = fresh(job)
    assert job.status == Status.FAILED and job.error["param"] == "training_file"
    assert "method dpo trains on preference data" in job.error["message"]


# Reports of GPU workers -------------------------------------------------------------------------------


def test_dispatch_message_follows_the_protocol(team, gpu_queue, django_capture_on_commit_callbacks) -> None:
    validation = dataset_file(team)
    job = create_job(team, validation_file=validation.public_id, hyperparameters={"n_epochs": 1})
    with django_capture_on_commit_callbacks(execute=True):
        assert schedule_jobs() == [job.public_id]
    [dispatch] = take_dispatches(gpu_queue)
    job = fresh(job)
    assert dispatch == {
        "job_id": job.public_id,
        "attempt": 1,
        "output_prefix": f"teams/{team.pk}/jobs/{job.public_id}",
        "base_model": {
            "name": job.base_model.name,
            "revision": job.base_model_revision,
            "prefix": job.base_model_prefix,
        },
        "training_file": {"key": job.training_file.storage_key, "sha256": job.training_file.sha256},
        "validation_file": {"key": validation.storage_key, "sha256": validation.sha256},
        "resume_from": None,
        "spec": {
            "spec_version": 1,
            "method": "supervised",
            "seed": job.seed,
            "hyperparameters": {"n_epochs": 1},
        },
        "heartbeat_seconds": 5,
    }
    assert job.status == Status.QUEUED and job.attempt == 1 and job.dispatch_published_at is not None
    assert job.lease_expires_at > timezone.now() + timedelta(seconds=500)  # TAILOR_DISPATCH_TIMEOUT


def test_started_heartbeat_events_checkpoint_and_success(team, settings) -> None:
    endpoint = WebhookEndpoint.objects.create(
        team=team, url="https://hooks.example.com/t", secret="whsec_" + "A" * 44
    )
    job = running_job(team)
    assert job.status == Status.RUNNING and job.lease_owner == "gpu-1"
    lease = job.lease_expires_at
    assert job_report_heartbeat(job_id=job.public_id, attempt=1, worker="gpu-1")
    assert fresh(job).lease_expires_at >= lease

    batch = [
        runner_event(0, "started", "Training started"),
        runner_event(
            1,
            "hyperparameters_resolved",
            hyperparameters={
                "n_epochs": 1,
                "batch_size": 2,
                "learning_rate_multiplier": 1.0,
                "lora_r": 16,
                "total_steps": 20,
            },
        ),
        runner_event(
            2,
            "metrics",
            step=1,
            total_steps=20,
            train_loss=2.5,
            train_mean_token_accuracy=0.31,
            learning_rate=1e-4,
            eta_seconds=30,
        ),
        runner_event(3, "eval", step=1, total_steps=20, valid_loss=2.4, valid_mean_token_accuracy=0.33),
        runner_event(4, "model_loaded", compute_dtype="bfloat16", quantization="nf4"),
    ]
    assert job_report_events(job_id=job.public_id, attempt=1, events=batch) == 5
    assert job_report_events(job_id=job.public_id, attempt=1, events=batch) == 0  # redelivered: stored once
    job = fresh(job)
    assert (job.step, job.total_steps) == (1, 20) and job.estimated_finish is not None
    assert job.resolved_hyperparameters["batch_size"] == 2
    assert job.resolved_hyperparameters["compute_dtype"] == "bfloat16"
    metrics = JobEvent.objects.get(job=job, kind="metrics")
    assert (metrics.type, metrics.message) == ("metrics", "Step 1/20: training loss=2.5000")
    assert {
        k: metrics.data[k] for k in ("step", "total_steps", "train_loss", "train_mean_token_accuracy")
    } == {
        "step": 1,
        "total_steps": 20,
        "train_loss": 2.5,
        "train_mean_token_accuracy": 0.31,
    }
    evaluation = JobEvent.objects.get(job=job, kind="eval")
    assert evaluation.type == "metrics" and evaluation.data["valid_loss"] == 2.4

    prefix = f"{protocol.job_output_prefix(job)}/checkpoints/step-10"
    checkpoint = job_report_checkpoint(
        job_id=job.public_id, attempt=1, step=10, prefix=prefix, metrics={"train_loss": 2.0, "lr": 1}
    )
    assert checkpoint.public_id.startswith("ftckpt-") and checkpoint.metrics == {
        "step": 10,
        "train_loss": 2.0,
    }
    job_report_checkpoint(
        job_id=job.public_id, attempt=1, step=10, prefix=prefix, metrics={"train_loss": 2.0}
    )
    assert Checkpoint.objects.filter(job=job).count() == 1
    # A prefix outside the job's own output is never recorded.
    assert (
        job_report_checkpoint(
            job_id=job.public_id, attempt=1, step=11, prefix=f"teams/{team.pk}/jobs/ftjob-other/x", metrics={}
        )
        is None
    )

    result = store_adapter(job)
    assert job_report_finished(job_id=job.public_id, attempt=1, outcome="succeeded", result=result)
    job = fresh(job)
    assert job.status == Status.SUCCEEDED and job.finished_at and job.trained_tokens == 4321
    assert job.fine_tuned_model == f"ft:{job.base_model.name}:{team.slug}::{job.public_id[-8:]}"
    assert job.lease_expires_at is None and job.estimated_finish is None and job.gpu_seconds >= 0
    results = job.result_file
    assert (results.purpose, results.filename, results.status) == (
        "fine-tune-results",
        "step_metrics.csv",
        "processed",
    )
    assert results.storage_key == result["metrics_key"] and results.bytes > 0
    adapter = Adapter.objects.get(job=job)
    assert (adapter.name, adapter.rank, adapter.alpha, adapter.target_modules) == (
        job.fine_tuned_model,
        8,
        16.0,
        ["q_proj", "v_proj"],
    )
    assert adapter.files["adapter_model.safetensors"]["bytes"] == 10
    assert events_of(job)[-2:] == [
        "The job has successfully completed",
        f"New fine-tuned model created: {job.fine_tuned_model}",
    ]
    [delivery] = WebhookDelivery.objects.filter(endpoint=endpoint)
    assert delivery.event_type == "fine_tuning.job.succeeded" and delivery.payload["data"] == {
        "id": job.public_id
    }


def test_redelivered_job_finished_creates_one_adapter_and_changes_nothing(team) -> None:
    job = running_job(team)
    result = store_adapter(job)
    assert job_report_finished(job_id=job.public_id, attempt=1, outcome="succeeded", result=result)
    before = fresh(job)
    event_count = JobEvent.objects.filter(job=job).count()
    for outcome in ("succeeded", "failed", "cancelled"):
        assert not job_report_finished(job_id=job.public_id, attempt=1, outcome=outcome, result=result)
    after = fresh(job)
    assert Adapter.objects.filter(job=job).count() == 1
    assert File.objects.filter(team=team, purpose="fine-tune-results").count() == 1
    assert (after.status, after.finished_at, after.updated_at) == (
        before.status,
        before.finished_at,
        before.updated_at,
    )
    assert JobEvent.objects.filter(job=job).count() == event_count


def test_reports_of_a_stale_attempt_are_ignored_and_its_worker_told_to_stop(team) -> None:
    job = running_job(team)
    FineTuningJob.objects.filter(pk=job.pk).update(attempt=2)  # attempt 1 was superseded
    assert not job_report_started(job_id=job.public_id, attempt=1, worker="old")
    assert not job_report_heartbeat(job_id=job.public_id, attempt=1, worker="old")
    assert (
        job_report_events(job_id=job.public_id, attempt=1, events=[runner_event(0, "metrics", step=9)]) == 0
    )
    assert (
        job_report_checkpoint(
            job_id=job.public_id,
            attempt=1,
            step=9,
            prefix=f"{protocol.job_output_prefix(job)}/checkpoints/step-9",
            metrics={},
        )
        is None
    )
    assert not job_report_finished(
        job_id=job.public_id, attempt=1, outcome="succeeded", result=store_adapter(job)
    )
    job = fresh(job)
    assert (
        job.status == Status.RUNNING and job.step is None and not Checkpoint.objects.filter(job=job).exists()
    )
    assert not Adapter.objects.filter(job=job).exists()
    assert protocol.read_stop_marker(job) == {"action": "cancel", "attempt": 1}


def test_a_failed_run_records_the_runners_error(team) -> None:
    job = running_job(team)
    error = {
        "code": "out_of_memory",
        "message": "CUDA out of memory at step 3",
        "param": "method.supervised.hyperparameters.batch_size",
    }
    assert job_report_finished(job_id=job.public_id, attempt=1, outcome="failed", result={"error": error})
    job = fresh(job)
    assert job.status == Status.FAILED and job.error == error and job.finished_at


def test_an_adapter_outside_the_jobs_prefix_fails_the_job(team) -> None:
    job = running_job(team)
    result = {**store_adapter(job), "adapter_prefix": f"teams/{team.pk}/files"}
    job_report_finished(job_id=job.public_id, attempt=1, outcome="succeeded", result=result)
    job = fresh(job)
    assert job.status == Status.FAILED and job.error["code"] == "internal_error"
    assert not Adapter.objects.exists()


# Cancel, pause, resume -----------------------------------------------------------------------------------


def test_cancel_a_queued_job_at_once(team) -> None:
    job = create_job(team)
    job = job_cancel(job=job)
    assert job.status == Status.CANCELLED and job.finished_at is not None
    assert job_cancel(job=job).status == Status.CANCELLED  # twice is fine
    with pytest.raises(InvalidRequest):
        job_resume(job=job)


def test_cancel_a_dispatched_job_tells_the_worker_not_to_start(
    team, django_capture_on_commit_callbacks
) -> None:
    job = create_job(team)
    schedule_jobs()
    with django_capture_on_commit_callbacks(execute=True):
        job = job_cancel(job=fresh(job))
    assert job.status == Status.CANCELLED
    assert protocol.read_stop_marker(job) == {"action": "cancel", "attempt": 1}
    assert not job_report_started(job_id=job.public_id, attempt=1, worker="late")
    assert fresh(job).status == Status.CANCELLED


def test_cancel_a_running_job_goes_through_cancelling(team, django_capture_on_commit_callbacks) -> None:
    job = running_job(team)
    with django_capture_on_commit_callbacks(execute=True):
        job = job_cancel(job=job)
    assert job.status == Status.CANCELLING and job.finished_at is None
    assert protocol.read_stop_marker(job) == {"action": "cancel", "attempt": 1}
    # Even a run that reached its end meanwhile ends cancelled: the client was told so.
    assert job_report_finished(
        job_id=job.public_id, attempt=1, outcome="succeeded", result=store_adapter(job)
    )
    job = fresh(job)
    assert job.status == Status.CANCELLED and job.finished_at and not Adapter.objects.exists()


def test_pause_checkpoints_and_resume_continues_from_the_newest_checkpoint(
    team, django_capture_on_commit_callbacks
) -> None:
    job = running_job(team)
    root = protocol.job_output_prefix(job)
    for step in (5, 10):
        job_report_checkpoint(
            job_id=job.public_id, attempt=1, step=step, prefix=f"{root}/checkpoints/step-{step}", metrics={}
        )
    with django_capture_on_commit_callbacks(execute=True):
        job = job_pause(job=job)
    assert job.status == Status.PAUSING and protocol.read_stop_marker(job) == {
        "action": "pause",
        "attempt": 1,
    }
    job_report_checkpoint(
        job_id=job.public_id, attempt=1, step=12, prefix=f"{root}/checkpoints/step-12", metrics={}
    )
    assert job_report_finished(job_id=job.public_id, attempt=1, outcome="paused", result={})
    job = fresh(job)
    assert job.status == Status.PAUSED and job.lease_expires_at is None
    assert schedule_jobs() == []  # a paused job is not dispatched

    job = job_resume(job=job)
    assert job.status == Status.QUEUED
    assert schedule_jobs() == [job.public_id]
    job = fresh(job)
    assert job.attempt == 2 and job.dispatch_message["resume_from"] == f"{root}/checkpoints/step-12"
    assert job.step == 12
    assert events_of(job)[-1] == "Resuming from checkpoint at step 12"


def test_resume_while_pausing_queues_the_job_once_it_stopped(team) -> None:
    job = running_job(team)
    job = job_pause(job=job)
    job = job_resume(job=job)
    assert job.status == Status.PAUSING and job.resume_requested
    job_report_finished(job_id=job.public_id, attempt=1, outcome="paused", result={})
    assert fresh(job).status == Status.QUEUED


def test_pause_refusals(team) -> None:
    job = create_job(team, training=dataset_file(team, status=File.Status.UPLOADED))
    with pytest.raises(InvalidRequest, match="still validating"):
        job_pause(job=job)
    done = running_job(team)
    job_report_finished(job_id=done.public_id, attempt=1, outcome="failed", result={})
    with pytest.raises(InvalidRequest, match="only a queued or running job"):
        job_pause(job=fresh(done))


def test_a_run_stopped_without_being_asked_is_requeued(team, other_team, settings) -> None:
    settings.TAILOR_MAX_ATTEMPTS = 1
    drained = running_job(team)
    checkpoint = {"step": 3, "prefix": f"{protocol.job_output_prefix(drained)}/checkpoints/step-3"}
    result = {"checkpoint": checkpoint, "reason": "worker_shutdown"}
    assert job_report_finished(job_id=drained.public_id, attempt=1, outcome="paused", result=result)
    drained = fresh(drained)
    # A drained node is routine: requeued from the checkpoint it reported, not counted as lost.
    assert drained.status == Status.QUEUED and drained.lost_attempts == 0 and drained.dispatched_at is None
    assert drained.checkpoints.get().step_number == 3
    assert (
        events_of(drained)[-1] == "The worker shut down; queued again to continue from checkpoint at step 3"
    )

    stopped = running_job(other_team)
    job_report_finished(job_id=stopped.public_id, attempt=1, outcome="cancelled", result={})
    stopped = fresh(stopped)
    assert stopped.status == Status.FAILED and stopped.error["code"] == "worker_lost"


# The reconciler ------------------------------------------------------------------------------------------


def test_an_expired_lease_requeues_from_the_newest_checkpoint_until_the_limit(team, settings) -> None:
    settings.TAILOR_MAX_ATTEMPTS = 2
    job = running_job(team)
    prefix = f"{protocol.job_output_prefix(job)}/checkpoints/step-4"
    job_report_checkpoint(job_id=job.public_id, attempt=1, step=4, prefix=prefix, metrics={})
    later = timezone.now() + timedelta(seconds=settings.TAILOR_LEASE_SECONDS + 1)
    report = reconcile(now=later)
    assert report.requeued == [job.public_id]
    job = fresh(job)
    assert job.status == Status.QUEUED and job.lost_attempts == 1
    assert "queued again to continue from checkpoint at step 4" in events_of(job)[-1]
    assert protocol.read_stop_marker(job) is None  # written after commit, not inside the test transaction

    assert schedule_jobs(now=later) == [job.public_id]
    job = fresh(job)
    assert job.attempt == 2 and job.dispatch_message["resume_from"] == prefix
    # The first attempt's worker is gone; its late reports change nothing.
    assert not job_report_finished(
        job_id=job.public_id, attempt=1, outcome="succeeded", result=store_adapter(job)
    )

    job_report_started(job_id=job.public_id, attempt=2, worker="gpu-2")
    report = reconcile(now=timezone.now() + timedelta(seconds=settings.TAILOR_LEASE_SECONDS + 1))
    assert report.failed == [job.public_id]
    job = fresh(job)
    assert job.status == Status.FAILED and job.error["code"] == "worker_lost"
    assert "after 2 lost attempts" in job.error["message"]


def test_a_dispatch_no_worker_took_is_sent_again_without_counting(team, settings) -> None:
    settings.TAILOR_MAX_ATTEMPTS = 1
    job = create_job(team)
    schedule_jobs()
    later = timezone.now() + timedelta(seconds=settings.TAILOR_DISPATCH_TIMEOUT + 1)
    assert reconcile(now=later).requeued == [job.public_id]
    job = fresh(job)
    assert job.status == Status.QUEUED and job.lost_attempts == 0
    assert "No GPU worker of class default took the job" in events_of(job)[-1]
    assert schedule_jobs(now=later) == [job.public_id] and fresh(job).attempt == 2


def test_a_stopping_job_whose_worker_vanished_ends_as_asked(team) -> None:
    cancelling = job_cancel(job=running_job(team))
    pausing = job_pause(job=running_job(team))
    later = timezone.now() + timedelta(minutes=5)
    assert sorted(reconcile(now=later).stopped) == sorted([cancelling.public_id, pausing.public_id])
    assert fresh(cancelling).status == Status.CANCELLED and fresh(pausing).status == Status.PAUSED


def test_reconcile_resends_a_dispatch_that_was_never_published(team, gpu_queue) -> None:
    job = create_job(team)
    schedule_jobs()  # on_commit never runs inside the test transaction: the publish is "lost"
    assert fresh(job).dispatch_published_at is None
    assert reconcile().resent == []  # too recent to call lost
    report = reconcile(now=timezone.now() + timedelta(seconds=31))
    assert report.resent == [job.public_id]
    [dispatch] = take_dispatches(gpu_queue)
    assert (dispatch["job_id"], dispatch["attempt"]) == (job.public_id, 1)
    assert fresh(job).dispatch_published_at is not None


def test_reconcile_rewrites_a_lost_stop_marker(team) -> None:
    job = job_cancel(job=running_job(team))  # on_commit never ran: no marker was written
    assert protocol.read_stop_marker(job) is None
    assert reconcile().markers == [job.public_id]
    assert protocol.read_stop_marker(job) == {"action": "cancel", "attempt": 1}


def test_orphaned_uploads_are_removed_and_live_files_kept(team) -> None:
    store = object_store()
    live = dataset_file(team)
    deleted = dataset_file(team, status=File.Status.DELETED)
    in_use = dataset_file(team, status=File.Status.UPLOADED)
    create_job(team, training=in_use)
    File.objects.filter(pk=in_use.pk).update(status=File.Status.DELETED)  # deleted while its job waits
    orphan = f"teams/{team.pk}/files/file-orphan{team.pk:019d}"
    for key in (live.storage_key, deleted.storage_key, in_use.storage_key, orphan):
        store.put(key, io.BytesIO(b"{}\n"))
    assert clean_orphaned_uploads() == []  # younger than TAILOR_ORPHAN_UPLOAD_SECONDS
    later = timezone.now() + timedelta(days=1)
    assert sorted(clean_orphaned_uploads(now=later)) == sorted([deleted.storage_key, orphan])
    assert store.exists(live.storage_key) and store.exists(in_use.storage_key)
