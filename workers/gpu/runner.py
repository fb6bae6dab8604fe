"""Supervising one `python -m gpu_runner train` subprocess: start it, follow it, stop it, see how it ended.

- `RunnerProcess` starts the runner in a session of its own with a parent-death signal (Linux
  `prctl(PR_SET_PDEATHSIG, SIGKILL)`), so a GPU worker killed with `kill -9` never leaves a training
  process holding the GPU behind.
- `EventTail` reads the runner's JSON-lines event file as it grows; `seq` is the line number, so the
  control plane stores a redelivered batch once.
- `Supervisor` runs the loop: forward events in batches, upload each checkpoint as it appears, poll the
  job's stop marker and send the runner SIGTERM when it asks for this attempt, and, when the runner
  exits, collect what the caller needs to report the outcome.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gpu_runner.events import EVENT_TYPES
from gpu_runner.storage import ObjectNotFound, ObjectStore, StorageError
from gpu_runner.storage.keys import join_key
from workers.app import JOB_EVENTS_TASK
from workers.gpu.artifacts import (
    IncompleteCheckpoint,
    complete_checkpoints,
    snapshot_checkpoint,
    upload_checkpoint,
)
from workers.gpu.reports import Reporter

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_ACTIONS = ("cancel", "pause")


# --- the process -----------------------------------------------------------------------------------------


def _parent_death_signal() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the kernel SIGKILL the child when the thread that started it dies.

    The libc function is looked up here, in the parent, so the forked child only makes one foreign call.
    The signal is tied to the creating *thread*, which is why the runner is started from the job's own
    thread (the worker pool's one thread, alive as long as the worker) and never from a short-lived one.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would ever send the signal.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return die_with_parent


def _python_path_with(root: Path, environ: dict[str, str]) -> str:
    """PYTHONPATH that lets `python -m gpu_runner` import the same gpu_runner as this worker, installed or not."""
    paths = [str(root), *[p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(root)]]
    return os.pathsep.join(paths)


class RunnerProcess:
    """One `python -m gpu_runner train …` child, its stdout and stderr in `log_path`. `module` replaces
    `gpu_runner` with another module and its own arguments (the torchrun agent of `workers.gpu.launch`)."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        cwd: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        module: Sequence[str] = ("gpu_runner",),
    ) -> None:
        import gpu_runner

        self.args = [sys.executable, "-m", *module, *args]
        self.cwd = cwd
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONPATH"] = _python_path_with(Path(gpu_runner.__file__).resolve().parents[1], self.env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.process: subprocess.Popen[bytes] | None = None
        self.signals_sent: list[int] = []

    def start(self) -> int:
        """Start the runner; returns its pid."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C at the worker's terminal reaches the worker, which stops the runner
                # deliberately, rather than both at once.
                start_new_session=True,
                preexec_fn=_parent_death_signal(),
                close_fds=True,
            )
        return self.process.pid

    @property
    def pid(self) -> int:
        assert self.process is not None, "the runner was not started"
        return self.process.pid

    def poll(self) -> int | None:
        """The exit status once the runner ended (negative: killed by that signal), else None."""
        assert self.process is not None, "the runner was not started"
        return self.process.poll()

    def send_signal(self, signum: int) -> None:
        """Signal the runner if it is still running."""
        if self.process is not None and self.process.poll() is None:
            self.signals_sent.append(signum)
            self.process.send_signal(signum)

    def wait(self, timeout: float | None = None) -> int:
        assert self.process is not None, "the runner was not started"
        return self.process.wait(timeout)

    def log_tail(self, limit: int = 4000) -> str:
        """The end of the runner's stderr/stdout, for an error the event stream does not explain."""
        try:
            with open(self.log_path, "rb") as stream:
                stream.seek(max(0, self.log_path.stat().st_size - limit))
                return stream.read().decode("utf-8", errors="replace").strip()
        except OSError:
            return ""


# --- the event stream -------------------------------------------------------------------------------------


class EventTail:
    """Reads complete lines appended to the runner's event file; each event gets `seq` = its line number."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stream: IO[bytes] | None = None
        self._partial = b""
        self.lines = 0

    def read(self) -> list[dict[str, Any]]:
        """Events written since the last call (a line still being written waits for its newline)."""
        if self._stream is None:
            try:
                self._stream = open(self.path, "rb")
            except FileNotFoundError:
                return []
        data = self._partial + self._stream.read()
        *complete, self._partial = data.split(b"\n")
        events = []
        for raw in complete:
            self.lines += 1
            try:
                event = json.loads(raw)
            except ValueError:
                logger.warning("%s line %d is not JSON; skipped", self.path.name, self.lines)
                continue
            if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
                logger.warning("%s line %d is not a runner event; skipped", self.path.name, self.lines)
                continue
            events.append({"seq": self.lines, **event})
        return events

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


# --- supervision ------------------------------------------------------------------------------------------


@dataclass
class UploadedCheckpoint:
    step: int
    prefix: str


@dataclass
class RunnerEnd:
    """How a supervised run ended, and what the caller needs to report it."""

    returncode: int
    stop_action: str | None  # "cancel" | "pause" when this attempt's stop marker was acted on
    shutdown: bool  # the worker itself was asked to stop
    killed_by_supervisor: bool
    completed: dict[str, Any] | None
    error: dict[str, Any] | None
    checkpoints: list[UploadedCheckpoint] = field(default_factory=list)
    log_tail: str = ""


@dataclass
class SupervisorSettings:
    batch_seconds: float = 1.0
    batch_size: int = 50
    stop_poll_seconds: float = 2.0
    tick_seconds: float = 0.2
    # A stopping runner finishes its step and writes a checkpoint; past this it is killed.
    stop_grace_seconds: float = 600.0


class Supervisor:
    """Follows one started runner until it exits."""

    def __init__(
        self,
        *,
        runner: RunnerProcess,
        events_path: Path,
        checkpoint_dir: Path,
        staging_dir: Path,
        store: ObjectStore,
        output_prefix: str,
        reporter: Reporter,
        settings: SupervisorSettings | None = None,
    ) -> None:
        self.runner = runner
        self.tail = EventTail(events_path)
        self.checkpoint_dir = checkpoint_dir
        self.staging_dir = staging_dir
        self.store = store
        self.output_prefix = output_prefix
        self.stop_key = join_key(output_prefix, "control", "stop.json")
        self.reporter = reporter
        self.settings = settings or SupervisorSettings()
        self._pending: list[dict[str, Any]] = []
        self._last_flush = 0.0
        # The first step is the moment a user waits for: its metrics go out at once, not with the next batch.
        self._first_step_pending = False
        self._last_stop_poll = 0.0
        self._stop_action: str | None = None
        self._stop_sent_at: float | None = None
        self._shutdown = False
        self._killed = False
        self._uploaded: dict[int, UploadedCheckpoint] = {}
        self._failed_steps: set[int] = set()
        self._unreported: dict[int, UploadedCheckpoint] = {}
        self._checkpoint_metrics: dict[int, dict[str, Any]] = {}
        self._step_metrics: dict[int, dict[str, Any]] = {}
        self._completed: dict[str, Any] | None = None
        self._error: dict[str, Any] | None = None

    # -- requests from outside (worker shutdown) -------------------------------------------------------

    def request_shutdown(self, cold: bool = False) -> None:
        """The worker is stopping: the runner checkpoints and exits (SIGTERM), or dies at once (`cold`)."""
        self._shutdown = True
        self.runner.send_signal(signal.SIGKILL if cold else signal.SIGTERM)

    # -- the loop ----------------------------------------------------------------------------------------

    def run(self) -> RunnerEnd:
        """Supervise until the runner exits; returns how it ended after the last events, checkpoints and
        reports went out."""
        try:
            while (code := self.runner.poll()) is None:
                self._step()
                time.sleep(self.settings.tick_seconds)
            # Everything the runner wrote before it exited: events, then the final checkpoint.
            self._collect_events()
            self._upload_checkpoints()
            self._flush_events(final=True)
            self._report_checkpoints(final=True)
        finally:
            self.tail.close()
        return RunnerEnd(
            returncode=code,
            stop_action=self._stop_action,
            shutdown=self._shutdown,
            killed_by_supervisor=self._killed,
            completed=self._completed,
            error=self._error,
            checkpoints=sorted(self._uploaded.values(), key=lambda c: c.step),
            log_tail=self.runner.log_tail(),
        )

    def _step(self) -> None:
        self._collect_events()
        self._flush_events()
        self._upload_checkpoints()
        self._report_checkpoints()
        self._poll_stop_marker()
        self._enforce_stop_grace()

    # -- events --------------------------------------------------------------------------------------------

    def _collect_events(self) -> None:
        for event in self.tail.read():
            kind, data = event["type"], event.get("data") or {}
            if kind == "metrics" and isinstance(data.get("step"), int):
                self._first_step_pending = self._first_step_pending or not self._step_metrics
                self._step_metrics[data["step"]] = data
            elif kind == "checkpoint_saved" and isinstance(data.get("step"), int):
                self._checkpoint_metrics[data["step"]] = data.get("metrics") or {}
            elif kind == "completed":
                self._completed = data
            elif kind == "error":
                self._error = event
            self._pending.append(event)

    def _flush_events(self, final: bool = False) -> None:
        """Send pending events when 50 are waiting, a second has passed since the last batch, or the first
        training step has just been logged."""
        now = time.monotonic()
        while self._pending and (
            final
            or self._first_step_pending
            or len(self._pending) >= self.settings.batch_size
            or now - self._last_flush >= self.settings.batch_seconds
        ):
            batch = self._pending[: self.settings.batch_size]
            if not self.reporter.send(JOB_EVENTS_TASK, events=batch, retry_for=60 if final else 0):
                return  # kept for the next round; `seq` makes a resent batch harmless
            del self._pending[: len(batch)]
            self._last_flush = now
            self._first_step_pending = False

    # -- checkpoints --------------------------------------------------------------------------------------

    def _upload_checkpoints(self) -> None:
        for step, folder in complete_checkpoints(self.checkpoint_dir):
            if step in self._uploaded or step in self._failed_steps:
                continue
            prefix = join_key(self.output_prefix, "checkpoints", f"step-{step}")
            started = time.monotonic()
            try:
                snapshot = snapshot_checkpoint(folder, self.staging_dir / f"step-{step}")
            except IncompleteCheckpoint as exc:
                # Rotated away before its turn, or damaged: a newer one follows.
                logger.warning("%s: checkpoint %s not uploaded: %s", self.reporter.job_id, step, exc)
                self._failed_steps.add(step)
                continue
            try:
                upload_checkpoint(self.store, snapshot, prefix)
            except (StorageError, OSError) as exc:
                logger.error(
                    "%s: uploading checkpoint %s to %s failed: %s", self.reporter.job_id, step, prefix, exc
                )
                self._failed_steps.add(step)
                continue
            finally:
                shutil.rmtree(snapshot, ignore_errors=True)
            logger.info(
                "%s: checkpoint %s uploaded to %s in %.1f s",
                self.reporter.job_id,
                step,
                prefix,
                time.monotonic() - started,
            )
            self._uploaded[step] = self._unreported[step] = UploadedCheckpoint(step, prefix)

    def _report_checkpoints(self, final: bool = False) -> None:
        """Report uploaded checkpoints once the runner's `checkpoint_saved` event gave their metrics (at
        the end, with the figures of the last logged step instead)."""
        for step in sorted(self._unreported):
            metrics = self._checkpoint_metrics.get(step)
            if metrics is None and not final:
                continue
            if metrics is None:
                metrics = self._metrics_at(step)
            uploaded = self._unreported.pop(step)
            self.reporter.checkpoint(step=step, prefix=uploaded.prefix, metrics=metrics)

    def _metrics_at(self, step: int) -> dict[str, Any]:
        logged = [s for s in self._step_metrics if s <= step]
        if not logged:
            return {}
        data = self._step_metrics[max(logged)]
        return {k: data[k] for k in ("train_loss", "train_mean_token_accuracy") if k in data}

    # -- stop marker -------------------------------------------------------------------------------------

    def _poll_stop_marker(self) -> None:
        now = time.monotonic()
        if self._stop_action is not None or now - self._last_stop_poll < self.settings.stop_poll_seconds:
            return
        self._last_stop_poll = now
        action = read_stop_marker(self.store, self.stop_key, self.reporter.attempt)
        if action is not None:
            logger.info(
                "%s attempt %s: %s requested; sending the runner SIGTERM",
                self.reporter.job_id,
                self.reporter.attempt,
                action,
            )
            self._stop_action = action
            self._stop_sent_at = now
            self.runner.send_signal(signal.SIGTERM)

    def _enforce_stop_grace(self) -> None:
        if self._stop_sent_at is None or self._killed:
            return
        if time.monotonic() - self._stop_sent_at > self.settings.stop_grace_seconds:
            logger.error(
                "%s: the runner did not stop within %.0f s of SIGTERM; killing it",
                self.reporter.job_id,
                self.settings.stop_grace_seconds,
            )
            self._killed = True
            self.runner.send_signal(signal.SIGKILL)


def read_stop_marker(store: ObjectStore, key: str, attempt: int) -> str | None:
    """The action (`cancel` or `pause`) of the stop marker at `key` when it names `attempt`, else None.

    A marker for another attempt (an earlier pause, say) is ignored, as is an unreadable one."""
    try:
        marker = json.loads(store.get_bytes(key))
    except ObjectNotFound:
        return None
    except (StorageError, ValueError) as exc:
        logger.warning("stop marker %s unreadable: %s", key, exc)
        return None
    if not isinstance(marker, dict) or marker.get("attempt") != attempt:
        return None
    action = marker.get("action")
    if action not in STOP_ACTIONS:
        logger.warning("stop marker %s has unknown action %r", key, action)
        return None
    return str(action)
