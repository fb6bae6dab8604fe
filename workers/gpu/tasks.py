"""The GPU worker's one task, `tailor.gpu.run_job`, and its configuration from the environment.

Imported by `workers.gpu.main` only: a GPU node has no database and imports no Django. The control plane
publishes the task by name on the job's GPU-class queue (docs/job-protocol.md).

Environment: `TAILOR_HOME` (work folders and the model cache, default `./var`), `TAILOR_STORAGE_URL`
(default `TAILOR_HOME/objects`, as on the control plane; S3 credentials and endpoint from the usual AWS
variables), `TAILOR_CONTROL_QUEUE` (where reports go), `TAILOR_GPU_STOP_GRACE_SECONDS` (how long a
stopping runner may take to checkpoint before it is killed, default 600).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from pathlib import Path
from typing import Any

from celery.signals import worker_shutting_down

from gpu_runner.storage import ObjectStore, open_store
from workers.app import RUN_JOB_TASK, app
from workers.gpu import job
from workers.gpu.runner import SupervisorSettings

logger = logging.getLogger(__name__)

__all__ = ["RUN_JOB_TASK", "run_job"]


def tailor_home() -> Path:
    """Where work folders and the model cache live on this node."""
    return Path(os.environ.get("TAILOR_HOME", "var")).expanduser().resolve()


@functools.lru_cache(maxsize=4)
def _store_for(url: str) -> ObjectStore:
    return open_store(url)


def object_store() -> ObjectStore:
    """The object store named by `TAILOR_STORAGE_URL`, one instance per URL."""
    return _store_for(os.environ.get("TAILOR_STORAGE_URL") or (tailor_home() / "objects").as_uri())


def supervisor_settings() -> SupervisorSettings:
    """Supervision settings, with the environment's overrides."""
    return SupervisorSettings(
        stop_grace_seconds=float(os.environ.get("TAILOR_GPU_STOP_GRACE_SECONDS", "600"))
    )


@app.task(
    name=RUN_JOB_TASK,
    bind=True,
    ignore_result=True,
    # Acknowledged when it starts: a job runs for hours, far past the Redis visibility timeout, and must
    # never be delivered twice; a lost worker is the reconciler's business (lease expiry, attempt + 1).
    acks_late=False,
    max_retries=0,
)
def run_job(self: Any, dispatch: dict[str, Any]) -> None:
    """Train one dispatched job attempt and report it to the control plane (never raises)."""
    worker = self.request.hostname or f"gpu@{socket.gethostname()}"
    job.execute(
        dispatch,
        app=self.app,
        worker=worker,
        home=tailor_home(),
        store=object_store(),
        settings=supervisor_settings(),
    )


@worker_shutting_down.connect
def _stop_the_runner(sig: str | None = None, how: str | None = None, **_: Any) -> None:
    """A warm shutdown (SIGTERM, first Ctrl-C) lets the runner checkpoint; a cold one kills it. Either way
    the job is reported `paused` (reason `worker_shutdown`) and the control plane requeues it."""
    job.request_shutdown(cold=how == "Cold")
