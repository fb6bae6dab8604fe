"""Cancel and resume: SIGTERM makes the runner checkpoint at the next step and exit 3; resuming from the
newest checkpoint continues the same run, so its losses equal an uninterrupted run's."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gpu_runner.events import read_events
from gpu_runner.tiny_model import build_tiny_model

pytestmark = pytest.mark.training

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "var" / "models" / "tailor-tiny"
TASK = ROOT / "gpu_runner" / "data" / "task"


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SFT job: 64 examples, batches of 4, 2 epochs = 32 steps, checkpoint every 8 steps,
    LoRA dropout on (so the restored RNG matters)."""
    build_tiny_model(TINY)
    work = tmp_path_factory.mktemp("resume")
    lines = (TASK / "train.jsonl").read_text().splitlines()[:64]
    (work / "train.jsonl").write_text("\n".join(lines) + "\n")
    spec = {
        "spec_version": 1,
        "method": "supervised",
        "base_model": {"path": str(TINY), "name": "tailor-tiny"},
        "training_file": "train.jsonl",
        "seed": 11,
        "hyperparameters": {
            "n_epochs": 2,
            "batch_size": 4,
            "learning_rate": 0.002,
            "lora_dropout": 0.1,
            "n_checkpoints": 4,
            "gradient_checkpointing": False,
            "max_seq_length": 256,
        },
        "output": {"checkpoint_every_seconds": None, "keep_checkpoints": 10},
    }
    path = work / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gpu_runner", *args]


def _losses(output: Path) -> dict[int, float]:
    with open(output / "metrics.csv", newline="") as stream:
        return {int(r["step"]): float(r["train_loss"]) for r in csv.DictReader(stream)}


@pytest.fixture(scope="module")
def uninterrupted(spec_path: Path) -> Path:
    from gpu_runner.cli import main

    output = spec_path.parent / "reference"
    assert (
        main(["train", str(spec_path), "--output", str(output), "--events", str(output.parent / "ref.jsonl")])
        == 0
    )
    return output


@pytest.fixture(scope="module")
def cancelled(spec_path: Path) -> dict[str, Any]:
    """The same job in a subprocess, sent SIGTERM once step 3 was reported."""
    output = spec_path.parent / "interrupted"
    events_path = spec_path.parent / "interrupted.jsonl"
    process = subprocess.Popen(
        _cli("train", str(spec_path), "--output", str(output), "--events", str(events_path)),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    signalled_after = None
    while time.monotonic() < deadline and process.poll() is None:
        if events_path.exists():
            steps = [e["data"]["step"] for e in read_events(events_path) if e["type"] == "metrics"]
            if steps and steps[-1] >= 3:
                signalled_after = steps[-1]
                process.send_signal(signal.SIGTERM)
                break
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=300)
    return {
        "code": process.returncode,
        "output": output,
        "events": list(read_events(events_path)),
        "signalled_after": signalled_after,
        "stderr": stderr,
    }


def test_sigterm_checkpoints_and_exits_with_stopped(cancelled: dict[str, Any]) -> None:
    from gpu_runner.train.checkpoints import find_latest_checkpoint, read_manifest

    assert cancelled["signalled_after"] is not None, "the run ended before it could be signalled"
    assert cancelled["code"] == 3, cancelled["stderr"][-2000:]
    last = cancelled["events"][-1]
    assert last["type"] == "cancelled" and last["data"]["signal"] == "SIGTERM"
    step = last["data"]["step"]
    # The next step boundary: the step running when the signal landed, or the one after when it landed
    # between the stop check and the report of a step.
    assert cancelled["signalled_after"] <= step <= cancelled["signalled_after"] + 2
    checkpoint = find_latest_checkpoint(cancelled["output"] / "checkpoints")
    assert checkpoint is not None and checkpoint.name == f"checkpoint-{step}"
    assert last["data"]["checkpoint"] == str(checkpoint)
    assert read_manifest(checkpoint)["step"] == step
    assert not (cancelled["output"] / "tailor_adapter.json").exists()  # no adapter from a stopped run
    assert not [p for p in checkpoint.parent.iterdir() if p.name.startswith(".tmp")]


def test_resume_continues_the_same_run(
    cancelled: dict[str, Any], uninterrupted: Path, spec_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    output = cancelled["output"]
    events_path = output.parent / "resumed.jsonl"
    result = subprocess.run(
        _cli(
            "train",
            str(spec_path),
            "--output",
            str(output),
            "--events",
            str(events_path),
            "--resume-from",
            "auto",
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    events = list(read_events(events_path))
    stopped_at = cancelled["events"][-1]["data"]["step"]
    assert events[0]["data"]["resume_from"].endswith(f"checkpoint-{stopped_at}")
    first_metrics = next(e["data"] for e in events if e["type"] == "metrics")
    assert first_metrics["step"] == stopped_at + 1

    reference, resumed = _losses(uninterrupted), _losses(output)
    assert sorted(resumed) == sorted(reference) == list(range(1, 33))
    after = [s for s in reference if s > stopped_at]
    assert after
    for step in reference:
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
    print(
        f"\nresumed at step {stopped_at}: losses of steps {after[0]}..{after[-1]} match the uninterrupted run"
    )

    ours = load_file(str(output / "adapter_model.safetensors"))
    theirs = load_file(str(uninterrupted / "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.allclose(ours[key], theirs[key], atol=1e-6), key
    completed = events[-1]["data"]
    reference_completed = [
        e for e in read_events(uninterrupted.parent / "ref.jsonl") if e["type"] == "completed"
    ]
    assert completed["trained_tokens"] == reference_completed[0]["data"]["trained_tokens"]


def test_resume_refuses_a_checkpoint_from_another_spec(cancelled: dict[str, Any], spec_path: Path) -> None:
    from gpu_runner.train.checkpoints import find_latest_checkpoint

    checkpoint = find_latest_checkpoint(cancelled["output"] / "checkpoints")
    assert checkpoint is not None
    changed = json.loads(spec_path.read_text())
    changed["hyperparameters"]["learning_rate"] = 0.001
    other = spec_path.parent / "other.json"
    other.write_text(json.dumps(changed))
    events_path = spec_path.parent / "other.jsonl"
    result = subprocess.run(
        _cli(
            "train",
            str(other),
            "--output",
            str(spec_path.parent / "other"),
            "--events",
            str(events_path),
            "--resume-from",
            str(checkpoint),
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    error = list(read_events(events_path))[-1]["data"]
    assert error["code"] == "invalid_spec" and error["param"] == "resume_from"
    assert "different spec" in [i["message"] for i in error["issues"]][0]


def test_sigterm_before_training_stops_at_once(spec_path: Path) -> None:
    events_path = spec_path.parent / "early.jsonl"
    process = subprocess.Popen(
        _cli(
            "train", str(spec_path), "--output", str(spec_path.parent / "early"), "--events", str(events_path)
        ),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (events_path.exists() and events_path.read_text().strip()):
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(timeout=120) == 3
    events = list(read_events(events_path))
    assert events[-1]["type"] == "cancelled" and events[-1]["data"]["checkpoint"] is None
    assert "metrics" not in {e["type"] for e in events}


def test_sigkill_loses_only_the_steps_since_the_last_checkpoint(spec_path: Path, uninterrupted: Path) -> None:
    from gpu_runner.train.checkpoints import TEMP_PREFIX, find_latest_checkpoint

    output = spec_path.parent / "killed"
    events_path = spec_path.parent / "killed.jsonl"
    process = subprocess.Popen(
        _cli("train", str(spec_path), "--output", str(output), "--events", str(events_path)),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if events_path.exists() and any(
            e["type"] == "metrics" and e["data"]["step"] >= 10 for e in read_events(events_path)
        ):
            process.kill()
            break
        time.sleep(0.05)
    assert process.wait(timeout=60) == -signal.SIGKILL
    checkpoints = output / "checkpoints"
    saved = [e["data"]["step"] for e in read_events(events_path) if e["type"] == "checkpoint_saved"]
    # What a kill in the middle of a save leaves: a temporary folder, and a final-looking one without manifest.
    (checkpoints / f"{TEMP_PREFIX}{saved[-1] + 1}-4242").mkdir()
    (checkpoints / f"checkpoint-{saved[-1] + 2}").mkdir()
    latest = find_latest_checkpoint(checkpoints)
    assert latest is not None and latest.name == f"checkpoint-{saved[-1]}"

    result = subprocess.run(
        _cli(
            "train",
            str(spec_path),
            "--output",
            str(output),
            "--events",
            str(events_path),
            "--resume-from",
            "auto",
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    resumed_from = [e["data"]["resume_from"] for e in read_events(events_path) if e["type"] == "started"][-1]
    assert resumed_from == str(latest)
    assert not (checkpoints / f"{TEMP_PREFIX}{saved[-1] + 1}-4242").exists()
    reference, resumed = _losses(uninterrupted), _losses(output)
    assert resumed.keys() == reference.keys()
    for step in reference:
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
