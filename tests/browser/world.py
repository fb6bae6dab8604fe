"""Data for the web tests (import from `tests.browser.world`): two teams, a user of every role, jobs that
got where they are through the platform's own services (created, dispatched, started by a worker's
report, metrics reported like a GPU worker forwards them), an adapter with a live deployment, and a
shared endpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import Max
from django.utils import timezone
from tailor.registry.models import Deployment, InferenceEndpoint
from tailor.teams.models import Team
from tailor.tuning.models import FineTuningJob, JobEvent
from tailor.tuning.services import job_report_events, job_report_started

from tests.tailor.adapter_factories import llama_base, stored_adapter
from tests.tailor.factories import MembershipFactory, TeamFactory, UserFactory
from tests.tailor.jobs_factories import create_job, runner_event

PASSWORD = "correct horse battery staple"  # UserFactory's
TOTAL_STEPS = 120


@dataclass
class World:
    alpha: Team
    beta: Team
    users: dict[str, AbstractBaseUser]
    running: FineTuningJob
    queued: FineTuningJob
    beta_job: FineTuningJob
    extra: dict[str, Any] = field(default_factory=dict)


def start_running(job: FineTuningJob, *, worker: str = "gpu-node-1") -> FineTuningJob:
    """Dispatch the job as the scheduler does (attempt 1, dispatch recorded), then let a worker report
    that it started: the job is `running` through `job_report_started`."""
    FineTuningJob.objects.filter(pk=job.pk).update(attempt=1, dispatched_at=timezone.now())
    assert job_report_started(job_id=job.public_id, attempt=1, worker=worker)
    return FineTuningJob.objects.get(pk=job.pk)


def training_loss(step: int) -> float:
    """A loss curve that falls like a real one."""
    return round(0.6 + 2.0 * math.exp(-step / 30) + 0.03 * math.sin(step), 4)


def report_metrics(job: FineTuningJob, steps: range, *, eval_every: int = 10) -> int:
    """Report `metrics` events (and `eval` events every `eval_every` steps) for `steps`, as a GPU worker
    forwards the runner's stream to `tailor.control.job_events`; returns how many were stored."""
    job = FineTuningJob.objects.get(pk=job.pk)
    seq = (JobEvent.objects.filter(job=job, attempt=job.attempt).aggregate(top=Max("seq"))["top"] or 0) + 1
    events = []
    for step in steps:
        remaining = TOTAL_STEPS - step
        events.append(
            runner_event(
                seq,
                "metrics",
                step=step,
                total_steps=TOTAL_STEPS,
                epoch=round(step / 40, 3),
                train_loss=training_loss(step),
                train_mean_token_accuracy=0.5,
                learning_rate=2e-4,
                tokens_per_second=1850.0 + step,
                eta_seconds=remaining * 1.5,
                trained_tokens=step * 512,
            )
        )
        seq += 1
        if eval_every and step % eval_every == 0:
            events.append(
                runner_event(
                    seq, "eval", step=step, total_steps=TOTAL_STEPS, valid_loss=training_loss(step) + 0.15
                )
            )
            seq += 1
    return job_report_events(job_id=job.public_id, attempt=job.attempt, events=events)


def build_world() -> World:
    """Team alpha (owner olga, admin alice, member mia, viewer vera, all with PASSWORD) with a running
    job 30 steps in, a queued job and an adapter live on a shared endpoint; team beta (owner carol) with
    a job of its own."""
    alpha, beta = TeamFactory(slug="alpha", name="Alpha Research"), TeamFactory(slug="beta", name="Beta Labs")
    alpha.gpu_hour_budget = 40
    alpha.save(update_fields=["gpu_hour_budget"])
    users = {
        "owner": UserFactory(username="olga@example.com", is_staff=True),
        "admin": UserFactory(username="alice@example.com", is_staff=True),
        "member": UserFactory(username="mia@example.com", is_staff=True),
        # Not staff: the dashboard signs in any member.
        "viewer": UserFactory(username="vera@example.com"),
        "beta_owner": UserFactory(username="carol@example.com", is_staff=True),
    }
    for role in ("owner", "admin", "member", "viewer"):
        MembershipFactory(user=users[role], team=alpha, role=role)
    MembershipFactory(user=users["beta_owner"], team=beta, role="owner")

    base = llama_base()
    running = start_running(create_job(alpha, base=base, suffix="support-bot"))
    report_metrics(running, range(1, 31))
    queued = create_job(alpha, base=base, suffix="summaries")
    beta_job = start_running(create_job(beta, base=base, suffix="beta-secret"))
    report_metrics(beta_job, range(1, 6))

    adapter = stored_adapter(alpha, base)
    FineTuningJob.objects.filter(pk=adapter.job_id).update(
        status=FineTuningJob.Status.SUCCEEDED, fine_tuned_model=adapter.name, finished_at=timezone.now()
    )
    endpoint = InferenceEndpoint.objects.create(
        name="vllm-main",
        kind=InferenceEndpoint.Kind.VLLM,
        base_url="http://127.0.0.1:9",
        served_models={base.name: base.name},
        delivery=InferenceEndpoint.Delivery.AGENT,
        health=InferenceEndpoint.Health.HEALTHY,
        health_checked_at=timezone.now(),
    )
    Deployment.objects.create(
        team=alpha,
        adapter=adapter,
        endpoint=endpoint,
        served_name=adapter.name,
        status=Deployment.Status.LIVE,
        live_at=timezone.now(),
    )
    return World(
        alpha=alpha,
        beta=beta,
        users=users,
        running=FineTuningJob.objects.get(pk=running.pk),
        queued=queued,
        beta_job=beta_job,
        extra={"adapter": adapter, "endpoint": endpoint, "base": base},
    )
