"""Tasks of the control queue. Each takes ids, re-reads state and is safe to deliver twice.

Imported only by the control worker (`tailor worker control`), after Django is set up; the API and the
GPU workers publish these tasks by name (`workers.app.*_TASK`) and never import this module.

- `validate_file`: validate an upload, then move on the jobs that waited for it.
- `job_started`, `job_heartbeat`, `job_events`, `job_checkpoint`, `job_finished`: reports of GPU
  workers (docs/job-protocol.md); a report of a stale attempt is ignored.
- `schedule`: dispatch queued jobs (on create, resume, finish, and from the beat).
- `reconcile`: expired leases, lost dispatches, lost stop markers (beat).
- `clean_orphans`: uploaded bytes that never became a file (beat, hourly).
- `deliver_webhook`, `deliver_due_webhooks`: webhook deliveries and their retries (beat).
- `deploy`, `undeploy`, `deployment_pushed`: adapter pushes and unloads, the endpoint agent's reports.
- `deployments_sweep`, `check_endpoints`, `purge_adapters`: the registry's periodic work (beat).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import InterfaceError, OperationalError
from tailor.files.services import file_fail_validation, file_validate
from tailor.registry.models import InferenceEndpoint
from tailor.registry.services import (
    adapters_purge,
    deployment_pushed,
    deployment_run,
    deployment_run_undeploy,
    deployments_due,
    endpoint_check_health,
)
from tailor.tuning.scheduler import clean_orphaned_uploads, reconcile, schedule_jobs
from tailor.tuning.services import (
    job_report_checkpoint,
    job_report_events,
    job_report_finished,
    job_report_heartbeat,
    job_report_started,
    jobs_files_validated,
)
from tailor.webhooks.services import deliveries_due, delivery_attempt, enqueue_delivery

from workers.app import (
    CHECK_ENDPOINTS_TASK,
    CLEAN_ORPHANS_TASK,
    DELIVER_DUE_WEBHOOKS_TASK,
    DELIVER_WEBHOOK_TASK,
    DEPLOY_TASK,
    DEPLOYMENT_PUSHED_TASK,
    DEPLOYMENTS_SWEEP_TASK,
    JOB_CHECKPOINT_TASK,
    JOB_EVENTS_TASK,
    JOB_FINISHED_TASK,
    JOB_HEARTBEAT_TASK,
    JOB_STARTED_TASK,
    PURGE_ADAPTERS_TASK,
    RECONCILE_TASK,
    SCHEDULE_TASK,
    UNDEPLOY_TASK,
    VALIDATE_FILE_TASK,
    app,
)

logger = logging.getLogger(__name__)

# A 512 MB upload validates in well under a minute; the limits only catch a stuck store or database.
VALIDATE_SOFT_TIME_LIMIT = 15 * 60
VALIDATE_TIME_LIMIT = VALIDATE_SOFT_TIME_LIMIT + 60

# The database or the object store hiccuped: try again with backoff rather than lose a report.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, ConnectionError, TimeoutError)
# Every bookkeeping task: redelivered if the worker dies mid-task (all are idempotent), results ignored.
BOOKKEEPING: dict[str, Any] = {
    "ignore_result": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "soft_time_limit": 120,
    "time_limit": 180,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 10,
}
# Periodic tasks: the next beat does the same work, so a failed run is not retried.
PERIODIC: dict[str, Any] = {**BOOKKEEPING, "autoretry_for": (), "max_retries": 0}


@app.task(
    name=VALIDATE_FILE_TASK,
    ignore_result=True,
    # Redelivered if the worker dies mid-validation; the task is idempotent.
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=VALIDATE_SOFT_TIME_LIMIT,
    time_limit=VALIDATE_TIME_LIMIT,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=5,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=8,
)
def validate_file(file_id: str) -> None:
    """Validate an uploaded file and record `processed` or `error` with its report; then queue (or
    fail) the jobs that were waiting for it."""
    try:
        file = file_validate(file_id=file_id)
    except SoftTimeLimitExceeded:
        file_fail_validation(
            file_id=file_id,
            details=f"Validation did not finish within {VALIDATE_SOFT_TIME_LIMIT // 60} minutes; upload the file again.",
        )
        file = None
    if file is not None:
        logger.info("validated %s: %s (%s)", file_id, file.status, file.status_details)
    moved = jobs_files_validated(file_id=file_id)
    if moved:
        logger.info("jobs moved on after validating %s: %s", file_id, ", ".join(moved))


# Reports of GPU workers ------------------------------------------------------------------------------


@app.task(name=JOB_STARTED_TASK, **BOOKKEEPING)
def job_started(job_id: str, attempt: int, worker: str) -> None:
    """The runner of `attempt` started."""
    if job_report_started(job_id=job_id, attempt=int(attempt), worker=str(worker)):
        logger.info("%s attempt %s running on %s", job_id, attempt, worker)


@app.task(name=JOB_HEARTBEAT_TASK, **{**BOOKKEEPING, "max_retries": 2})
def job_heartbeat(job_id: str, attempt: int, worker: str) -> None:
    """Extend the lease of `attempt` (a late heartbeat is worthless, hence few retries)."""
    job_report_heartbeat(job_id=job_id, attempt=int(attempt), worker=str(worker))


@app.task(name=JOB_EVENTS_TASK, **BOOKKEEPING)
def job_events(job_id: str, attempt: int, events: list[dict[str, Any]]) -> None:
    """Runner events of `attempt`, in order, each with its `seq`."""
    job_report_events(job_id=job_id, attempt=int(attempt), events=list(events or []))


@app.task(name=JOB_CHECKPOINT_TASK, **BOOKKEEPING)
def job_checkpoint(
    job_id: str, attempt: int, step: int, prefix: str, metrics: dict[str, Any] | None = None
) -> None:
    """A complete checkpoint of `attempt` is in the object store."""
    job_report_checkpoint(
        job_id=job_id, attempt=int(attempt), step=int(step), prefix=str(prefix), metrics=metrics
    )


@app.task(name=JOB_FINISHED_TASK, **BOOKKEEPING)
def job_finished(job_id: str, attempt: int, outcome: str, result: dict[str, Any] | None = None) -> None:
    """The runner of `attempt` ended; a GPU may be free for the next job."""
    if job_report_finished(job_id=job_id, attempt=int(attempt), outcome=str(outcome), result=result):
        logger.info("%s attempt %s finished: %s", job_id, attempt, outcome)
    schedule_jobs()


# Bookkeeping of the control plane -------------------------------------------------------------------


@app.task(name=SCHEDULE_TASK, **PERIODIC)
def schedule() -> None:
    """Dispatch queued jobs that fit their quotas."""
    dispatched = schedule_jobs()
    if dispatched:
        logger.info("dispatched %s", ", ".join(dispatched))


@app.task(name=RECONCILE_TASK, **PERIODIC)
def reconcile_jobs() -> None:
    """Repair expired leases, lost dispatches and lost stop markers; then dispatch what got queued."""
    if reconcile():
        schedule_jobs()


@app.task(name=CLEAN_ORPHANS_TASK, **{**PERIODIC, "soft_time_limit": 1800, "time_limit": 1900})
def clean_orphans() -> None:
    """Remove uploaded bytes that never became a file."""
    clean_orphaned_uploads()


@app.task(name=DELIVER_WEBHOOK_TASK, **{**BOOKKEEPING, "soft_time_limit": 60, "time_limit": 90})
def deliver_webhook(delivery_id: int) -> None:
    """Send one try of a webhook delivery if it is due (retries are scheduled on the delivery row)."""
    delivery_attempt(delivery_id=int(delivery_id))


@app.task(name=DELIVER_DUE_WEBHOOKS_TASK, **PERIODIC)
def deliver_due_webhooks() -> None:
    """Hand every webhook delivery whose retry is due to a worker."""
    for delivery_id in deliveries_due():
        enqueue_delivery(delivery_id)


# The adapter registry ---------------------------------------------------------------------------------

# A push downloads the adapter and waits for the server to load it and answer a smoke request.
DEPLOY_LIMITS: dict[str, Any] = {**BOOKKEEPING, "soft_time_limit": 900, "time_limit": 960}


@app.task(name=DEPLOY_TASK, **DEPLOY_LIMITS)
def deploy(deployment_id: str) -> None:
    """Push a pending deployment: gate, delivery, load, smoke; transient failures are retried by the
    deployment's own backoff (it goes back to pending with a due time)."""
    deployment = deployment_run(deployment_id=str(deployment_id))
    if deployment is not None:
        logger.info("%s: %s %s", deployment.public_id, deployment.status, deployment.last_error or "")


@app.task(name=UNDEPLOY_TASK, bind=True, **BOOKKEEPING)
def undeploy(self: Any, deployment_id: str) -> None:
    """Unload an undeploying deployment from its endpoint and remove delivered files; an unreachable
    endpoint is tried again with backoff (the sweep re-sends it after that)."""
    from gpu_runner.endpoints.errors import EndpointError

    try:
        deployment_run_undeploy(deployment_id=str(deployment_id))
    except EndpointError as exc:
        raise self.retry(exc=exc, countdown=min(2 ** (self.request.retries + 1), 60)) from None


@app.task(name=DEPLOYMENT_PUSHED_TASK, **BOOKKEEPING)
def deployment_pushed_report(
    deployment_id: str, attempt: int, action: str, error: dict[str, Any] | None = None
) -> None:
    """The endpoint agent's report: it loaded (or unloaded) the adapter, or says why not."""
    deployment_pushed(deployment_id=str(deployment_id), attempt=int(attempt), action=str(action), error=error)


@app.task(name=DEPLOYMENTS_SWEEP_TASK, **PERIODIC)
def deployments_sweep() -> None:
    """Re-send deployments whose retry is due, and pushes or undeploys that went silent."""
    sent = deployments_due()
    if sent:
        logger.info("deployments re-sent: %s", ", ".join(sent))


@app.task(name=CHECK_ENDPOINTS_TASK, **PERIODIC)
def check_endpoints() -> None:
    """Record every enabled endpoint's health."""
    for endpoint in InferenceEndpoint.objects.filter(enabled=True):
        endpoint_check_health(endpoint=endpoint)


@app.task(name=PURGE_ADAPTERS_TASK, **{**PERIODIC, "soft_time_limit": 1800, "time_limit": 1900})
def purge_adapters() -> None:
    """Remove the objects of deleted adapters that nothing serves any more."""
    purged = adapters_purge()
    if purged:
        logger.info("purged %s deleted adapters", purged)
