"""A GPU worker whose class has two GPUs per node runs each job under torchrun (workers.gpu.launch), here as
two CPU processes talking over gloo, with real processes, the real Redis and no Django (the setup of
tests/workers/test_gpu_worker.py, whose helpers this module reuses).

Covered through the worker process: a job completes with one event stream (every step once, one
`completed`, the strategy and world size recorded in `hyperparameters_resolved`), checkpoints and the
adapter uploaded once; a cancel mid-run reaches both ranks through torchrun and is reported `cancelled`
with the checkpoint written on the stop, although torchrun itself exits 1; an invalid spec is reported as
`invalid_spec` from the ranks' exit code 2; `kill -9` of the worker leaves no agent or rank behind.

Without processes: the strategy choice (DDP when one GPU holds the job, FSDP when only the node's GPUs
together do, a clear refusal otherwise), the per-GPU estimate under sharding, and the recovery of the
runner's exit code from the ranks' result files. FSDP training itself needs CUDA GPUs and is not run here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from gpu_runner.events import ExitCode
from gpu_runner.memory import (
    GpuClass,
    NoGpuClassFits,
    NoStrategyFits,
    choose_gpu_class,
    choose_strategy,
    estimate_training_memory,
    model_shape_from_directory,
    sharded_training_memory,
)
from gpu_runner.storage import LocalObjectStore, open_store
from gpu_runner.tiny_model import build_tiny_model
from tests.workers.test_gpu_worker import (
    BROKER_URL,
    ROOT,
    TEAM_PREFIX,
    TINY,
    ControlInbox,
    Harness,
    WorkerProcess,
    _alive,
    _new_job_id,
    wait_for,
)
from workers.app import create_app
from workers.gpu.launch import (
    RankResult,
    node_gpu_class,
    plan_for_node,
    read_rank_results,
    recover_end,
    runner_outcome,
    torchrun_prefix,
)
from workers.gpu.runner import RunnerEnd

WORLD_SIZE = 2


# --- processes -------------------------------------------------------------------------------------------------


def start_multi_worker(harness: Harness, name: str) -> WorkerProcess:
    """A GPU worker of class `multi` (24 GiB, two GPUs per node, its own queue) on the CPU."""
    queue = f"gpu.multi-{uuid.uuid4().hex[:8]}"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "TAILOR_", "DATABASE_", "CUDA_")) and k != "CELERY_BROKER_URL"
    }
    env.update(
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        CELERY_BROKER_URL=BROKER_URL,
        TAILOR_HOME=str(harness.home),
        TAILOR_STORAGE_URL=harness.storage_url,
        TAILOR_CONTROL_QUEUE=harness.control_queue,
        TAILOR_GPU_CLASSES=f"small:8:gpu.small-unused,multi:24:{queue}:{WORLD_SIZE}",
        HF_HUB_OFFLINE="1",
        CUDA_VISIBLE_DEVICES="",  # CPU ranks (gloo) even on a machine with GPUs
        OMP_NUM_THREADS="1",  # one thread per rank: the ranks share the machine's cores
    )
    log_path = harness.home / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, workers.gpu as g; raise SystemExit(g.main(sys.argv[1:]))",
                "--gpu-class",
                "multi",
                "--hostname",
                f"gpu-multi-{name}-{uuid.uuid4().hex[:6]}@%h",
            ],
            env=env,
            cwd=harness.home,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    worker = WorkerProcess(process, log_path, queue)
    harness.queues.append(queue)
    wait_for(
        lambda: " ready." in worker.log() or process.poll() is not None,
        timeout=60,
        message=f"GPU worker {name} to start",
        log=worker.log,
    )
    assert process.poll() is None, worker.log()[-4000:]
    # The worker consumes the queue TAILOR_GPU_CLASSES gives its class, where the control plane sends.
    assert f".> {queue} " in worker.log(), worker.log()[-2000:]
    return worker


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    if not BROKER_URL.startswith("redis://"):
        pytest.skip("these tests read the GPU queue in Redis")
    control_queue = f"gpu-multi-reports-{uuid.uuid4().hex[:8]}"
    home = tmp_path_factory.mktemp("gpu-multi-home")
    objects = tmp_path_factory.mktemp("gpu-multi-objects")
    store = open_store(objects.as_uri())
    assert isinstance(store, LocalObjectStore)
    revision = f"rev-{uuid.uuid4().hex[:8]}"
    store.put_dir(build_tiny_model(TINY), f"models/tailor-tiny/{revision}")
    app = create_app({"CELERY_BROKER_URL": BROKER_URL})
    h = Harness(home, store, objects.as_uri(), app, ControlInbox(app, control_queue), control_queue, revision)
    h.upload_dataset("short", 16)  # batch_size 2 over 2 ranks: 8 steps
    h.upload_dataset("long", 1000)  # 500 steps: a stop lands mid-run even on an idle machine
    yield h
    h.inbox.close()
    client = redis.Redis.from_url(BROKER_URL)
    for name in [*h.queues, control_queue]:
        client.delete(name)


@pytest.fixture(scope="module")
def worker(harness: Harness) -> Iterator[WorkerProcess]:
    multi = start_multi_worker(harness, "main")
    yield multi
    multi.stop()


def _training(harness: Harness, job_id: str, worker: WorkerProcess) -> None:
    wait_for(
        lambda: any(e["type"] == "metrics" for e in harness.inbox.events(job_id)),
        timeout=180,
        message="training to begin",
        log=worker.log,
    )


def _launch_processes(worker: WorkerProcess) -> list[psutil.Process]:
    """The torchrun agent and its ranks below the worker."""
    return [
        p
        for p in psutil.Process(worker.process.pid).children(recursive=True)
        if "workers.gpu.launch" in " ".join(p.cmdline())
    ]


# --- through the worker ------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.training
def test_a_job_on_two_ranks_completes_with_one_event_stream(harness: Harness, worker: WorkerProcess) -> None:
    job_id = _new_job_id()
    prefix = f"{TEAM_PREFIX}/jobs/{job_id}"
    harness.dispatch(worker, job_id, "short")
    finished = wait_for(
        lambda: harness.inbox.finished(job_id), timeout=240, message="the job to finish", log=worker.log
    )
    assert finished["outcome"] == "succeeded", (finished, worker.log()[-4000:])

    events = harness.inbox.events(job_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = Counter(e["type"] for e in events)
    for once in ("started", "dataset_ready", "hyperparameters_resolved", "model_loaded", "completed"):
        assert kinds[once] == 1, (once, kinds)
    assert kinds["error"] == 0 and events[-1]["type"] == "completed"
    assert [e["data"]["step"] for e in events if e["type"] == "metrics"] == list(range(1, 9))

    started = next(e for e in events if e["type"] == "started")["data"]
    assert started["world_size"] == WORLD_SIZE and started["device"] == "cpu"
    resolved = next(e for e in events if e["type"] == "hyperparameters_resolved")["data"]
    launch = resolved["launch"]
    assert launch["strategy"] == "ddp" and launch["world_size"] == WORLD_SIZE
    plan = launch["plan"]
    assert plan["strategy"] == "ddp" and plan["world_size"] == WORLD_SIZE
    assert plan["gpu_class"] == "multi" and plan["gpu_memory_gib"] == 24
    assert 0 < plan["per_gpu_gib"] == plan["single_gpu_gib"] < 24  # DDP: a full copy on each GPU
    assert resolved["hyperparameters"]["world_size"] == WORLD_SIZE
    assert (
        "ddp over 2 processes"
        in next(e for e in events if e["type"] == "hyperparameters_resolved")["message"]
    )

    # Checkpoints and the adapter: written by rank 0 only, uploaded and reported once each.
    steps = [r.kwargs["step"] for r in harness.inbox.of(job_id, "job_checkpoint")]
    assert steps == [4, 8]
    assert [e["data"]["step"] for e in events if e["type"] == "checkpoint_saved"] == [4, 8]
    result = finished["result"]
    assert result["adapter_prefix"] == f"{prefix}/adapter" and result["steps"] == 8
    manifest = result["adapter_manifest"]
    assert manifest["hyperparameters"]["world_size"] == WORLD_SIZE
    stored = sorted(info.key.rsplit("/", 1)[1] for info in harness.store.list(result["adapter_prefix"]))
    assert stored == sorted([*manifest["files"], "tailor_adapter.json"])
    for name, info in manifest["files"].items():
        assert harness.store.sha256(f"{result['adapter_prefix']}/{name}") == info["sha256"]
    assert result["trained_tokens"] == events[-1]["data"]["trained_tokens"] > 0
    assert len(harness.inbox.of(job_id, "job_finished")) == 1

    log = worker.log()
    assert "ddp over 2 GPUs" in log and "the ranks' outcome is exit code 0" in log
    assert not _launch_processes(worker)  # agent and ranks are gone
    assert not list((harness.home / "work").iterdir())


@pytest.mark.integration
@pytest.mark.training
def test_a_cancel_reaches_every_rank_and_is_reported_cancelled_with_its_checkpoint(
    harness: Harness, worker: WorkerProcess
) -> None:
    job_id = _new_job_id()
    prefix = f"{TEAM_PREFIX}/jobs/{job_id}"
    harness.dispatch(worker, job_id, "long")
    _training(harness, job_id, worker)
    launched = _launch_processes(worker)
    assert len(launched) == 1 + WORLD_SIZE, [p.cmdline() for p in launched]  # the agent and two ranks

    harness.store.put_bytes(
        f"{prefix}/control/stop.json", json.dumps({"action": "cancel", "attempt": 1}).encode()
    )
    finished = wait_for(
        lambda: harness.inbox.finished(job_id), timeout=120, message="the job to stop", log=worker.log
    )
    assert finished["outcome"] == "cancelled", (finished, worker.log()[-4000:])
    events = harness.inbox.events(job_id)
    cancelled = events[-1]
    assert cancelled["type"] == "cancelled" and cancelled["data"]["signal"] == "SIGTERM"
    assert [e["type"] for e in events].count("cancelled") == 1
    step = cancelled["data"]["step"]
    assert 0 < step < 500
    # The checkpoint written on the stop, once, uploaded and reported.
    assert [e["data"]["step"] for e in events if e["type"] == "checkpoint_saved"][-1] == step
    assert finished["result"]["checkpoint"] == {"step": step, "prefix": f"{prefix}/checkpoints/step-{step}"}
    assert [r.kwargs["step"] for r in harness.inbox.of(job_id, "job_checkpoint")].count(step) == 1
    assert harness.store.exists(f"{prefix}/checkpoints/step-{step}/tailor_checkpoint.json")
    assert not harness.store.exists(f"{prefix}/adapter/tailor_adapter.json")

    # torchrun exits 1 whatever its ranks returned; the ranks' result files said "stopped".
    log = worker.log()
    assert "runner exited with 1" in log and "the ranks' outcome is exit code 3" in log
    assert not any(_alive(p.pid) for p in launched)


@pytest.mark.integration
@pytest.mark.training
def test_an_invalid_spec_is_reported_as_invalid_from_the_ranks_exit_codes(
    harness: Harness, worker: WorkerProcess
) -> None:
    job_id = _new_job_id()
    spec = {
        "spec_version": 1,
        "method": "supervised",
        "seed": 3,
        "hyperparameters": {"n_epochs": 1, "batch_size": 2, "lora_r": 0, "max_seq_length": 256},
    }
    harness.dispatch(worker, job_id, "short", spec=spec)
    finished = wait_for(
        lambda: harness.inbox.finished(job_id), timeout=120, message="the job to fail", log=worker.log
    )
    assert finished["outcome"] == "failed"
    error = finished["result"]["error"]
    assert error["code"] == "invalid_spec" and error["param"] == "hyperparameters.lora_r", error
    assert harness.inbox.of(job_id, "job_started")  # the runner did start: the ranks refused the spec
    log = worker.log()
    assert "runner exited with 1" in log and "the ranks' outcome is exit code 2" in log


@pytest.mark.integration
@pytest.mark.training
def test_kill_9_of_the_worker_leaves_no_agent_and_no_rank(harness: Harness) -> None:
    doomed = start_multi_worker(harness, "doomed")
    launched: list[psutil.Process] = []
    try:
        job_id = _new_job_id()
        harness.dispatch(doomed, job_id, "long")
        _training(harness, job_id, doomed)
        launched = _launch_processes(doomed)
        ranks = [p for p in launched if "agent" not in p.cmdline()]
        assert len(launched) == 1 + WORLD_SIZE and len(ranks) == WORLD_SIZE, [p.cmdline() for p in launched]
        # torchrun starts its ranks in sessions of their own: only their parent-death signal ends them.
        assert all(os.getsid(p.pid) == p.pid for p in ranks)

        doomed.process.send_signal(signal.SIGKILL)
        doomed.process.wait(timeout=10)
        wait_for(
            lambda: not any(_alive(p.pid) for p in launched),
            timeout=15,
            message=f"agent and ranks {[p.pid for p in launched]} to die",
        )
    finally:
        doomed.stop()
        for process in launched:  # never leave a rank behind a failed assertion
            if _alive(process.pid):
                process.kill()


# --- FSDP state on real shards ----------------------------------------------------------------------------------
#
# accelerate runs FSDP only on GPUs (on the CPU it falls back to DDP), so the runner's `fsdp` strategy cannot
# train here. What can run on the CPU is torch's own FSDP2 over gloo: the tiny model with LoRA, sharded per
# decoder layer, trained two steps; the runner's gathering (adapter and optimizer state whole on rank 0, in
# the single-process layout) and restoring (each rank takes its shard) must round-trip exactly.

FSDP_STATE_SCRIPT = """\
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

from gpu_runner.train.checkpoints import (
    gather_optimizer_state,
    gather_trainable_state,
    load_state_tree,
    restore_optimizer_state,
    restore_trainable_state,
    save_state_tree,
)
from gpu_runner.train.common import save_adapter

model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
dist.init_process_group("gloo")
rank = dist.get_rank()


def sharded_model():
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)


def step(model, optimizer):
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(rank))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


model, optimizer = sharded_model()
for _ in range(2):
    step(model, optimizer)
weights, optim_state = gather_trainable_state(model), gather_optimizer_state(model, optimizer)
if rank == 0:
    out.mkdir(parents=True, exist_ok=True)
    save_adapter(model, out, base_model_name="tailor-tiny", base_model_revision=None, state_dict=weights)
    save_state_tree(optim_state, out, "optimizer")
dist.barrier()

full = {n: p.full_tensor() for n, p in model.named_parameters() if p.requires_grad}
saved = load_file(str(out / "adapter_model.safetensors"))
assert len(saved) == len(full) > 0, (len(saved), len(full))
for name, tensor in full.items():
    assert torch.equal(saved[name.replace(".default.", ".")], tensor), name

restored, restored_optimizer = sharded_model()
assert not torch.equal(next(p for p in restored.parameters() if p.requires_grad).full_tensor(), next(iter(full.values())))
restore_trainable_state(restored, saved, source=out)
restore_optimizer_state(restored, restored_optimizer, load_state_tree(out, "optimizer"))
for name, param in restored.named_parameters():
    if param.requires_grad:
        assert torch.equal(param.full_tensor(), full[name]), name
# One more step from the restored states matches one more step of the original run.
step(model, optimizer)
step(restored, restored_optimizer)
for (name, a), (_, b) in zip(model.named_parameters(), restored.named_parameters()):
    if a.requires_grad:
        assert torch.allclose(a.full_tensor(), b.full_tensor(), atol=1e-6), name
print(f"OK rank {rank} {len(full)} sharded adapter tensors", flush=True)
dist.destroy_process_group()
"""


@pytest.mark.training
def test_sharded_adapter_and_optimizer_state_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    script = tmp_path / "fsdp_state.py"
    script.write_text(FSDP_STATE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(WORLD_SIZE),
            str(script),
            str(build_tiny_model(TINY)),
            str(tmp_path / "checkpoint"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "OK rank 0" in result.stdout and "OK rank 1" in result.stdout
    files = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert files == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
    ]


# --- without processes ---------------------------------------------------------------------------------------------

LLAMA_7B = {
    "parameters": 6_738_415_616,
    "hidden_size": 4096,
    "num_layers": 32,
    "vocab_size": 32_000,
    "intermediate_size": 11_008,
}
LLAMA_65B = {
    "parameters": 65_285_660_672,
    "hidden_size": 8192,
    "num_layers": 80,
    "vocab_size": 32_000,
    "intermediate_size": 22_016,
}
QLORA = {
    "quantization": "nf4",
    "compute_dtype": "bfloat16",
    "lora_r": 16,
    "max_seq_length": 2048,
    "batch_size": 1,
    "gradient_checkpointing": True,
}


def _estimate(**overrides: Any) -> Any:
    return estimate_training_memory(**{**LLAMA_7B, **QLORA, **overrides})


def test_a_job_one_gpu_holds_runs_ddp_on_every_gpu_of_the_node() -> None:
    e = _estimate()
    plan = choose_strategy(e, GpuClass("a10g-x4", 24, "gpu.a10g", gpus_per_node=4))
    assert (plan.strategy, plan.world_size) == ("ddp", 4)
    assert plan.per_gpu_gib == plan.single_gpu_gib == e.total_gib
    # One GPU per node: one process.
    assert choose_strategy(e, GpuClass("a10g", 24, "gpu.a10g")).strategy == "single"
    assert plan.to_dict()["per_gpu_gib"] == round(e.total_gib, 3)


def test_a_job_only_the_node_holds_is_sharded_with_fsdp() -> None:
    e = _estimate(quantization="none")  # 7B in bfloat16: ~17 GiB in one process
    node = GpuClass("a4000-x4", 16, "gpu.a4000", gpus_per_node=4)
    assert e.total_gib > 16
    plan = choose_strategy(e, node)
    assert (plan.strategy, plan.world_size) == ("fsdp", 4)
    assert plan.per_gpu_gib is not None and plan.per_gpu_gib * 1.1 <= 16 < e.total_gib
    # Sharding divides the weights and optimizer state, not each GPU's own activations.
    per_gpu = [sharded_training_memory(e, n) for n in (1, 2, 4, 8)]
    assert per_gpu == sorted(per_gpu, reverse=True)
    assert per_gpu[-1] > e.activations + e.logits
    assert per_gpu[0] > e.total  # one "shard" still gathers its layers: never cheaper than no sharding


def test_a_quantized_base_must_load_whole_on_each_gpu_before_it_is_sharded() -> None:
    e = _estimate(**LLAMA_65B)  # QLoRA 65B: ~44 GiB in one process, ~32 GiB of 4-bit weights
    per_gpu = {n: sharded_training_memory(e, n) for n in (2, 4, 8)}
    assert len(set(per_gpu.values())) == 1 and per_gpu[8] > e.base_weights  # loading decides
    with pytest.raises(NoStrategyFits, match="loaded whole on each GPU"):
        choose_strategy(e, GpuClass("l4-x8", 24, "gpu.l4", gpus_per_node=8))
    assert choose_strategy(e, GpuClass("l40s-x2", 40, "gpu.l40s", gpus_per_node=2)).strategy == "fsdp"
    assert choose_strategy(e, GpuClass("h100-x8", 80, "gpu.h100", gpus_per_node=8)).strategy == "ddp"


def test_gpu_class_choice_takes_a_sharded_node_only_when_asked() -> None:
    e = _estimate(quantization="none")
    classes = [GpuClass("a10g", 12, "q1"), GpuClass("a4000-x4", 16, "q2", gpus_per_node=4)]
    with pytest.raises(NoGpuClassFits):
        choose_gpu_class(e, classes)
    assert choose_gpu_class(e, classes, sharding=True).name == "a4000-x4"
    # A class one GPU of which holds the job still wins over sharding.
    assert choose_gpu_class(e, [*classes, GpuClass("a100", 80, "q3")], sharding=True).name == "a100"
    # int8 weights cannot be sharded (the runner refuses FSDP for them): no sharded node is planned.
    # (7B int8: 10.6 GiB in one process, 7.8 GiB a GPU when sharded.)
    small = [GpuClass("t4", 8, "q1"), GpuClass("t4-x4", 9, "q2", gpus_per_node=4)]
    with pytest.raises(NoGpuClassFits):
        choose_gpu_class(_estimate(quantization="int8"), small, sharding=True)


def test_the_worker_sizes_a_job_from_the_local_model_and_its_spec(tmp_path: Path) -> None:
    model = build_tiny_model(TINY)
    shape = model_shape_from_directory(model)
    config = json.loads((model / "config.json").read_text())
    assert (
        shape["hidden_size"] == config["hidden_size"] and shape["num_layers"] == config["num_hidden_layers"]
    )
    assert shape["parameters"] > shape["vocab_size"] * shape["hidden_size"]
    (tmp_path / "train.jsonl").write_text('{"messages": []}\n' * 10)
    spec = {
        "spec_version": 1,
        "method": "supervised",
        "base_model": {"path": str(model), "name": "tailor-tiny"},
        "training_file": "train.jsonl",
        "hyperparameters": {"batch_size": 4, "max_seq_length": 256},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    node = GpuClass("multi", 24, "gpu.multi", gpus_per_node=2)
    plan = plan_for_node(tmp_path / "spec.json", node)
    assert plan is not None and (plan.strategy, plan.world_size, plan.gpu_class) == ("ddp", 2, "multi")
    assert plan.single_gpu_gib is not None and 1 < plan.single_gpu_gib < 2  # the CUDA context dominates
    assert plan_for_node(tmp_path / "spec.json", GpuClass("one", 24, "gpu.one")) is None
    assert plan_for_node(tmp_path / "spec.json", None) is None
    # A spec the runner will refuse is launched unsized, for the runner to name the field.
    spec["hyperparameters"]["lora_r"] = 0
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    unsized = plan_for_node(tmp_path / "spec.json", node)
    assert unsized is not None and unsized.strategy == "ddp" and unsized.per_gpu_gib is None


def test_node_class_and_queue_come_from_the_class_list() -> None:
    from workers.gpu import gpu_queue
    from workers.gpu.errors import JobError

    environ = {"TAILOR_GPU_CLASS": "multi", "TAILOR_GPU_CLASSES": "a:8:gpu.a,multi:24:gpu.rack-7:2"}
    assert node_gpu_class(environ) == GpuClass("multi", 24, "gpu.rack-7", gpus_per_node=2)
    assert node_gpu_class({"TAILOR_GPU_CLASS": "other", "TAILOR_GPU_CLASSES": "a:8:gpu.a"}) is None
    with pytest.raises(JobError, match="TAILOR_GPU_CLASSES is invalid"):
        node_gpu_class({"TAILOR_GPU_CLASSES": "a:eight:gpu.a"})
    assert gpu_queue("multi", environ) == "gpu.rack-7"
    assert gpu_queue("multi", {**environ, "TAILOR_GPU_QUEUE": "gpu.override"}) == "gpu.override"
    assert gpu_queue("unlisted", environ) == "gpu.unlisted"


def test_torchrun_command_runs_one_rank_per_gpu_without_restarts() -> None:
    plan = choose_strategy(_estimate(), GpuClass("x8", 80, "q", gpus_per_node=8))
    prefix = torchrun_prefix(plan)
    assert prefix[:2] == ["workers.gpu.launch", "agent"] and prefix[-3:] == [
        "-m",
        "workers.gpu.launch",
        "rank",
    ]
    assert prefix[prefix.index("--nproc-per-node") + 1] == "8"
    assert prefix[prefix.index("--max-restarts") + 1] == "0" and "--standalone" in prefix


def _ranks(*codes: int) -> dict[int, RankResult]:
    return {rank: RankResult(rank, code, 100.0 + rank) for rank, code in enumerate(codes)}


@pytest.mark.parametrize(
    "agent, ranks, stopping, expected",
    [
        (0, _ranks(0, 0), False, (0, None)),
        (1, _ranks(3, 3), True, (3, 0)),  # a cancel: torchrun's 1 is the ranks' "stopped"
        (1, {}, True, (3, None)),  # stopped before the ranks started
        (1, _ranks(2, 2), False, (2, 0)),  # invalid input on every rank
        (1, {0: RankResult(0, 1, 105.0), 1: RankResult(1, 4, 101.0)}, False, (4, 1)),  # first failure
        (1, _ranks(3, 4), True, (4, 1)),  # out of memory while stopping is still out of memory
        (1, _ranks(3), False, (1, None)),  # rank 1 left no result: killed; the agent's code stands
        (-9, {}, False, (-9, None)),
    ],
)
def test_runner_outcome_recovers_the_exit_code_torchrun_collapses(
    agent: int, ranks: dict[int, RankResult], stopping: bool, expected: tuple[int, int | None]
) -> None:
    code, cause = runner_outcome(agent, ranks, world_size=WORLD_SIZE, stopping=stopping)
    assert (code, cause.rank if cause else None) == expected


def _end(returncode: int, error: dict[str, Any] | None = None, **fields: Any) -> RunnerEnd:
    return RunnerEnd(
        returncode=returncode,
        stop_action=fields.pop("stop_action", None),
        shutdown=False,
        killed_by_supervisor=False,
        completed=None,
        error=error,
        log_tail="[rank1]: torch.OutOfMemoryError: CUDA out of memory",
    )


def _write_results(directory: Path, results: dict[int, RankResult]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for r in results.values():
        (directory / f"rank-{r.rank}.json").write_text(
            json.dumps({"rank": r.rank, "exit_code": r.exit_code, "finished_at": r.finished_at})
        )


def test_recovered_end_names_the_rank_that_failed_first(tmp_path: Path) -> None:
    # Rank 1 ran out of memory; rank 0, stopped by torchrun, saw its collective break.
    rank0_error = {"type": "error", "message": "RuntimeError: Connection closed by peer", "data": {}}
    _write_results(tmp_path, {0: RankResult(0, 1, 110.0), 1: RankResult(1, 4, 100.0)})
    (tmp_path / "rank-9.json").write_text("{not json")  # ignored
    assert sorted(read_rank_results(tmp_path)) == [0, 1]
    end = recover_end(_end(1, rank0_error), results_dir=tmp_path, world_size=WORLD_SIZE)
    assert end.returncode == ExitCode.OUT_OF_MEMORY
    assert end.error is not None and end.error["data"]["code"] == "out_of_memory"
    assert end.error["data"]["rank"] == 1 and "Rank 1 of 2 failed first" in end.error["message"]
    assert "CUDA out of memory" in end.error["message"]  # the runner's output says what happened

    # Every rank refused the spec: rank 0's own error event stands.
    invalid = {"type": "error", "message": "lora_r ...", "data": {"code": "invalid_spec"}}
    both = tmp_path / "both"
    _write_results(both, {0: RankResult(0, 2, 101.0), 1: RankResult(1, 2, 100.0)})
    end = recover_end(_end(1, invalid), results_dir=both, world_size=WORLD_SIZE)
    assert end.returncode == ExitCode.INVALID_INPUT and end.error is invalid

    # A rank that left no result died from a signal.
    killed = tmp_path / "killed"
    _write_results(killed, {0: RankResult(0, 3, 100.0)})
    end = recover_end(_end(1), results_dir=killed, world_size=WORLD_SIZE)
    assert (
        end.returncode == 1 and end.error is not None and "Rank 1 of 2 died without" in end.error["message"]
    )
    # ... unless the worker stopped the run, which then simply ended stopped.
    end = recover_end(_end(1, stop_action="cancel"), results_dir=killed, world_size=WORLD_SIZE)
    assert end.returncode == ExitCode.STOPPED and end.error is None
