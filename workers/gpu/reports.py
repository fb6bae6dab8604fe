"""What a GPU worker tells the control plane: Celery messages to the `tailor.control.job_*` tasks.

Every report carries the job id and the attempt it was dispatched with (the control plane ignores a stale
attempt), and travels on the control queue named by `TAILOR_CONTROL_QUEUE`, read when each message is
sent. The worker imports none of the control plane: reports are sent by task name.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery

from workers.app import (
    JOB_CHECKPOINT_TASK,
    JOB_FINISHED_TASK,
    JOB_HEARTBEAT_TASK,
    JOB_STARTED_TASK,
    control_queue,
)

logger = logging.getLogger(__name__)


class Reporter:
    """Sends one job attempt's reports; a broker hiccup is logged and retried, never raised."""

    def __init__(self, app: Celery, *, job_id: str, attempt: int, worker: str) -> None:
        self.app = app
        self.job_id = job_id
        self.attempt = attempt
        self.worker = worker

    def send(self, task: str, *, retry_for: float = 0.0, **fields: Any) -> bool:
        """Publish `task(job_id, attempt, **fields)` to the control queue; True once the broker took it.

        Celery already retries a publish a few times; with `retry_for` this keeps trying, with backoff,
        for that many seconds (for the reports a job cannot do without, such as `job_finished`).
        """
        kwargs = {"job_id": self.job_id, "attempt": self.attempt, **fields}
        deadline = time.monotonic() + retry_for
        pause = 1.0
        while True:
            try:
                self.app.send_task(task, kwargs=kwargs, queue=control_queue())
                return True
            except Exception as exc:  # noqa: BLE001 - any broker failure: report it and go on
                if time.monotonic() + pause > deadline:
                    logger.error("%s attempt %s: could not send %s: %s", self.job_id, self.attempt, task, exc)
                    return False
                logger.warning(
                    "%s attempt %s: sending %s failed (%s); retrying in %.0f s",
                    self.job_id,
                    self.attempt,
                    task,
                    exc,
                    pause,
                )
                time.sleep(pause)
                pause = min(pause * 2, 30.0)

    def started(self) -> bool:
        """The runner process started (`queued → running`)."""
        return self.send(JOB_STARTED_TASK, worker=self.worker, retry_for=60)

    def heartbeat(self) -> bool:
        """Extend the job's lease."""
        return self.send(JOB_HEARTBEAT_TASK, worker=self.worker)

    def checkpoint(self, *, step: int, prefix: str, metrics: dict[str, Any]) -> bool:
        """A checkpoint is complete in the object store."""
        return self.send(JOB_CHECKPOINT_TASK, step=step, prefix=prefix, metrics=metrics, retry_for=60)

    def finished(self, outcome: str, result: dict[str, Any]) -> bool:
        """The attempt ended: `succeeded`, `failed`, `cancelled` or `paused`."""
        return self.send(JOB_FINISHED_TASK, outcome=outcome, result=result, retry_for=300)


class Heartbeat:
    """A thread that sends `job_heartbeat` at once and then every `interval` seconds until stopped.

    A thread of its own, so that a long upload or download in the job's thread never lets the lease lapse.
    """

    def __init__(self, reporter: Reporter, interval: float) -> None:
        self._reporter = reporter
        self._interval = max(float(interval), 0.5)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{reporter.job_id}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self._reporter.heartbeat()
            if self._stopped.wait(self._interval):
                return

    def stop(self) -> None:
        """Stop sending; returns once the thread has ended (at most one send later)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
