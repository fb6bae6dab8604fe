"""Reads of base models, jobs, events, checkpoints and adapters, always scoped to one team: another team's
job answers exactly like a missing one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q, QuerySet, TextField
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast

from tailor.core.errors import InvalidRequest, NotFound
from tailor.core.pagination import CursorPage, cursor_page
from tailor.teams.models import Team
from tailor.tuning.models import Adapter, BaseModel, Checkpoint, FineTuningJob, JobEvent

MAX_LIST_LIMIT = 100


def base_models_for_team(*, team: Team) -> QuerySet[BaseModel]:
    """The enabled base models the team may fine-tune."""
    return (
        BaseModel.objects.filter(enabled=True)
        .filter(Q(available_to_all=True) | Q(teams=team))
        .distinct()
        .order_by("name")
    )


def base_model_for_team(*, team: Team, name: str) -> BaseModel:
    """The base model `name` if the team may use it; a 400 on `model` otherwise."""
    base = base_models_for_team(team=team).filter(name=name).first()
    if base is None:
        available = ", ".join(base_models_for_team(team=team).values_list("name", flat=True)) or "none"
        raise InvalidRequest(
            f"The model `{name}` does not exist or you do not have access to it. Base models you can "
            f"fine-tune: {available}.",
            param="model",
            code="model_not_available",
        )
    return base


def job_get(*, team: Team, job_id: str) -> FineTuningJob:
    """The team's job with this id, or NotFound."""
    job = (
        FineTuningJob.objects.select_related(
            "base_model", "training_file", "validation_file", "result_file", "team"
        )
        .filter(team=team, public_id=job_id)
        .first()
    )
    if job is None:
        raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
    return job


def job_list(
    *,
    team: Team,
    after: str | None = None,
    limit: int = 20,
    metadata: dict[str, str] | None = None,
    metadata_is_null: bool = False,
) -> CursorPage[FineTuningJob]:
    """The team's jobs, newest first, after the job whose id is `after`; `metadata` keeps the jobs whose
    metadata holds every given key with that value, `metadata_is_null` those with no metadata."""
    cursor = None
    if after:
        cursor = FineTuningJob.objects.filter(team=team, public_id=after).only("pk").first()
        if cursor is None:
            raise InvalidRequest(f"No such fine-tuning job for cursor `after`: {after}", param="after")
    queryset = FineTuningJob.objects.select_related(
        "base_model", "training_file", "validation_file", "result_file", "team"
    ).filter(team=team)
    if metadata_is_null:
        queryset = queryset.filter(metadata__isnull=True)
    for number, (key, value) in enumerate(sorted((metadata or {}).items())):
        # KeyTextTransform takes the key as data, so any key (dots, brackets, "__") is matched literally.
        alias = f"_metadata_{number}"
        # Cast: a plain text comparison (SQLite would otherwise parse the value as JSON).
        value_of_key = Cast(KeyTextTransform(key, "metadata"), TextField())
        queryset = queryset.annotate(**{alias: value_of_key}).filter(**{alias: value})
    return cursor_page(queryset, after=cursor, limit=limit, order="desc")


def job_events(*, job: FineTuningJob, after: str | None = None, limit: int = 20) -> CursorPage[JobEvent]:
    """A job's events, newest first."""
    cursor = None
    if after:
        cursor = JobEvent.objects.filter(job=job, public_id=after).only("pk").first()
        if cursor is None:
            raise InvalidRequest(f"No such event of this job for cursor `after`: {after}", param="after")
    return cursor_page(JobEvent.objects.filter(job=job), after=cursor, limit=limit, order="desc")


def job_checkpoints(
    *, job: FineTuningJob, after: str | None = None, limit: int = 10
) -> CursorPage[Checkpoint]:
    """A job's checkpoints, newest first."""
    cursor = None
    if after:
        cursor = Checkpoint.objects.filter(job=job, public_id=after).only("pk").first()
        if cursor is None:
            raise InvalidRequest(f"No such checkpoint of this job for cursor `after`: {after}", param="after")
    return cursor_page(Checkpoint.objects.filter(job=job), after=cursor, limit=limit, order="desc")


def newest_checkpoint(*, job: FineTuningJob) -> Checkpoint | None:
    """The checkpoint with the highest step, where a requeued or resumed job continues."""
    return Checkpoint.objects.filter(job=job).order_by("-step_number").first()


@dataclass(frozen=True)
class ModelEntry:
    """One row of `GET /v1/models`."""

    id: str
    created: datetime
    owned_by: str


def team_models(*, team: Team) -> list[ModelEntry]:
    """What the team can call: the base models it may use, its fine-tuned models (newest first), then
    its aliases (`<family>@<alias>`)."""
    entries = [
        ModelEntry(id=base.name, created=base.created_at, owned_by="tailor")
        for base in base_models_for_team(team=team)
    ]
    entries.extend(
        ModelEntry(id=adapter.name, created=adapter.created_at, owned_by=team.slug)
        for adapter in Adapter.objects.filter(team=team, deleted_at__isnull=True).order_by("-id")
    )
    from tailor.registry.models import AdapterAlias

    entries.extend(
        ModelEntry(id=alias.model_id, created=alias.updated_at, owned_by=team.slug)
        for alias in AdapterAlias.objects.filter(team=team).order_by("family", "name")
    )
    return entries


def team_model(*, team: Team, model_id: str) -> ModelEntry:
    """One model the team may use, or NotFound."""
    for entry in team_models(team=team):
        if entry.id == model_id:
            return entry
    raise NotFound(f"The model `{model_id}` does not exist or you do not have access to it.", param="model")
