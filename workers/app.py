"""The Celery app shared by the control plane and every worker. Django-free on purpose.

Configuration comes from the environment only:
- `CELERY_BROKER_URL`: e.g. `redis://host:6379/0` in production. Unset, the broker is kombu's
  filesystem transport under `TAILOR_HOME/broker` (default `./var/broker`), which needs no server and
  works across the processes of one machine.
- `TAILOR_CONTROL_QUEUE`: the queue the control tasks travel on (default `control`).

The database is the source of truth, Celery only carries ids: results are ignored, messages are JSON,
and every task declares its own name, queue, time limits and retry policy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from celery import Celery

CONTROL_TASK_PREFIX = "tailor.control."
VALIDATE_FILE_TASK = "tailor.control.validate_file"


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
        timezone="UTC",
        enable_utc=True,
    )
    return app


app = create_app()
