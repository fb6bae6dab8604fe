"""Peak GPU memory of a LoRA/QLoRA training job, estimated from the model's shape and the job's
hyperparameters before a GPU is chosen, and the choice of the smallest configured GPU class that holds it.

The estimate is arithmetic only (no torch import), so the control plane can size a job when it is
created. It models what `gpu_runner.train` actually runs: a base model loaded with bitsandbytes
(NF4 with double quantization, LLM.int8, or unquantized in the compute dtype), PEFT LoRA adapters kept
in float32, AdamW, TRL's trainers with per-decoder-layer gradient checkpointing, SDPA attention and
TRL's fused LM head (log-probabilities computed in tiles, never the full logits tensor). Sizes are
bytes; `B` below is bytes per element, `cb` the bytes of the compute dtype (bfloat16/float16: 2,
float32: 4; `"auto"` is taken as bfloat16, what the runner picks on a current GPU).

Notation: P base parameters, h hidden size, L decoder layers, V vocabulary, i MLP intermediate size,
kv key/value width (num_key_value_heads × head_dim; h without grouped-query attention), r LoRA rank,
b micro-batch size, s max_seq_length, T = b × s tokens per micro-batch (2 × b × s for DPO, whose
micro-batch concatenates the chosen and the rejected sequence of each pair).

base_weights
    E = V × h embedding parameters (2 × V × h when the LM head is not tied to the embeddings) stay in
    the compute dtype: bitsandbytes quantizes `nn.Linear` layers only and skips `lm_head`.
    The other P − E parameters take, per parameter:
    nf4  0.5159 B: 4 bits + one 8-bit block constant per 64 weights (0.125 bit) + one float32
         second-level constant per 256 blocks (0.002 bit) — 4.127 bits, QLoRA's double quantization;
    int8 1 B (+ one float32 scale per output row, negligible);
    none cb.
    The QLoRA paper's 65B model comes to ≈ 34.5 GB this way.
i (when not given)
    From P for a Llama-style block (attention 2·h² + 2·h·kv, gated MLP 3·h·i per layer):
    i = ((P − E) / L − 2·h² − 2·h·kv) / (3·h). Gives 11 009 for Llama-7B (true: 11 008).
lora_weights
    Each adapted linear (in_features → out_features) adds r × (in + out) parameters per layer, × L.
    `"all-linear"` on a Llama-style block adapts q, k, v, o, gate, up and down projections. Adapters
    are float32 (4 B): the runner upcasts trainable weights, so they are also the optimizer's master
    copy (no second fp32 copy).
gradients
    One float32 gradient per LoRA parameter: 4 B.
optimizer
    AdamW's first and second moments in float32: 8 B per LoRA parameter.
activations
    Tensors a decoder layer saves for the backward pass, per token:
      a = cb × (6·h + 2·kv + 4·i) + 8·h + d
    (6·h: input and output of both RMSNorms, rotated q, the attention output; 2·kv: rotated k and v;
    4·i: gate, SiLU(gate), up and their product; 8·h: the float32 upcast inside both RMSNorms), where
    d = (cb + 1) × (sum of in_features of the adapted linears) is LoRA's dropout output and mask per
    adapted linear (d = 0 when lora_dropout = 0).
    Without checkpointing: (L + 1) × T × a — every layer's saved tensors plus one layer's gradients
    during its backward.
    With checkpointing: L × T × h × cb (each layer's input) + 2 × T × a (one layer recomputed and its
    gradients).
    Both add T × h × (2·cb + 4) for the embedding output and the final norm, and, for a quantized base,
    one dequantized weight of the largest linear (max(h·i, h·h) × cb) that bitsandbytes materializes
    per matmul. Attention is SDPA/flash (no s² term).
logits
    TRL's fused LM head computes log-probabilities in tiles of at most 4096 tokens × 32 768 vocabulary
    entries: 2 tiles × min(T, 4096) × min(V, 32 768) × cb (forward buffer and the backward's
    recomputed tile), plus T × h × (cb + 4) for the LM head input it keeps and its float32 gradient.
    `full_logits=True` models trainers that materialize the logits instead (TRL before the fused head):
    V × T × (cb + 4 + 4) — the logits, their float32 upcast for the loss, and its gradient.
dpo_reference
    DPO with a PEFT model takes the base with adapters disabled as the reference: no second copy of
    the weights. Its forward runs under no_grad while the policy's graph is held, so its transient
    working set adds: one layer's tensors T × cb × (5·h + 2·kv + 3·i), the LM head input T × h × cb
    and one logits tile (or the full float32 logits with `full_logits`). 0 for supervised jobs.
overhead
    CUDA_CONTEXT_BYTES (1 GiB: CUDA context, cuBLAS workspaces, the kernels of torch and
    bitsandbytes) + ALLOCATOR_SLACK (5 %) of all the above for the caching allocator's fragmentation.

GPU classes and their compact configuration format are at the end of the module.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

Quantization = Literal["nf4", "int8", "none"]
ComputeDtype = Literal["auto", "bfloat16", "float16", "float32"]
Method = Literal["supervised", "dpo"]

GIB = 1024**3

# 4 bits + an 8-bit absmax per 64-weight block + a float32 constant per 256 blocks (QLoRA, section 3).
NF4_BYTES_PER_PARAMETER = (4 + 8 / 64 + 32 / (64 * 256)) / 8
BYTES_PER_PARAMETER: dict[str, float] = {"nf4": NF4_BYTES_PER_PARAMETER, "int8": 1.0}
COMPUTE_DTYPE_BYTES: dict[str, int] = {"auto": 2, "bfloat16": 2, "float16": 2, "float32": 4}
LORA_BYTES_PER_PARAMETER = 4  # float32 adapters
GRADIENT_BYTES_PER_PARAMETER = 4
ADAMW_BYTES_PER_PARAMETER = 8  # exp_avg + exp_avg_sq, float32
CUDA_CONTEXT_BYTES = 1 * GIB
ALLOCATOR_SLACK = 0.05
# TRL's fused LM head (trl.kernels.chunked_logprob): TOKEN_CHUNK_SIZE × _CHUNKED_LOGPROB_CHUNK_SIZE tiles.
LOGITS_TILE_TOKENS = 4096
LOGITS_TILE_VOCAB = 32768
DEFAULT_SAFETY_MARGIN = 0.10


# Linear layers of a Llama-style decoder block (Llama, Mistral, Qwen2/3, Gemma, Phi-3 fused names),
# as (in_features, out_features) in terms of h, kv and i.
def decoder_linear_shapes(
    *, hidden_size: int, intermediate_size: int, kv_hidden_size: int | None = None
) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each linear layer of one Llama-style decoder block, by module name,
    including the fused names some architectures use (`qkv_proj`, `gate_up_proj`)."""
    h, i = hidden_size, intermediate_size
    kv = kv_hidden_size or h
    return {
        "q_proj": (h, h),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (h, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
        "qkv_proj": (h, h + 2 * kv),
        "gate_up_proj": (h, 2 * i),
    }


ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def adapted_linear_shapes(
    modules: str | Sequence[str], shapes: Mapping[str, tuple[int, int]]
) -> list[tuple[int, int]]:
    """Shapes of the linears that LoRA adapts in one decoder layer, from the spec's
    `lora_trainable_modules` (`"all-linear"` or names such as `["q_proj", "v_proj"]`; dotted paths are
    matched by their last part). Raises ValueError for a name this estimator does not know."""
    if isinstance(modules, str):
        if modules != "all-linear":
            raise ValueError(f'lora target modules must be "all-linear" or a list of names, got {modules!r}')
        return [shapes[name] for name in ALL_LINEAR]
    picked = []
    for name in modules:
        short = name.split(".")[-1]
        if short not in shapes:
            raise ValueError(
                f"cannot size LoRA target module {name!r}: known modules are {', '.join(shapes)}; "
                "pass lora_target_shapes for other architectures"
            )
        picked.append(shapes[short])
    return picked


def architecture_from_hf_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The shape keywords of `estimate_training_memory` read from a Hugging Face `config.json` mapping
    (hidden_size, num_layers, vocab_size, intermediate_size, kv_hidden_size, tie_word_embeddings).
    The parameter count is not in config.json and must come from the weights or the model card."""
    text = config.get("text_config") or config
    try:
        hidden = int(text["hidden_size"])
        layers = int(text["num_hidden_layers"])
        vocab = int(text["vocab_size"])
    except KeyError as exc:
        raise ValueError(f"config.json has no {exc.args[0]!r}; cannot size the model") from None
    heads = int(text.get("num_attention_heads") or 0)
    kv_heads = int(text.get("num_key_value_heads") or heads or 0)
    head_dim = int(text.get("head_dim") or (hidden // heads if heads else 0))
    return {
        "hidden_size": hidden,
        "num_layers": layers,
        "vocab_size": vocab,
        "intermediate_size": int(text["intermediate_size"]) if text.get("intermediate_size") else None,
        "kv_hidden_size": kv_heads * head_dim if kv_heads and head_dim else None,
        "tie_word_embeddings": bool(
            config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
        ),
    }


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak GPU memory of one training process, in bytes, by component. `details` says for
    each component how it was computed."""

    base_weights: int
    lora_weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    dpo_reference: int
    overhead: int
    lora_parameters: int
    details: dict[str, str] = field(default_factory=dict, compare=False)
    # Not components: the share of base_weights held by the embeddings and LM head, and the decoder layer
    # count, which size the per-GPU footprint when the job is sharded (`sharded_training_memory`).
    embedding_bytes: int = 0
    num_layers: int = 1
    quantization: str = "none"

    COMPONENTS: ClassVar[tuple[str, ...]] = (
        "base_weights",
        "lora_weights",
        "gradients",
        "optimizer",
        "activations",
        "logits",
        "dpo_reference",
        "overhead",
    )

    @property
    def total(self) -> int:
        """Sum of the components, bytes."""
        return sum(getattr(self, name) for name in self.COMPONENTS)

    @property
    def total_gib(self) -> float:
        """Total in GiB (2**30 bytes)."""
        return self.total / GIB

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every component in bytes, `total`, `total_gib` and `lora_parameters`."""
        data = asdict(self)
        data.pop("details")
        data["total"] = self.total
        data["total_gib"] = round(self.total_gib, 3)
        return data

    def explain(self) -> str:
        """A few lines for people: the total, then each component in GiB with how it was computed."""
        lines = [f"estimated peak GPU memory {self.total_gib:.2f} GiB ({self.total:,} bytes):"]
        for name in self.COMPONENTS:
            value = getattr(self, name)
            how = self.details.get(name, "")
            lines.append(
                f"  {name.replace('_', ' '):<14} {value / GIB:8.2f} GiB" + (f"  {how}" if how else "")
            )
        return "\n".join(lines)


def _derived_intermediate_size(*, quantizable: int, num_layers: int, hidden_size: int, kv: int) -> int:
    per_layer = quantizable / num_layers
    i = (per_layer - 2 * hidden_size * hidden_size - 2 * hidden_size * kv) / (3 * hidden_size)
    if i <= 0:
        raise ValueError(
            f"parameters={quantizable:,} (without embeddings) is too small for {num_layers} layers "
            f"of hidden_size {hidden_size}; pass intermediate_size"
        )
    return round(i)


def _positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def estimate_training_memory(
    *,
    parameters: int,
    hidden_size: int,
    num_layers: int,
    vocab_size: int,
    quantization: Quantization,
    compute_dtype: ComputeDtype,
    lora_r: int,
    max_seq_length: int,
    batch_size: int,
    gradient_checkpointing: bool,
    method: Method = "supervised",
    intermediate_size: int | None = None,
    kv_hidden_size: int | None = None,
    tie_word_embeddings: bool = False,
    lora_trainable_modules: str | Sequence[str] = "all-linear",
    lora_target_shapes: Sequence[tuple[int, int]] | None = None,
    lora_dropout: float = 0.05,
    full_logits: bool = False,
) -> MemoryEstimate:
    """Estimate the peak GPU memory of training LoRA adapters on a base model (formulas in the module
    docstring).

    `parameters` counts the whole base (embeddings included); `batch_size` is the micro-batch one
    forward pass holds (for DPO, in preference pairs). `lora_target_shapes`, the (in_features,
    out_features) of each adapted linear of one layer, overrides `lora_trainable_modules` for
    architectures that are not Llama-style. Raises ValueError for impossible inputs.
    """
    _positive(
        parameters=parameters,
        hidden_size=hidden_size,
        num_layers=num_layers,
        vocab_size=vocab_size,
        lora_r=lora_r,
        max_seq_length=max_seq_length,
        batch_size=batch_size,
    )
    if quantization not in ("nf4", "int8", "none"):
        raise ValueError(f'quantization must be "nf4", "int8" or "none", got {quantization!r}')
    if compute_dtype not in COMPUTE_DTYPE_BYTES:
        raise ValueError(
            f"compute_dtype must be one of {', '.join(COMPUTE_DTYPE_BYTES)}, got {compute_dtype!r}"
        )
    if method not in ("supervised", "dpo"):
        raise ValueError(f'method must be "supervised" or "dpo", got {method!r}')

    cb = COMPUTE_DTYPE_BYTES[compute_dtype]
    h, L, V = hidden_size, num_layers, vocab_size
    kv = kv_hidden_size or h
    embedding_params = V * h * (1 if tie_word_embeddings else 2)
    if embedding_params >= parameters:
        raise ValueError(
            f"parameters={parameters:,} is not more than the embeddings alone "
            f"({V:,} × {h:,}{'' if tie_word_embeddings else ' × 2'} = {embedding_params:,})"
        )
    quantizable = parameters - embedding_params
    i = intermediate_size or _derived_intermediate_size(
        quantizable=quantizable, num_layers=L, hidden_size=h, kv=kv
    )
    details: dict[str, str] = {}

    # Base weights.
    per_param = BYTES_PER_PARAMETER.get(quantization, cb)
    base_weights = math.ceil(quantizable * per_param) + embedding_params * cb
    details["base_weights"] = (
        f"{quantizable / 1e9:.2f} B params × {per_param:.4g} B ({quantization}) + "
        f"{embedding_params / 1e6:.0f} M embedding params × {cb} B"
    )

    # LoRA parameters and their training state.
    if lora_target_shapes is None:
        shapes = decoder_linear_shapes(hidden_size=h, intermediate_size=i, kv_hidden_size=kv)
        targets = adapted_linear_shapes(lora_trainable_modules, shapes)
    else:
        targets = [(int(a), int(b)) for a, b in lora_target_shapes]
        if not targets:
            raise ValueError("lora_target_shapes is empty: LoRA must adapt at least one linear layer")
    lora_parameters = L * sum(lora_r * (fan_in + fan_out) for fan_in, fan_out in targets)
    lora_weights = lora_parameters * LORA_BYTES_PER_PARAMETER
    gradients = lora_parameters * GRADIENT_BYTES_PER_PARAMETER
    optimizer = lora_parameters * ADAMW_BYTES_PER_PARAMETER
    details["lora_weights"] = (
        f"{lora_parameters / 1e6:.1f} M params (r={lora_r}, {len(targets)} linears × "
        f"{L} layers) × {LORA_BYTES_PER_PARAMETER} B float32"
    )
    details["gradients"] = f"{lora_parameters / 1e6:.1f} M × {GRADIENT_BYTES_PER_PARAMETER} B float32"
    details["optimizer"] = f"AdamW m + v: {lora_parameters / 1e6:.1f} M × {ADAMW_BYTES_PER_PARAMETER} B"

    # Activations.
    sequences = batch_size * (2 if method == "dpo" else 1)
    tokens = sequences * max_seq_length
    dropout_bytes = (cb + 1) * sum(fan_in for fan_in, _ in targets) if lora_dropout > 0 else 0
    per_token_layer = cb * (6 * h + 2 * kv + 4 * i) + 8 * h + dropout_bytes
    if gradient_checkpointing:
        saved = L * tokens * h * cb + 2 * tokens * per_token_layer
        how = f"checkpointed: {L} layer inputs + 2 × one layer ({per_token_layer:,} B/token)"
    else:
        saved = (L + 1) * tokens * per_token_layer
        how = f"{L} + 1 layers × {per_token_layer:,} B/token"
    dequantized = max(h * i, h * h) * cb if quantization != "none" else 0
    activations = saved + tokens * h * (2 * cb + 4) + dequantized
    details["activations"] = (
        f"{tokens:,} tokens ({sequences} × {max_seq_length}"
        f"{', chosen + rejected' if method == 'dpo' else ''}), {how}"
    )

    # Logits.
    tile = min(tokens, LOGITS_TILE_TOKENS) * min(V, LOGITS_TILE_VOCAB) * cb
    if full_logits:
        logits = V * tokens * (cb + 4 + 4)
        details["logits"] = f"full: {V:,} vocab × {tokens:,} tokens × {cb + 8} B"
    else:
        logits = 2 * tile + tokens * h * (cb + 4)
        details["logits"] = (
            f"fused LM head: 2 tiles of {min(tokens, LOGITS_TILE_TOKENS)} × {min(V, LOGITS_TILE_VOCAB)}"
        )

    # DPO reference: same weights with adapters disabled, a no_grad forward while the policy graph is held.
    if method == "dpo":
        ref_logits = V * tokens * 4 if full_logits else tile
        dpo_reference = tokens * cb * (5 * h + 2 * kv + 3 * i) + tokens * h * cb + ref_logits
        details["dpo_reference"] = "base with adapters disabled (no weight copy): one no_grad layer + logits"
    else:
        dpo_reference = 0

    subtotal = base_weights + lora_weights + gradients + optimizer + activations + logits + dpo_reference
    overhead = CUDA_CONTEXT_BYTES + math.ceil(subtotal * ALLOCATOR_SLACK)
    details["overhead"] = (
        f"CUDA context {CUDA_CONTEXT_BYTES / GIB:g} GiB + {ALLOCATOR_SLACK:.0%} allocator slack"
    )

    return MemoryEstimate(
        base_weights=base_weights,
        lora_weights=lora_weights,
        gradients=gradients,
        optimizer=optimizer,
        activations=activations,
        logits=logits,
        dpo_reference=dpo_reference,
        overhead=overhead,
        lora_parameters=lora_parameters,
        details=details,
        embedding_bytes=embedding_params * cb,
        num_layers=L,
        quantization=quantization,
    )


# GPU classes -------------------------------------------------------------------------------------------
#
# A GPU class is a kind of GPU the fleet has and the Celery queue its workers consume. Operators list
# them in one environment variable, comma-separated entries of `name:memory_gib:queue[:gpus_per_node]`:
#
#     TAILOR_GPU_CLASSES="a10g:24:gpu.a10g,l40s:48:gpu.l40s,h100:80:gpu.h100:8"
#
# memory_gib is the memory of one GPU (a number, decimals allowed); gpus_per_node defaults to 1. On a
# node with several GPUs the worker starts one process per GPU (torchrun): data parallel (DDP) when one
# GPU holds the whole job, each GPU a full copy; sharded (FSDP) when only the node's GPUs together do
# (`choose_strategy`). A class is chosen by whether one of its GPUs holds the job, unless the caller
# also accepts sharding.


@dataclass(frozen=True)
class GpuClass:
    """A kind of GPU and the queue its workers consume."""

    name: str
    memory_gib: float
    queue: str
    gpus_per_node: int = 1


class NoGpuClassFits(ValueError):
    """No configured GPU class has enough memory for a job's estimate."""

    def __init__(self, estimate: MemoryEstimate, largest: GpuClass | None, safety_margin: float) -> None:
        self.estimate = estimate
        self.largest = largest
        needed = estimate.total_gib * (1 + safety_margin)
        if largest is None:
            message = f"the job needs about {estimate.total_gib:.1f} GiB of GPU memory and no GPU classes are configured"
        else:
            message = (
                f"the job needs about {estimate.total_gib:.1f} GiB of GPU memory ({needed:.1f} GiB with a "
                f"{safety_margin:.0%} safety margin); the largest GPU class, {largest.name}, has "
                f"{largest.memory_gib:g} GiB. Lower max_seq_length or batch_size, enable "
                "gradient_checkpointing, or use nf4 quantization or a smaller lora_r"
            )
        super().__init__(message)


def estimate_spec_memory(
    shape: Mapping[str, Any], hyperparameters: Any, *, batch_size: int, method: str
) -> MemoryEstimate:
    """`estimate_training_memory` for a job spec's hyperparameters on a model of `shape` (parameters and
    the architecture keywords), with `batch_size` rows per micro-batch. Module names the estimator
    cannot size (not Llama-style) fall back to every linear layer, an upper bound."""
    hp = hyperparameters
    common: dict[str, Any] = {
        **shape,
        "quantization": hp.quantization,
        "compute_dtype": hp.compute_dtype,
        "lora_r": hp.lora_r,
        "max_seq_length": hp.max_seq_length,
        "batch_size": batch_size,
        "gradient_checkpointing": hp.gradient_checkpointing,
        "method": method,
        "lora_dropout": hp.lora_dropout,
    }
    try:
        return estimate_training_memory(**common, lora_trainable_modules=hp.lora_trainable_modules)
    except ValueError:
        return estimate_training_memory(**common, lora_trainable_modules="all-linear")


def choose_gpu_class(
    estimate: MemoryEstimate,
    classes: Sequence[GpuClass],
    *,
    safety_margin: float = DEFAULT_SAFETY_MARGIN,
    sharding: bool = False,
) -> GpuClass:
    """The class with the least memory that holds the estimate plus `safety_margin` (a fraction of it);
    among equal memory, the first listed. With `sharding`, a job no single GPU holds may go to the
    multi-GPU class with the least memory whose node holds it sharded (FSDP, `sharded_training_memory`).
    Raises NoGpuClassFits naming the estimate and the largest class."""
    needed = estimate.total_gib * (1 + safety_margin)
    fitting = [c for c in classes if c.memory_gib >= needed]
    # int8 (LLM.int8) weights cannot be sharded with FSDP: the runner refuses them, so never plan it.
    if not fitting and sharding and estimate.quantization != "int8":
        fitting = [
            c
            for c in classes
            if c.gpus_per_node > 1
            and c.memory_gib >= sharded_training_memory(estimate, c.gpus_per_node) / GIB * (1 + safety_margin)
        ]
    if not fitting:
        largest = max(classes, key=lambda c: c.memory_gib, default=None)
        raise NoGpuClassFits(estimate, largest, safety_margin)
    return min(fitting, key=lambda c: c.memory_gib)


def parse_gpu_classes(text: str) -> list[GpuClass]:
    """Parse `name:memory_gib:queue[:gpus_per_node]` entries separated by commas (see above); blank
    text gives no classes. Raises ValueError naming the entry and what was expected."""
    classes: list[GpuClass] = []
    expected = "name:memory_gib:queue[:gpus_per_node], e.g. h100:80:gpu.h100:8"
    for number, raw in enumerate(text.split(","), start=1):
        entry = raw.strip()
        if not entry:
            if text.strip():
                raise ValueError(f"GPU class {number} is empty; expected {expected}")
            continue
        parts = [p.strip() for p in entry.split(":")]
        if len(parts) not in (3, 4) or not all(parts):
            raise ValueError(f"GPU class {number} {entry!r} must read {expected}")
        name, memory, queue, *rest = parts
        try:
            memory_gib = float(memory)
        except ValueError:
            raise ValueError(f"GPU class {number} {entry!r}: memory_gib {memory!r} is not a number") from None
        if not math.isfinite(memory_gib) or memory_gib <= 0:
            raise ValueError(f"GPU class {number} {entry!r}: memory_gib must be a positive number of GiB")
        gpus = 1
        if rest:
            if not rest[0].isdigit() or int(rest[0]) < 1:
                raise ValueError(
                    f"GPU class {number} {entry!r}: gpus_per_node {rest[0]!r} must be a positive integer"
                )
            gpus = int(rest[0])
        if any(c.name == name for c in classes):
            raise ValueError(f"GPU class {number} {entry!r}: the name {name!r} is used twice")
        classes.append(GpuClass(name=name, memory_gib=memory_gib, queue=queue, gpus_per_node=gpus))
    return classes


# Several GPUs on one node ------------------------------------------------------------------------------
#
# FSDP (FULL_SHARD, one unit per decoder layer) splits the base weights, the LoRA weights, their
# gradients and AdamW's moments over the node's N GPUs. Each GPU still holds, whole:
#   - the root unit: embeddings and LM head (embedding_bytes), gathered for the whole forward and backward;
#   - two gathered decoder layers, (base_weights − embedding_bytes + lora_weights) / L each: the one
#     computing and the one prefetched;
#   - its own micro-batch's activations, logits tiles and DPO reference working set (data parallel: every
#     GPU takes micro_batch rows);
#   - the CUDA context, and the allocator's 5 % on all of it.
# A 4-bit base shards like any other weight once its packed storage has the compute dtype
# (bnb_4bit_quant_storage), which the runner sets under FSDP; the bytes are the same. But bitsandbytes
# quantizes on the rank's GPU before FSDP shards: while loading, each GPU holds the whole quantized base
# (base_weights + CUDA context + slack), and the per-GPU peak is the larger of that and the above.

Strategy = Literal["single", "ddp", "fsdp"]
STRATEGIES: tuple[Strategy, ...] = ("single", "ddp", "fsdp")


def sharded_training_memory(estimate: MemoryEstimate, world_size: int) -> int:
    """Peak bytes on each of `world_size` GPUs when the job is sharded with FSDP (formulas above)."""
    _positive(world_size=world_size)
    layered = estimate.base_weights - estimate.embedding_bytes + estimate.lora_weights
    sharded = math.ceil((layered + estimate.gradients + estimate.optimizer) / world_size)
    gathered = estimate.embedding_bytes + 2 * math.ceil(layered / max(estimate.num_layers, 1))
    working = estimate.activations + estimate.logits + estimate.dpo_reference
    subtotal = sharded + gathered + working
    training = subtotal + CUDA_CONTEXT_BYTES + math.ceil(subtotal * ALLOCATOR_SLACK)
    if estimate.quantization == "none":
        return training
    loading = estimate.base_weights + CUDA_CONTEXT_BYTES + math.ceil(estimate.base_weights * ALLOCATOR_SLACK)
    return max(training, loading)


@dataclass(frozen=True)
class LaunchPlan:
    """How a job runs on a node of one GPU class: `single` (one process), `ddp` (one process per GPU, each
    with a full copy) or `fsdp` (one process per GPU, the model sharded), with the estimates behind it."""

    strategy: Strategy
    world_size: int
    gpu_class: str
    gpu_memory_gib: float
    # Estimated peak on each GPU under `strategy`, and of the whole job in one process; None when the job
    # could not be sized (a spec the runner will refuse).
    per_gpu_gib: float | None
    single_gpu_gib: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, GiB rounded to 3 places."""
        data = asdict(self)
        for key in ("per_gpu_gib", "single_gpu_gib"):
            if data[key] is not None:
                data[key] = round(data[key], 3)
        return data


class NoStrategyFits(ValueError):
    """Neither one GPU of the class nor all of a node's GPUs together hold the job."""

    def __init__(
        self, estimate: MemoryEstimate, gpu_class: GpuClass, sharded_gib: float | None, safety_margin: float
    ) -> None:
        self.estimate = estimate
        self.gpu_class = gpu_class
        self.sharded_gib = sharded_gib
        message = (
            f"the job needs about {estimate.total_gib:.1f} GiB of GPU memory in one process "
            f"({estimate.total_gib * (1 + safety_margin):.1f} GiB with a {safety_margin:.0%} safety margin)"
        )
        if sharded_gib is not None:
            message += (
                f", and about {sharded_gib:.1f} GiB on each GPU when sharded over {gpu_class.gpus_per_node} "
                f"GPUs ({sharded_gib * (1 + safety_margin):.1f} GiB with the margin"
                + (
                    "; a quantized base is loaded whole on each GPU before it is sharded"
                    if estimate.quantization != "none"
                    else ""
                )
                + ")"
            )
        message += (
            f"; GPU class {gpu_class.name} has {gpu_class.memory_gib:g} GiB per GPU. Lower max_seq_length or "
            "batch_size, enable gradient_checkpointing, or use nf4 quantization or a smaller lora_r"
        )
        super().__init__(message)


def choose_strategy(
    estimate: MemoryEstimate, gpu_class: GpuClass, *, safety_margin: float = DEFAULT_SAFETY_MARGIN
) -> LaunchPlan:
    """How to run a job on a node of `gpu_class`. One GPU: `single` when the job fits it. Several: `ddp` on
    all of them when one GPU holds the whole job (the common case: the fastest, no weight traffic between
    GPUs), else `fsdp` when the job fits each GPU sharded over the node. Raises NoStrategyFits otherwise."""
    needed = estimate.total_gib * (1 + safety_margin)
    gpus = gpu_class.gpus_per_node
    if gpu_class.memory_gib >= needed:
        return LaunchPlan(
            strategy="single" if gpus == 1 else "ddp",
            world_size=gpus,
            gpu_class=gpu_class.name,
            gpu_memory_gib=gpu_class.memory_gib,
            per_gpu_gib=estimate.total_gib,
            single_gpu_gib=estimate.total_gib,
        )
    sharded_gib = sharded_training_memory(estimate, gpus) / GIB if gpus > 1 else None
    if sharded_gib is not None and gpu_class.memory_gib >= sharded_gib * (1 + safety_margin):
        return LaunchPlan(
            strategy="fsdp",
            world_size=gpus,
            gpu_class=gpu_class.name,
            gpu_memory_gib=gpu_class.memory_gib,
            per_gpu_gib=sharded_gib,
            single_gpu_gib=estimate.total_gib,
        )
    raise NoStrategyFits(estimate, gpu_class, sharded_gib, safety_margin)


def model_shape_from_directory(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The shape keywords of `estimate_training_memory` (`parameters` included) of a local model directory:
    `config.json` for the architecture, the safetensors headers for the parameter count (the 8-byte
    header length and the JSON header of each file only; no weights are read). Raises ValueError when the
    directory has no config.json or no safetensors weights."""
    directory = Path(path)
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{directory}: cannot read config.json: {exc}") from None
    shape = architecture_from_hf_config(config)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{directory}: no safetensors weights to count the parameters of")
    parameters = 0
    for file in files:
        with open(file, "rb") as stream:
            (length,) = struct.unpack("<Q", stream.read(8))
            header = json.loads(stream.read(length))
        parameters += sum(
            math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__"
        )
    return {"parameters": parameters, **shape}
