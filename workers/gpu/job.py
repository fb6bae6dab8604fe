"""One dispatched job attempt on a GPU node, from the dispatch message to the `job_finished` report.

1. Parse the dispatch (docs/job-protocol.md) and start heartbeats (they keep the lease while inputs download).
2. Fetch the base model (cached by revision), the training and validation files (sha256 checked) and the
   checkpoint to resume from; write the runner's spec with local paths.
3. Start `python -m gpu_runner train` (see `workers.gpu.runner`), or torchrun over the GPUs of a multi-GPU
   node (`workers.gpu.launch`), report `job_started`, and supervise it: events, checkpoints, the stop marker.
4. Turn how it ended into an outcome: upload the adapter and metrics CSV on success; report `cancelled` or
   `paused` after a stop; `failed` with the runner's error (or a clear one of ours) otherwise.
5. Remove the job's work folder; the model cache stays.

Nothing here raises to Celery: every failure becomes a `failed` report, so a bad job never takes the
worker down. A worker asked to shut down mid-job stops its runner like a pause (checkpoint, upload) and
reports `paused` with `reason: worker_shutdown`; the control plane requeues a job nobody paused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from gpu_runner.events import ErrorCode, ExitCode
from gpu_runner.storage import ObjectNotFound, ObjectStore, StorageError
from gpu_runner.storage.keys import check_key, check_prefix, join_key
from workers.gpu import launch
from workers.gpu.artifacts import (
    METRICS_CSV,
    DigestMismatch,
    IncompleteCheckpoint,
    download_prefix,
    download_verified,
    read_adapter_manifest,
    upload_adapter,
    verify_checkpoint,
)
from workers.gpu.cache import ModelCache
from workers.gpu.errors import JobError
from workers.gpu.reports import Heartbeat, Reporter
from workers.gpu.runner import RunnerEnd, Supervisor, SupervisorSettings, read_stop_marker

logger = logging.getLogger(__name__)

WORKER_PID_FILE = "worker.pid"
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


# --- the dispatch message -----------------------------------------------------------------------------------


def _checked_key(value: Any) -> Any:
    """Object keys from the message go through the store's key rules (no `..`, no absolute keys)."""
    return check_key(value) if isinstance(value, str) else value


def _checked_prefix(value: Any) -> Any:
    if isinstance(value, str) and not check_prefix(value):
        raise ValueError("must name a folder, not the whole store")
    return value


class _Message(BaseModel):
    # Unknown fields are ignored: a newer control plane may add some before every worker is upgraded.
    model_config = ConfigDict(extra="ignore", frozen=True)


class BaseModelSource(_Message):
    name: str = Field(min_length=1, max_length=256)
    revision: str | None = Field(default=None, max_length=128)
    prefix: str

    @property
    def cache_revision(self) -> str:
        """The cache folder of this model: its revision, or (without one) a digest of where it is stored."""
        return self.revision or f"prefix-{hashlib.sha256(self.prefix.encode()).hexdigest()[:16]}"

    _prefix = field_validator("prefix")(_checked_prefix)


class StoredFile(_Message):
    key: str
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")

    _key = field_validator("key")(_checked_key)


class Dispatch(_Message):
    """The keyword argument `dispatch` of `tailor.gpu.run_job`."""

    job_id: str = Field(pattern=_JOB_ID.pattern)
    attempt: int = Field(ge=1)
    output_prefix: str
    base_model: BaseModelSource
    training_file: StoredFile
    validation_file: StoredFile | None = None
    resume_from: str | None = None
    spec: dict[str, Any]
    heartbeat_seconds: float = Field(default=5.0, gt=0, le=3600)

    _output_prefix = field_validator("output_prefix")(_checked_key)
    _resume_from = field_validator("resume_from")(_checked_key)


# --- shutdown requests from the worker ----------------------------------------------------------------------

_active: Supervisor | None = None
_shutting_down = False


def request_shutdown(cold: bool = False) -> None:
    """The worker is stopping (SIGTERM/SIGINT): stop the runner of the job in progress, if any.

    Called from the worker's signal handler in the main thread; it only sets a flag and signals a process.
    """
    global _shutting_down
    _shutting_down = True
    if _active is not None:
        _active.request_shutdown(cold=cold)


# --- paths ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobPaths:
    """The job's work folder on the node."""

    root: Path

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def log(self) -> Path:
        return self.root / "runner.log"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def output(self) -> Path:
        return self.root / "adapter"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def resume(self) -> Path:
        return self.root / "resume"

    @property
    def ranks(self) -> Path:
        """Result files of the torchrun ranks (`workers.gpu.launch`)."""
        return self.root / "ranks"


def process_identity(pid: int) -> str | None:
    """`pid:start time` of a live process (None when there is none), so that a pid reused after a restart
    (a container's worker is often pid 1 every time) does not pass for the process that wrote it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        # Field 22 of /proc/<pid>/stat, counted after the parenthesised command name.
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "?"
    return f"{pid}:{start}"


def remove_abandoned_work(work_root: Path) -> None:
    """Delete work folders whose worker died (kill -9, node restart); their runners died with it."""
    if not work_root.is_dir():
        return
    for folder in work_root.iterdir():
        try:
            owner = (folder / WORKER_PID_FILE).read_text().strip()
            pid = int(owner.split(":")[0])
        except (OSError, ValueError):
            owner, pid = "", None
        if pid is None or process_identity(pid) != owner:
            logger.info("removing abandoned work folder %s", folder)
            shutil.rmtree(folder, ignore_errors=True)


# --- running a job ------------------------------------------------------------------------------------------


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, StorageError) and not isinstance(exc, ObjectNotFound)


def _with_retries(what: str, action: Any) -> Any:
    """Run `action()`, retrying an unreachable store (not a missing object) three times with backoff."""
    for attempt in Retrying(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(3),
        wait=wait_exponential(multiplier=1, max=10),
        reraise=True,
    ):
        with attempt:
            if attempt.retry_state.attempt_number > 1:
                logger.warning("retrying: %s", what)
            return action()
    raise AssertionError("unreachable")


@dataclass
class JobContext:
    dispatch: Dispatch
    paths: JobPaths
    store: ObjectStore
    reporter: Reporter
    cache: ModelCache
    settings: SupervisorSettings


def execute(
    raw: Any,
    *,
    app: Celery,
    worker: str,
    home: Path,
    store: ObjectStore,
    settings: SupervisorSettings | None = None,
) -> str | None:
    """Run one dispatched attempt to its end and report it; returns the outcome sent (None for a dispatch
    that names no job).

    Never raises: a failure of the job is reported as `failed`, and a dispatch too malformed to name its
    job and attempt is logged and dropped.
    """
    try:
        dispatch = Dispatch.model_validate(raw)
    except ValidationError as exc:
        return _refuse_dispatch(raw, exc, app=app, worker=worker)
    reporter = Reporter(app, job_id=dispatch.job_id, attempt=dispatch.attempt, worker=worker)
    paths = JobPaths(home / "work" / f"{dispatch.job_id}-attempt-{dispatch.attempt}")
    context = JobContext(
        dispatch,
        paths,
        store,
        reporter,
        ModelCache(home / "cache" / "models"),
        settings or SupervisorSettings(),
    )
    logger.info(
        "%s attempt %s: starting (%s, %s)",
        dispatch.job_id,
        dispatch.attempt,
        dispatch.base_model.name,
        dispatch.spec.get("method"),
    )
    started = time.monotonic()
    outcome: tuple[str, dict[str, Any]]
    try:
        with Heartbeat(reporter, dispatch.heartbeat_seconds):
            try:
                outcome = _run(context)
            except JobError as exc:
                logger.warning(
                    "%s attempt %s failed: %s: %s", dispatch.job_id, dispatch.attempt, exc.code, exc
                )
                outcome = "failed", {"error": exc.as_error()}
            except Exception as exc:  # noqa: BLE001 - whatever went wrong, the job is told and the worker lives
                logger.exception("%s attempt %s: unexpected failure", dispatch.job_id, dispatch.attempt)
                outcome = (
                    "failed",
                    {
                        "error": JobError(
                            ErrorCode.INTERNAL_ERROR, f"The GPU worker failed: {type(exc).__name__}: {exc}"
                        ).as_error()
                    },
                )
        name, result = outcome
        reporter.finished(name, result)
        logger.info(
            "%s attempt %s: %s after %.1f s",
            dispatch.job_id,
            dispatch.attempt,
            name,
            time.monotonic() - started,
        )
        return name
    finally:
        shutil.rmtree(paths.root, ignore_errors=True)


def _refuse_dispatch(raw: Any, exc: ValidationError, *, app: Celery, worker: str) -> str | None:
    """A dispatch that does not fit the protocol: fail the job if it can be named, else drop it."""
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    job_id = raw.get("job_id") if isinstance(raw, dict) else None
    attempt = raw.get("attempt") if isinstance(raw, dict) else None
    if not (isinstance(job_id, str) and _JOB_ID.match(job_id) and isinstance(attempt, int)):
        logger.error("dropping a dispatch that names no job and attempt: %s", problems)
        return None
    logger.error("%s attempt %s: malformed dispatch: %s", job_id, attempt, problems)
    Reporter(app, job_id=job_id, attempt=attempt, worker=worker).finished(
        "failed",
        {
            "error": JobError(
                ErrorCode.INTERNAL_ERROR, f"The job's dispatch message is malformed: {problems}"
            ).as_error()
        },
    )
    return "failed"


WORKER_SHUTDOWN = "worker_shutdown"


def _run(context: JobContext) -> tuple[str, dict[str, Any]]:
    global _active
    dispatch, paths = context.dispatch, context.paths
    remove_abandoned_work(paths.root.parent)
    context.cache.remove_stale_temporaries()
    shutil.rmtree(paths.root, ignore_errors=True)  # a redelivered dispatch starts clean
    paths.root.mkdir(parents=True)
    (paths.root / WORKER_PID_FILE).write_text(process_identity(os.getpid()) or str(os.getpid()))

    args = _prepare(context)
    # One process, or torchrun over the node's GPUs (DDP or FSDP): refused here when neither holds the job.
    plan = launch.plan_for_node(paths.spec, launch.node_gpu_class())
    if plan is not None:
        logger.info(
            "%s attempt %s: %s over %s GPUs (%s)",
            dispatch.job_id,
            dispatch.attempt,
            plan.strategy,
            plan.world_size,
            plan.to_dict(),
        )

    stop_key = join_key(dispatch.output_prefix, "control", "stop.json")
    action = read_stop_marker(context.store, stop_key, dispatch.attempt)
    if action is not None:  # cancelled or paused while the inputs were downloading
        return ("cancelled" if action == "cancel" else "paused"), {"checkpoint": None}
    if _shutting_down:
        return "paused", {"checkpoint": None, "reason": WORKER_SHUTDOWN}

    runner = launch.runner_process(
        args,
        plan,
        cwd=paths.root,
        log_path=paths.log,
        results_dir=paths.ranks,
        stop_grace_seconds=context.settings.stop_grace_seconds,
    )
    supervisor = Supervisor(
        runner=runner,
        events_path=paths.events,
        checkpoint_dir=paths.checkpoints,
        staging_dir=paths.staging,
        store=context.store,
        output_prefix=dispatch.output_prefix,
        reporter=context.reporter,
        settings=context.settings,
    )
    _active = supervisor
    try:
        pid = runner.start()
        logger.info("%s attempt %s: runner pid %s started", dispatch.job_id, dispatch.attempt, pid)
        if _shutting_down:
            supervisor.request_shutdown()
        context.reporter.started()
        end = supervisor.run()
    finally:
        _active = None
        if runner.process is not None and runner.poll() is None:  # an exception in supervision
            runner.send_signal(signal.SIGKILL)
            runner.wait()
    logger.info("%s attempt %s: runner exited with %s", dispatch.job_id, dispatch.attempt, end.returncode)
    if plan is not None:
        # torchrun exits 1 whatever its ranks returned; their result files say how the run ended.
        end = launch.recover_end(end, results_dir=paths.ranks, world_size=plan.world_size)
        logger.info(
            "%s attempt %s: the ranks' outcome is exit code %s",
            dispatch.job_id,
            dispatch.attempt,
            end.returncode,
        )
    return _conclude(context, end)


def _prepare(context: JobContext) -> list[str]:
    """Download the inputs and write the spec; returns the runner's command-line arguments."""
    dispatch, paths, store = context.dispatch, context.paths, context.store
    base = dispatch.base_model
    try:
        model_dir = _with_retries(
            f"downloading base model {base.name}",
            lambda: context.cache.fetch(
                store, name=base.name, revision=base.cache_revision, prefix=base.prefix
            ),
        )
    except (FileNotFoundError, ObjectNotFound):
        raise JobError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"Base model {base.name} (revision {base.revision}) is not in "
            f"the object store under {base.prefix}",
            param="model",
        ) from None
    except DigestMismatch as exc:
        raise JobError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"Base model {base.name} (revision {base.revision}) is damaged in the object store: {exc}",
            param="model",
        ) from None
    except ValueError as exc:
        raise JobError(ErrorCode.MODEL_LOAD_FAILED, str(exc), param="model") from None
    except StorageError as exc:
        raise JobError(
            ErrorCode.INTERNAL_ERROR,
            f"The object store failed while downloading base model {base.name}: {exc}",
        ) from None

    training = _download_file(context, dispatch.training_file, paths.data / "training.jsonl", "training_file")
    validation = None
    if dispatch.validation_file is not None:
        validation = _download_file(
            context, dispatch.validation_file, paths.data / "validation.jsonl", "validation_file"
        )

    spec = dict(dispatch.spec)
    spec["base_model"] = {
        **(spec.get("base_model") or {}),
        "path": str(model_dir),
        "name": base.name,
        "revision": base.revision or None,
    }
    spec["training_file"] = str(training)
    spec["validation_file"] = str(validation) if validation else None
    paths.spec.write_text(json.dumps(spec, indent=1), encoding="utf-8")

    args = [
        "train",
        str(paths.spec),
        "--output",
        str(paths.output),
        "--events",
        str(paths.events),
        # Outside the adapter folder, so that the adapter uploads without them.
        "--checkpoint-dir",
        str(paths.checkpoints),
    ]
    if dispatch.resume_from:
        args += ["--resume-from", str(_download_checkpoint(context, dispatch.resume_from))]
    return args


def _download_file(context: JobContext, stored: StoredFile, destination: Path, param: str) -> Path:
    """A dataset file, checked against the sha256 the control plane recorded at upload."""
    kind = "Training" if param == "training_file" else "Validation"
    code = ErrorCode.INVALID_TRAINING_FILE if param == "training_file" else ErrorCode.INVALID_VALIDATION_FILE
    try:
        _with_retries(
            f"downloading {stored.key}",
            lambda: download_verified(context.store, stored.key, destination, sha256=stored.sha256),
        )
    except ObjectNotFound:
        raise JobError(
            code, f"{kind} file {stored.key} is missing from the object store", param=param
        ) from None
    except DigestMismatch:
        actual = _sha256_of_stored(context.store, stored.key)
        raise JobError(
            code,
            f"{kind} file {stored.key} does not match the sha256 recorded at upload (expected "
            f"{stored.sha256.lower()}, the stored bytes hash to {actual}); the stored copy is damaged or "
            "was replaced: upload the file again",
            param=param,
        ) from None
    except StorageError as exc:
        raise JobError(
            ErrorCode.INTERNAL_ERROR,
            f"The object store failed while downloading {kind.lower()} file {stored.key}: {exc}",
            param=param,
        ) from None
    return destination


def _sha256_of_stored(store: ObjectStore, key: str) -> str:
    try:
        return store.sha256(key)
    except StorageError:
        return "unknown"


def _download_checkpoint(context: JobContext, prefix: str) -> Path:
    """The checkpoint to resume from, verified against its manifest."""
    destination = context.paths.resume / prefix.rstrip("/").rsplit("/", 1)[-1]
    try:
        _with_retries(
            f"downloading checkpoint {prefix}", lambda: download_prefix(context.store, prefix, destination)
        )
        verify_checkpoint(destination)
    except (FileNotFoundError, ObjectNotFound):
        raise JobError(
            ErrorCode.INTERNAL_ERROR,
            f"Checkpoint {prefix} to resume from is not in the object store",
            param="resume_from",
        ) from None
    except (DigestMismatch, IncompleteCheckpoint) as exc:
        raise JobError(
            ErrorCode.INTERNAL_ERROR,
            f"Checkpoint {prefix} to resume from is damaged: {exc}",
            param="resume_from",
        ) from None
    except StorageError as exc:
        raise JobError(
            ErrorCode.INTERNAL_ERROR,
            f"The object store failed while downloading checkpoint {prefix}: {exc}",
            param="resume_from",
        ) from None
    return destination


# --- how the runner ended -------------------------------------------------------------------------------------


def _conclude(context: JobContext, end: RunnerEnd) -> tuple[str, dict[str, Any]]:
    if end.returncode == ExitCode.SUCCEEDED:
        # Even when a stop was requested: the run finished first, and its adapter is the truth.
        return "succeeded", _publish_adapter(context, end)
    newest = end.checkpoints[-1] if end.checkpoints else None
    checkpoint = {"step": newest.step, "prefix": newest.prefix} if newest else None
    if end.stop_action is not None and (end.returncode == ExitCode.STOPPED or end.killed_by_supervisor):
        return ("cancelled" if end.stop_action == "cancel" else "paused"), {"checkpoint": checkpoint}
    if end.shutdown and end.error is None:
        logger.warning(
            "%s attempt %s: stopped because the worker is shutting down",
            context.dispatch.job_id,
            context.dispatch.attempt,
        )
        return "paused", {"checkpoint": checkpoint, "reason": WORKER_SHUTDOWN}
    raise _failure(end)


def _failure(end: RunnerEnd) -> JobError:
    """The error of a run that ended badly: the runner's own `error` event when it wrote one."""
    if end.error is not None:
        data = end.error.get("data") or {}
        return JobError(
            data.get("code") or ErrorCode.INTERNAL_ERROR,
            str(end.error.get("message") or ""),
            param=data.get("param"),
        )
    tail = end.log_tail[-1500:]
    if end.returncode == ExitCode.OUT_OF_MEMORY:
        return JobError(ErrorCode.OUT_OF_MEMORY, "The training process ran out of memory.")
    if end.returncode == -signal.SIGKILL:
        return JobError(
            ErrorCode.OUT_OF_MEMORY,
            "The training process was killed by SIGKILL, most likely by the "
            "kernel's out-of-memory killer (host memory). Lower batch_size or max_seq_length, or use "
            "a GPU class with more memory.",
        )
    if end.returncode < 0:
        name = (
            signal.Signals(-end.returncode).name
            if -end.returncode in signal.valid_signals()
            else -end.returncode
        )
        return JobError(
            ErrorCode.INTERNAL_ERROR, f"The training process died from signal {name}. Last output:\n{tail}"
        )
    if end.returncode == ExitCode.STOPPED:
        return JobError(
            ErrorCode.INTERNAL_ERROR,
            "The training process was stopped by a signal that did not come from a cancel or pause.",
        )
    return JobError(
        ErrorCode.INTERNAL_ERROR,
        f"The training process exited with code {end.returncode} without "
        f"reporting an error. Last output:\n{tail}",
    )


def _publish_adapter(context: JobContext, end: RunnerEnd) -> dict[str, Any]:
    """Upload the adapter and the metrics CSV; the `result` of a succeeded job."""
    output, prefix = context.paths.output, context.dispatch.output_prefix
    try:
        manifest = read_adapter_manifest(output)
    except (OSError, ValueError, KeyError, DigestMismatch) as exc:
        raise JobError(
            ErrorCode.INTERNAL_ERROR, f"The training process succeeded but its adapter is incomplete: {exc}"
        ) from None
    adapter_prefix = join_key(prefix, "adapter")
    metrics_key = join_key(prefix, METRICS_CSV)
    try:
        _with_retries("uploading the adapter", lambda: upload_adapter(context.store, output, adapter_prefix))
        _with_retries(
            "uploading metrics.csv",
            lambda: context.store.put_file(metrics_key, output / METRICS_CSV, content_type="text/csv"),
        )
    except (StorageError, OSError) as exc:
        raise JobError(
            ErrorCode.INTERNAL_ERROR, f"Uploading the adapter to {adapter_prefix} failed: {exc}"
        ) from None
    completed = end.completed or {}
    return {
        "adapter_prefix": adapter_prefix,
        "metrics_key": metrics_key,
        "trained_tokens": completed.get("trained_tokens", manifest.get("trained_tokens")),
        "steps": completed.get("steps", manifest.get("steps")),
        "metrics": completed.get("metrics") or manifest.get("metrics") or {},
        "adapter_manifest": manifest,
    }
