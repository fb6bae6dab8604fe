"""The scheduler: per-team quotas, turn-taking between teams, FIFO within a team, operator priorities,
GPU-class slots and GPU-hour budgets, and no quota overrun when schedulers run at once."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone
from tailor.tuning.models import FineTuningJob
from tailor.tuning.scheduler import OCCUPYING, schedule_jobs, team_gpu_hours
from tailor.tuning.services import job_report_finished, job_report_started

from tests.tailor.factories import TeamFactory
from tests.tailor.jobs_factories import (
    BaseModelFactory,
    create_job,
    fresh,
    isolated_gpu_queue,
    take_dispatches,
)
from tests.tailor.processes import delete_queue

pytestmark = pytest.mark.django_db


@pytest.fixture
def gpu_queue(settings) -> Iterator[str]:
    yield from isolated_gpu_queue(settings)


@pytest.fixture(autouse=True)
def no_background_scheduler(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Creating or finishing a job also sends a `schedule` task after commit. A control worker started
    by other tests in the same session would run it and dispatch the jobs these tests schedule
    themselves, so here those tasks go to a queue no worker consumes."""
    name = f"control-unconsumed-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TAILOR_CONTROL_QUEUE", name)
    yield
    delete_queue(name)


Status = FineTuningJob.Status


@pytest.fixture
def base():
    return BaseModelFactory()


def finish(job: FineTuningJob) -> None:
    """The job's worker starts and ends it (quickly, with a failure), freeing its GPU."""
    job = fresh(job)
    job_report_started(job_id=job.public_id, attempt=job.attempt, worker="gpu")
    job_report_finished(job_id=job.public_id, attempt=job.attempt, outcome="failed", result={})


def test_a_team_at_its_limit_keeps_its_second_job_queued_while_another_team_starts(base) -> None:
    limited, other = TeamFactory(max_concurrent_jobs=1), TeamFactory()
    first, second = create_job(limited, base=base), create_job(limited, base=base)
    theirs = create_job(other, base=base)
    assert schedule_jobs() == [first.public_id, theirs.public_id]
    assert fresh(second).status == Status.QUEUED and fresh(second).dispatched_at is None
    assert schedule_jobs() == []  # nothing changes until the limited team's job ends
    finish(first)
    assert schedule_jobs() == [second.public_id]


def test_teams_take_turns_and_each_team_is_first_in_first_out(base, settings) -> None:
    settings.TAILOR_GPU_CLASS_SLOTS = {"default": 1}
    busy, quiet = TeamFactory(max_concurrent_jobs=5), TeamFactory(max_concurrent_jobs=5)
    busy_jobs = [create_job(busy, base=base) for _ in range(3)]
    quiet_jobs = [create_job(quiet, base=base) for _ in range(2)]
    order = []
    for _ in range(5):
        [dispatched] = schedule_jobs()
        order.append(dispatched)
        assert schedule_jobs() == []  # the one GPU is taken
        finish(FineTuningJob.objects.get(public_id=dispatched))
    b, q = [j.public_id for j in busy_jobs], [j.public_id for j in quiet_jobs]
    assert order == [b[0], q[0], b[1], q[1], b[2]]


def test_operator_priorities_go_first(base, settings) -> None:
    settings.TAILOR_GPU_CLASS_SLOTS = {"default": 1}
    team, vip = TeamFactory(max_concurrent_jobs=5), TeamFactory(max_concurrent_jobs=5, job_priority=10)
    ordinary = create_job(team, base=base)
    urgent = create_job(team, base=base)
    FineTuningJob.objects.filter(pk=urgent.pk).update(priority=5)
    favoured = create_job(vip, base=base)
    order = []
    for _ in range(3):
        [dispatched] = schedule_jobs()
        order.append(dispatched)
        finish(FineTuningJob.objects.get(public_id=dispatched))
    assert order == [urgent.public_id, favoured.public_id, ordinary.public_id]


def test_gpu_class_slots_hold_jobs_in_the_database(base, settings) -> None:
    settings.TAILOR_GPU_CLASS_SLOTS = {"default": 2}
    teams = [TeamFactory(max_concurrent_jobs=3) for _ in range(2)]
    jobs = [create_job(team, base=base) for team in teams for _ in range(3)]
    assert len(schedule_jobs()) == 2
    assert FineTuningJob.objects.filter(OCCUPYING).count() == 2
    assert (
        FineTuningJob.objects.filter(status=Status.QUEUED, dispatched_at__isnull=True).count()
        == len(jobs) - 2
    )


def test_a_team_over_its_gpu_hour_budget_waits(base) -> None:
    team = TeamFactory(gpu_hour_budget=Decimal("1.00"))
    spent = create_job(team, base=base)
    FineTuningJob.objects.filter(pk=spent.pk).update(status=Status.SUCCEEDED, gpu_seconds=3000)
    running = create_job(team, base=base)
    schedule_jobs()
    job_report_started(job_id=running.public_id, attempt=1, worker="gpu")
    # 50 minutes spent plus 15 running: over the one-hour budget.
    FineTuningJob.objects.filter(pk=running.pk).update(
        attempt_started_at=timezone.now() - timedelta(minutes=15)
    )
    assert team_gpu_hours(team=team) > Decimal(1)
    waiting = create_job(team, base=base)
    assert schedule_jobs() == []
    team.gpu_hour_budget = Decimal("2.00")
    team.save()
    assert schedule_jobs() == [waiting.public_id]


@pytest.mark.django_db(transaction=True)
def test_schedulers_running_at_once_never_exceed_a_quota(gpu_queue: str) -> None:
    base = BaseModelFactory()
    team = TeamFactory(max_concurrent_jobs=2)
    for _ in range(6):
        create_job(team, base=base)
    barrier = threading.Barrier(4)
    results: list[list[str]] = []

    def run() -> None:
        try:
            barrier.wait()
            results.append(schedule_jobs())
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    dispatched = [job for batch in results for job in batch]
    assert len(dispatched) == len(set(dispatched)) <= 2
    assert FineTuningJob.objects.filter(OCCUPYING, team=team).count() <= 2
    assert len(schedule_jobs()) == 2 - len(dispatched)
    # Each dispatch was published once, after its transaction committed.
    assert sorted(d["job_id"] for d in take_dispatches(gpu_queue, expect=2)) == sorted(
        FineTuningJob.objects.filter(OCCUPYING, team=team).values_list("public_id", flat=True)
    )
