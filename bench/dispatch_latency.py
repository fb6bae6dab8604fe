"""Dispatch latency: how long the platform adds between `POST /v1/fine_tuning/jobs` and training.

With warm workers (API server, control worker, beat and one GPU worker already running), it creates
N small QLoRA SFT jobs one after another through the openai SDK and measures, from the moment the
POST returns:
  - `running`: when the job's status reads `running`;
  - `first step`: when the first `metrics` event (training step 1) is visible through the API.
Beside it, measured in the same run, the floor: `python -m gpu_runner train` alone on the same spec,
from process start to its first `metrics` event (loading torch, the 4-bit model and doing one step).
Platform overhead = first step through the platform - the floor, at p50 and p95.

Runs against the PostgreSQL and Redis named by DATABASE_URL / CELERY_BROKER_URL (default: the local
test services on 127.0.0.1), in a scratch TAILOR_HOME. Prints a table, then one JSON object as the
last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "platform"), str(REPO)]

POLL = 0.05


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q) - 1]


def small_training_file(path: Path, n: int = 16) -> Path:
    """The first n examples of the shipped task: a job of two or three steps."""
    lines = (REPO / "gpu_runner" / "data" / "task" / "train.jsonl").read_text().splitlines()[:n]
    path.write_text("\n".join(lines) + "\n")
    return path


def measure_floor(model_dir: Path, data: Path, work: Path, runs: int) -> list[float]:
    """gpu_runner alone: process start to the first metrics event in its event stream."""
    results = []
    for i in range(runs):
        out = work / f"floor-{i}"
        spec = {
            "spec_version": 1,
            "method": "supervised",
            "base_model": {"path": str(model_dir), "name": "tailor-tiny", "revision": "bench"},
            "training_file": str(data),
            "seed": 1,
            "hyperparameters": {"n_epochs": 1, "batch_size": 8, "quantization": "nf4"},
        }
        spec_path = work / f"floor-{i}.json"
        spec_path.write_text(json.dumps(spec))
        events = work / f"floor-{i}.events.jsonl"
        start = time.monotonic()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gpu_runner",
                "train",
                str(spec_path),
                "--output",
                str(out),
                "--events",
                str(events),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        first = None
        while first is None and proc.poll() is None:
            if events.exists() and any(
                json.loads(line).get("type") == "metrics" for line in events.read_text().splitlines() if line
            ):
                first = time.monotonic() - start
            time.sleep(POLL / 2)
        proc.wait()
        if first is None:
            raise SystemExit(f"gpu_runner exited {proc.returncode} without a metrics event")
        results.append(first)
        print(f"    floor run {i + 1}: first step after {first:.2f} s", flush=True)
    return results


def prepare_platform(env: dict[str, str], model_dir: Path, *steps: tuple[str, ...]) -> dict[str, str]:
    """A fresh `tailor_bench` database (when DATABASE_URL names it), the tiny model built, migrations and
    `steps` (more `tailor` commands) run, a bench team created and `tailor-tiny` registered; returns the
    team's credentials (`api_key`, …)."""
    from tailor.demo import run_tailor

    if env["DATABASE_URL"].endswith("/tailor_bench"):
        for sql in ("DROP DATABASE IF EXISTS tailor_bench", "CREATE DATABASE tailor_bench"):
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql], check=True)
    subprocess.run(
        [sys.executable, "-m", "gpu_runner", "make-tiny-model", str(model_dir)], check=True, env=env
    )
    for step in (("migrate", "--noinput"), *steps):
        done = run_tailor(*step, env=env)
        if done.returncode:
            raise SystemExit(done.stderr)
    created = run_tailor(
        "createteam", f"bench-{uuid.uuid4().hex[:6]}", "--owner", "bench@example.com", env=env
    )
    if created.returncode:
        raise SystemExit(created.stderr)
    added = run_tailor("basemodel", "add", "tailor-tiny", "--source", str(model_dir), env=env)
    if added.returncode:
        raise SystemExit(added.stderr)
    return json.loads(created.stdout)


def measure_platform(client, file_id: str, jobs: int) -> tuple[list[float], list[float]]:
    to_running, to_step = [], []
    for i in range(jobs):
        job = client.fine_tuning.jobs.create(
            model="tailor-tiny",
            training_file=file_id,
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}},
            },
        )
        start = time.monotonic()
        running = step = None
        while step is None:
            now = time.monotonic() - start
            status = client.fine_tuning.jobs.retrieve(job.id).status
            if running is None and status in ("running", "succeeded"):
                running = now
            events = client.fine_tuning.jobs.list_events(job.id, limit=50).data
            if any(e.type == "metrics" for e in events):
                step = time.monotonic() - start
                running = running if running is not None else step
            if status in ("failed", "cancelled"):
                raise SystemExit(f"{job.id} ended {status}: {client.fine_tuning.jobs.retrieve(job.id).error}")
            if now > 600:
                raise SystemExit(f"{job.id} did not start training within 600 s")
            time.sleep(POLL)
        to_running.append(running)
        to_step.append(step)
        print(
            f"    job {i + 1:2d} {job.id}: running after {running:.2f} s, first step after {step:.2f} s",
            flush=True,
        )
        while client.fine_tuning.jobs.retrieve(job.id).status not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.2)  # one GPU worker: let the job finish so the next one meets a warm, idle worker
    return to_running, to_step


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--floor-runs", type=int, default=5)
    parser.add_argument("--port", type=int, default=int(os.environ.get("TAILOR_PORT", "8765")))
    args = parser.parse_args()

    from openai import OpenAI
    from tailor.demo import platform_processes, wait_for_api

    work = Path(tempfile.mkdtemp(prefix="tailor-dispatch-"))
    env = dict(os.environ)
    env.update(
        {
            "TAILOR_HOME": str(work / "home"),
            "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tailor_bench"),
            "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/2"),
            "TAILOR_CONTROL_QUEUE": f"control-bench-{uuid.uuid4().hex[:8]}",
            "TAILOR_PUBLIC_URL": f"http://127.0.0.1:{args.port}/v1",
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
        }
    )
    model_dir = Path(env.get("TAILOR_TINY_MODEL_DIR", REPO / "var" / "models" / "tailor-tiny"))
    creds = prepare_platform(env, model_dir)
    data = small_training_file(work / "train.jsonl")

    print("==> floor: gpu_runner alone (load torch + NF4 model, first step)", flush=True)
    floor = measure_floor(model_dir, data, work, args.floor_runs)

    print("==> platform: POST /v1/fine_tuning/jobs -> running -> first step (warm workers)", flush=True)
    with platform_processes(env, args.port) as procs:
        wait_for_api(f"http://127.0.0.1:{args.port}", procs)
        client = OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key=creds["api_key"], max_retries=0)
        uploaded = client.files.create(file=data.open("rb"), purpose="fine-tune")
        client.files.wait_for_processing(uploaded.id, poll_interval=0.2)
        # One job first so every process (and the model cache) is warm, as the benchmark promises.
        measure_platform(client, uploaded.id, 1)
        to_running, to_step = measure_platform(client, uploaded.id, args.jobs)

    p50_floor, p95_floor = percentile(floor, 50), percentile(floor, 95)
    rows = {
        "POST -> running": to_running,
        "POST -> first step (platform)": to_step,
        "first step (gpu_runner alone)": floor,
    }
    print(f"\n{'measure':34s} {'p50 s':>8s} {'p95 s':>8s} {'n':>4s}")
    for name, values in rows.items():
        print(f"{name:34s} {percentile(values, 50):8.2f} {percentile(values, 95):8.2f} {len(values):4d}")
    overhead_p50 = percentile(to_step, 50) - p50_floor
    overhead_p95 = percentile(to_step, 95) - p95_floor
    print(f"{'platform overhead':34s} {overhead_p50:8.2f} {overhead_p95:8.2f}   (target: <= 1.00 s at p95)")
    print(
        json.dumps(
            {
                "name": "dispatch_latency",
                "value": round(percentile(to_step, 95), 3),
                "unit": "s",
                "baseline": round(p95_floor, 3),
                "ratio": round(percentile(to_step, 95) / p95_floor, 3),
                "overhead_s": {"p50": round(overhead_p50, 3), "p95": round(overhead_p95, 3)},
                "to_running_s": {
                    "p50": round(percentile(to_running, 50), 3),
                    "p95": round(percentile(to_running, 95), 3),
                },
                "jobs": args.jobs,
                "floor_runs": args.floor_runs,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
