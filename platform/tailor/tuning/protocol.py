"""The control plane's side of docs/job-protocol.md: object-store keys of a job, the dispatch message and
the stop marker. Everything a GPU worker reads from the control plane is built here."""

from __future__ import annotations

import io
import json
import logging
import posixpath
from typing import Any, Literal

from django.conf import settings

from tailor.core.objectstore import object_store
from tailor.tuning.models import Checkpoint, FineTuningJob
from workers.app import RUN_JOB_TASK
from workers.app import app as celery_app

logger = logging.getLogger(__name__)

StopAction = Literal["cancel", "pause"]


def job_output_prefix(job: FineTuningJob) -> str:
    """`teams/<team_id>/jobs/<job_id>`: where a job's checkpoints, adapter and metrics go."""
    return posixpath.join("teams", str(job.team_id), "jobs", job.public_id)


def stop_marker_key(job: FineTuningJob) -> str:
    """The key a GPU worker polls to learn that it must stop the job's current attempt."""
    return posixpath.join(job_output_prefix(job), "control", "stop.json")


def within_job_output(job: FineTuningJob, key: str) -> bool:
    """Whether a key or prefix a worker reported lies inside the job's own output prefix: a report must
    never make a job point at another job's (or another team's) objects."""
    root = job_output_prefix(job) + "/"
    normalized = posixpath.normpath(key)
    return (normalized + "/").startswith(root) and ".." not in key.split("/")


def dispatch_message(job: FineTuningJob, *, attempt: int, resume_from: Checkpoint | None) -> dict[str, Any]:
    """The keyword argument `dispatch` of `tailor.gpu.run_job` for `attempt` of `job`."""
    validation = job.validation_file
    return {
        "job_id": job.public_id,
        "attempt": attempt,
        "output_prefix": job_output_prefix(job),
        "base_model": {
            "name": job.base_model.name,
            "revision": job.base_model_revision,
            "prefix": job.base_model_prefix,
        },
        "training_file": {"key": job.training_file.storage_key, "sha256": job.training_file.sha256},
        "validation_file": (
            {"key": validation.storage_key, "sha256": validation.sha256} if validation is not None else None
        ),
        "resume_from": resume_from.prefix if resume_from is not None else None,
        "spec": job.spec,
        "heartbeat_seconds": settings.TAILOR_HEARTBEAT_SECONDS,
    }


def publish_dispatch(message: dict[str, Any], *, queue: str) -> None:
    """Send a dispatch to the GPU class queue (after the transaction that wrote the lease committed)."""
    celery_app.send_task(RUN_JOB_TASK, kwargs={"dispatch": message}, queue=queue)


def write_stop_marker(job: FineTuningJob, *, action: StopAction, attempt: int) -> None:
    """Tell the worker of `attempt` to stop: `{"action": "cancel" | "pause", "attempt": N}`.

    Written after commit; a write that fails is logged and written again by the reconciler, which
    re-asserts the marker of every job that is still cancelling or pausing.
    """
    body = json.dumps({"action": action, "attempt": attempt}).encode()
    try:
        object_store().put(stop_marker_key(job), io.BytesIO(body), content_type="application/json")
    except Exception:  # noqa: BLE001 - the reconciler retries; the request that asked must not fail
        logger.exception("could not write the stop marker of %s (attempt %s)", job.public_id, attempt)


def read_stop_marker(job: FineTuningJob) -> dict[str, Any] | None:
    """The stop marker currently in the store, or None."""
    store = object_store()
    key = stop_marker_key(job)
    if not store.exists(key):
        return None
    try:
        marker = json.loads(store.get_bytes(key))
    except ValueError:
        return None
    return marker if isinstance(marker, dict) else None
