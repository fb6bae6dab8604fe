"""Shared pieces of the end-to-end suites: a platform of real processes (control worker, beat, GPU
workers) on queues of its own, the task data, and polling helpers (fixtures in tests/e2e/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai import OpenAI

from tests.tailor.processes import PlatformProcess, start_platform_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
TASK_DATA = ROOT / "gpu_runner" / "data" / "task"
LEASE_SECONDS, HEARTBEAT_SECONDS = 10, 2
TRAINING_TIMEOUT = 240
# Few steps, short sequences, no gradient checkpointing: seconds per run on a CPU.
QUICK = {
    "n_epochs": 1,
    "batch_size": 4,
    "learning_rate": 0.002,
    "max_seq_length": 256,
    "gradient_checkpointing": False,
}
# 64 examples, 2 per step, 8 epochs: 256 steps, a checkpoint every 16. The tiny model trains tens of
# steps a second on an idle machine, so a shorter run can end before a stop marker is even read.
LONG = {**QUICK, "batch_size": 2, "n_epochs": 8, "n_checkpoints": 16}
LONG_STEPS = 256


def jsonl(name: str, lines: int) -> bytes:
    return "".join((TASK_DATA / name).read_text().splitlines(keepends=True)[:lines]).encode()


@dataclass
class Platform:
    env: dict[str, str]
    home: Path
    gpu_queue: str
    control: PlatformProcess
    beat: PlatformProcess
    gpu: PlatformProcess | None = None
    started: int = 0

    def start_gpu_worker(self) -> PlatformProcess:
        """A `tailor worker gpu` process of its own home (its model cache and work folders)."""
        self.started += 1
        home = self.home / f"gpu-{self.started}"
        home.mkdir()
        env = {**self.env, "TAILOR_HOME": str(home), "TAILOR_GPU_QUEUE": self.gpu_queue}
        return start_platform_process(
            f"gpu-worker-{self.started}",
            ["worker", "gpu", "--gpu-class", "default"],
            env,
            home,
            ready=lambda proc: " ready." in proc.log(),
        )

    def logs(self) -> str:
        shown = [p for p in (self.control, self.gpu, self.beat) if p is not None]
        return "\n".join(f"--- {p.name}\n{p.log()[-2500:]}" for p in shown)


def upload(client: OpenAI, name: str, lines: int) -> str:
    return client.files.create(file=(name, jsonl(name, lines)), purpose="fine-tune").id


def wait_job(
    client: OpenAI, platform: Platform, job_id: str, *statuses: str, timeout: float = TRAINING_TIMEOUT
) -> Any:
    return wait_for(
        lambda: (job := client.fine_tuning.jobs.retrieve(job_id)).status in statuses and job,
        timeout=timeout,
        interval=0.5,
        message=f"{job_id} to be {' or '.join(statuses)}\n{platform.logs()}",
    )
