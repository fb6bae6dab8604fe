"""The benchmark's baseline: QLoRA supervised fine-tuning as the TRL documentation writes it.

TRL `SFTTrainer` + PEFT `LoraConfig` + a bitsandbytes NF4 (double-quantized) base, at TRL's defaults:
the dataset's `messages` rendered by the tokenizer's chat template, loss on every token, random batches
padded to their longest row, gradient checkpointing on, `max_length` truncation. Only what a comparison
must fix is set: epochs, batch size, learning rate, LoRA settings, `max_length`, the compute dtype, the
seed, and no experiment tracker.

Measurement only, no effect on training: the number of non-padding tokens seen is counted, and a JSON-lines
file receives `model_loaded` (just before `trainer.train()`), `metrics` (each optimizer step: step,
cumulative tokens) and `completed` (after the adapter is saved) events, shaped like gpu_runner's events
so `bench/train_throughput.py` times both trainers the same way.

    python bench/_plain_trl.py --model DIR --train FILE.jsonl --output DIR --events FILE
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any


def _emit(path: Path, type_: str, **data: Any) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps({"type": type_, "created_at": round(time.time(), 3), "data": data}) + "\n")


def main() -> int:
    """Train once and report; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=float, default=32)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--compute-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--packing", action="store_true", help="TRL's packing=True (not a default)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    dtype = getattr(torch, args.compute_dtype)
    dataset = load_dataset("json", data_files=str(args.train), split="train")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    bnb_config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )
    model = AutoModelForCausalLM.from_pretrained(args.model, quantization_config=bnb_config, dtype=dtype,
                                                 device_map="auto")
    peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                             target_modules="all-linear", task_type="CAUSAL_LM")
    training_args = SFTConfig(
        output_dir=str(args.output),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
        bf16=dtype == torch.bfloat16,
        use_cpu=not torch.cuda.is_available(),  # transformers refuses bf16 on a CPU without it
        packing=args.packing,
        seed=args.seed,
        report_to="none",
        include_num_input_tokens_seen="non_padding",  # measurement only
    )

    events = args.events

    class StepEvents(TrainerCallback):
        """Cumulative tokens after each optimizer step (the benchmark's clock)."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _emit(events, "metrics", step=state.global_step, total_steps=state.max_steps,
                  trained_tokens=int(state.num_input_tokens_seen))

    trainer = SFTTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[StepEvents()])
    cuda = torch.cuda.is_available()
    _emit(events, "model_loaded", device=str(model.device), compute_dtype=args.compute_dtype,
          model_bytes=int(model.get_memory_footprint()))
    result = trainer.train()
    trainer.save_model()
    _emit(events, "completed", trained_tokens=int(trainer.state.num_input_tokens_seen),
          steps=trainer.state.global_step, train_loss=result.training_loss,
          memory={"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "peak_gpu_bytes": int(torch.cuda.max_memory_allocated()) if cuda else None})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
