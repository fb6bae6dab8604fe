"""Several devices: the same `train` command under `torchrun` trains one model with DDP. Two CPU processes
(gloo) train the tiny NF4 model; only rank 0 writes events, checkpoints and the adapter, the ranks end with
identical adapter weights, `batch_size` counts examples over all devices, and a SIGTERM to torchrun stops
every rank at the same step, after which `--resume-from auto` continues the same run (docs/gpu_runner.md,
"Several devices")."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gpu_runner.events import read_events
from gpu_runner.tiny_model import build_tiny_model

pytestmark = pytest.mark.training

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "var" / "models" / "tailor-tiny"
TASK = ROOT / "gpu_runner" / "data" / "task"
WORLD_SIZE = 2
N_EXAMPLES = 32  # a multiple of micro-batch x devices: every example is trained exactly once per epoch


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small QLoRA SFT job: 32 examples, batch_size 4 (2 per device), 2 epochs, held-out evaluation at the
    start and the end, checkpoints every 8 steps."""
    build_tiny_model(TINY)
    work = tmp_path_factory.mktemp("ddp")
    train = (TASK / "train.jsonl").read_text().splitlines()[:N_EXAMPLES]
    (work / "train.jsonl").write_text("\n".join(train) + "\n")
    valid = (TASK / "heldout.jsonl").read_text().splitlines()[:8]
    (work / "valid.jsonl").write_text("\n".join(valid) + "\n")
    spec = {
        "spec_version": 1,
        "method": "supervised",
        "base_model": {"path": str(TINY), "name": "tailor-tiny", "revision": "build-1"},
        "training_file": "train.jsonl",
        "validation_file": "valid.jsonl",
        "seed": 5,
        "hyperparameters": {
            "n_epochs": 2,
            "batch_size": 4,
            "learning_rate": 0.002,
            "lora_dropout": 0.1,
            "quantization": "nf4",
            "n_checkpoints": 2,
            "n_evals": 1,
            "gradient_checkpointing": False,
            "max_seq_length": 256,
        },
        "output": {"checkpoint_every_seconds": None, "keep_checkpoints": 10},
    }
    path = work / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _torchrun(spec_path: Path, output: Path, events: Path, *extra: str) -> list[str]:
    """`torchrun --standalone --nproc-per-node 2 -m gpu_runner train SPEC --output OUTPUT --events EVENTS`."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(WORLD_SIZE),
        "-m",
        "gpu_runner",
        "train",
        str(spec_path),
        "--output",
        str(output),
        "--events",
        str(events),
        *extra,
    ]


def _environment(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # one thread per rank: the ranks share this machine's cores
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    # CPU ranks only, and no digest files unless a run asks for them.
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("TAILOR_DEBUG_RANK_DIGEST_DIR", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def ddp_run(spec_path: Path) -> dict[str, Any]:
    """The job under torchrun on the CPU (gloo); each rank writes the digest of its adapter weights at the
    end (TAILOR_DEBUG_RANK_DIGEST_DIR)."""
    work = spec_path.parent
    output, events, digests = work / "ddp", work / "ddp.jsonl", work / "rank-digests"
    env = _environment(TAILOR_DEBUG_RANK_DIGEST_DIR=str(digests))
    started = time.monotonic()
    result = subprocess.run(
        _torchrun(spec_path, output, events),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.monotonic() - started
    print(f"\n{WORLD_SIZE}-process DDP run: {seconds:.1f}s")
    return {
        "code": result.returncode,
        "stderr": result.stderr,
        "output": output,
        "events": list(read_events(events)) if events.exists() else [],
        "digests": digests,
        "seconds": seconds,
    }


@pytest.fixture(scope="module")
def single_run(spec_path: Path) -> dict[str, Any]:
    """The same spec in one process, for comparison."""
    from gpu_runner.cli import main

    work = spec_path.parent
    output, events = work / "single", work / "single.jsonl"
    code = main(["train", str(spec_path), "--output", str(output), "--events", str(events)])
    assert code == 0
    return {"output": output, "events": list(read_events(events))}


def _of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == kind]


def _files(directory: Path) -> list[str]:
    """Every entry below `directory`, relative, hidden ones included."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


def test_torchrun_succeeds_with_one_event_stream(ddp_run: dict[str, Any]) -> None:
    assert ddp_run["code"] == 0, ddp_run["stderr"][-3000:]
    events = ddp_run["events"]
    kinds = Counter(e["type"] for e in events)
    for once in ("started", "dataset_ready", "hyperparameters_resolved", "model_loaded", "completed"):
        assert kinds[once] == 1, (once, kinds)
    assert kinds["error"] == 0 and events[-1]["type"] == "completed"
    assert _of(events, "started")[0]["world_size"] == WORLD_SIZE
    total = _of(events, "hyperparameters_resolved")[0]["hyperparameters"]["total_steps"]
    metric_steps = [m["step"] for m in _of(events, "metrics")]
    assert metric_steps == list(range(1, total + 1))  # no step reported twice, none missing
    assert [e["step"] for e in _of(events, "eval")] == [0, total]


def test_ranks_end_with_identical_adapter_weights_equal_to_the_saved_adapter(
    ddp_run: dict[str, Any],
) -> None:
    from safetensors.torch import load_file

    from gpu_runner.train.outputs import adapter_weights_digest

    assert ddp_run["code"] == 0, ddp_run["stderr"][-3000:]
    digests = {p.name: p.read_text().strip() for p in sorted(ddp_run["digests"].iterdir())}
    assert sorted(digests) == [f"rank-{rank}.sha256" for rank in range(WORLD_SIZE)]
    assert len(set(digests.values())) == 1, digests
    output: Path = ddp_run["output"]
    saved = adapter_weights_digest(load_file(str(output / "adapter_model.safetensors")))
    assert saved == digests["rank-0.sha256"]
    first = adapter_weights_digest(
        load_file(str(output / "checkpoints" / "checkpoint-8" / "adapter_model.safetensors"))
    )
    assert first != saved  # the weights moved between the checkpoints: the digest covers trained values


def test_adapter_directory_is_written_once_like_a_single_process_run(
    ddp_run: dict[str, Any], single_run: dict[str, Any]
) -> None:
    from gpu_runner.train.checkpoints import sha256_file

    assert ddp_run["code"] == 0, ddp_run["stderr"][-3000:]
    output: Path = ddp_run["output"]
    top = sorted(p.name for p in output.iterdir())
    assert top == sorted(p.name for p in single_run["output"].iterdir())
    assert top == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "chat_template.jinja",
        "checkpoints",
        "metrics.csv",
        "tailor_adapter.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    manifest = json.loads((output / "tailor_adapter.json").read_text())
    assert set(manifest["files"]) == set(top) - {"checkpoints", "tailor_adapter.json"}
    for name, info in manifest["files"].items():
        assert info["sha256"] == sha256_file(output / name), name
        assert info["bytes"] == (output / name).stat().st_size, name
    assert manifest["hyperparameters"]["world_size"] == WORLD_SIZE
    completed = _of(ddp_run["events"], "completed")[0]
    assert completed["files"] == sorted(manifest["files"])
    config = json.loads((output / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tailor-tiny" and config["revision"] == "build-1"


def test_checkpoints_are_written_once_by_rank_zero(
    ddp_run: dict[str, Any], single_run: dict[str, Any]
) -> None:
    from gpu_runner.train.checkpoints import read_manifest

    assert ddp_run["code"] == 0, ddp_run["stderr"][-3000:]
    checkpoints: Path = ddp_run["output"] / "checkpoints"
    # Same layout as one process: no half-written temporaries, no second copy of any checkpoint.
    assert _files(checkpoints) == _files(single_run["output"] / "checkpoints")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-16", "checkpoint-8"]
    saved = _of(ddp_run["events"], "checkpoint_saved")
    assert [s["step"] for s in saved] == [8, 16]
    for entry in saved:
        path = Path(entry["path"])
        assert read_manifest(path)["step"] == entry["step"]  # every file matches its digest
        state = json.loads((path / "trainer_state.json").read_text())
        assert state["global_step"] == entry["step"] and state["is_world_process_zero"] is True
        rng = json.loads((path / "rng_state.json").read_text())
        assert len(rng["ranks"]) == WORLD_SIZE  # rank 0 stores every rank's generators


def test_batch_size_counts_examples_over_all_devices(
    ddp_run: dict[str, Any], single_run: dict[str, Any], spec_path: Path
) -> None:
    """docs/gpu_runner.md: batch_size is examples per optimizer step over all devices; each device takes
    batch_size / devices per step, and steps per epoch = ceil(ceil(rows / micro) / devices / g)."""
    from gpu_runner.spec import DatasetStats, load_spec, resolve

    assert ddp_run["code"] == 0, ddp_run["stderr"][-3000:]
    events = ddp_run["events"]
    plan = _of(events, "hyperparameters_resolved")[0]["hyperparameters"]
    rows = _of(events, "dataset_ready")[0]["training"]["rows"]
    micro, accumulation = plan["micro_batch_size"], plan["gradient_accumulation_steps"]
    assert plan["world_size"] == WORLD_SIZE and plan["batch_size"] == 4
    assert micro * accumulation * WORLD_SIZE == plan["batch_size"]
    steps_per_epoch = math.ceil(math.ceil(math.ceil(rows / micro) / WORLD_SIZE) / accumulation)
    assert plan["steps_per_epoch"] == steps_per_epoch == 8
    assert plan["total_steps"] == plan["n_epochs"] * steps_per_epoch
    # The trainer's own step count agrees with the plan.
    assert all(m["total_steps"] == plan["total_steps"] for m in _of(events, "metrics"))

    # One process with the same global batch takes the same number of steps ...
    single_plan = _of(single_run["events"], "hyperparameters_resolved")[0]["hyperparameters"]
    assert single_plan["world_size"] == 1 and single_plan["total_steps"] == plan["total_steps"]
    # ... and with the same per-device batch, twice as many.
    spec = load_spec(spec_path)
    stats = DatasetStats(n_examples=rows, max_tokens=256, data_format="chat", has_validation=True)
    per_device = spec.model_copy(
        update={
            "hyperparameters": spec.hyperparameters.model_copy(
                update={"batch_size": plan["batch_size"] // WORLD_SIZE}
            )
        }
    )
    assert resolve(per_device, stats).total_steps == WORLD_SIZE * plan["total_steps"]

    # The two devices trained disjoint halves: every token of every example once per epoch, counted over
    # both ranks, as in the single-process run.
    tokens = _of(events, "dataset_ready")[0]["training"]["tokens"]
    completed = _of(events, "completed")[0]
    assert completed["trained_tokens"] == plan["n_epochs"] * tokens
    assert completed["trained_tokens"] == _of(single_run["events"], "completed")[0]["trained_tokens"]


def test_training_converges_under_ddp(ddp_run: dict[str, Any]) -> None:
    assert ddp_run["code"] == 0, ddp_run["stderr"][-3000:]
    losses = [m["train_loss"] for m in _of(ddp_run["events"], "metrics")]
    evals = _of(ddp_run["events"], "eval")
    print(
        f"\nDDP train loss {losses[0]:.3f} -> {losses[-1]:.3f}; valid {evals[0]['valid_loss']:.3f} -> "
        f"{evals[-1]['valid_loss']:.3f}"
    )
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert evals[-1]["valid_loss"] < evals[0]["valid_loss"]


@pytest.fixture(scope="module")
def ddp_cancelled(spec_path: Path) -> dict[str, Any]:
    """The job under torchrun, sent SIGTERM once step 3 was reported (torchrun passes it to every rank)."""
    work = spec_path.parent
    output, events = work / "ddp-cancelled", work / "ddp-cancelled.jsonl"
    process = subprocess.Popen(
        _torchrun(spec_path, output, events),
        cwd=ROOT,
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    signalled_after = None
    while time.monotonic() < deadline and process.poll() is None:
        if events.exists():
            steps = [e["data"]["step"] for e in read_events(events) if e["type"] == "metrics"]
            if steps and steps[-1] >= 3:
                signalled_after = steps[-1]
                process.send_signal(signal.SIGTERM)
                break
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=300)
    return {
        "code": process.returncode,
        "stderr": stderr,
        "output": output,
        "events": list(read_events(events)),
        "signalled_after": signalled_after,
    }


def test_sigterm_under_torchrun_checkpoints_and_resume_continues_the_same_run(
    ddp_cancelled: dict[str, Any], ddp_run: dict[str, Any], spec_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    from gpu_runner.train.checkpoints import find_latest_checkpoint

    assert ddp_cancelled["signalled_after"] is not None, "the run ended before it could be signalled"
    # torchrun reports any rank's non-zero exit as 1; the event stream says how the run ended.
    assert ddp_cancelled["code"] == 1, ddp_cancelled["stderr"][-3000:]
    last = ddp_cancelled["events"][-1]
    assert last["type"] == "cancelled" and last["data"]["signal"] == "SIGTERM"
    step = last["data"]["step"]
    assert ddp_cancelled["signalled_after"] <= step <= ddp_cancelled["signalled_after"] + 2
    output: Path = ddp_cancelled["output"]
    checkpoint = find_latest_checkpoint(output / "checkpoints")
    assert checkpoint is not None and checkpoint.name == f"checkpoint-{step}"
    assert [s["step"] for s in _of(ddp_cancelled["events"], "checkpoint_saved")] == [step]
    assert not (output / "tailor_adapter.json").exists()

    events = output.parent / "ddp-resumed.jsonl"
    result = subprocess.run(
        _torchrun(spec_path, output, events, "--resume-from", "auto"),
        cwd=ROOT,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = list(read_events(events))
    assert resumed[0]["data"]["resume_from"] == str(checkpoint)
    metrics = _of(resumed, "metrics")
    assert metrics[0]["step"] == step + 1
    reference = {m["step"]: m["train_loss"] for m in _of(ddp_run["events"], "metrics")}
    for entry in metrics:
        assert entry["train_loss"] == pytest.approx(reference[entry["step"]], rel=1e-5, abs=1e-6)
    ours = load_file(str(output / "adapter_model.safetensors"))
    theirs = load_file(str(ddp_run["output"] / "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.allclose(ours[key], theirs[key], atol=1e-6), key
    print(
        f"\nDDP run stopped at step {step}, resumed: losses of steps {step + 1}..{metrics[-1]['step']} match"
    )
