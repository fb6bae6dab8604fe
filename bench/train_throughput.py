"""Training throughput and peak memory of gpu_runner against a plain TRL QLoRA script, on the same data.

Builds, deterministically and without downloads, a Llama-shaped model with random weights
(`bench/_bench_data.py`: ~3.9M parameters for the CPU, ~1B with `--model-size 1b`) and a chat dataset
(OpenAI chat JSONL) whose token lengths are log-normal (median 256, sigma 0.5), clipped to 20..1024.
Then trains it once per arm, each arm a fresh child process:

  gpu_runner         `python -m gpu_runner train SPEC --output DIR --events FILE`, the command users run;
                     its own batching choice for the device (length-grouped batches; padding-free when
                     the GPU has FlashAttention)
  gpu_runner_packed  the same with `"packing": true` (rows packed into max_seq_length-token rows)
  plain_trl          `bench/_plain_trl.py`: TRL SFTTrainer + PEFT + bitsandbytes as TRL's docs write it
                     (random batches padded to their longest row)

Every arm trains the same examples for the same epochs with batch size 8 (no accumulation), LoRA r=16,
alpha=32, dropout 0.05 on all linear layers, an NF4 double-quantized base, max_seq_length 1024,
gradient checkpointing (both trainers' default), and the same compute dtype: gpu_runner's choice for
the device (float32 on CPU, bfloat16 on GPU; `--baseline-dtype trl-default` gives the baseline TRL's
own bf16 default on CPU too).

What is measured, identically for every arm:
  tokens       real (non-padding) tokens the trainer processes: every example's chat-template token
               count (capped at max_seq_length) times epochs, counted here from the tokenizer. gpu_runner
               takes loss on assistant tokens only and TRL's default on all tokens, but both run every
               real token through forward and backward; the trainers' own counts are shown as a check.
  train_s      from the `model_loaded` event (emitted just before `trainer.train()`) to `completed`
               (after the adapter is written): the training loop, checkpoints and adapter output.
  tokens/s     tokens / train_s (the headline). "steady" leaves out step 1 (warm-up).
  tokens/CPU-s tokens / CPU seconds of the child during training: robust to other load on the machine.
  wall_s       the whole child process: imports, tokenization, model loading, training, output.
  peak RSS     ru_maxrss of the child (os.wait4), i.e. its resident-set high-water mark.
  GPU memory   torch.cuda.max_memory_allocated reported by each child, and the device's memory.used
               (nvidia-smi, polled every 0.5 s) above what it was before the child started.
  MFU          (GPU) tokens/s after step 1 x FLOPs per token / peak FLOP/s, with FLOPs per token = 6 N + 12 L H S:
               N matmul parameters (all linear layers and the output head, not the embedding lookup),
               L layers, H hidden size, S the token-weighted mean sequence length (sum len^2 / sum len),
               the PaLM (Chowdhery et al. 2022, appendix B) convention; gradient-checkpointing recompute
               is not counted, and neither are the weight gradients a frozen base does not need.
  other load   cores other processes kept busy during the arm (/proc/stat minus the child's own CPU time).
Also: the base weights' bytes loaded as NF4 against bfloat16 (`get_memory_footprint()`), and the
padding share of random and of length-grouped batches of this data.

On CPU each arm runs twice, in alternating order (`--repeats`), and the table shows each arm's fastest
run: on a shared machine a slow run mostly measures the neighbours. Every run's figures are in the JSON.

Prints a table, then as its last line one JSON object ("value": gpu_runner tokens/s, "baseline": plain
TRL tokens/s, "ratio").

    .venv/bin/python bench/train_throughput.py            # CPU: 200 examples, 2 runs per arm, ~10 minutes
    .venv/bin/python bench/train_throughput.py --quick    # smoke run: 16 examples, 1 run each, ~1.5 minutes
    python bench/train_throughput.py --device cuda --model-size 1b --steps 30   # see bench/gpu_check.sh
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

import _bench_data as bench_data  # noqa: E402 - bench/ is this script's folder

TARGET_RATIO = 1.4
H200_BF16_DENSE_TFLOPS = 989.0
ARMS = ("gpu_runner", "gpu_runner_packed", "plain_trl")
DEFAULT_EXAMPLES = {"cpu": 200, "cuda": 2000}
QUICK_EXAMPLES = 16
MB = 1024 * 1024


@dataclass
class ArmResult:
    """What one trainer's run measured."""

    name: str
    exit_code: int | None = None
    wall_s: float = 0.0
    train_s: float | None = None
    steady_s: float | None = None
    steady_tokens: int | None = None
    cpu_train_s: float | None = None
    peak_rss_mb: float | None = None
    rss_at_loaded_mb: float | None = None
    peak_gpu_allocated_mb: float | None = None
    peak_gpu_used_mb: float | None = None
    reported_tokens: int | None = None
    loss_tokens: int | None = None
    attention: str | None = None
    compute_dtype: str | None = None
    steps: int | None = None
    load_average: tuple[float, float] = (0.0, 0.0)
    other_cores: float | None = None
    repeat: int = 0
    log: Path | None = None
    error: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.train_s is not None


# --- running one arm -----------------------------------------------------------------------------------------


def _gpu_memory_used_mb() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _proc_sample(pid: int) -> tuple[float, int] | None:
    """(CPU seconds used, resident bytes) of a live process, from Linux's /proc (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) start at field 3; utime and stime are 14 and 15.
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / ticks
    return cpu, int(statm.split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of the machine have spent busy since boot (Linux /proc/stat)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in first[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line being written right now
    return events


class _Monitor(threading.Thread):
    """Polls a child: the CPU time it has used and its resident memory when `model_loaded` appears in its
    events (so setup and training can be told apart), and (on a GPU) the device's memory in use."""

    def __init__(self, pid: int, events_path: Path, watch_gpu: bool) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.events_path = events_path
        self.watch_gpu = watch_gpu
        self.cpu_at_loaded: float | None = None
        self.rss_at_loaded_mb: float | None = None
        self.gpu_peak_mb: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        last_gpu = 0.0
        while not self.done.is_set():
            if self.cpu_at_loaded is None and any(e.get("type") == "model_loaded"
                                                  for e in _read_events(self.events_path)):
                sample = _proc_sample(self.pid)
                if sample is not None:
                    self.cpu_at_loaded, rss_bytes = sample
                    self.rss_at_loaded_mb = rss_bytes / MB
            if self.watch_gpu and time.monotonic() - last_gpu >= 0.5:
                last_gpu = time.monotonic()
                used = _gpu_memory_used_mb()
                if used is not None:
                    self.gpu_peak_mb = max(self.gpu_peak_mb or 0.0, used)
            self.done.wait(0.2)


def run_arm(name: str, command: list[str], events_path: Path, log_path: Path, env: dict[str, str], *,
            watch_gpu: bool, timeout_s: float) -> ArmResult:
    """Run one trainer as a child process and collect its figures."""
    result = ArmResult(name=name, log=log_path)
    gpu_before = _gpu_memory_used_mb() if watch_gpu else None
    load_before = os.getloadavg()[0]
    busy_before = _busy_cpu_seconds()
    started = time.monotonic()
    with log_path.open("w", encoding="utf-8") as log:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        monitor = _Monitor(child.pid, events_path, watch_gpu)
        monitor.start()
        killer = threading.Timer(timeout_s, child.kill)
        killer.start()
        try:
            # wait4 gives this child's own rusage: its peak RSS and CPU time, nobody else's.
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            killer.cancel()
            monitor.done.set()
            monitor.join()
        child.returncode = os.waitstatus_to_exitcode(status)
    result.wall_s = time.monotonic() - started
    busy_after = _busy_cpu_seconds()
    result.exit_code = child.returncode
    result.load_average = (load_before, os.getloadavg()[0])
    result.peak_rss_mb = usage.ru_maxrss * 1024 / MB
    cpu_total = usage.ru_utime + usage.ru_stime
    if busy_before is not None and busy_after is not None and result.wall_s > 0:
        # Cores other processes kept busy meanwhile: how contended this arm's measurement was.
        result.other_cores = max(0.0, (busy_after - busy_before - cpu_total) / result.wall_s)
    result.rss_at_loaded_mb = monitor.rss_at_loaded_mb
    if monitor.cpu_at_loaded is not None:
        result.cpu_train_s = cpu_total - monitor.cpu_at_loaded
    if gpu_before is not None and monitor.gpu_peak_mb is not None:
        result.peak_gpu_used_mb = monitor.gpu_peak_mb - gpu_before

    events = _read_events(events_path)
    result.events = events
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event.get("type", ""), []).append(event)
    if "error" in by_type:
        result.error = by_type["error"][-1].get("message")
    if child.returncode != 0 and result.error is None:
        result.error = f"exit code {child.returncode}" + (" (killed: timeout)" if child.returncode == -9 else "")
    loaded, completed = by_type.get("model_loaded"), by_type.get("completed")
    if loaded and completed:
        result.train_s = completed[-1]["created_at"] - loaded[-1]["created_at"]
        data = completed[-1]["data"]
        result.reported_tokens = data.get("trained_tokens")
        result.steps = data.get("steps")
        peak_gpu = (data.get("memory") or {}).get("peak_gpu_bytes")
        result.peak_gpu_allocated_mb = peak_gpu / MB if peak_gpu else None
    metrics = [e for e in by_type.get("metrics", []) if e["data"].get("trained_tokens") is not None]
    if len(metrics) >= 2:
        result.steady_s = metrics[-1]["created_at"] - metrics[0]["created_at"]
        result.steady_tokens = metrics[-1]["data"]["trained_tokens"] - metrics[0]["data"]["trained_tokens"]
    if loaded:
        result.attention = loaded[-1]["data"].get("attention")
        result.compute_dtype = loaded[-1]["data"].get("compute_dtype")
    ready = by_type.get("dataset_ready")
    if ready:
        result.loss_tokens = ready[-1]["data"]["training"].get("trained_tokens")
    return result


# --- the arms' commands ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What every arm trains with."""

    model_dir: Path
    train_file: Path
    epochs: int
    batch_size: int
    max_seq_length: int
    lora_r: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    learning_rate: float = 2e-4
    seed: int = 0


def gpu_runner_spec(setup: Setup, *, packing: bool) -> dict[str, Any]:
    """A gpu_runner job spec (version 1) for the benchmark's run."""
    return {
        "spec_version": 1,
        "method": "supervised",
        "base_model": {"path": str(setup.model_dir), "name": "bench-llama"},
        "training_file": str(setup.train_file),
        "seed": setup.seed,
        "hyperparameters": {
            "n_epochs": setup.epochs,
            "batch_size": setup.batch_size,
            "gradient_accumulation_steps": 1,
            "learning_rate": setup.learning_rate,
            "lora_r": setup.lora_r,
            "lora_alpha": setup.lora_alpha,
            "lora_dropout": setup.lora_dropout,
            "lora_trainable_modules": "all-linear",
            "quantization": "nf4",
            "compute_dtype": "auto",
            "max_seq_length": setup.max_seq_length,
            "packing": packing,
        },
    }


def arm_command(name: str, setup: Setup, arm_dir: Path, *, baseline_dtype: str) -> tuple[list[str], Path]:
    """The command line of arm `name`, working in `arm_dir`, and the events file it writes."""
    arm_dir.mkdir(parents=True, exist_ok=True)
    events = arm_dir / "events.jsonl"
    if name.startswith("gpu_runner"):
        spec_path = arm_dir / "spec.json"
        spec = gpu_runner_spec(setup, packing=name == "gpu_runner_packed")
        from gpu_runner.spec import parse_spec

        parse_spec(spec)  # a spec the runner would refuse fails here, before minutes of setup
        spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
        return ([sys.executable, "-m", "gpu_runner", "train", str(spec_path), "--output", str(arm_dir / "adapter"),
                 "--events", str(events)], events)
    return ([sys.executable, str(BENCH / "_plain_trl.py"), "--model", str(setup.model_dir), "--train",
             str(setup.train_file), "--output", str(arm_dir / "output"), "--events", str(events),
             "--epochs", str(setup.epochs), "--batch-size", str(setup.batch_size),
             "--learning-rate", str(setup.learning_rate), "--max-length", str(setup.max_seq_length),
             "--lora-r", str(setup.lora_r), "--lora-alpha", str(setup.lora_alpha),
             "--lora-dropout", str(setup.lora_dropout), "--compute-dtype", baseline_dtype], events)


def child_env(work: Path) -> dict[str, str]:
    """Offline, with Hugging Face caches inside the benchmark's temporary folder."""
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(work / "hf-home"),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
    })
    return env


def run_json_child(args: list[str], env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    """Run a helper child that prints one JSON object as its last stdout line."""
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- figures and report ----------------------------------------------------------------------------------


def flops_per_token(model: dict[str, Any], lengths: list[int]) -> float:
    """6 N + 12 L H S (see the module docstring)."""
    shape = model["shape"]
    effective_length = sum(n * n for n in lengths) / sum(lengths)
    return (6 * model["matmul_parameters"]
            + 12 * shape["num_hidden_layers"] * shape["hidden_size"] * effective_length)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 when every arm trained, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cpu hides any GPU from the children; cuda requires one")
    parser.add_argument("--model-size", choices=sorted(bench_data.MODEL_SHAPES), default=None,
                        help="tiny (default on cpu) or 1b (default on cuda)")
    parser.add_argument("--examples", type=int, default=None,
                        help=f"training examples (default {DEFAULT_EXAMPLES['cpu']} on cpu)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps of unpacked batches: sets --examples to steps x batch size, 1 epoch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=1024)
    parser.add_argument("--median-tokens", type=float, default=256.0)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", default=None,
                        help=f"comma-separated, from {','.join(ARMS)} (default: gpu_runner,plain_trl on cpu; "
                             "all three on cuda)")
    parser.add_argument("--baseline-dtype", choices=["match", "trl-default"], default="match",
                        help="match: the baseline computes in gpu_runner's dtype for the device; trl-default: "
                             "bfloat16 (TRL's bf16=True default) on every device")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs of each arm, in alternating order; the fastest counts (default 2 on cpu, "
                             "1 with --quick or on cuda)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EXAMPLES} examples, one run each: a smoke run")
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS,
                        help="the device's dense bf16 peak for MFU (default: H200/H100 SXM, 989)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per arm before it is killed")
    parser.add_argument("--workdir", type=Path, default=None, help="keep everything here instead of a temp dir")
    args = parser.parse_args(argv)

    device = args.device
    size = args.model_size or ("1b" if device == "cuda" else "tiny")
    if args.steps is not None:
        n_examples, epochs = args.steps * args.batch_size, 1
    else:
        n_examples = args.examples or (QUICK_EXAMPLES if args.quick else DEFAULT_EXAMPLES[device])
        epochs = args.epochs
    arms = args.arms.split(",") if args.arms else (
        ["gpu_runner", "gpu_runner_packed", "plain_trl"] if device == "cuda" else ["gpu_runner", "plain_trl"])
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}; choose from {ARMS}")
    baseline_dtype = "bfloat16" if device == "cuda" or args.baseline_dtype == "trl-default" else "float32"
    repeats = args.repeats or (1 if args.quick or device == "cuda" else 2)
    if device == "cuda" and shutil.which("nvidia-smi") is None:
        parser.error("--device cuda needs an NVIDIA GPU (nvidia-smi not found)")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="tailor-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = child_env(work)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    started = time.monotonic()
    all_ok = False
    try:
        print(f"# work dir {work}; device {device}; model {size}; {n_examples} examples x {epochs} epoch(s)",
              flush=True)
        model_dir = work / "model"
        model = run_json_child([str(BENCH / "_bench_data.py"), "build-model", str(model_dir), "--size", size,
                                "--device", device, "--seed", str(args.seed)], env, timeout_s=900)
        print(f"# model: {model['parameters']:,} parameters ({model['matmul_parameters']:,} in matmuls), "
              f"vocabulary {model['vocab_size']:,}", flush=True)

        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        spread = bench_data.LengthSpread(median=args.median_tokens, sigma=args.sigma, max_tokens=args.max_seq_length)
        train_file = work / "train.jsonl"
        lengths = bench_data.make_chat_dataset(train_file, tokenizer, n_examples=n_examples, seed=args.seed,
                                               spread=spread)
        lengths = [min(n, args.max_seq_length) for n in lengths]
        tokens = sum(lengths) * epochs
        pad_random = bench_data.padding_share(lengths, bench_data.random_batches(len(lengths), args.batch_size,
                                                                                  args.seed))
        from gpu_runner.train.data import LengthGroupedBatchSampler

        grouped = LengthGroupedBatchSampler(lengths, args.batch_size, seed=args.seed).batches(0)
        pad_grouped = bench_data.padding_share(lengths, grouped)
        print(f"# data: {n_examples} examples, {sum(lengths):,} tokens (min {min(lengths)}, median "
              f"{statistics.median(lengths):.0f}, max {max(lengths)}); padding share of batches of "
              f"{args.batch_size}: random {pad_random:.1%}, length-grouped {pad_grouped:.1%} "
              f"(batching ceiling {(1 - pad_grouped) / (1 - pad_random):.2f}x)", flush=True)

        setup = Setup(model_dir=model_dir, train_file=train_file, epochs=epochs, batch_size=args.batch_size,
                      max_seq_length=args.max_seq_length, seed=args.seed)
        runs: dict[str, list[ArmResult]] = {name: [] for name in arms}
        for repeat in range(repeats):
            # Alternate the order so that neither trainer always runs first (or always meets the same load).
            for name in arms if repeat % 2 == 0 else reversed(arms):
                arm_dir = work / name / f"run{repeat + 1}"
                command, events = arm_command(name, setup, arm_dir, baseline_dtype=baseline_dtype)
                print(f"# {name} (run {repeat + 1}/{repeats}): {' '.join(command[1:4])} ...", flush=True)
                result = run_arm(name, command, events, arm_dir / "log.txt", env, watch_gpu=device == "cuda",
                                 timeout_s=args.timeout)
                result.repeat = repeat + 1
                runs[name].append(result)
                status = "ok" if result.ok else f"FAILED: {result.error}"
                print(f"#   {status}; wall {result.wall_s:.0f}s, training {_fmt(result.train_s)}s"
                      + (f" = {tokens / result.train_s:,.0f} tokens/s" if result.ok and result.train_s else "")
                      + f"; other processes kept {_fmt(result.other_cores)} cores busy", flush=True)
                if not result.ok and result.log is not None:
                    tail = result.log.read_text(encoding="utf-8", errors="replace")[-2500:]
                    print("#   log tail:\n" + "\n".join("#   | " + line for line in tail.splitlines()), flush=True)
        # Each arm's fastest run: on a shared machine the slower runs mostly measure the neighbours.
        results = {name: min(arm_runs, key=lambda r: r.train_s if r.ok and r.train_s else float("inf"))
                   for name, arm_runs in runs.items()}

        footprint = run_json_child([str(BENCH / "_bench_data.py"), "footprint", str(model_dir), "--device", device],
                                   env, timeout_s=900)
        weight_ratio = footprint["nf4"] / footprint["bf16"]

        per_token_flops = flops_per_token(model, lengths)
        rows: list[tuple[str, list[str]]] = []
        figures: dict[str, dict[str, Any]] = {}
        for name, r in results.items():
            tps = tokens / r.train_s if r.ok and r.train_s else None
            steady = r.steady_tokens / r.steady_s if r.steady_tokens and r.steady_s else None
            per_cpu = tokens / r.cpu_train_s if r.ok and r.cpu_train_s else None
            # MFU from the steady rate: 30 steps are too few to let warm-up and output writing average out.
            mfu = (steady or tps) * per_token_flops / (args.peak_tflops * 1e12) if tps and device == "cuda" else None
            figures[name] = {"tokens_per_s": tps, "steady_tokens_per_s": steady, "tokens_per_cpu_s": per_cpu,
                             "mfu": mfu}
        def batching(name: str, result: ArmResult) -> str:
            if name == "plain_trl":
                return "random, padded"
            if name == "gpu_runner_packed":
                return "packed, padding-free"
            flash = (result.attention or "").startswith("flash")
            return "length-grouped" + (", padding-free" if flash else ", padded")

        rows.append(("batching", [batching(n, r) for n, r in results.items()]))
        rows.append(("attention", [r.attention or "sdpa (default)" for r in results.values()]))
        rows.append(("compute dtype", [r.compute_dtype or "-" for r in results.values()]))
        rows.append(("exit code", [_fmt(r.exit_code) for r in results.values()]))
        rows.append(("steps", [_fmt(r.steps) for r in results.values()]))
        rows.append(("real tokens (counted here)", [_fmt(tokens) for _ in results]))
        rows.append(("tokens the trainer counted", [_fmt(r.reported_tokens) for r in results.values()]))
        rows.append(("loss-bearing tokens", [_fmt(r.loss_tokens) if r.loss_tokens else "all" if n == "plain_trl"
                                             else "-" for n, r in results.items()]))
        rows.append(("training time (s)", [_fmt(r.train_s) for r in results.values()]))
        rows.append(("tokens/s (training)", [_fmt(figures[n]["tokens_per_s"]) for n in results]))
        rows.append(("tokens/s after step 1", [_fmt(figures[n]["steady_tokens_per_s"]) for n in results]))
        rows.append(("tokens per CPU-second", [_fmt(figures[n]["tokens_per_cpu_s"]) for n in results]))
        rows.append(("process wall time (s)", [_fmt(r.wall_s) for r in results.values()]))
        rows.append(("RSS when training starts (MB)", [_fmt(r.rss_at_loaded_mb, 0) for r in results.values()]))
        rows.append(("peak RSS (MB)", [_fmt(r.peak_rss_mb, 0) for r in results.values()]))
        if device == "cuda":
            rows.append(("peak GPU allocated (MB)", [_fmt(r.peak_gpu_allocated_mb, 0) for r in results.values()]))
            rows.append(("peak GPU used, nvidia-smi (MB)", [_fmt(r.peak_gpu_used_mb, 0) for r in results.values()]))
            rows.append((f"MFU (of {args.peak_tflops:g} TFLOP/s)",
                         [f"{figures[n]['mfu']:.1%}" if figures[n]["mfu"] else "-" for n in results]))
        rows.append(("run shown (fastest of)", [f"{r.repeat} ({len(runs[n])})" for n, r in results.items()]))
        rows.append(("cores busy with other work", [_fmt(r.other_cores) for r in results.values()]))
        rows.append(("load average (start, end)", [f"{r.load_average[0]:.1f}, {r.load_average[1]:.1f}"
                                                   for r in results.values()]))
        width = max(len(label) for label, _ in rows) + 2
        col = max(18, *(len(c) + 2 for _, cells in rows for c in cells))
        print()
        print("".ljust(width) + "".join(n.rjust(col) for n in results))
        for label, cells in rows:
            print(label.ljust(width) + "".join(c.rjust(col) for c in cells))
        print()
        print(f"base weights: NF4 {footprint['nf4'] / MB:.1f} MB vs bf16 {footprint['bf16'] / MB:.1f} MB "
              f"= {weight_ratio:.2f}x")

        value = figures.get("gpu_runner", {}).get("tokens_per_s")
        baseline = figures.get("plain_trl", {}).get("tokens_per_s")
        ratio = _ratio(value, baseline)
        rss = {n: round(r.peak_rss_mb, 1) if r.peak_rss_mb else None for n, r in results.items()}
        if ratio is not None:
            memory_ok = (rss.get("gpu_runner") or 0) <= (rss.get("plain_trl") or 0)
            print(f"gpu_runner / plain TRL: {ratio:.2f}x trained tokens/s (target >= {TARGET_RATIO}x), "
                  f"{_ratio(figures['gpu_runner']['tokens_per_cpu_s'], figures['plain_trl']['tokens_per_cpu_s'])}x "
                  f"per CPU-second; peak RSS {rss['gpu_runner']} vs {rss['plain_trl']} MB "
                  f"({'equal or lower' if memory_ok else 'higher'})")
        summary: dict[str, Any] = {
            "name": "train_throughput",
            "value": round(value, 1) if value else None,
            "unit": "tokens/s",
            "baseline": round(baseline, 1) if baseline else None,
            "ratio": ratio,
            "target_ratio": TARGET_RATIO,
            "peak_rss_mb": rss,
            "wall_s": {n: round(r.wall_s, 1) for n, r in results.items()},
            "train_s": {n: round(r.train_s, 1) if r.train_s else None for n, r in results.items()},
            "tokens_per_s": {n: round(f["tokens_per_s"], 1) if f["tokens_per_s"] else None for n, f in figures.items()},
            "steady_tokens_per_s": {n: round(f["steady_tokens_per_s"], 1) if f["steady_tokens_per_s"] else None
                                    for n, f in figures.items()},
            "tokens_per_cpu_s": {n: round(f["tokens_per_cpu_s"], 1) if f["tokens_per_cpu_s"] else None
                                 for n, f in figures.items()},
            "ratio_per_cpu_s": _ratio(figures.get("gpu_runner", {}).get("tokens_per_cpu_s"),
                                      figures.get("plain_trl", {}).get("tokens_per_cpu_s")),
            "nf4_vs_bf16_weight_bytes": round(weight_ratio, 3),
            "weight_bytes": footprint,
            "tokens": tokens,
            "examples": n_examples,
            "epochs": epochs,
            "batch_size": args.batch_size,
            "padding_share": {"random": round(pad_random, 3), "length_grouped": round(pad_grouped, 3)},
            "device": device,
            "model_parameters": model["parameters"],
            "baseline_compute_dtype": baseline_dtype,
            "runs": {n: [{"tokens_per_s": round(tokens / r.train_s, 1) if r.ok and r.train_s else None,
                          "peak_rss_mb": round(r.peak_rss_mb, 1) if r.peak_rss_mb else None,
                          "other_cores": round(r.other_cores, 2) if r.other_cores is not None else None}
                         for r in arm_runs] for n, arm_runs in runs.items()},
            "errors": {f"{r.name} run {r.repeat}": r.error for arm_runs in runs.values() for r in arm_runs
                       if r.error},
            "total_s": round(time.monotonic() - started, 1),
        }
        if device == "cuda":
            summary["peak_gpu_mb"] = {
                n: {"allocated": round(r.peak_gpu_allocated_mb) if r.peak_gpu_allocated_mb is not None else None,
                    "used": round(r.peak_gpu_used_mb) if r.peak_gpu_used_mb is not None else None}
                for n, r in results.items()}
            summary["mfu"] = {n: round(f["mfu"], 4) if f["mfu"] else None for n, f in figures.items()}
            summary["flops_per_token"] = round(per_token_flops)
        all_ok = all(r.ok for arm_runs in runs.values() for r in arm_runs)
        print(json.dumps(summary))
    except Exception as exc:
        # The last stdout line stays one JSON object even when the benchmark itself breaks.
        print(json.dumps({"name": "train_throughput", "value": None, "unit": "tokens/s",
                          "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        raise
    finally:
        if args.workdir is None and all_ok:
            shutil.rmtree(work, ignore_errors=True)
        elif not all_ok:
            print(f"# kept {work} for inspection", file=sys.stderr)
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
