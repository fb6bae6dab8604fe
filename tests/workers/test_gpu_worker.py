"""The GPU worker's side of the job protocol (docs/job-protocol.md), with real processes and no Django.

A real GPU worker process consumes a GPU-class queue on the real Redis and trains the tiny model from a
local object store; instead of the control plane, the test reads the reports off its own control queue
with kombu. Covered: a job from dispatch to `succeeded` (started, ordered events with `seq`, heartbeats,
checkpoints uploaded and reported, adapter and metrics CSV uploaded, the work folder cleaned, the model
cached); a resumed attempt; a cancel through the stop marker; one job at a time with the next one left in
the broker; `kill -9` of the worker leaves no runner behind and no message to redeliver; a worker asked to
stop checkpoints its job and reports it paused; a damaged training file and a missing base model fail with clear errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from celery import Celery
from kombu import Exchange, Queue

from gpu_runner.storage import LocalObjectStore, open_store
from gpu_runner.tiny_model import build_tiny_model
from workers.app import RUN_JOB_TASK, create_app

pytestmark = [pytest.mark.integration, pytest.mark.training]

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "var" / "models" / "tailor-tiny"
TASK_DATA = ROOT / "gpu_runner" / "data" / "task" / "train.jsonl"
BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "redis://127.0.0.1:6379/1"
TEAM_PREFIX = "teams/7"


# --- reading the control queue ------------------------------------------------------------------------------


@dataclass
class Report:
    task: str
    kwargs: dict[str, Any]
    received: float


class ControlInbox:
    """Stands in for the control plane: takes every message off the control queue and keeps it."""

    def __init__(self, app: Celery, queue_name: str) -> None:
        self.connection = app.connection_for_read()
        self.queue = Queue(queue_name, Exchange(queue_name), routing_key=queue_name)
        self.bound = self.queue(self.connection.default_channel)
        self.bound.declare()
        self.reports: list[Report] = []

    def drain(self) -> None:
        while (message := self.bound.get(no_ack=True)) is not None:
            _, kwargs, _ = message.decode()  # Celery message protocol 2: [args, kwargs, embed]
            self.reports.append(Report(message.headers["task"], kwargs, time.monotonic()))

    def of(self, job_id: str, task: str | None = None) -> list[Report]:
        self.drain()
        return [r for r in self.reports if r.kwargs.get("job_id") == job_id
                and (task is None or r.task == f"tailor.control.{task}")]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return [event for report in self.of(job_id, "job_events") for event in report.kwargs["events"]]

    def finished(self, job_id: str) -> dict[str, Any] | None:
        done = self.of(job_id, "job_finished")
        return done[0].kwargs if done else None

    def close(self) -> None:
        self.bound.delete()
        self.connection.release()


def wait_for(predicate: Callable[[], Any], *, timeout: float, message: str, log: Callable[[], str] = str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {message}\n{log()[-4000:]}")


# --- the worker process ---------------------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    queue: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Harness:
    home: Path
    store: LocalObjectStore
    storage_url: str
    app: Celery
    inbox: ControlInbox
    control_queue: str
    revision: str
    files: dict[str, dict[str, str]] = field(default_factory=dict)
    queues: list[str] = field(default_factory=list)

    @property
    def model_prefix(self) -> str:
        return f"models/tailor-tiny/{self.revision}"

    def start_worker(self, name: str) -> WorkerProcess:
        """`workers.gpu.main(["--gpu-class", …])` in a fresh process without Django settings or a database."""
        gpu_class = f"test-{name}-{uuid.uuid4().hex[:8]}"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DJANGO_", "TAILOR_", "DATABASE_")) and k != "CELERY_BROKER_URL"}
        env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", CELERY_BROKER_URL=BROKER_URL,
                   TAILOR_HOME=str(self.home), TAILOR_STORAGE_URL=self.storage_url,
                   TAILOR_CONTROL_QUEUE=self.control_queue, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
        log_path = self.home / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", "import sys, workers.gpu as g; raise SystemExit(g.main(sys.argv[1:]))",
                 "--gpu-class", gpu_class], env=env, cwd=self.home, stdout=log, stderr=subprocess.STDOUT)
        worker = WorkerProcess(process, log_path, f"gpu.{gpu_class}")
        self.queues.append(worker.queue)
        wait_for(lambda: " ready." in worker.log() or process.poll() is not None, timeout=60,
                 message=f"GPU worker {name} to start", log=worker.log)
        assert process.poll() is None, worker.log()[-4000:]
        return worker

    def upload_dataset(self, name: str, lines: int) -> dict[str, str]:
        rows = TASK_DATA.read_text().splitlines(keepends=True)
        data = "".join(rows[i % len(rows)] for i in range(lines)).encode()  # repeats rows past the file's end
        stored = self.store.put_bytes(f"{TEAM_PREFIX}/files/file-{name}", data)
        self.files[name] = {"key": stored.key, "sha256": stored.sha256}
        return self.files[name]

    def dispatch(self, worker: WorkerProcess, job_id: str, dataset: str, *, attempt: int = 1,
                 resume_from: str | None = None, **overrides: Any) -> dict[str, Any]:
        message = {
            "job_id": job_id,
            "attempt": attempt,
            "output_prefix": f"{TEAM_PREFIX}/jobs/{job_id}",
            "base_model": {"name": "tailor-tiny", "revision": self.revision, "prefix": self.model_prefix},
            "training_file": self.files[dataset],
            "validation_file": None,
            "resume_from": resume_from,
            "spec": {"spec_version": 1, "method": "supervised", "seed": 3,
                     "hyperparameters": {"n_epochs": 1, "batch_size": 2, "n_checkpoints": 2, "max_seq_length": 256,
                                         "gradient_checkpointing": False},
                     "output": {"checkpoint_every_seconds": None, "keep_checkpoints": 5}},
            "heartbeat_seconds": 1,
            **overrides,
        }
        self.app.send_task(RUN_JOB_TASK, kwargs={"dispatch": message}, queue=worker.queue)
        return message


def _new_job_id() -> str:
    return f"ftjob-{uuid.uuid4().hex[:20]}"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    # The reports go to a queue of this module's own: the session's control queue may have a real
    # control worker consuming it (started by other tests), which would take the reports first.
    control_queue_name = f"gpu-reports-{uuid.uuid4().hex[:8]}"
    if not BROKER_URL.startswith("redis://"):
        pytest.skip("these tests read the GPU queue in Redis")
    home = tmp_path_factory.mktemp("gpu-worker-home")
    objects = tmp_path_factory.mktemp("gpu-worker-objects")
    store = open_store(objects.as_uri())
    assert isinstance(store, LocalObjectStore)
    revision = f"rev-{uuid.uuid4().hex[:8]}"
    store.put_dir(build_tiny_model(TINY), f"models/tailor-tiny/{revision}")
    app = create_app({"CELERY_BROKER_URL": BROKER_URL})
    inbox = ControlInbox(app, control_queue_name)
    h = Harness(home, store, objects.as_uri(), app, inbox, control_queue_name, revision)
    h.upload_dataset("short", 16)  # 8 steps
    # 500 steps: an idle machine trains tens of steps a second, and a stop must land mid-run.
    h.upload_dataset("long", 1000)
    yield h
    inbox.close()
    client = redis.Redis.from_url(BROKER_URL)
    for name in [*h.queues, control_queue_name]:
        client.delete(name)


@pytest.fixture(scope="module")
def worker(harness: Harness) -> Iterator[WorkerProcess]:
    process = harness.start_worker("main")
    yield process
    process.stop()


# --- tests ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def succeeded(harness: Harness, worker: WorkerProcess) -> dict[str, Any]:
    job_id = _new_job_id()
    dispatched = time.monotonic()
    harness.dispatch(worker, job_id, "short")
    finished = wait_for(lambda: harness.inbox.finished(job_id), timeout=240, message="the job to finish",
                        log=worker.log)
    return {"job_id": job_id, "finished": finished, "dispatched": dispatched}


def test_a_job_runs_to_succeeded_and_reports_every_step(harness: Harness, worker: WorkerProcess,
                                                        succeeded: dict[str, Any]) -> None:
    job_id, finished = succeeded["job_id"], succeeded["finished"]
    assert finished["outcome"] == "succeeded", (finished, worker.log()[-4000:])
    assert finished["attempt"] == 1

    (started,) = harness.inbox.of(job_id, "job_started")
    assert started.kwargs["worker"].startswith("gpu-test-main-")
    print(f"\ndispatch → job_started {started.received - succeeded['dispatched']:.2f} s (model download included)")

    # Runner events in order, numbered by their line in the stream, each exactly once.
    events = harness.inbox.events(job_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "completed"
    assert [e["data"]["step"] for e in events if e["type"] == "metrics"] == list(range(1, 9))
    assert all(len(r.kwargs["events"]) <= 50 for r in harness.inbox.of(job_id, "job_events"))

    heartbeats = harness.inbox.of(job_id, "job_heartbeat")
    assert len(heartbeats) >= 3 and all(h.kwargs["attempt"] == 1 for h in heartbeats)

    # Checkpoints at steps 4 and 8: in the store, manifest included, and reported with their metrics.
    prefix = f"{TEAM_PREFIX}/jobs/{job_id}"
    reported = {r.kwargs["step"]: r.kwargs for r in harness.inbox.of(job_id, "job_checkpoint")}
    assert sorted(reported) == [4, 8]
    for step, report in reported.items():
        assert report["prefix"] == f"{prefix}/checkpoints/step-{step}"
        manifest = json.loads(harness.store.get_bytes(f"{report['prefix']}/tailor_checkpoint.json"))
        assert manifest["step"] == step
        for name, info in manifest["files"].items():
            assert harness.store.sha256(f"{report['prefix']}/{name}") == info["sha256"]
        saved = next(e for e in events if e["type"] == "checkpoint_saved" and e["data"]["step"] == step)
        assert report["metrics"] == saved["data"]["metrics"] and "train_loss" in report["metrics"]

    # The adapter and the results CSV.
    result = finished["result"]
    assert result["adapter_prefix"] == f"{prefix}/adapter" and result["metrics_key"] == f"{prefix}/metrics.csv"
    adapter_files = {info.key.rsplit("/", 1)[1] for info in harness.store.list(result["adapter_prefix"])}
    assert {"adapter_config.json", "adapter_model.safetensors", "tailor_adapter.json"} <= adapter_files
    assert not any(name.startswith("checkpoint") for name in adapter_files)
    manifest = result["adapter_manifest"]
    for name, info in manifest["files"].items():
        assert harness.store.sha256(f"{result['adapter_prefix']}/{name}") == info["sha256"]
    csv_rows = harness.store.get_bytes(result["metrics_key"]).decode().splitlines()
    assert csv_rows[0].startswith("step,train_loss") and len(csv_rows) == 9
    completed = events[-1]["data"]
    assert result["trained_tokens"] == completed["trained_tokens"] > 0
    assert result["metrics"] == completed["metrics"] and result["steps"] == 8

    # Heartbeats stop with the job; the work folder is gone and the base model stays cached.
    time.sleep(2.5)
    assert len([h for h in harness.inbox.of(job_id, "job_heartbeat") if h.kwargs["attempt"] == 1]) == len(heartbeats)
    assert not list((harness.home / "work").iterdir())
    assert (harness.home / "cache" / "models" / "tailor-tiny" / harness.revision / "config.json").is_file()


def test_a_later_attempt_resumes_from_an_uploaded_checkpoint(harness: Harness, worker: WorkerProcess,
                                                           succeeded: dict[str, Any]) -> None:
    job_id = succeeded["job_id"]
    checkpoint = f"{TEAM_PREFIX}/jobs/{job_id}/checkpoints/step-4"
    harness.dispatch(worker, job_id, "short", attempt=2, resume_from=checkpoint)
    finished = wait_for(lambda: [r for r in harness.inbox.of(job_id, "job_finished") if r.kwargs["attempt"] == 2],
                        timeout=240, message="the resumed attempt to finish", log=worker.log)[0].kwargs
    assert finished["outcome"] == "succeeded", (finished, worker.log()[-4000:])
    events = [e for r in harness.inbox.of(job_id, "job_events") if r.kwargs["attempt"] == 2
              for e in r.kwargs["events"]]
    assert events[0]["type"] == "started" and events[0]["data"]["resume_from"].endswith("step-4")
    assert [e["data"]["step"] for e in events if e["type"] == "metrics"] == [5, 6, 7, 8]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # a fresh stream per attempt


def test_a_damaged_training_file_fails_with_a_clear_error(harness: Harness, worker: WorkerProcess) -> None:
    job_id = _new_job_id()
    expected = harness.files["short"]["sha256"]
    harness.dispatch(worker, job_id, "short", training_file={"key": harness.files["short"]["key"],
                                                             "sha256": hashlib.sha256(b"other bytes").hexdigest()})
    finished = wait_for(lambda: harness.inbox.finished(job_id), timeout=120, message="the job to fail",
                        log=worker.log)
    assert finished["outcome"] == "failed"
    error = finished["result"]["error"]
    assert error["code"] == "invalid_training_file" and error["param"] == "training_file"
    assert harness.files["short"]["key"] in error["message"] and "sha256" in error["message"]
    assert expected in error["message"]  # what the stored bytes really hash to
    assert not harness.inbox.of(job_id, "job_started")  # no runner was started
    assert worker.process.poll() is None


def test_a_stop_marker_cancels_after_a_checkpoint_and_jobs_run_one_at_a_time(
        harness: Harness, worker: WorkerProcess) -> None:
    job_id, queued_id = _new_job_id(), _new_job_id()
    prefix = f"{TEAM_PREFIX}/jobs/{job_id}"
    harness.dispatch(worker, job_id, "long")
    # A second job for the same worker, whose base model is missing.
    harness.dispatch(worker, queued_id, "short", base_model={"name": "tailor-tiny", "revision": "missing",
                                                              "prefix": "models/tailor-tiny/missing"})
    wait_for(lambda: any(e["type"] == "metrics" for e in harness.inbox.events(job_id)), timeout=180,
             message="training to begin", log=worker.log)
    # Acknowledged when it started, so no visibility timeout can ever redeliver it; one job at a time:
    # the second message is still in the broker, not reserved by the busy worker.
    client = redis.Redis.from_url(BROKER_URL)
    assert not [v for v in client.hvals("unacked") if job_id.encode() in v]
    assert client.llen(worker.queue) == 1
    assert not harness.inbox.of(queued_id)

    # A stale marker (an earlier attempt's pause) is ignored; this attempt's cancel is acted on.
    harness.store.put_bytes(f"{prefix}/control/stop.json", json.dumps({"action": "pause", "attempt": 0}).encode())
    time.sleep(3)
    assert harness.inbox.finished(job_id) is None
    harness.store.put_bytes(f"{prefix}/control/stop.json", json.dumps({"action": "cancel", "attempt": 1}).encode())
    marked = time.monotonic()
    finished = wait_for(lambda: harness.inbox.finished(job_id), timeout=120, message="the job to stop",
                        log=worker.log)
    print(f"\nstop marker → job_finished {time.monotonic() - marked:.1f} s")
    assert finished["outcome"] == "cancelled", (finished, worker.log()[-4000:])
    events = harness.inbox.events(job_id)
    cancelled = events[-1]
    assert cancelled["type"] == "cancelled" and cancelled["data"]["signal"] == "SIGTERM"
    step = cancelled["data"]["step"]
    assert 0 < step < 500
    assert finished["result"]["checkpoint"] == {"step": step, "prefix": f"{prefix}/checkpoints/step-{step}"}
    assert step in [r.kwargs["step"] for r in harness.inbox.of(job_id, "job_checkpoint")]
    assert harness.store.exists(f"{prefix}/checkpoints/step-{step}/tailor_checkpoint.json")
    assert not harness.store.exists(f"{prefix}/adapter/tailor_adapter.json")

    # Then the worker takes the next job, which fails on its missing base model.
    failed = wait_for(lambda: harness.inbox.finished(queued_id), timeout=60, message="the queued job",
                      log=worker.log)
    assert failed["outcome"] == "failed"
    assert failed["result"]["error"]["code"] == "model_load_failed"
    assert failed["result"]["error"]["param"] == "model"
    assert "models/tailor-tiny/missing" in failed["result"]["error"]["message"]


def test_kill_9_of_the_worker_leaves_no_runner_and_nothing_to_redeliver(harness: Harness) -> None:
    doomed = harness.start_worker("doomed")
    try:
        job_id = _new_job_id()
        harness.dispatch(doomed, job_id, "long")
        wait_for(lambda: any(e["type"] == "metrics" for e in harness.inbox.events(job_id)), timeout=180,
                 message="training to begin", log=doomed.log)
        runners = [p for p in psutil.Process(doomed.process.pid).children(recursive=True)
                   if "gpu_runner" in " ".join(p.cmdline())]
        assert len(runners) == 1, [p.cmdline() for p in runners]
        runner_pid = runners[0].pid

        doomed.process.send_signal(signal.SIGKILL)
        doomed.process.wait(timeout=10)
        wait_for(lambda: not _alive(runner_pid), timeout=10, message=f"runner {runner_pid} to die")

        client = redis.Redis.from_url(BROKER_URL)
        assert client.llen(doomed.queue) == 0
        # Acknowledged on receipt: nothing waits in Redis' unacked table for a visibility-timeout redelivery.
        assert not [v for v in client.hvals("unacked") if job_id.encode() in v]
        time.sleep(2)
        assert harness.inbox.finished(job_id) is None
    finally:
        doomed.stop()


def test_a_worker_asked_to_stop_checkpoints_its_job_and_reports_it_paused(harness: Harness) -> None:
    """SIGTERM to the worker (a node drained, a pod deleted): the runner checkpoints, the checkpoint is uploaded
    and reported, and the job is reported paused by the worker's shutdown, for the control plane to requeue."""
    leaving = harness.start_worker("leaving")
    try:
        job_id = _new_job_id()
        harness.dispatch(leaving, job_id, "long")
        wait_for(lambda: any(e["type"] == "metrics" for e in harness.inbox.events(job_id)), timeout=180,
                 message="training to begin", log=leaving.log)
        leaving.process.send_signal(signal.SIGTERM)
        assert leaving.process.wait(timeout=120) == 0, leaving.log()[-4000:]
        events = harness.inbox.events(job_id)
        assert events[-1]["type"] == "cancelled" and events[-1]["data"]["signal"] == "SIGTERM"
        step = events[-1]["data"]["step"]
        (checkpoint,) = [r.kwargs for r in harness.inbox.of(job_id, "job_checkpoint") if r.kwargs["step"] == step]
        assert harness.store.exists(f"{checkpoint['prefix']}/tailor_checkpoint.json")
        finished = harness.inbox.finished(job_id)
        assert finished is not None and finished["outcome"] == "paused"
        assert finished["result"] == {"reason": "worker_shutdown",
                                      "checkpoint": {"step": step, "prefix": checkpoint["prefix"]}}
    finally:
        leaving.stop()


# --- parts without processes -------------------------------------------------------------------------------


def test_worker_command_line_consumes_one_queue_one_job_at_a_time() -> None:
    from workers.gpu import worker_argv

    argv = worker_argv(["--gpu-class", "a100-80g"], {}, "redis://127.0.0.1:6379/0")
    options = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert options["--queues"] == "gpu.a100-80g" and options["--hostname"] == "gpu-a100-80g@%h"
    assert options["--pool"] == "threads" and options["--concurrency"] == "1"
    assert options["--prefetch-multiplier"] == "1" and "--disable-prefetch" in argv
    overridden = worker_argv(["--gpu-class", "a100"], {"TAILOR_GPU_QUEUE": "gpu.rack-3"}, "filesystem://")
    assert overridden[overridden.index("--queues") + 1] == "gpu.rack-3" and "--disable-prefetch" not in overridden
    with pytest.raises(SystemExit):
        worker_argv(["--gpu-class", "../etc"], {})


def test_run_job_is_acknowledged_on_receipt() -> None:
    from workers.gpu.tasks import run_job

    assert run_job.name == "tailor.gpu.run_job" and run_job.acks_late is False and run_job.ignore_result


def test_the_gpu_worker_keeps_django_out_even_when_its_settings_variable_is_set() -> None:
    """`tailor worker gpu` runs with DJANGO_SETTINGS_MODULE set by the CLI; Celery would then install its Django
    fix-up (django.setup() at worker start), which a node without database settings must never run."""
    probe = ("import os, sys; os.environ['DJANGO_SETTINGS_MODULE'] = 'tailor.settings'; import workers.gpu as g; "
             "code = g.main(['--help']); from workers.app import app; "
             "print(code, os.environ.get('DJANGO_SETTINGS_MODULE'), [type(f).__name__ for f in app._fixups if f], "
             "'django.conf' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT}"})
    assert result.stdout.strip().splitlines()[-1] == "0 None [] False", result.stdout + result.stderr


def test_gpu_worker_modules_import_nothing_of_the_control_plane() -> None:
    """A GPU node has no database credentials: workers.gpu imports no Django, tailor or control tasks."""
    import ast

    forbidden = ("django", "rest_framework", "tailor", "workers.control", "torch", "transformers", "peft", "trl")
    for path in (ROOT / "workers" / "gpu").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{path.name}: {name}"
                if name.startswith("gpu_runner."):
                    assert name.split(".")[1] in ("storage", "events", "spec", "memory"), f"{path.name}: {name}"
