"""The scheduler and the reconciler: the database decides what runs, Celery only carries the decision.

`schedule_jobs` dispatches queued jobs within each team's quotas (concurrent jobs, GPU-hour budget)
and each GPU class's slots, in a fair order: an operator's priority first, then teams take turns (the
team whose last dispatch is oldest goes next), first in, first out within a team. Rows are locked with
`SELECT … FOR UPDATE SKIP LOCKED`, so several schedulers can run at once without exceeding a quota.
Dispatch messages are published after commit, and marked as sent afterwards.

`reconcile` repairs what messages cannot: leases that expired (requeue from the newest checkpoint or
fail with `worker_lost`), dispatches committed but never published, stop markers that were not
written, and jobs whose file validation finished without telling them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Max, Q, Sum
from django.utils import timezone

from gpu_runner.storage import ObjectNotFound
from tailor.core.objectstore import object_store
from tailor.files.models import File
from tailor.teams.models import Team
from tailor.tuning import protocol
from tailor.tuning.models import FineTuningJob, JobEvent
from tailor.tuning.selectors import newest_checkpoint
from tailor.tuning.services import _lease_cleared, _transition, job_advance_validating, requeue_or_fail
from tailor.tuning.specs import gpu_classes

logger = logging.getLogger(__name__)

Status = FineTuningJob.Status
# Jobs that hold a GPU, or a dispatch that a worker is about to take.
OCCUPYING = Q(status__in=FineTuningJob.ON_GPU) | Q(status=Status.QUEUED, dispatched_at__isnull=False)
NEVER = datetime.min.replace(tzinfo=UTC)


def team_gpu_hours(*, team: Team, now: datetime | None = None) -> Decimal:
    """GPU hours the team's jobs used: finished attempts plus the time of the attempts running now."""
    now = now or timezone.now()
    jobs = FineTuningJob.objects.filter(team=team)
    seconds = jobs.aggregate(total=Sum("gpu_seconds"))["total"] or 0.0
    for started in jobs.filter(attempt_started_at__isnull=False).values_list("attempt_started_at", flat=True):
        seconds += max(0.0, (now - started).total_seconds())
    return Decimal(seconds) / Decimal(3600)


def _class_queue(job: FineTuningJob) -> str | None:
    classes = gpu_classes()
    for gpu_class in classes:
        if gpu_class.name == job.gpu_class:
            return gpu_class.queue
    # The class was removed from the configuration since the job was sized: the smallest that fits.
    needed = float(job.memory_estimate.get("total_gib") or 0) * 1.1
    fitting = sorted((c for c in classes if c.memory_gib >= needed), key=lambda c: c.memory_gib)
    return fitting[0].queue if fitting else None


def publish_job_dispatch(job_pk: int, attempt: int) -> bool:
    """Publish the stored dispatch message of `attempt` to its GPU class queue, then mark it sent.
    A job that moved on meanwhile (cancelled, paused, re-dispatched) is not published."""
    job = FineTuningJob.objects.filter(
        pk=job_pk, attempt=attempt, status=Status.QUEUED, dispatched_at__isnull=False
    ).first()
    if job is None or job.dispatch_message is None:
        return False
    queue = _class_queue(job)
    if queue is None:
        logger.error("no configured GPU class can take %s (class %s gone)", job.public_id, job.gpu_class)
        return False
    protocol.publish_dispatch(job.dispatch_message, queue=queue)
    FineTuningJob.objects.filter(pk=job_pk, attempt=attempt).update(dispatch_published_at=timezone.now())
    logger.info("dispatched %s attempt %s to %s", job.public_id, attempt, queue)
    return True


def _dispatch(job: FineTuningJob, *, now: datetime) -> bool:
    checkpoint = newest_checkpoint(job=job)
    attempt = job.attempt + 1
    message = protocol.dispatch_message(job, attempt=attempt, resume_from=checkpoint)
    updated = FineTuningJob.objects.filter(
        pk=job.pk, status=Status.QUEUED, dispatched_at__isnull=True, attempt=job.attempt
    ).update(
        attempt=attempt,
        dispatched_at=now,
        last_dispatched_at=now,
        dispatch_message=message,
        dispatch_published_at=None,
        lease_owner="",
        lease_expires_at=now + timedelta(seconds=settings.TAILOR_DISPATCH_TIMEOUT),
        heartbeat_at=None,
        attempt_started_at=None,
        step=checkpoint.step_number if checkpoint else None,
        estimated_finish=None,
        updated_at=now,
    )
    if not updated:
        return False
    if checkpoint is not None:
        JobEvent.objects.create(
            job=job,
            created_at=now,
            message=f"Resuming from checkpoint at step {checkpoint.step_number}",
            data={"step": checkpoint.step_number, "checkpoint": checkpoint.public_id, "attempt": attempt},
            kind="status",
        )
    transaction.on_commit(partial(publish_job_dispatch, job.pk, attempt), robust=True)
    return True


@dataclass(order=True)
class _Candidate:
    key: tuple[Any, ...]
    job: FineTuningJob = field(compare=False)


def schedule_jobs(*, now: datetime | None = None) -> list[str]:
    """Dispatch every queued job that fits its team's quotas and its GPU class's slots, fairly.
    Returns the ids of the jobs dispatched."""
    now = now or timezone.now()
    dispatched: list[str] = []
    with transaction.atomic():
        waiting = FineTuningJob.objects.filter(status=Status.QUEUED, dispatched_at__isnull=True)
        # Locking the teams serialises schedulers per team: two can never both fill the same quota.
        teams = {
            team.pk: team
            for team in Team.objects.select_for_update(skip_locked=True)
            .filter(pk__in=waiting.values("team_id"))
            .order_by("pk")
        }
        if not teams:
            return dispatched
        active = dict(
            FineTuningJob.objects.filter(OCCUPYING, team_id__in=teams)
            .order_by()
            .values_list("team_id")
            .annotate(n=Count("id"))
        )
        class_use: dict[str, int] = defaultdict(
            int,
            FineTuningJob.objects.filter(OCCUPYING)
            .order_by()
            .values_list("gpu_class")
            .annotate(n=Count("id")),
        )
        slots = settings.TAILOR_GPU_CLASS_SLOTS
        turn = dict(
            FineTuningJob.objects.filter(team_id__in=teams, last_dispatched_at__isnull=False)
            .order_by()
            .values_list("team_id")
            .annotate(last=Max("last_dispatched_at"))
        )
        capacity: dict[int, int] = {}
        queues: dict[int, list[FineTuningJob]] = {}
        for team_id, team in teams.items():
            room = team.max_concurrent_jobs - active.get(team_id, 0)
            if room <= 0:
                continue
            if (
                team.gpu_hour_budget is not None
                and team_gpu_hours(team=team, now=now) >= team.gpu_hour_budget
            ):
                logger.info(
                    "team %s has used its GPU-hour budget (%s h); its jobs stay queued",
                    team.slug,
                    team.gpu_hour_budget,
                )
                continue
            capacity[team_id] = room
            queues[team_id] = list(
                waiting.filter(team_id=team_id)
                .select_for_update(skip_locked=True, of=("self",))
                .select_related("team", "base_model", "training_file", "validation_file")
                .order_by("-priority", "queued_at", "pk")
            )

        def has_slot(job: FineTuningJob) -> bool:
            limit = slots.get(job.gpu_class)
            return limit is None or class_use[job.gpu_class] < limit

        while True:
            heads = []
            for team_id, jobs in queues.items():
                if capacity[team_id] <= 0:
                    continue
                head = next((job for job in jobs if has_slot(job)), None)
                if head is not None:
                    key = (
                        -head.priority,
                        -teams[team_id].job_priority,
                        turn.get(team_id, NEVER),
                        head.queued_at or head.created_at,
                        head.pk,
                    )
                    heads.append(_Candidate(key, head))
            if not heads:
                break
            job = min(heads).job
            queues[job.team_id].remove(job)
            if _dispatch(job, now=now):
                dispatched.append(job.public_id)
                capacity[job.team_id] -= 1
                class_use[job.gpu_class] += 1
                turn[job.team_id] = now
    return dispatched


@dataclass
class ReconcileReport:
    """What one reconciler pass did, by job id."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)
    validated: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.requeued, self.failed, self.stopped, self.resent, self.markers, self.validated))


def _expire_lease(job_pk: int, now: datetime, report: ReconcileReport) -> None:
    with transaction.atomic():
        job = (
            FineTuningJob.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("team", "base_model")
            .filter(pk=job_pk, lease_expires_at__lt=now)
            .filter(OCCUPYING)
            .first()
        )
        if job is None:
            return
        alive_until = job.heartbeat_at or job.attempt_started_at
        used = (
            max(0.0, (alive_until - job.attempt_started_at).total_seconds())
            if job.attempt_started_at and alive_until
            else 0.0
        )
        ended = {**_lease_cleared(), "gpu_seconds": F("gpu_seconds") + used}
        guard: dict[str, Any] = {"from_statuses": [job.status], "attempt": job.attempt}
        lost = f"the worker {job.lease_owner}" if job.lease_owner else "the worker"
        if job.status == Status.CANCELLING:
            if _transition(
                job,
                **guard,
                to=Status.CANCELLED,
                message=f"Job cancelled ({lost} stopped reporting)",
                finished_at=now,
                **ended,
            ):
                report.stopped.append(job.public_id)
            return
        if job.status == Status.PAUSING:
            to = Status.QUEUED if job.resume_requested else Status.PAUSED
            if _transition(
                job,
                **guard,
                to=to,
                message=f"Job paused ({lost} stopped reporting)",
                resume_requested=False,
                queued_at=now if to == Status.QUEUED else job.queued_at,
                **ended,
            ):
                report.stopped.append(job.public_id)
            return
        if job.status == Status.QUEUED and not job.lease_owner:
            reason = f"No GPU worker of class {job.gpu_class} took the job within {settings.TAILOR_DISPATCH_TIMEOUT} s"
            moved = requeue_or_fail(job, reason=reason, now=now, guard=guard, ended=ended, count_loss=False)
        else:
            since = f" since {alive_until:%H:%M:%S} UTC" if alive_until else ""
            moved = requeue_or_fail(
                job,
                reason=f"Lost contact with {lost} (no heartbeat{since})",
                now=now,
                guard=guard,
                ended=ended,
            )
        if moved:
            (report.failed if job.status == Status.FAILED else report.requeued).append(job.public_id)


def reconcile(*, now: datetime | None = None) -> ReconcileReport:
    """One pass of the reconciler (run by the beat every TAILOR_RECONCILE_INTERVAL seconds)."""
    now = now or timezone.now()
    report = ReconcileReport()
    expired = FineTuningJob.objects.filter(OCCUPYING, lease_expires_at__lt=now).values_list("pk", flat=True)
    for pk in list(expired):
        _expire_lease(pk, now, report)

    # Dispatches committed but never published (the process died between commit and publish).
    resend_before = now - timedelta(seconds=settings.TAILOR_DISPATCH_RESEND_SECONDS)
    lost = FineTuningJob.objects.filter(
        status=Status.QUEUED, dispatched_at__lt=resend_before, dispatch_published_at__isnull=True
    ).values_list("pk", "attempt", "public_id")
    for pk, attempt, public_id in list(lost):
        if publish_job_dispatch(pk, attempt):
            report.resent.append(public_id)

    # Stop markers of jobs still stopping: written again if the first write was lost.
    for job in FineTuningJob.objects.filter(status__in=[Status.CANCELLING, Status.PAUSING]):
        action: protocol.StopAction = "cancel" if job.status == Status.CANCELLING else "pause"
        marker = protocol.read_stop_marker(job)
        if marker != {"action": action, "attempt": job.attempt}:
            protocol.write_stop_marker(job, action=action, attempt=job.attempt)
            report.markers.append(job.public_id)

    # Jobs whose files were validated without the job being told (a lost message).
    settled = (
        FineTuningJob.objects.filter(status=Status.VALIDATING_FILES)
        .exclude(training_file__status=File.Status.UPLOADED)
        .exclude(validation_file__status=File.Status.UPLOADED)
    )
    for pk in list(settled.values_list("pk", flat=True)):
        job = job_advance_validating(job_pk=pk)
        if job is not None:
            report.validated.append(job.public_id)
    if report:
        logger.info("reconcile: %s", report)
    return report


def clean_orphaned_uploads(*, now: datetime | None = None) -> list[str]:
    """Remove uploaded bytes under `teams/*/files/` that no live File row owns (an upload whose request
    died before the row was written, or a deletion whose removal failed), once they are older than
    TAILOR_ORPHAN_UPLOAD_SECONDS. Bytes a queued or running job still trains on are kept."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.TAILOR_ORPHAN_UPLOAD_SECONDS)
    store = object_store()
    candidates = []
    # Team by team, and only their files/ folders: job artefacts (checkpoints) are never even listed.
    for team_id in Team.objects.order_by("pk").values_list("pk", flat=True):
        for info in store.list(f"teams/{team_id}/files"):
            if info.key.count("/") == 3 and info.last_modified < cutoff:
                candidates.append(info.key)
    removed: list[str] = []
    for start in range(0, len(candidates), 500):
        chunk = candidates[start : start + 500]
        live = set(
            File.objects.filter(storage_key__in=chunk)
            .exclude(status=File.Status.DELETED)
            .values_list("storage_key", flat=True)
        )
        in_use = set(
            File.objects.filter(storage_key__in=chunk)
            .filter(Q(training_jobs__status__in=_UNFINISHED) | Q(validation_jobs__status__in=_UNFINISHED))
            .values_list("storage_key", flat=True)
        )
        for key in chunk:
            if key in live or key in in_use:
                continue
            try:
                store.delete(key)
            except ObjectNotFound:
                continue
            removed.append(key)
    if removed:
        logger.info("removed %d orphaned uploads", len(removed))
    return removed


_UNFINISHED = [s for s in Status.values if s not in FineTuningJob.TERMINAL]
