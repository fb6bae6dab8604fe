"""What SFT and DPO runs share: device and precision choice, machine checks, loading the base model
(NF4 / int8 / 16-bit), LoRA settings, trainer arguments, the run callback (checkpoint and evaluation
schedule, stop at a step boundary, events, progress bar), memory figures and out-of-memory advice.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback

from gpu_runner.events import EventWriter
from gpu_runner.spec import JobSpec, ResolvedHyperparameters, SpecError
from gpu_runner.train.signals import StopSwitch

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import (
        PreTrainedModel,
        PreTrainedTokenizerBase,
        TrainerControl,
        TrainerState,
        TrainingArguments,
    )

LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "safetensors",
    "tokenizers",
)


class ModelLoadError(Exception):
    """The base model or its tokenizer could not be loaded."""


# --- environment ---------------------------------------------------------------------------------------


def library_versions() -> dict[str, str | None]:
    """Installed versions of the training stack (recorded in tailor_adapter.json)."""
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def world() -> tuple[int, int, int]:
    """(rank, local rank, world size) as torchrun/accelerate set them; (0, 0, 1) for a single process."""
    return (
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("LOCAL_RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
    )


STRATEGY_ENV = "TAILOR_DISTRIBUTED_STRATEGY"
LAUNCH_PLAN_ENV = "TAILOR_LAUNCH_PLAN"


def distributed_strategy() -> str:
    """How the ranks share the work: `single` (one process), `ddp` (each rank a full copy; the default
    under torchrun) or `fsdp` (the model sharded over the ranks), from `TAILOR_DISTRIBUTED_STRATEGY`.
    Raises ValueError for another value, or for fsdp in one process."""
    value = os.environ.get(STRATEGY_ENV, "").strip().lower()
    several = world()[2] > 1
    if not value:
        return "ddp" if several else "single"
    if value not in ("ddp", "fsdp"):
        raise ValueError(f'{STRATEGY_ENV}={value!r}: expected "ddp" or "fsdp"')
    if not several:
        return "single"  # one process: nothing to distribute, whatever the launcher planned
    return value


def launch_record() -> dict[str, Any]:
    """The strategy and world size of this run, with the launcher's plan when it passed one
    (`TAILOR_LAUNCH_PLAN`, JSON: the memory estimates behind the choice), for the event stream."""
    import json

    record: dict[str, Any] = {"strategy": distributed_strategy(), "world_size": world()[2]}
    raw = os.environ.get(LAUNCH_PLAN_ENV)
    if raw:
        try:
            plan = json.loads(raw)
        except ValueError:
            plan = None
        if isinstance(plan, dict):
            record["plan"] = plan
    return record


def pick_device() -> torch.device:
    """The GPU of this rank when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", world()[1] % torch.cuda.device_count())
    return torch.device("cpu")


def pick_compute_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on GPUs that support it, float16 on older GPUs, float32 on CPU (where bitsandbytes'
    4-bit kernels run fastest in float32)."""
    if requested == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[requested]


def preflight(spec: JobSpec, device: torch.device) -> None:
    """Checks that need the machine but not the model: fail with a field-level `SpecError` before loading."""
    hp = spec.hyperparameters
    issues: list[tuple[str, str]] = []
    if hp.quantization != "none" and importlib.util.find_spec("bitsandbytes") is None:
        issues.append(
            (
                "hyperparameters.quantization",
                f"quantization {hp.quantization} needs bitsandbytes, which is not installed; "
                'install it or set quantization to "none"',
            )
        )
    if hp.compute_dtype == "float16" and device.type == "cpu":
        issues.append(
            (
                "hyperparameters.compute_dtype",
                'float16 training is not supported on the CPU; use "float32", "bfloat16" or "auto"',
            )
        )
    if hp.compute_dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        issues.append(
            (
                "hyperparameters.compute_dtype",
                f'{torch.cuda.get_device_name(device)} does not support bfloat16; use "float16" or "auto"',
            )
        )
    if hp.quantization == "int8" and distributed_strategy() == "fsdp":
        issues.append(
            (
                "hyperparameters.quantization",
                'int8 weights cannot be sharded over GPUs (FSDP); use "nf4" or "none" for a model that '
                "does not fit one GPU",
            )
        )
    if hp.use_dora and hp.quantization != "none":
        peft_version = importlib.metadata.version("peft")
        if tuple(int(x) for x in peft_version.split(".")[:2]) < (0, 10):
            issues.append(
                (
                    "hyperparameters.use_dora",
                    f"DoRA on a quantized base needs peft >= 0.10 (installed: {peft_version})",
                )
            )
    if issues:
        raise SpecError(issues)


def quiet_libraries() -> None:
    """Progress bars of datasets/transformers only on a terminal; their warnings still reach stderr."""
    if not sys.stderr.isatty():
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()


def attention_implementation(device: torch.device) -> str:
    """FlashAttention 2 on CUDA when installed (padding-free batches then pay off), otherwise SDPA."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


# --- model ----------------------------------------------------------------------------------------------


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The base model's tokenizer (never remote code). Pads with EOS when the tokenizer has no pad token;
    padded positions are never trained (labels -100)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - any loader failure is reported the same way
        raise ModelLoadError(f"cannot load the tokenizer from {path}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    spec: JobSpec, resolved: ResolvedHyperparameters, device: torch.device, dtype: torch.dtype
) -> PreTrainedModel:
    """Load the base model from safetensors only, quantized as the spec asks (NF4 with double
    quantization for QLoRA, or LLM.int8), onto `device`.

    Sharded (FSDP), an unquantized model loads into host memory and FSDP moves each rank's shard to its
    GPU. A quantized one is quantized on the rank's GPU as without FSDP (bitsandbytes keeps its
    quantization constants outside the parameters, where FSDP would not move them), with its 4-bit weights
    packed in the compute dtype (`bnb_4bit_quant_storage`) so that FSDP shards them like the other weights."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    sharded = distributed_strategy() == "fsdp"
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "trust_remote_code": False,
        "use_safetensors": True,
        "attn_implementation": attention_implementation(device),
        "low_cpu_mem_usage": True,
    }
    if resolved.quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=dtype if sharded else torch.uint8,
        )
    elif resolved.quantization == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    if sharded and resolved.quantization == "none":
        kwargs["device_map"] = {"": "cpu"}
    elif resolved.quantization != "none" or device.type == "cuda":
        kwargs["device_map"] = {"": device.index if device.type == "cuda" else "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(spec.base_model.path), **kwargs)
    except (torch.cuda.OutOfMemoryError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the base model from {spec.base_model.path}: {exc}") from exc
    model.config.use_cache = False
    keep_standard_4bit_layout(model)
    return model


def keep_standard_4bit_layout(model: Any) -> None:
    """bitsandbytes repacks a 4-bit weight in place for its AVX512-BF16 CPU kernel on the first forward
    pass without gradients (evaluation, generation). The packed layout needs out_features divisible by
    32 and would then be shared with training steps; training keeps the standard layout instead."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def linear_module_names(model: PreTrainedModel) -> list[str]:
    """Short names (`q_proj`, `down_proj`, ...) of the model's linear layers, quantized or not, without the
    output head."""
    head = model.get_output_embeddings()
    names = set()
    for name, module in model.named_modules():
        if module is head:
            continue
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            names.add(name.split(".")[-1])
    return sorted(names)


def lora_config(resolved: ResolvedHyperparameters, model: PreTrainedModel) -> LoraConfig:
    """PEFT LoRA settings from the resolved hyperparameters. `all-linear` becomes the list of short module
    names (what vLLM and Ollama expect in `target_modules`, where PEFT would write full paths); explicit
    names are checked against the model so a typo fails here with the names that exist."""
    from peft import LoraConfig

    present = linear_module_names(model)
    targets = resolved.lora_trainable_modules
    if targets == "all-linear":
        targets = present
    else:
        missing = [t for t in targets if t.split(".")[-1] not in present]
        if missing:
            raise SpecError(
                [
                    (
                        "hyperparameters.lora_trainable_modules",
                        f"{missing} not found in the model; its linear layers are {present}",
                    )
                ]
            )
    return LoraConfig(
        r=resolved.lora_r,
        lora_alpha=resolved.lora_alpha,
        lora_dropout=resolved.lora_dropout,
        target_modules=list(targets),
        use_rslora=resolved.use_rslora,
        use_dora=resolved.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def finish_peft_setup(model: Any) -> None:
    """After the trainer wrapped the base in PEFT: keep trainable weights in float32. TRL casts them to
    bfloat16 on quantized bases, where Adam's small updates round away; autocast still computes in the
    compute dtype."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def save_adapter(
    model: Any,
    directory: Path,
    *,
    base_model_name: str,
    base_model_revision: str | None,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """`adapter_config.json` + `adapter_model.safetensors`, naming the canonical base model (never the local
    path) and without PEFT's generated README. `save_embedding_layers=False` also keeps PEFT from looking
    the base model's name up on the Hub. `state_dict`: the weights to save instead of the model's own (a
    sharded model's, gathered whole)."""
    import json

    model.save_pretrained(
        str(directory), safe_serialization=True, save_embedding_layers=False, state_dict=state_dict
    )
    readme = directory / "README.md"
    if readme.exists():
        readme.unlink()
    config_path = directory / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_model_name
    config["revision"] = base_model_revision
    tmp = config_path.with_name(".adapter_config.json.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, config_path)


def parameter_counts(model: Any) -> tuple[int, int]:
    """(all parameters, trainable ones); 4-bit weights count as their unpacked size."""
    total = trainable = 0
    for param in model.parameters():
        n = param.numel()
        if hasattr(param, "quant_state") or type(param).__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if param.requires_grad:
            trainable += n
    return total, trainable


def memory_figures(model: Any, device: torch.device) -> dict[str, int | None]:
    """Bytes: the model's weights, this process's peak resident memory, and the GPU's peak allocation."""
    figures: dict[str, int | None] = {
        "model_bytes": int(model.get_memory_footprint()) if hasattr(model, "get_memory_footprint") else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_gpu_bytes": None,
    }
    if device.type == "cuda":
        figures["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return figures


# --- trainer arguments ---------------------------------------------------------------------------------------


def common_training_arguments(
    spec: JobSpec,
    resolved: ResolvedHyperparameters,
    checkpoint_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """Keyword arguments shared by SFTConfig and DPOConfig. Checkpointing, evaluation and progress are
    driven by `RunCallback`, so the Trainer's own strategies are off."""
    return {
        "output_dir": str(checkpoint_dir),
        "num_train_epochs": resolved.n_epochs,
        "per_device_train_batch_size": resolved.micro_batch_size,
        "per_device_eval_batch_size": resolved.micro_batch_size,
        "gradient_accumulation_steps": resolved.gradient_accumulation_steps,
        "learning_rate": resolved.effective_learning_rate,
        "lr_scheduler_type": resolved.lr_scheduler,
        "warmup_steps": resolved.warmup_steps,
        "max_grad_norm": resolved.max_grad_norm,
        "weight_decay": resolved.weight_decay,
        "seed": spec.seed,
        "data_seed": spec.seed,
        "bf16": dtype == torch.bfloat16,
        "fp16": dtype == torch.float16,
        "use_cpu": device.type == "cpu",
        "activation_checkpointing": resolved.gradient_checkpointing,
        "activation_checkpointing_kwargs": {"use_reentrant": False}
        if resolved.gradient_checkpointing
        else None,
        "logging_strategy": "steps",
        "logging_steps": spec.output.log_every_n_steps,
        "logging_first_step": True,
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
        # Several CPU processes (torchrun) talk over gloo; left to itself accelerate would pick MPI on a
        # torch built with it, which torchrun does not start.
        "ddp_backend": "gloo" if device.type == "cpu" and world()[2] > 1 else None,
        "remove_unused_columns": True,
        "skip_memory_metrics": True,
        "max_length": resolved.max_seq_length,
        "dataset_num_proc": None,
        **fsdp_arguments(resolved),
    }


def fsdp_arguments(resolved: ResolvedHyperparameters) -> dict[str, Any]:
    """Trainer arguments that shard the model over the ranks (FSDP2, one unit per decoder layer, full
    state dicts gathered for the adapter and checkpoints) when the launcher chose `fsdp`; nothing else."""
    if distributed_strategy() != "fsdp":
        return {}
    return {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "reshard_after_forward": True,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "state_dict_type": "FULL_STATE_DICT",
            "cpu_ram_efficient_loading": False,
            # FSDP recomputes activations itself; the Trainer's own checkpointing must then be off.
            "activation_checkpointing": resolved.gradient_checkpointing,
        },
        "activation_checkpointing": False,
        "activation_checkpointing_kwargs": None,
    }


# --- stop signals -------------------------------------------------------------------------------------------


def _agree(values: list[float], device: torch.device) -> list[float]:
    """Element-wise maximum over all ranks (so every rank stops and saves at the same step)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    on = device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=on)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor.tolist()


# --- the run callback: schedule, stop, events, progress -------------------------------------------------------


DPO_METRICS = {
    "rewards/margins": "reward_margin",
    "rewards/accuracies": "reward_accuracy",
    "rewards/chosen": "chosen_reward",
    "rewards/rejected": "rejected_reward",
    "logps/chosen": "chosen_logps",
    "logps/rejected": "rejected_logps",
}


class RunCallback(TrainerCallback):
    """Decides when to checkpoint and evaluate, honours stop requests at step boundaries, and turns the
    Trainer's logs into `metrics` and `eval` events (rank 0 only), with a progress bar on a terminal."""

    def __init__(
        self,
        *,
        resolved: ResolvedHyperparameters,
        spec: JobSpec,
        events: EventWriter,
        stop: StopSwitch,
        device: torch.device,
        is_writer: bool,
        method: str,
    ) -> None:
        self.resolved = resolved
        self.spec = spec
        self.events = events
        self.stop = stop
        self.device = device
        self.is_writer = is_writer
        self.method = method
        self.stopped_at_step: int | None = None
        self.last_train: dict[str, Any] = {}
        self.last_eval: dict[str, Any] = {}
        self._bar: Any = None
        self._last_save_time = time.monotonic()
        self._begin_time = time.monotonic()
        self._begin_step = 0
        self._window_time = time.monotonic()
        self._window_tokens = 0

    # schedule ------------------------------------------------------------------------------------------
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.stop.deferred = True
        self._begin_time = self._window_time = self._last_save_time = time.monotonic()
        self._begin_step = state.global_step
        self._window_tokens = state.num_input_tokens_seen
        if self.is_writer and sys.stderr.isatty():
            from tqdm.auto import tqdm  # type: ignore[import-untyped]

            self._bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                file=sys.stderr,
                unit="step",
                dynamic_ncols=True,
            )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        step = state.global_step
        every_seconds = self.spec.output.checkpoint_every_seconds
        time_due = every_seconds is not None and time.monotonic() - self._last_save_time >= every_seconds
        stop_flag, time_flag = _agree(
            [1.0 if self.stop.requested else 0.0, 1.0 if time_due else 0.0], self.device
        )
        last = step >= state.max_steps
        if step % self.resolved.checkpoint_every_n_steps == 0 or last or time_flag:
            control.should_save = True
        eval_every = self.resolved.eval_every_n_steps
        if eval_every and (step % eval_every == 0 or last):
            control.should_evaluate = True
        if stop_flag:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at_step = step
        if self._bar is not None:
            self._bar.update(step - self._bar.n)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        control.should_save = True  # the checkpoint writer skips a step it has just saved

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._last_save_time = time.monotonic()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # events -------------------------------------------------------------------------------------------
    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        if not self.is_writer or not logs:
            return
        if "loss" in logs:
            self._emit_metrics(state, logs)
        elif "eval_loss" in logs:
            self._emit_eval(state, logs)

    def _emit_metrics(self, state: TrainerState, logs: dict[str, Any]) -> None:
        now = time.monotonic()
        tokens = state.num_input_tokens_seen
        window = now - self._window_time
        tokens_per_second = (tokens - self._window_tokens) / window if window > 0 else None
        self._window_time, self._window_tokens = now, tokens
        done = state.global_step - self._begin_step
        per_step = (now - self._begin_time) / done if done > 0 else None
        eta = per_step * (state.max_steps - state.global_step) if per_step is not None else None
        data: dict[str, Any] = {
            "step": state.global_step,
            "total_steps": state.max_steps,
            "epoch": round(state.epoch or 0.0, 4),
            "train_loss": logs.get("loss"),
            "train_mean_token_accuracy": logs.get("mean_token_accuracy"),
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens_per_second": round(tokens_per_second, 1) if tokens_per_second is not None else None,
            "eta_seconds": round(eta, 1) if eta is not None else None,
            "trained_tokens": tokens,
        }
        if self.method == "dpo":
            data.update({name: logs.get(key) for key, name in DPO_METRICS.items()})
        self.last_train = data
        loss = data["train_loss"]
        text = f"{loss:.4f}" if isinstance(loss, float) and math.isfinite(loss) else str(loss)
        self.events.emit(
            "metrics", f"Step {state.global_step}/{state.max_steps}: training loss={text}", **data
        )

    def _emit_eval(self, state: TrainerState, logs: dict[str, Any]) -> None:
        data: dict[str, Any] = {
            "step": state.global_step,
            "total_steps": state.max_steps,
            "valid_loss": logs.get("eval_loss"),
            "valid_mean_token_accuracy": logs.get("eval_mean_token_accuracy"),
        }
        if self.method == "dpo":
            data.update({f"valid_{name}": logs.get(f"eval_{key}") for key, name in DPO_METRICS.items()})
        self.last_eval = data
        loss = data["valid_loss"]
        text = f"{loss:.4f}" if isinstance(loss, float) and math.isfinite(loss) else str(loss)
        self.events.emit(
            "eval", f"Step {state.global_step}/{state.max_steps}: validation loss={text}", **data
        )


# --- out of memory --------------------------------------------------------------------------------------------


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, host MemoryError, or an allocator failure reported as RuntimeError."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text
    )


def memory_advice(resolved: ResolvedHyperparameters, longest_row: int | None) -> list[dict[str, Any]]:
    """Spec changes that lower peak memory, most effective first, each with the value to try."""
    advice: list[dict[str, Any]] = []
    if resolved.micro_batch_size > 1:
        steps = resolved.gradient_accumulation_steps * 2
        advice.append(
            {
                "param": "hyperparameters.gradient_accumulation_steps",
                "value": steps,
                "reason": f"halves the micro-batch ({resolved.micro_batch_size} -> "
                f"{resolved.micro_batch_size // 2} examples) at the same batch_size",
            }
        )
    if not resolved.gradient_checkpointing:
        advice.append(
            {
                "param": "hyperparameters.gradient_checkpointing",
                "value": True,
                "reason": "recomputes activations in the backward pass instead of keeping them",
            }
        )
    width = min(longest_row or resolved.max_seq_length, resolved.max_seq_length)
    if width > 256:
        advice.append(
            {
                "param": "hyperparameters.max_seq_length",
                "value": max(256, width // 2),
                "reason": f"the longest example uses {width} tokens; longer ones are truncated",
            }
        )
    if resolved.quantization != "nf4":
        advice.append(
            {
                "param": "hyperparameters.quantization",
                "value": "nf4",
                "reason": "4-bit base weights take about a quarter of 16-bit ones",
            }
        )
    if resolved.lora_r > 8:
        advice.append(
            {
                "param": "hyperparameters.lora_r",
                "value": resolved.lora_r // 2,
                "reason": "fewer adapter weights and optimizer state",
            }
        )
    if resolved.micro_batch_size == 1 and resolved.batch_size > 1:
        advice.append(
            {
                "param": "hyperparameters.batch_size",
                "value": max(1, resolved.batch_size // 2),
                "reason": "the micro-batch is already one example",
            }
        )
    return advice
