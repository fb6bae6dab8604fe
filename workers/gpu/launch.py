"""Several GPUs per job: on a node whose GPU class has more than one GPU, the runner runs under torchrun,
one process per GPU, with the same event stream, stop and exit codes as a single process.

The node's class is `TAILOR_GPU_CLASS` (set from `--gpu-class`) as listed in `TAILOR_GPU_CLASSES`
(`name:memory_gib:queue:gpus_per_node`). A class with one GPU, or one not listed, runs the runner as one
process, as before. Otherwise `plan_for_node` sizes the job (`gpu_runner.memory`: the base model's shape
from its config.json and safetensors headers, the spec's hyperparameters, the per-GPU micro-batch) and
picks the strategy: DDP when one GPU holds the whole job, FSDP when only the node's GPUs together do; a
job neither holds fails before anything starts. The worker then starts

    python -m workers.gpu.launch agent --standalone --nproc-per-node N … -m workers.gpu.launch rank train …

- `agent` is torchrun (`torch.distributed.run`), started by the worker with its parent-death signal, and
  with `TORCH_ELASTIC_SHUTDOWN_TIMEOUT` set to the worker's stop grace: SIGTERM to it reaches every rank
  (torchrun forwards it), and torchrun waits that long for the ranks to checkpoint before it kills them.
- each `rank` is `python -m gpu_runner` plus two things torchrun does not do. A parent-death signal tied to
  the agent (whose pid it reads from `TAILOR_LAUNCH_AGENT_PID`): torchrun starts its ranks in sessions of
  their own with none, so a worker killed with `kill -9` would take the agent down and leave the ranks
  training. And a result file, `rank-<RANK>.json` with its exit code: torchrun exits 1 whatever its ranks
  returned, and `recover_end` turns the rank files back into the runner's own exit code (2 invalid input,
  3 stopped, 4 out of memory), so a cancelled multi-GPU job is reported cancelled, not failed.

Only rank 0 writes events, checkpoints and the adapter (gpu_runner's rule), so the worker follows one event
stream whatever the world size. The strategy reaches the ranks as `TAILOR_DISTRIBUTED_STRATEGY` and the
plan as `TAILOR_LAUNCH_PLAN`; the runner records both in its `hyperparameters_resolved` event.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import json
import logging
import math
import os
import runpy
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gpu_runner.events import ErrorCode, ExitCode, make_event
from gpu_runner.memory import (
    DEFAULT_SAFETY_MARGIN,
    GpuClass,
    LaunchPlan,
    MemoryEstimate,
    NoStrategyFits,
    choose_strategy,
    estimate_spec_memory,
    model_shape_from_directory,
    parse_gpu_classes,
)
from gpu_runner.spec import DatasetStats, JobSpec, SpecError, load_spec, resolve
from workers.gpu.errors import JobError

if TYPE_CHECKING:
    from workers.gpu.runner import RunnerEnd, RunnerProcess

logger = logging.getLogger(__name__)

AGENT_PID_ENV = "TAILOR_LAUNCH_AGENT_PID"
RESULTS_DIR_ENV = "TAILOR_LAUNCH_RESULTS_DIR"
STRATEGY_ENV = "TAILOR_DISTRIBUTED_STRATEGY"
PLAN_ENV = "TAILOR_LAUNCH_PLAN"
SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

EXIT_MEANINGS = {
    ExitCode.SUCCEEDED: "succeeded",
    ExitCode.FAILED: "failed",
    ExitCode.INVALID_INPUT: "invalid input",
    ExitCode.STOPPED: "stopped",
    ExitCode.OUT_OF_MEMORY: "out of memory",
}


# --- the node and the plan -----------------------------------------------------------------------------------


def node_gpu_class(environ: Mapping[str, str] | None = None) -> GpuClass | None:
    """This node's GPU class: `TAILOR_GPU_CLASS` (default `default`) as listed in `TAILOR_GPU_CLASSES`;
    None when the list does not name it (the node then trains one process on one GPU). Raises JobError
    for a `TAILOR_GPU_CLASSES` that does not parse."""
    environ = os.environ if environ is None else environ
    name = environ.get("TAILOR_GPU_CLASS", "").strip() or "default"
    try:
        classes = parse_gpu_classes(environ.get("TAILOR_GPU_CLASSES", ""))
    except ValueError as exc:
        raise JobError(
            ErrorCode.INTERNAL_ERROR, f"This GPU node's TAILOR_GPU_CLASSES is invalid: {exc}"
        ) from None
    return next((c for c in classes if c.name == name), None)


def _count_rows(path: Path) -> int:
    """Non-blank lines of a JSON-lines file: the examples before any is dropped (an upper bound)."""
    with open(path, "rb") as stream:
        return sum(1 for line in stream if line.strip())


def estimate_job(spec: JobSpec, world_size: int) -> MemoryEstimate:
    """Peak memory of one process of `spec` when it trains on `world_size` GPUs: the base model's shape
    from its local directory, the micro-batch each GPU takes as the runner will resolve it (rows counted
    from the training file, every row taken as max_seq_length tokens). Raises SpecError when the spec
    cannot be resolved and ValueError when the model directory cannot be read."""
    hp = spec.hyperparameters
    stats = DatasetStats(
        n_examples=max(1, _count_rows(spec.training_file)),
        max_tokens=hp.max_seq_length,
        data_format="preference" if spec.method == "dpo" else "chat",
        has_validation=spec.validation_file is not None,
        world_size=world_size,
    )
    resolved = resolve(spec, stats)
    return estimate_spec_memory(
        model_shape_from_directory(spec.base_model.path),
        hp,
        batch_size=resolved.micro_batch_size,
        method=spec.method,
    )


def plan_for_node(
    spec_path: Path,
    gpu_class: GpuClass | None,
    *,
    safety_margin: float = DEFAULT_SAFETY_MARGIN,
) -> LaunchPlan | None:
    """How this node runs the job whose spec (with local paths) is at `spec_path`: None for one process
    (a one-GPU class, or none configured), else a DDP or FSDP plan over the node's GPUs.

    A spec the runner would refuse is launched as DDP without an estimate, so the runner reports it with
    its field-level error. Raises JobError (`out_of_memory`) when the job fits neither one GPU nor the
    node's GPUs sharded."""
    if gpu_class is None or gpu_class.gpus_per_node < 2:
        return None
    try:
        spec = load_spec(spec_path)
        estimate = estimate_job(spec, gpu_class.gpus_per_node)
    except (SpecError, ValueError, OSError) as exc:
        logger.warning(
            "%s: no memory estimate (%s); launching DDP for the runner to report it", spec_path, exc
        )
        return LaunchPlan(
            strategy="ddp",
            world_size=gpu_class.gpus_per_node,
            gpu_class=gpu_class.name,
            gpu_memory_gib=gpu_class.memory_gib,
            per_gpu_gib=None,
            single_gpu_gib=None,
        )
    try:
        return choose_strategy(estimate, gpu_class, safety_margin=safety_margin)
    except NoStrategyFits as exc:
        raise JobError(ErrorCode.OUT_OF_MEMORY, f"The job does not fit this GPU node: {exc}.") from None


# --- starting it -----------------------------------------------------------------------------------------------


def torchrun_prefix(plan: LaunchPlan) -> list[str]:
    """The module arguments of the agent and its ranks, to which the runner's own arguments are appended
    (`python -m` + these + `train SPEC …`)."""
    return [
        "workers.gpu.launch",
        "agent",
        "--standalone",  # one node: a private rendezvous on a free local port
        "--nproc-per-node",
        str(plan.world_size),
        "--max-restarts",
        "0",  # a failed rank fails the attempt; the control plane retries from a checkpoint
        "-m",
        "workers.gpu.launch",
        "rank",
    ]


def runner_process(
    args: Sequence[str],
    plan: LaunchPlan | None,
    *,
    cwd: Path,
    log_path: Path,
    results_dir: Path,
    stop_grace_seconds: float,
) -> RunnerProcess:
    """The runner process for `plan`: `python -m gpu_runner …` without one, torchrun's agent with one."""
    from workers.gpu.runner import RunnerProcess

    if plan is None:
        return RunnerProcess(args, cwd=cwd, log_path=log_path)
    results_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            STRATEGY_ENV: plan.strategy,
            PLAN_ENV: json.dumps(plan.to_dict()),
            RESULTS_DIR_ENV: str(results_dir),
            SHUTDOWN_TIMEOUT_ENV: str(max(1, math.ceil(stop_grace_seconds))),
        }
    )
    return RunnerProcess(args, cwd=cwd, log_path=log_path, env=env, module=torchrun_prefix(plan))


# --- how it ended ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankResult:
    """What one rank's result file says: its exit code and when it exited (wall clock)."""

    rank: int
    exit_code: int
    finished_at: float


def read_rank_results(results_dir: Path) -> dict[int, RankResult]:
    """The result files the ranks wrote, by rank; unreadable ones are skipped (as if never written)."""
    results: dict[int, RankResult] = {}
    for path in sorted(results_dir.glob("rank-*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            result = RankResult(int(data["rank"]), int(data["exit_code"]), float(data["finished_at"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("%s unreadable: %s", path, exc)
            continue
        results[result.rank] = result
    return results


def runner_outcome(
    agent_code: int, results: Mapping[int, RankResult], *, world_size: int, stopping: bool
) -> tuple[int, RankResult | None]:
    """The exit code the runner would have had as one process, and the rank it comes from (None when it
    is the agent's own code).

    The first rank to fail (an exit code other than 0 and 3) decides: the others were then stopped by
    torchrun. Without one, a run the worker asked to stop (cancel, pause, worker shutdown) ended stopped,
    even when the agent went before its ranks started. Then a rank that left no result died from a signal
    and the agent's code stands; else ranks that stopped make it 3."""
    if agent_code == ExitCode.SUCCEEDED:
        return agent_code, None
    failed = sorted(
        (r for r in results.values() if r.exit_code not in (ExitCode.SUCCEEDED, ExitCode.STOPPED)),
        key=lambda r: (r.finished_at, r.rank),
    )
    if failed:
        return failed[0].exit_code, failed[0]
    stopped = [results[rank] for rank in sorted(results) if results[rank].exit_code == ExitCode.STOPPED]
    if stopping:
        return ExitCode.STOPPED, stopped[0] if stopped else None
    if any(rank not in results for rank in range(world_size)):
        return agent_code, None
    if stopped:
        return ExitCode.STOPPED, stopped[0]
    return agent_code, None


def _meaning(code: int) -> str:
    try:
        return EXIT_MEANINGS[ExitCode(code)]
    except ValueError:
        return f"exit code {code}"


def recover_end(end: RunnerEnd, *, results_dir: Path, world_size: int) -> RunnerEnd:
    """`end` of a torchrun agent with the runner's own exit code in place of torchrun's, and, when a rank
    other than 0 failed first (its events go nowhere: only rank 0 writes them), an error naming it instead
    of rank 0's account of being stopped."""
    results = read_rank_results(results_dir)
    stopping = end.stop_action is not None or end.shutdown
    code, cause = runner_outcome(end.returncode, results, world_size=world_size, stopping=stopping)
    error = end.error
    tail = end.log_tail[-1500:]
    if cause is not None and cause.rank != 0 and code not in (ExitCode.SUCCEEDED, ExitCode.STOPPED):
        first = results.get(0)
        if error is None or first is None or first.exit_code != code:
            error = make_event(
                "error",
                f"Rank {cause.rank} of {world_size} failed first ({_meaning(code)}, exit code {code}); "
                f"only rank 0 reports events, so its error is in the runner's output:\n{tail}",
                level="error",
                code=str(
                    ErrorCode.OUT_OF_MEMORY if code == ExitCode.OUT_OF_MEMORY else ErrorCode.INTERNAL_ERROR
                ),
                rank=cause.rank,
            )
    missing = [rank for rank in range(world_size) if rank not in results]
    if cause is None and missing and not stopping and end.returncode != ExitCode.SUCCEEDED:
        error = make_event(
            "error",
            f"Rank {missing[0]} of {world_size} died without an exit status: killed by a signal (SIGKILL "
            "usually comes from the kernel's out-of-memory killer, host memory). Last output:\n" + tail,
            level="error",
            code=str(ErrorCode.INTERNAL_ERROR),
            rank=missing[0],
        )
    return dataclasses.replace(end, returncode=int(code), error=error)


# --- python -m workers.gpu.launch agent|rank ---------------------------------------------------------------------


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when `parent` (its parent process) dies, or now if it already has (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have gone before prctl: the signal would then never come.
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def _write_result(exit_code: int) -> None:
    directory = os.environ.get(RESULTS_DIR_ENV)
    if not directory:
        return
    rank = int(os.environ.get("RANK", "0"))
    path = Path(directory) / f"rank-{rank}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"rank": rank, "exit_code": exit_code, "finished_at": time.time()}))
        os.replace(tmp, path)
    except OSError as exc:  # the run's own outcome stands; the worker then reads torchrun's exit code
        print(f"rank {rank}: cannot write {path}: {exc}", file=sys.stderr)


def _run_rank(argv: list[str]) -> int:
    agent = os.environ.get(AGENT_PID_ENV)
    if agent:
        die_with_parent(int(agent))
    # Run as `python -m gpu_runner` runs: this package imports no training code of its own.
    sys.argv = ["gpu_runner", *argv]
    try:
        runpy.run_module("gpu_runner", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        _write_result(ExitCode.FAILED)
        raise
    _write_result(code)
    return code


def _run_agent(argv: list[str]) -> int:
    os.environ[AGENT_PID_ENV] = str(os.getpid())  # inherited by the ranks
    sys.argv = ["torchrun", *argv]
    runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`agent TORCHRUN-ARGS…` or `rank RUNNER-ARGS…`; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "agent":
        return _run_agent(args[1:])
    if args and args[0] == "rank":
        return _run_rank(args[1:])
    print(
        "usage: python -m workers.gpu.launch agent TORCHRUN-ARGS… | rank RUNNER-ARGS…  (started by the GPU worker)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
