"""The capacity-planning table of docs/operations.md, computed with `gpu_runner.memory`.

    python docs/capacity_table.py                      # the table for the GPU classes below
    python docs/capacity_table.py --classes "l4:24:gpu.l4,h200:141:gpu.h200:8"

For each Llama-shaped model size and quantization it prints the estimated peak GPU memory of one
supervised LoRA job (`estimate_training_memory`) and the GPU class the control plane would send it to
(`choose_gpu_class` with sharding allowed, as `tailor.tuning.specs.choose_class` calls it), with the
launch strategy on that class (`choose_strategy`); a job that fits only sharded (FSDP) with an 8-bit base
is marked refused, as the runner refuses it. Two micro-batch sizes are shown: 8 sequences of
2048 tokens, what the control plane assumes for a job with the default `max_batch_tokens` (16384) and
`gradient_accumulation_steps: "auto"`, and 1 sequence (`max_batch_tokens: 2048`), the leanest job.

A second table gives the object-store size of what each job leaves: the adapter (float32 LoRA weights,
4 bytes a parameter) and each checkpoint (the adapter plus AdamW's two float32 moments, 12 bytes a
parameter; tokenizer, RNG and trainer state add a few MB).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from gpu_runner.memory import (
    GIB,
    GpuClass,
    MemoryEstimate,
    NoGpuClassFits,
    NoStrategyFits,
    Quantization,
    choose_gpu_class,
    choose_strategy,
    estimate_training_memory,
    parse_gpu_classes,
)

# .env.example's example fleet: 24 GiB, 48 GiB, and nodes of eight 80 GiB GPUs.
DEFAULT_CLASSES = "a10g:24:gpu.a10g,l40s:48:gpu.l40s,h100:80:gpu.h100:8"

# The job: Tailor's defaults for everything the estimate reads (supervised, all-linear LoRA, dropout
# 0.05, bfloat16 compute), except the micro-batch, which varies.
LORA_R = 16
MAX_SEQ_LENGTH = 2048
MICRO_BATCHES = (8, 1)
QUANTIZATIONS: tuple[Quantization, ...] = ("nf4", "int8", "none")


@dataclass(frozen=True)
class Shape:
    """A Llama-style decoder: the public config.json figures of a representative model of each size."""

    label: str
    example: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    intermediate_size: int
    kv_hidden_size: int
    tie_word_embeddings: bool

    @property
    def parameters(self) -> int:
        """Embeddings (twice when untied), per layer attention + gated MLP + two RMSNorms, the final norm."""
        h, kv, i = self.hidden_size, self.kv_hidden_size, self.intermediate_size
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
        return embeddings + self.num_layers * layer + h


SHAPES = (
    Shape("1B", "Llama 3.2 1B", 2048, 16, 128_256, 8192, 512, True),
    Shape("3B", "Llama 3.2 3B", 3072, 28, 128_256, 8192, 1024, True),
    Shape("8B", "Llama 3.1 8B", 4096, 32, 128_256, 14_336, 1024, False),
    Shape("13B", "Llama 2 13B", 5120, 40, 32_000, 13_824, 5120, False),
    Shape("34B", "Code Llama 34B", 8192, 48, 32_000, 22_016, 1024, False),
    Shape("70B", "Llama 3.1 70B", 8192, 80, 128_256, 28_672, 1024, False),
)


def estimate(shape: Shape, quantization: Quantization, micro_batch: int) -> MemoryEstimate:
    """`estimate_training_memory` for `shape` with the job's hyperparameters above."""
    return estimate_training_memory(
        parameters=shape.parameters,
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        vocab_size=shape.vocab_size,
        intermediate_size=shape.intermediate_size,
        kv_hidden_size=shape.kv_hidden_size,
        tie_word_embeddings=shape.tie_word_embeddings,
        quantization=quantization,
        compute_dtype="bfloat16",
        lora_r=LORA_R,
        lora_trainable_modules="all-linear",
        lora_dropout=0.05,
        max_seq_length=MAX_SEQ_LENGTH,
        batch_size=micro_batch,
        gradient_checkpointing=True,
        method="supervised",
    )


def placement(
    shape: Shape, quantization: Quantization, micro_batch: int, classes: Sequence[GpuClass]
) -> tuple[float, str]:
    """The estimate in GiB and where the job goes: `class (strategy)`, or why it goes nowhere."""
    job = estimate(shape, quantization, micro_batch)
    try:
        gpu_class = choose_gpu_class(job, classes, sharding=True)
        plan = choose_strategy(job, gpu_class)
    except (NoGpuClassFits, NoStrategyFits):
        return job.total / GIB, "none fits"
    if plan.strategy == "fsdp" and quantization == "int8":
        # The runner refuses to shard an 8-bit base (docs/gpu_runner.md, "Sharded (FSDP)").
        return job.total / GIB, "refused: fits only sharded, int8 cannot be"
    if plan.strategy == "fsdp":
        where = f"{gpu_class.name} (fsdp ×{plan.world_size}, {plan.per_gpu_gib:.1f} GiB/GPU)"
    elif plan.strategy == "ddp":
        where = f"{gpu_class.name} (ddp ×{plan.world_size})"
    else:
        where = gpu_class.name
    return job.total / GIB, where


def table(classes: Sequence[GpuClass]) -> str:
    """The Markdown table: one row per model size and quantization."""
    header = ["model", "quantization"]
    for micro in MICRO_BATCHES:
        header += [f"GiB, {micro} × {MAX_SEQ_LENGTH} ({micro * MAX_SEQ_LENGTH:,} tokens)", "class"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for shape in SHAPES:
        for quantization in QUANTIZATIONS:
            cells = [f"{shape.label} ({shape.example}, {shape.parameters / 1e9:.2f} B)", quantization]
            for micro in MICRO_BATCHES:
                gib, where = placement(shape, quantization, micro, classes)
                cells += [f"{gib:.1f}", where]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def storage_table() -> str:
    """The Markdown table of what one job leaves in the object store, per model size."""
    lines = [
        f"| model | LoRA parameters (r={LORA_R}, all-linear) | adapter | one checkpoint |",
        "|---|---|---|---|",
    ]
    for shape in SHAPES:
        lora = estimate(shape, "nf4", 1).lora_parameters
        lines.append(
            f"| {shape.label} | {lora / 1e6:.1f} M | {lora * 4 / 2**20:,.0f} MiB | {lora * 12 / 2**20:,.0f} MiB |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--classes",
        default=DEFAULT_CLASSES,
        help=f"GPU classes in TAILOR_GPU_CLASSES form (default: {DEFAULT_CLASSES})",
    )
    args = parser.parse_args(argv)
    try:
        classes = parse_gpu_classes(args.classes)
    except ValueError as exc:
        parser.error(f"--classes: {exc}")
    print(f"GPU classes: {args.classes}")
    print(table(classes))
    print()
    print(storage_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
