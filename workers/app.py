"""The Celery app shared by the control plane and every worker. Django-free on purpose.

Configuration comes from the environment only:
- `CELERY_BROKER_URL`: e.g. `redis://host:6379/0` in production. Unset, the broker is kombu's
  filesystem transport under `TAILOR_HOME/broker` (default `./var/broker`), which needs no server and
  works across the processes of one machine.
- `TAILOR_CONTROL_QUEUE`: the queue the control tasks travel on (default `control`).
- `TAILOR_*_INTERVAL`: how often `tailor worker beat` sends the periodic control tasks (`beat_schedule`).

GPU workers consume one queue per GPU class (`TAILOR_GPU_CLASSES`); the control plane sends
`tailor.gpu.run_job` there with an explicit queue, so those tasks need no route here.

The database is the source of truth, Celery only carries ids: results are ignored, messages are JSON,
and every task declares its own name, queue, time limits and retry policy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from celery import Celery

from workers.logcontext import connect_celery_signals

CONTROL_TASK_PREFIX = "tailor.control."
VALIDATE_FILE_TASK = "tailor.control.validate_file"

# Reports of GPU workers (docs/job-protocol.md), consumed by the control worker.
JOB_STARTED_TASK = "tailor.control.job_started"
JOB_HEARTBEAT_TASK = "tailor.control.job_heartbeat"
JOB_EVENTS_TASK = "tailor.control.job_events"
JOB_CHECKPOINT_TASK = "tailor.control.job_checkpoint"
JOB_FINISHED_TASK = "tailor.control.job_finished"
# Bookkeeping of the control plane itself.
SCHEDULE_TASK = "tailor.control.schedule"
RECONCILE_TASK = "tailor.control.reconcile"
CLEAN_ORPHANS_TASK = "tailor.control.clean_orphans"
DELIVER_WEBHOOK_TASK = "tailor.control.deliver_webhook"
DELIVER_DUE_WEBHOOKS_TASK = "tailor.control.deliver_due_webhooks"
# The adapter registry (docs/serving.md): pushes and unloads, the endpoint agent's reports, and the sweeps.
DEPLOY_TASK = "tailor.control.deploy"
UNDEPLOY_TASK = "tailor.control.undeploy"
DEPLOYMENT_PUSHED_TASK = "tailor.control.deployment_pushed"
DEPLOYMENTS_SWEEP_TASK = "tailor.control.deployments_sweep"
CHECK_ENDPOINTS_TASK = "tailor.control.check_endpoints"
PURGE_ADAPTERS_TASK = "tailor.control.purge_adapters"
# The one task GPU workers consume, sent to the queue of the job's GPU class.
RUN_JOB_TASK = "tailor.gpu.run_job"
# What the endpoint agent beside a vLLM server consumes, on its endpoint's queue (`agent_queue`).
AGENT_DEPLOY_TASK = "tailor.agent.deploy"
AGENT_UNDEPLOY_TASK = "tailor.agent.undeploy"
AGENT_QUEUE_PREFIX = "endpoint."


def agent_queue(endpoint_name: str) -> str:
    """The queue the endpoint agent of `endpoint_name` consumes."""
    return f"{AGENT_QUEUE_PREFIX}{endpoint_name}"


def control_queue(environ: Mapping[str, str] | None = None) -> str:
    """The queue control tasks are published to and the control worker consumes."""
    return (environ if environ is not None else os.environ).get("TAILOR_CONTROL_QUEUE", "control")


def route_task(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any
) -> dict[str, str] | None:
    """Celery router: `tailor.control.*` tasks go to the control queue, read when each message is sent
    so that a process can be pointed at another queue (tests isolate themselves this way)."""
    if name.startswith(CONTROL_TASK_PREFIX):
        return {"queue": control_queue()}
    return None


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


def beat_schedule(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """What `tailor worker beat` sends, and how often (seconds, from the environment):

    - `TAILOR_SCHEDULE_INTERVAL` (10): dispatch queued jobs that fit their team's quota. Jobs are also
      scheduled at once when created, resumed or when another job finishes; this catches the rest.
    - `TAILOR_RECONCILE_INTERVAL` (15): requeue jobs whose lease expired, re-send lost dispatches.
    - `TAILOR_WEBHOOK_RETRY_INTERVAL` (5): send webhook deliveries whose retry is due.
    - `TAILOR_ORPHAN_SWEEP_INTERVAL` (3600): remove uploaded bytes that never became a file.
    - `TAILOR_DEPLOY_SWEEP_INTERVAL` (10): re-send deployments whose retry is due or whose push stalled.
    - `TAILOR_ENDPOINT_HEALTH_INTERVAL` (30): check every inference endpoint's health.
    - `TAILOR_ADAPTER_PURGE_INTERVAL` (600): remove the objects of deleted adapters nothing serves.
    """

    def entry(task: str, seconds: float) -> dict[str, Any]:
        # A beat message older than its interval is dropped: the next one does the same work.
        return {"task": task, "schedule": seconds, "options": {"expires": seconds}}

    return {
        "schedule-jobs": entry(SCHEDULE_TASK, _seconds(environ, "TAILOR_SCHEDULE_INTERVAL", 10)),
        "reconcile-jobs": entry(RECONCILE_TASK, _seconds(environ, "TAILOR_RECONCILE_INTERVAL", 15)),
        "retry-webhooks": entry(
            DELIVER_DUE_WEBHOOKS_TASK, _seconds(environ, "TAILOR_WEBHOOK_RETRY_INTERVAL", 5)
        ),
        "clean-orphaned-uploads": entry(
            CLEAN_ORPHANS_TASK, _seconds(environ, "TAILOR_ORPHAN_SWEEP_INTERVAL", 3600)
        ),
        "sweep-deployments": entry(
            DEPLOYMENTS_SWEEP_TASK, _seconds(environ, "TAILOR_DEPLOY_SWEEP_INTERVAL", 10)
        ),
        "check-endpoints": entry(
            CHECK_ENDPOINTS_TASK, _seconds(environ, "TAILOR_ENDPOINT_HEALTH_INTERVAL", 30)
        ),
        "purge-adapters": entry(PURGE_ADAPTERS_TASK, _seconds(environ, "TAILOR_ADAPTER_PURGE_INTERVAL", 600)),
    }


def broker_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """Broker URL and transport options for `environ`: Redis (or any URL given), else the filesystem."""
    url = environ.get("CELERY_BROKER_URL", "").strip()
    if url:
        return {"broker_url": url, "broker_transport_options": {}}
    home = Path(environ.get("TAILOR_HOME", "var")).expanduser().resolve()
    queues, control = home / "broker" / "queues", home / "broker" / "control"
    for folder in (queues, control):
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": "filesystem://",
        # One folder for both directions: every process of this machine publishes and consumes there.
        "broker_transport_options": {
            "data_folder_in": str(queues),
            "data_folder_out": str(queues),
            "control_folder": str(control),
            "store_processed": False,
        },
    }


def create_app(environ: Mapping[str, str] | None = None) -> Celery:
    """A configured Celery app for `environ` (default: the process environment)."""
    environ = os.environ if environ is None else environ
    app = Celery("tailor")
    app.conf.update(
        **broker_settings(environ),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_routes=(route_task,),
        task_default_queue=control_queue(environ),
        # One message at a time per worker process: tasks are long compared with the fetch.
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        beat_schedule=beat_schedule(environ),
        timezone="UTC",
        enable_utc=True,
    )
    return app


app = create_app()
# Every task's log lines name the task and the job it handles; workers without Django settings (GPU,
# agent) get the same log format as the control plane (workers.logcontext).
connect_celery_signals()
