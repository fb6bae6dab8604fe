"""A real `tailor worker control` process runs the job protocol over the broker: it dispatches queued jobs
to their GPU class queue, applies a GPU worker's reports (once each, fenced by attempt), queues jobs
whose files it has just validated, and delivers the signed webhook. The GPU worker is played by the
test: it takes the dispatch off the queue and sends the reports docs/job-protocol.md lists."""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterator

import pytest
from django.db import transaction
from django.test import override_settings
from openai import OpenAI
from tailor.core.objectstore import object_store
from tailor.files.models import new_file_id
from tailor.files.selectors import file_storage_key
from tailor.files.services import file_create
from tailor.tuning import protocol
from tailor.tuning.models import Adapter, FineTuningJob, JobEvent
from tailor.tuning.services import job_cancel
from tailor.webhooks.models import WebhookDelivery
from tailor.webhooks.services import endpoint_create

from tests.tailor.factories import TeamFactory
from tests.tailor.jobs_factories import (
    BaseModelFactory,
    create_job,
    runner_event,
    store_adapter,
    take_dispatches,
)
from tests.tailor.processes import PlatformProcess, delete_queue, platform_env, start_control_worker, wait_for
from tests.tailor.webhook_receiver import webhook_receiver
from workers.app import (
    JOB_CHECKPOINT_TASK,
    JOB_EVENTS_TASK,
    JOB_FINISHED_TASK,
    JOB_HEARTBEAT_TASK,
    JOB_STARTED_TASK,
    app,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

Status = FineTuningJob.Status


@pytest.fixture(scope="module")
def queues() -> Iterator[tuple[str, str]]:
    """A control queue and a GPU class queue of this module's own, so no other worker takes its messages."""
    control, gpu = f"control-jobs-{uuid.uuid4().hex[:8]}", f"gpu-jobs-{uuid.uuid4().hex[:8]}"
    previous = os.environ["TAILOR_CONTROL_QUEUE"]
    os.environ["TAILOR_CONTROL_QUEUE"] = control
    with override_settings(TAILOR_GPU_CLASSES=f"default:24:{gpu}", TAILOR_WEBHOOK_ALLOW_PRIVATE=True):
        yield control, gpu
    os.environ["TAILOR_CONTROL_QUEUE"] = previous
    delete_queue(control)
    delete_queue(gpu)


@pytest.fixture(scope="module")
def worker(
    queues: tuple[str, str], django_db_setup: None, storage_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PlatformProcess]:
    home = tmp_path_factory.mktemp("jobs-worker-home")
    env = platform_env(
        home,
        storage_url,
        TAILOR_CONTROL_QUEUE=queues[0],
        TAILOR_GPU_CLASSES=f"default:24:{queues[1]}",
        TAILOR_WEBHOOK_ALLOW_PRIVATE="true",
    )
    process = start_control_worker(env, home, name="jobs-control-worker")
    yield process
    process.stop()


def committed_job(team, **kwargs) -> FineTuningJob:
    with transaction.atomic():
        return create_job(team, **kwargs)


def report(task: str, *args: object) -> str:
    """Send a GPU worker's report; returns the message id."""
    return app.send_task(task, args=list(args)).id


def handled(worker: PlatformProcess, message_id: str) -> bool:
    return f"[{message_id}] succeeded" in worker.log()


def status_of(job: FineTuningJob) -> str:
    return FineTuningJob.objects.get(pk=job.pk).status


def test_a_job_runs_through_the_protocol_and_its_webhook_is_delivered(worker, queues) -> None:
    team = TeamFactory()
    with webhook_receiver() as receiver:
        endpoint = endpoint_create(team=team, url=receiver.url)
        job = committed_job(team, base=BaseModelFactory())
        [dispatch] = take_dispatches(queues[1], timeout=30)
        assert (dispatch["job_id"], dispatch["attempt"], dispatch["resume_from"]) == (job.public_id, 1, None)

        report(JOB_STARTED_TASK, job.public_id, 1, "gpu-test@host")
        wait_for(lambda: status_of(job) == Status.RUNNING, timeout=30, message="running")
        report(JOB_HEARTBEAT_TASK, job.public_id, 1, "gpu-test@host")
        events = [runner_event(i, "metrics", step=i + 1, total_steps=2, train_loss=2.0 - i) for i in range(2)]
        report(JOB_EVENTS_TASK, job.public_id, 1, events)
        prefix = f"{dispatch['output_prefix']}/checkpoints/step-2"
        report(JOB_CHECKPOINT_TASK, job.public_id, 1, 2, prefix, {"train_loss": 1.0})
        result = store_adapter(job)
        finished = report(JOB_FINISHED_TASK, job.public_id, 1, "succeeded", result)
        wait_for(
            lambda: status_of(job) == Status.SUCCEEDED, timeout=30, message=f"success\n{worker.log()[-3000:]}"
        )
        assert receiver.arrived.wait(30), worker.log()[-3000:]

    job.refresh_from_db()
    assert job.fine_tuned_model and job.result_file is not None and job.checkpoints.get().step_number == 2
    assert JobEvent.objects.filter(job=job, type="metrics").count() == 2
    [request] = receiver.requests
    event = OpenAI(api_key="unused", webhook_secret=endpoint.secret).webhooks.unwrap(
        request.body, request.headers
    )
    assert (event.type, event.data.id) == ("fine_tuning.job.succeeded", job.public_id)
    wait_for(
        lambda: WebhookDelivery.objects.filter(endpoint=endpoint, status="succeeded").exists(),
        timeout=10,
        message="the delivery to be logged",
    )

    # The same report delivered again, and a report of an attempt that never was: nothing changes.
    before = FineTuningJob.objects.get(pk=job.pk)
    again = report(JOB_FINISHED_TASK, job.public_id, 1, "succeeded", result)
    stale = report(JOB_FINISHED_TASK, job.public_id, 7, "failed", {"error": {"code": "x", "message": "y"}})
    wait_for(lambda: handled(worker, again) and handled(worker, stale), timeout=30, message="the duplicates")
    after = FineTuningJob.objects.get(pk=job.pk)
    assert Adapter.objects.filter(job=job).count() == 1
    assert (after.status, after.updated_at, after.fine_tuned_model) == (
        before.status,
        before.updated_at,
        before.fine_tuned_model,
    )
    assert handled(worker, finished)


def test_a_job_waits_for_its_upload_to_validate_then_is_dispatched(worker, queues) -> None:
    team = TeamFactory()
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(12)
    ]
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    file_id = new_file_id()
    stored = object_store().put(file_storage_key(team=team, file_id=file_id), io.BytesIO(data))
    with transaction.atomic():
        training = file_create(
            team=team, file_id=file_id, purpose="fine-tune", filename="t.jsonl", stored=stored
        )
        job = create_job(team, training=training)
    assert job.status == Status.VALIDATING_FILES
    [dispatch] = take_dispatches(queues[1], timeout=60)
    assert dispatch["job_id"] == job.public_id and dispatch["training_file"]["sha256"] == stored.sha256
    assert FineTuningJob.objects.get(pk=job.pk).resolved_hyperparameters["n_epochs"] == 8  # 12 examples


def test_cancel_of_a_running_job_reaches_its_worker(worker, queues) -> None:
    team = TeamFactory()
    job = committed_job(team, base=BaseModelFactory())
    [dispatch] = take_dispatches(queues[1], timeout=30)
    report(JOB_STARTED_TASK, job.public_id, 1, "gpu-test@host")
    wait_for(lambda: status_of(job) == Status.RUNNING, timeout=30, message="running")
    job_cancel(job=FineTuningJob.objects.get(pk=job.pk))
    assert status_of(job) == Status.CANCELLING
    # What the GPU worker polls: the stop marker for its attempt.
    assert protocol.read_stop_marker(job) == {"action": "cancel", "attempt": dispatch["attempt"]}
    report(JOB_FINISHED_TASK, job.public_id, 1, "cancelled", {})
    wait_for(lambda: status_of(job) == Status.CANCELLED, timeout=30, message="cancelled")
