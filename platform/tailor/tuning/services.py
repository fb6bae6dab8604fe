"""Writes of fine-tuning jobs: creation, cancel/pause/resume, and the bookkeeping of what GPU workers
report (docs/job-protocol.md).

Every state change is a guarded transition, `UPDATE … WHERE status IN (expected) [AND attempt = N]`,
written in the same transaction as the JobEvent that records it (and the webhook deliveries it
triggers); messages and object-store writes happen after commit. A report whose attempt is not the
job's current one is ignored, and a report applied twice changes nothing the second time, so every
task may be delivered more than once.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from gpu_runner.spec import JobSpec
from gpu_runner.storage import ObjectNotFound
from tailor.core.errors import InvalidRequest
from tailor.core.objectstore import object_store
from tailor.files.models import File, new_file_id
from tailor.teams.models import Team
from tailor.tuning import protocol
from tailor.tuning.models import Adapter, Checkpoint, FineTuningJob, JobEvent
from tailor.tuning.runner_events import checkpoint_metrics, shown_event
from tailor.tuning.selectors import base_model_for_team, newest_checkpoint
from tailor.tuning.specs import (
    METHOD_FORMATS,
    MethodRequest,
    build_spec,
    choose_class,
    estimate_memory,
    estimate_resolution,
    parse_method,
)
from tailor.webhooks.services import event_publish
from workers.app import SCHEDULE_TASK
from workers.app import app as celery_app

logger = logging.getLogger(__name__)

Status = FineTuningJob.Status
RESULTS_FILENAME = "step_metrics.csv"
# Statuses in which a worker's report about the current attempt still matters.
REPORTABLE = (Status.QUEUED, Status.RUNNING, Status.PAUSING, Status.CANCELLING)
WEBHOOK_EVENTS = {
    Status.SUCCEEDED: "fine_tuning.job.succeeded",
    Status.FAILED: "fine_tuning.job.failed",
    Status.CANCELLED: "fine_tuning.job.cancelled",
}


# Helpers --------------------------------------------------------------------------------------------


def _record_event(
    job_pk: int,
    message: str,
    *,
    level: str = JobEvent.Level.INFO,
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> JobEvent:
    return JobEvent.objects.create(
        job_id=job_pk,
        created_at=at or timezone.now(),
        level=level,
        type=JobEvent.Type.MESSAGE,
        message=message,
        data=data,
        kind="status",
    )


def _transition(
    job: FineTuningJob,
    *,
    from_statuses: Iterable[str],
    to: str,
    message: str,
    attempt: int | None = None,
    level: str = JobEvent.Level.INFO,
    data: dict[str, Any] | None = None,
    extra_filter: Q | None = None,
    **fields: Any,
) -> bool:
    """Move `job` to `to` if it is still in one of `from_statuses` (and at `attempt`), recording `message`
    as its event and, for an end state, the webhook deliveries. Call inside a transaction. Updates the
    instance in memory when the row changed; returns whether it did."""
    now = timezone.now()
    rows = FineTuningJob.objects.filter(pk=job.pk, status__in=list(from_statuses))
    if attempt is not None:
        rows = rows.filter(attempt=attempt)
    if extra_filter is not None:
        rows = rows.filter(extra_filter)
    if not rows.update(status=to, updated_at=now, **fields):
        return False
    _record_event(job.pk, message, level=level, data=data, at=now)
    if to in WEBHOOK_EVENTS:
        event_publish(team=job.team, event_type=WEBHOOK_EVENTS[to], data={"id": job.public_id})
    job.refresh_from_db()
    return True


def request_schedule() -> None:
    """Ask the control worker to dispatch queued jobs, after the current transaction commits."""
    transaction.on_commit(partial(celery_app.send_task, SCHEDULE_TASK), robust=True)


def _stop_after_commit(job: FineTuningJob, *, action: protocol.StopAction, attempt: int) -> None:
    transaction.on_commit(
        partial(protocol.write_stop_marker, job, action=action, attempt=attempt), robust=True
    )


def _lease_cleared() -> dict[str, Any]:
    return {
        "dispatched_at": None,
        "lease_expires_at": None,
        "lease_owner": "",
        "heartbeat_at": None,
        "attempt_started_at": None,
        "estimated_finish": None,
    }


def _attempt_gpu_seconds(job: FineTuningJob, now: datetime) -> float:
    return max(0.0, (now - job.attempt_started_at).total_seconds()) if job.attempt_started_at else 0.0


def fine_tuned_model_name(job: FineTuningJob) -> str:
    """`ft:<base>:<team slug>:<suffix>:<8 characters of the job id>`, OpenAI's pattern."""
    return f"ft:{job.base_model.name}:{job.team.slug}:{job.suffix}:{job.public_id[-8:]}"


def spec_of(job: FineTuningJob) -> JobSpec:
    """The job's stored spec, validated (it was valid at creation)."""
    _, spec = build_spec(
        request=MethodRequest(job.method, job.spec["hyperparameters"], "hyperparameters"),
        seed=job.seed,
        base_model=job.base_model,
        has_validation_file=job.validation_file_id is not None,
    )
    return spec


# Creation -------------------------------------------------------------------------------------------


def _job_file(*, team: Team, file_id: str, param: str, method: str) -> File:
    """A file the job may train on, locked so its validation cannot finish unseen while the job is written."""
    file = (
        File.objects.select_for_update()
        .filter(team=team, public_id=file_id)
        .exclude(status=File.Status.DELETED)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
        .first()
    )
    if file is None:
        raise InvalidRequest(f"No such File object: {file_id}", param=param, code="file_not_found")
    if file.purpose != File.Purpose.FINE_TUNE:
        raise InvalidRequest(
            f"File {file_id} was uploaded with purpose `{file.purpose}`; fine-tuning needs purpose `fine-tune`.",
            param=param,
            code="invalid_file_purpose",
        )
    if file.status == File.Status.ERROR:
        raise InvalidRequest(
            f"File {file_id} failed validation: {file.status_details}", param=param, code="invalid_file"
        )
    if file.status == File.Status.PROCESSED:
        _check_format(file, param=param, method=method)
    return file


def _format_problem(file: File, *, method: str) -> str | None:
    allowed = METHOD_FORMATS[method]
    if file.format in allowed:
        return None
    return (
        f"File {file.public_id} holds {file.format or 'unrecognised'} data; method {method} trains on "
        f"{' or '.join(allowed)} data."
    )


def _check_format(file: File, *, param: str, method: str) -> None:
    problem = _format_problem(file, method=method)
    if problem:
        raise InvalidRequest(problem, param=param, code="invalid_file_format")


def _n_examples(file: File) -> int | None:
    stats = (file.validation_report or {}).get("stats") or {}
    count = stats.get("example_count")
    return int(count) if isinstance(count, int) else None


@transaction.atomic
def job_create(
    *,
    team: Team,
    model: str,
    training_file: str,
    validation_file: str | None = None,
    method: Any = None,
    hyperparameters: Any = None,
    suffix: str | None = None,
    seed: int | None = None,
    metadata: Mapping[str, str] | None = None,
    integrations: list[dict[str, Any]] | None = None,
) -> FineTuningJob:
    """Create a job. Everything that can be refused is refused here, with `param` naming the field: the
    base model, the files (another team's, failed validation, wrong format for the method), the
    hyperparameters (gpu_runner's validator) and the memory estimate (no GPU class fits). A file still
    being validated is fine: the job waits in `validating_files`."""
    base = base_model_for_team(team=team, name=model)
    request = parse_method(method, hyperparameters)
    training = _job_file(team=team, file_id=training_file, param="training_file", method=request.method)
    validation = None
    if validation_file:
        if validation_file == training_file:
            raise InvalidRequest(
                "validation_file must differ from training_file.",
                param="validation_file",
                code="invalid_file",
            )
        validation = _job_file(
            team=team, file_id=validation_file, param="validation_file", method=request.method
        )
    if seed is None:
        seed = secrets.randbelow(2**31)
    stored_spec, spec = build_spec(
        request=request, seed=seed, base_model=base, has_validation_file=validation is not None
    )
    estimate = estimate_memory(spec, base, n_examples=_n_examples(training))
    gpu_class = choose_class(estimate, request=request)
    ready = training.status == File.Status.PROCESSED and (
        validation is None or validation.status == File.Status.PROCESSED
    )
    now = timezone.now()
    job = FineTuningJob.objects.create(
        team=team,
        base_model=base,
        base_model_revision=base.revision,
        base_model_prefix=base.prefix,
        training_file=training,
        validation_file=validation,
        method=request.method,
        spec=stored_spec,
        requested_hyperparameters=request.hyperparameters,
        suffix=suffix or "",
        seed=seed,
        metadata=dict(metadata) if metadata is not None else None,
        integrations=integrations,
        status=Status.QUEUED if ready else Status.VALIDATING_FILES,
        queued_at=now if ready else None,
        gpu_class=gpu_class.name,
        memory_estimate={**estimate.to_dict(), "explain": estimate.explain()},
        resolved_hyperparameters=(
            estimate_resolution(
                spec,
                training_report=training.validation_report,
                data_format=training.format,
                has_validation_file=validation is not None,
            )
            if ready
            else None
        ),
    )
    _record_event(job.pk, f"Created fine-tuning job: {job.public_id}", at=now)
    if ready:
        _record_event(job.pk, "Files validated, moving job to queued state", at=now)
        request_schedule()
    else:
        for file in (training, validation):
            if file is not None and file.status == File.Status.UPLOADED:
                _record_event(
                    job.pk,
                    f"Validating {'training' if file is training else 'validation'} file: {file.public_id}",
                    at=now,
                )
    return job


def _fail(
    job: FineTuningJob, *, from_statuses: Iterable[str], code: str, message: str, param: str | None
) -> bool:
    return _transition(
        job,
        from_statuses=from_statuses,
        to=Status.FAILED,
        message=message,
        level=JobEvent.Level.ERROR,
        error={"code": code, "message": message, "param": param},
        finished_at=timezone.now(),
        **_lease_cleared(),
    )


def jobs_files_validated(*, file_id: str) -> list[str]:
    """Move on the jobs that waited for `file_id` to be validated: to `queued` when all their files are
    fine, to `failed` with the file's errors otherwise. Called by the control worker after validation
    (and by the reconciler, in case that call was lost)."""
    waiting = FineTuningJob.objects.filter(status=Status.VALIDATING_FILES).filter(
        Q(training_file__public_id=file_id) | Q(validation_file__public_id=file_id)
    )
    moved = []
    for pk in waiting.values_list("pk", flat=True):
        job = job_advance_validating(job_pk=pk)
        if job is not None:
            moved.append(job.public_id)
    return moved


@transaction.atomic
def job_advance_validating(*, job_pk: int) -> FineTuningJob | None:
    """Queue or fail one `validating_files` job whose files have all been validated; None while a file is
    still being validated (or the job moved on already)."""
    job = (
        FineTuningJob.objects.select_for_update(of=("self",))
        .select_related("team", "base_model", "training_file", "validation_file")
        .filter(pk=job_pk, status=Status.VALIDATING_FILES)
        .first()
    )
    if job is None:
        return None
    files = [(job.training_file, "training_file"), (job.validation_file, "validation_file")]
    for file, _param in files:
        if file is not None and file.status == File.Status.UPLOADED:
            return None
    for file, param in files:
        if file is None:
            continue
        if file.status != File.Status.PROCESSED:
            why = (
                "was deleted"
                if file.status == File.Status.DELETED
                else f"failed validation: {file.status_details}"
            )
            _fail(
                job,
                from_statuses=[Status.VALIDATING_FILES],
                code=f"invalid_{param}",
                message=f"File {file.public_id} {why}",
                param=param,
            )
            return job
        problem = _format_problem(file, method=job.method)
        if problem:
            _fail(
                job,
                from_statuses=[Status.VALIDATING_FILES],
                code=f"invalid_{param}",
                message=problem,
                param=param,
            )
            return job
    spec = spec_of(job)
    estimate = estimate_memory(spec, job.base_model, n_examples=_n_examples(job.training_file))
    try:
        gpu_class = choose_class(
            estimate, request=MethodRequest(job.method, {}, f"method.{job.method}.hyperparameters")
        )
    except InvalidRequest as exc:
        _fail(
            job,
            from_statuses=[Status.VALIDATING_FILES],
            code="insufficient_gpu_memory",
            message=exc.message,
            param=exc.param,
        )
        return job
    _transition(
        job,
        from_statuses=[Status.VALIDATING_FILES],
        to=Status.QUEUED,
        message="Files validated, moving job to queued state",
        queued_at=timezone.now(),
        gpu_class=gpu_class.name,
        memory_estimate={**estimate.to_dict(), "explain": estimate.explain()},
        resolved_hyperparameters=estimate_resolution(
            spec,
            training_report=job.training_file.validation_report,
            data_format=job.training_file.format,
            has_validation_file=job.validation_file is not None,
        ),
    )
    request_schedule()
    return job


# Cancel, pause, resume ------------------------------------------------------------------------------


def _locked(job: FineTuningJob) -> FineTuningJob:
    return (
        FineTuningJob.objects.select_for_update(of=("self",))
        .select_related("team", "base_model")
        .get(pk=job.pk)
    )


@transaction.atomic
def job_cancel(*, job: FineTuningJob) -> FineTuningJob:
    """Cancel a job. One that holds no GPU is `cancelled` at once; a running one is `cancelling` until its
    worker has stopped the runner (the stop marker tells it), then `cancelled`. Cancelling twice is fine."""
    job = _locked(job)
    if job.status in (Status.CANCELLED, Status.CANCELLING):
        return job
    if job.status in (Status.SUCCEEDED, Status.FAILED):
        raise InvalidRequest(
            f"Job {job.public_id} has already {job.status}; it cannot be cancelled.", code="invalid_job_state"
        )
    if job.status in (Status.RUNNING, Status.PAUSING):
        _transition(
            job,
            from_statuses=[job.status],
            to=Status.CANCELLING,
            message="Cancellation requested; stopping the run",
        )
        _stop_after_commit(job, action="cancel", attempt=job.attempt)
        return job
    dispatched = job.is_dispatched
    _transition(
        job,
        from_statuses=[job.status],
        to=Status.CANCELLED,
        message="Job cancelled",
        finished_at=timezone.now(),
        **_lease_cleared(),
    )
    if dispatched:
        # A worker may already hold the dispatch: it must not start.
        _stop_after_commit(job, action="cancel", attempt=job.attempt)
        request_schedule()
    return job


@transaction.atomic
def job_pause(*, job: FineTuningJob) -> FineTuningJob:
    """Pause a job: a running one checkpoints and stops (`pausing`, then `paused`); a queued one is
    `paused` at once. Its checkpoints are kept for `job_resume`."""
    job = _locked(job)
    if job.status in (Status.PAUSED, Status.PAUSING):
        return job
    if job.status == Status.RUNNING:
        _transition(
            job,
            from_statuses=[Status.RUNNING],
            to=Status.PAUSING,
            message="Pause requested; saving a checkpoint",
        )
        _stop_after_commit(job, action="pause", attempt=job.attempt)
        return job
    if job.status == Status.QUEUED:
        dispatched = job.is_dispatched
        _transition(
            job, from_statuses=[Status.QUEUED], to=Status.PAUSED, message="Job paused", **_lease_cleared()
        )
        if dispatched:
            _stop_after_commit(job, action="pause", attempt=job.attempt)
            request_schedule()
        return job
    if job.status == Status.VALIDATING_FILES:
        raise InvalidRequest(
            f"Job {job.public_id} is still validating its files; pause it once it is queued or running.",
            code="invalid_job_state",
        )
    raise InvalidRequest(
        f"Job {job.public_id} is {job.status}; only a queued or running job can be paused.",
        code="invalid_job_state",
    )


@transaction.atomic
def job_resume(*, job: FineTuningJob) -> FineTuningJob:
    """Put a paused job back in the queue; its next dispatch continues from its newest checkpoint."""
    job = _locked(job)
    if job.status == Status.PAUSING:
        FineTuningJob.objects.filter(pk=job.pk, status=Status.PAUSING).update(
            resume_requested=True, updated_at=timezone.now()
        )
        _record_event(job.pk, "Resume requested; the job is queued again once its checkpoint is saved")
        job.refresh_from_db()
        return job
    if job.status != Status.PAUSED:
        raise InvalidRequest(
            f"Job {job.public_id} is {job.status}; only a paused job can be resumed.",
            code="invalid_job_state",
        )
    _transition(
        job,
        from_statuses=[Status.PAUSED],
        to=Status.QUEUED,
        message="Job resumed",
        queued_at=timezone.now(),
        resume_requested=False,
    )
    request_schedule()
    return job


# Reports of GPU workers -----------------------------------------------------------------------------


def _current(job_id: str, attempt: int) -> FineTuningJob | None:
    job = FineTuningJob.objects.select_related("team", "base_model").filter(public_id=job_id).first()
    if job is None:
        logger.warning("report for unknown job %s (attempt %s) ignored", job_id, attempt)
        return None
    if job.attempt != attempt:
        logger.info("stale report for %s: attempt %s, current %s; ignored", job_id, attempt, job.attempt)
        return None
    return job


def _stop_stray_attempt(job_id: str, attempt: int) -> None:
    """A worker reported for an attempt that does not hold the job (superseded, or the job stopped
    meanwhile): tell it to stop. A pending stop of the current attempt is never overwritten."""
    job = FineTuningJob.objects.filter(public_id=job_id).first()
    if job is None or job.status in (Status.CANCELLING, Status.PAUSING):
        return
    if job.attempt == attempt and (job.status == Status.RUNNING or job.is_dispatched):
        return
    protocol.write_stop_marker(job, action="cancel", attempt=attempt)


def job_report_started(*, job_id: str, attempt: int, worker: str) -> bool:
    """`tailor.control.job_started`: the runner of `attempt` started: `queued → running`."""
    now = timezone.now()
    with transaction.atomic():
        job = _current(job_id, attempt)
        started = job is not None and _transition(
            job,
            from_statuses=[Status.QUEUED],
            to=Status.RUNNING,
            attempt=attempt,
            extra_filter=Q(dispatched_at__isnull=False),
            message="Fine-tuning job started"
            if attempt == 1
            else f"Fine-tuning job started (attempt {attempt})",
            data={"attempt": attempt, "worker": worker},
            lease_owner=worker[:255],
            lease_expires_at=now + timedelta(seconds=settings.TAILOR_LEASE_SECONDS),
            heartbeat_at=now,
            attempt_started_at=now,
        )
    if not started:
        # Redelivered (the attempt already runs: nothing to do) or stray (stop it).
        _stop_stray_attempt(job_id, attempt)
    return started


def job_report_heartbeat(*, job_id: str, attempt: int, worker: str) -> bool:
    """`tailor.control.job_heartbeat`: extend the lease of the current attempt."""
    now = timezone.now()
    updated = (
        FineTuningJob.objects.filter(public_id=job_id, attempt=attempt, status__in=REPORTABLE)
        .exclude(status=Status.QUEUED, dispatched_at__isnull=True)
        .update(
            lease_expires_at=now + timedelta(seconds=settings.TAILOR_LEASE_SECONDS),
            heartbeat_at=now,
            lease_owner=worker[:255],
            updated_at=now,
        )
    )
    if not updated:
        _stop_stray_attempt(job_id, attempt)
    return bool(updated)


def _timestamp(value: Any, default: datetime) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return datetime.fromtimestamp(float(value), tz=UTC)
    return default


def job_report_events(*, job_id: str, attempt: int, events: list[dict[str, Any]]) -> int:
    """`tailor.control.job_events`: store runner events once each (by `seq`), and take progress,
    resolved hyperparameters and the ETA from them. Returns how many were new."""
    job = _current(job_id, attempt)
    if job is None:
        return 0
    now = timezone.now()
    rows = []
    for event in events:
        seq = event.get("seq")
        if not isinstance(seq, int) or seq < 0:
            logger.warning("event without a valid seq for %s ignored: %s", job_id, json.dumps(event)[:200])
            continue
        if event.get("type") == "checkpoint_saved":
            # It names a folder on the GPU node; the user-facing checkpoint event comes from the
            # worker's job_checkpoint report once the checkpoint is safely in the object store.
            continue
        shown = shown_event(event)
        rows.append(
            JobEvent(
                job_id=job.pk,
                created_at=_timestamp(event.get("created_at"), now),
                level=shown.level,
                type=shown.type,
                message=shown.message,
                data=shown.data,
                kind=str(event.get("type") or "")[:40],
                attempt=attempt,
                seq=seq,
            )
        )
    before = JobEvent.objects.filter(job_id=job.pk, attempt=attempt).count()
    JobEvent.objects.bulk_create(rows, ignore_conflicts=True)
    stored = JobEvent.objects.filter(job_id=job.pk, attempt=attempt).count() - before
    _apply_progress(job, events, now)
    return stored


def _apply_progress(job: FineTuningJob, events: list[dict[str, Any]], now: datetime) -> None:
    resolved = None
    compute_dtype = None
    latest: dict[str, Any] | None = None
    for event in events:
        raw = event.get("data")
        data: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if event.get("type") == "hyperparameters_resolved" and isinstance(data.get("hyperparameters"), dict):
            resolved = dict(data["hyperparameters"])
        elif event.get("type") == "model_loaded" and isinstance(data.get("compute_dtype"), str):
            # "auto" is settled by the machine the runner landed on; model_loaded says what it chose.
            compute_dtype = data["compute_dtype"]
        elif event.get("type") == "metrics" and isinstance(data.get("step"), int):
            if latest is None or data["step"] >= latest["step"]:
                latest = data
    live = FineTuningJob.objects.filter(pk=job.pk, attempt=job.attempt)
    if compute_dtype is not None:
        resolved = resolved or dict(FineTuningJob.objects.get(pk=job.pk).resolved_hyperparameters or {})
        resolved["compute_dtype"] = compute_dtype
    if resolved is not None:
        live.update(resolved_hyperparameters=resolved, updated_at=now)
    if latest is not None:
        fields: dict[str, Any] = {"step": latest["step"], "updated_at": now}
        if isinstance(latest.get("total_steps"), int):
            fields["total_steps"] = latest["total_steps"]
        eta = latest.get("eta_seconds")
        if isinstance(eta, int | float) and not isinstance(eta, bool) and eta >= 0:
            fields["estimated_finish"] = now + timedelta(seconds=float(eta))
        # An older batch delivered late must not move progress back.
        live.filter(status__in=FineTuningJob.ON_GPU).filter(
            Q(step__isnull=True) | Q(step__lte=latest["step"])
        ).update(**fields)


def job_report_checkpoint(
    *, job_id: str, attempt: int, step: int, prefix: str, metrics: dict[str, Any] | None
) -> Checkpoint | None:
    """`tailor.control.job_checkpoint`: a complete checkpoint of the current attempt is in the store."""
    job = _current(job_id, attempt)
    if job is None:
        return None
    if not isinstance(step, int) or step < 0 or not protocol.within_job_output(job, prefix):
        logger.error(
            "checkpoint report for %s refused: step %r, prefix %r outside %s",
            job_id,
            step,
            prefix,
            protocol.job_output_prefix(job),
        )
        return None
    defaults: dict[str, Any] = {"prefix": prefix.rstrip("/"), "attempt": attempt}
    if metrics is not None:  # a report without figures keeps those an earlier report gave
        defaults["metrics"] = checkpoint_metrics(step, metrics)
    with transaction.atomic():
        checkpoint, created = Checkpoint.objects.update_or_create(
            job=job,
            step_number=step,
            defaults=defaults,
            create_defaults={**defaults, "metrics": checkpoint_metrics(step, metrics)},
        )
        if created:
            _record_event(
                job.pk,
                f"Checkpoint created at step {step}",
                data={"step": step, "checkpoint": checkpoint.public_id},
            )
    return checkpoint


class AdapterUnavailable(Exception):
    """The adapter a worker reported is not (completely) in the object store."""


def _read_adapter(job: FineTuningJob, prefix: str) -> dict[str, Any]:
    if not protocol.within_job_output(job, prefix):
        raise AdapterUnavailable(f"the adapter prefix {prefix!r} lies outside the job's output")
    store = object_store()
    try:
        config = json.loads(store.get_bytes(f"{prefix.rstrip('/')}/adapter_config.json"))
        manifest = json.loads(store.get_bytes(f"{prefix.rstrip('/')}/tailor_adapter.json"))
    except ObjectNotFound as exc:
        raise AdapterUnavailable(f"the adapter is incomplete in the object store: {exc}") from None
    except ValueError as exc:
        raise AdapterUnavailable(f"the adapter's JSON files do not parse: {exc}") from None
    return {"config": config, "manifest": manifest}


def _results_file(job: FineTuningJob, key: str) -> File | None:
    if not key or not protocol.within_job_output(job, key):
        return None
    store = object_store()
    try:
        size, digest = store.size(key), store.sha256(key)
    except ObjectNotFound:
        return None
    return File.objects.create(
        public_id=new_file_id(),
        team=job.team,
        purpose=File.Purpose.FINE_TUNE_RESULTS,
        filename=RESULTS_FILENAME,
        content_type="text/csv",
        bytes=size,
        sha256=digest,
        storage_key=key,
        status=File.Status.PROCESSED,
        validated_at=timezone.now(),
    )


def job_report_finished(*, job_id: str, attempt: int, outcome: str, result: Mapping[str, Any] | None) -> bool:
    """`tailor.control.job_finished`: the runner of `attempt` ended with `outcome` (succeeded, failed,
    cancelled, paused). Applies the matching transition once; a second delivery finds the job moved
    on and changes nothing, so a successful job gets exactly one Adapter."""
    result = dict(result or {})
    job = _current(job_id, attempt)
    if job is None or job.status not in REPORTABLE:
        return False
    stopped_at = result.get("checkpoint")
    if outcome in ("paused", "cancelled") and isinstance(stopped_at, dict):
        # The checkpoint written on SIGTERM, in case its own report has not arrived yet.
        step, prefix = stopped_at.get("step"), stopped_at.get("prefix")
        if isinstance(step, int) and isinstance(prefix, str):
            job_report_checkpoint(job_id=job_id, attempt=attempt, step=step, prefix=prefix, metrics=None)
    adapter_files: dict[str, Any] | None = None
    adapter_problem: str | None = None
    if outcome == "succeeded" and job.status != Status.CANCELLING:
        try:
            adapter_files = _read_adapter(job, str(result.get("adapter_prefix") or ""))
        except AdapterUnavailable as exc:
            adapter_problem = str(exc)
    now = timezone.now()
    with transaction.atomic():
        job = (
            FineTuningJob.objects.select_for_update(of=("self",))
            .select_related("team", "base_model")
            .get(pk=job.pk)
        )
        if job.attempt != attempt or job.status not in REPORTABLE:
            return False
        if job.status == Status.QUEUED and job.dispatched_at is None:
            return False
        ended = {**_lease_cleared(), "gpu_seconds": F("gpu_seconds") + _attempt_gpu_seconds(job, now)}
        guard: dict[str, Any] = {"from_statuses": [job.status], "attempt": attempt}
        if job.status == Status.CANCELLING:
            return _transition(
                job, **guard, to=Status.CANCELLED, message="Job cancelled", finished_at=now, **ended
            )
        if outcome == "succeeded" and adapter_problem is None and adapter_files is not None:
            return _succeed(
                job, guard=guard, result=result, adapter_files=adapter_files, now=now, ended=ended
            )
        if outcome == "succeeded" or outcome == "failed":
            reported = result.get("error")
            error: dict[str, Any] = reported if isinstance(reported, dict) else {}
            code = str(error.get("code") or "internal_error")
            message = str(error.get("message") or adapter_problem or "The training run failed.")
            param = error.get("param") if isinstance(error.get("param"), str) else None
            if adapter_problem:
                code, message, param = "internal_error", f"The run finished but {adapter_problem}.", None
            return _transition(
                job,
                **guard,
                to=Status.FAILED,
                message=f"Fine-tuning job failed: {message}",
                level=JobEvent.Level.ERROR,
                error={"code": code, "message": message, "param": param},
                finished_at=now,
                trained_tokens=result.get("trained_tokens")
                if isinstance(result.get("trained_tokens"), int)
                else None,
                **ended,
            )
        if outcome in ("paused", "cancelled"):
            if job.status == Status.PAUSING:
                if job.resume_requested:
                    return _transition(
                        job,
                        **guard,
                        to=Status.QUEUED,
                        message="Job paused and queued again to resume",
                        queued_at=now,
                        resume_requested=False,
                        **ended,
                    )
                return _transition(job, **guard, to=Status.PAUSED, message="Job paused", **ended)
            # Nobody asked: the worker was shut down (drained node, deleted pod) or preempted. Run it again
            # from its checkpoint; a deliberate shutdown is routine and does not count as a lost attempt.
            shutdown = result.get("reason") == "worker_shutdown"
            return requeue_or_fail(
                job,
                reason="The worker shut down"
                if shutdown
                else "The worker stopped the run before it finished",
                now=now,
                guard=guard,
                ended=ended,
                count_loss=not shutdown,
            )
        logger.error("job_finished for %s with unknown outcome %r ignored", job_id, outcome)
        return False


def _succeed(
    job: FineTuningJob,
    *,
    guard: dict[str, Any],
    result: Mapping[str, Any],
    adapter_files: dict[str, Any],
    now: datetime,
    ended: dict[str, Any],
) -> bool:
    name = fine_tuned_model_name(job)
    manifest, config = adapter_files["manifest"], adapter_files["config"]
    trained_tokens = result.get("trained_tokens")
    if not isinstance(trained_tokens, int):
        trained_tokens = (
            manifest.get("trained_tokens") if isinstance(manifest.get("trained_tokens"), int) else None
        )
    results = _results_file(job, str(result.get("metrics_key") or ""))
    steps = manifest.get("steps") if isinstance(manifest.get("steps"), int) else job.total_steps
    moved = _transition(
        job,
        **guard,
        to=Status.SUCCEEDED,
        message="The job has successfully completed",
        finished_at=now,
        fine_tuned_model=name,
        trained_tokens=trained_tokens,
        result_file=results,
        step=steps,
        **ended,
    )
    if not moved:
        if results is not None:
            results.delete()
        return False
    adapter_meta = manifest.get("adapter") if isinstance(manifest.get("adapter"), dict) else {}
    targets = adapter_meta.get("target_modules", config.get("target_modules"))
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    family = name.rsplit(":", 1)[0]
    # Versions count within the family; the job row is locked and a family's jobs finish one report at a
    # time per job, while the unique constraint guards against two finishing in the same instant.
    newest = (
        Adapter.objects.filter(team=job.team, family=family)
        .order_by("-version")
        .values_list("version", flat=True)
        .first()
    )
    adapter = Adapter.objects.create(
        team=job.team,
        job=job,
        base_model=job.base_model,
        name=name,
        family=family,
        version=(newest or 0) + 1,
        config=config if isinstance(config, dict) else {},
        lineage=_adapter_lineage(job, manifest),
        formats=["peft-safetensors"],
        size_bytes=sum(int(entry.get("bytes") or 0) for entry in files.values() if isinstance(entry, dict)),
        prefix=str(result["adapter_prefix"]).rstrip("/"),
        rank=adapter_meta.get("r", config.get("r")),
        alpha=adapter_meta.get("lora_alpha", config.get("lora_alpha")),
        target_modules=sorted(targets) if isinstance(targets, list) else ([targets] if targets else []),
        use_dora=bool(adapter_meta.get("use_dora", config.get("use_dora", False))),
        use_rslora=bool(adapter_meta.get("use_rslora", config.get("use_rslora", False))),
        files=files,
        metrics=manifest.get("metrics") if isinstance(manifest.get("metrics"), dict) else {},
        trained_tokens=trained_tokens,
    )
    _record_event(job.pk, f"New fine-tuned model created: {name}", data={"fine_tuned_model": name}, at=now)
    from tailor.registry.services import adapter_auto_deploy

    adapter_auto_deploy(adapter=adapter)
    return True


def _adapter_lineage(job: FineTuningJob, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Where an adapter came from: enough to reproduce it or to audit what it was trained on."""

    def file_entry(file: File | None) -> dict[str, Any] | None:
        if file is None:
            return None
        return {"id": file.public_id, "filename": file.filename, "sha256": file.sha256, "bytes": file.bytes}

    return {
        "job": job.public_id,
        "method": job.method,
        "seed": job.seed,
        "training_file": file_entry(job.training_file),
        "validation_file": file_entry(job.validation_file),
        "base_model": {"name": job.base_model.name, "revision": job.base_model.revision},
        "hyperparameters": manifest.get("hyperparameters") or job.resolved_hyperparameters,
        "libraries": manifest.get("libraries") if isinstance(manifest.get("libraries"), dict) else {},
        "steps": manifest.get("steps"),
    }


def requeue_or_fail(
    job: FineTuningJob,
    *,
    reason: str,
    now: datetime,
    guard: dict[str, Any],
    ended: dict[str, Any],
    count_loss: bool = True,
) -> bool:
    """Put a job whose attempt was lost back in the queue, to continue from its newest checkpoint with
    the next attempt, or fail it with `worker_lost` once TAILOR_MAX_ATTEMPTS attempts were lost.
    `count_loss=False` for a dispatch no worker ever took (it waited in the broker too long): that one
    is simply sent again. Call inside a transaction, with the job row locked."""
    lost_attempt = job.attempt
    limit = settings.TAILOR_MAX_ATTEMPTS
    losses = job.lost_attempts + (1 if count_loss else 0)
    if losses >= limit:
        message = f"{reason}; the job was given up after {losses} lost attempts (TAILOR_MAX_ATTEMPTS={limit})"
        moved = _transition(
            job,
            **guard,
            to=Status.FAILED,
            message=message,
            level=JobEvent.Level.ERROR,
            error={"code": "worker_lost", "message": message, "param": None},
            finished_at=now,
            lost_attempts=losses,
            **ended,
        )
    else:
        checkpoint = newest_checkpoint(job=job)
        where = f"checkpoint at step {checkpoint.step_number}" if checkpoint else "the start"
        moved = _transition(
            job,
            **guard,
            to=Status.QUEUED,
            message=f"{reason}; queued again to continue from {where}",
            level=JobEvent.Level.WARN,
            data={
                "lost_attempt": lost_attempt,
                "resume_step": checkpoint.step_number if checkpoint else None,
            },
            lost_attempts=losses,
            **ended,
        )
        if moved:
            request_schedule()
    if moved:
        # If that worker is in fact alive (a network partition), it must stop: a new attempt takes over.
        _stop_after_commit(job, action="cancel", attempt=lost_attempt)
    return moved
