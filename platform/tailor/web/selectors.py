"""Reads behind the dashboard, each scoped to one team: a team overview (active jobs, quota use, recent
adapters, endpoint health) and a job's loss curve, throughput and status timeline, taken from the
JobEvents the GPU workers report."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet

from tailor.registry.models import Deployment, InferenceEndpoint
from tailor.registry.selectors import deployment_list, endpoints_for_team
from tailor.teams.models import Team
from tailor.tuning.models import Adapter, FineTuningJob, JobEvent
from tailor.tuning.scheduler import OCCUPYING, team_gpu_hours

Status = FineTuningJob.Status
# Jobs that are not finished, in the order the overview lists them: those on a GPU first.
ACTIVE_ORDER = (
    Status.RUNNING,
    Status.PAUSING,
    Status.CANCELLING,
    Status.QUEUED,
    Status.VALIDATING_FILES,
    Status.PAUSED,
)
# Enough for a long run's whole curve; a job that logged more shows its latest points.
MAX_CHART_POINTS = 5000


@dataclass(frozen=True)
class Quota:
    """A team's use of its scheduling quotas."""

    jobs_on_gpu: int
    max_concurrent_jobs: int
    gpu_hours_used: Decimal
    gpu_hour_budget: Decimal | None

    @property
    def gpu_budget_percent(self) -> int | None:
        if not self.gpu_hour_budget:
            return None
        return min(100, int(self.gpu_hours_used * 100 / self.gpu_hour_budget))

    @property
    def jobs_percent(self) -> int:
        if not self.max_concurrent_jobs:
            return 100
        return min(100, self.jobs_on_gpu * 100 // self.max_concurrent_jobs)


@dataclass(frozen=True)
class Overview:
    """What the team's first page shows."""

    active_jobs: list[FineTuningJob]
    quota: Quota
    recent_adapters: list[Adapter]
    endpoints: list[InferenceEndpoint]
    job_counts: dict[str, int] = field(default_factory=dict)


def team_quota(*, team: Team) -> Quota:
    return Quota(
        jobs_on_gpu=FineTuningJob.objects.filter(team=team).filter(OCCUPYING).count(),
        max_concurrent_jobs=team.max_concurrent_jobs,
        gpu_hours_used=team_gpu_hours(team=team).quantize(Decimal("0.01")),
        gpu_hour_budget=team.gpu_hour_budget,
    )


def team_overview(*, team: Team, adapters: int = 5) -> Overview:
    """Active jobs (running first), quota use, the newest adapters with their deployments, endpoints."""
    jobs = FineTuningJob.objects.filter(team=team, status__in=ACTIVE_ORDER).select_related("base_model")
    order = {status: rank for rank, status in enumerate(ACTIVE_ORDER)}
    active = sorted(jobs, key=lambda job: (order[job.status], -job.pk))
    recent = list(
        Adapter.objects.filter(team=team, deleted_at__isnull=True)
        .select_related("base_model", "job")
        .prefetch_related("deployments__endpoint")
        .order_by("-id")[:adapters]
    )
    counts: dict[str, int] = {}
    for status in FineTuningJob.objects.filter(team=team).values_list("status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return Overview(
        active_jobs=active,
        quota=team_quota(team=team),
        recent_adapters=recent,
        endpoints=list(endpoints_for_team(team=team).filter(enabled=True).order_by("name")),
        job_counts=counts,
    )


def team_jobs(*, team: Team, status: str | None = None) -> QuerySet[FineTuningJob]:
    """The team's jobs, newest first, optionally of one status."""
    rows = FineTuningJob.objects.filter(team=team).select_related("base_model", "training_file")
    if status:
        rows = rows.filter(status=status)
    return rows.order_by("-id")


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


@dataclass
class JobMetrics:
    """A job's loss curve since the event `cursor`, and its latest throughput figures."""

    train: list[list[float]]
    valid: list[list[float]]
    cursor: int
    latest: dict[str, Any]


def job_metrics(*, job: FineTuningJob, after: int = 0) -> JobMetrics:
    """Training loss (from `metrics` events) and validation loss (from `eval` events) against step,
    for the events stored after the one with id `after`; `cursor` is what to pass next time."""
    rows = (
        JobEvent.objects.filter(job=job, type=JobEvent.Type.METRICS, pk__gt=after)
        .order_by("-pk")
        .values_list("pk", "kind", "data")[:MAX_CHART_POINTS]
    )
    train: list[list[float]] = []
    valid: list[list[float]] = []
    latest: dict[str, Any] = {}
    cursor = after
    for pk, kind, data in reversed(list(rows)):
        cursor = max(cursor, pk)
        data = data if isinstance(data, dict) else {}
        step = _number(data.get("step"))
        if step is None:
            continue
        if kind == "eval":
            loss = _number(data.get("valid_loss"))
            if loss is not None:
                valid.append([step, loss])
            continue
        loss = _number(data.get("train_loss"))
        if loss is not None:
            train.append([step, loss])
        latest = data
    return JobMetrics(train=train, valid=valid, cursor=cursor, latest=_throughput(latest))


def _throughput(data: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "step",
        "total_steps",
        "epoch",
        "tokens_per_second",
        "eta_seconds",
        "learning_rate",
        "trained_tokens",
    )
    return {key: data[key] for key in keep if _number(data.get(key)) is not None}


def latest_throughput(*, job: FineTuningJob) -> dict[str, Any]:
    """Figures of the newest training-metrics event: tokens/s, ETA, learning rate, trained tokens."""
    data = (
        JobEvent.objects.filter(job=job, type=JobEvent.Type.METRICS, kind="metrics")
        .order_by("-pk")
        .values_list("data", flat=True)
        .first()
    )
    return _throughput(data if isinstance(data, dict) else {})


def job_timeline(*, job: FineTuningJob) -> list[JobEvent]:
    """The platform's status events of the job, oldest first."""
    return list(JobEvent.objects.filter(job=job, kind="status").order_by("pk"))


def job_messages(*, job: FineTuningJob, limit: int = 50) -> list[JobEvent]:
    """The newest events of the job that are not metrics, newest first."""
    return list(JobEvent.objects.filter(job=job).exclude(type=JobEvent.Type.METRICS).order_by("-pk")[:limit])


def job_adapter(*, job: FineTuningJob) -> tuple[Adapter | None, list[Deployment]]:
    """The adapter the job produced, if any, and its deployments (newest first)."""
    adapter = Adapter.objects.filter(job=job).select_related("base_model").first()
    if adapter is None:
        return None, []
    return adapter, list(deployment_list(team=job.team, adapter=adapter).order_by("-id"))
