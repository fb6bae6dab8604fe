"""Score a model on the shipped fine-tuning task: does it answer in the task's JSON shape?

The task (see `gpu_runner/data/task/`) asks for replies of exactly the form
`{"answer": "<non-empty text>", "confidence": "high" | "medium" | "low"}`. Tests and the demo
compare the base model's match rate with a fine-tuned adapter's to show that training changed what
the model says. torch is imported inside functions so this module imports without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpu_runner.task import CONFIDENCE_LEVELS, TASK_DIR, format_match, load_task_prompts, prompt_messages

__all__ = [
    "CONFIDENCE_LEVELS",
    "TASK_DIR",
    "format_match",
    "format_match_rate",
    "generate_replies",
    "load_task_prompts",
    "prompt_messages",
]


def generate_replies(
    model: Any,
    tokenizer: Any,
    examples: Sequence[list[dict[str, Any]]],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 8,
) -> list[str]:
    """Greedy replies to chat prompts, rendered with the tokenizer's chat template.

    Prompts are left-padded in batches; special tokens are dropped from the decoded replies.
    """
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    previous_side = tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    replies: list[str] = []
    try:
        for start in range(0, len(examples), batch_size):
            chunk = [list(messages) for messages in examples[start : start + batch_size]]
            batch = tokenizer.apply_chat_template(
                chunk, add_generation_prompt=True, padding=True, return_dict=True, return_tensors="pt"
            ).to(device)
            with torch.inference_mode():
                output = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            replies.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = previous_side
        if was_training:
            model.train()
    return replies


def format_match_rate(
    model: Any,
    tokenizer: Any,
    examples: list[list[dict[str, Any]]],
    *,
    max_new_tokens: int = 48,
) -> tuple[float, list[str]]:
    """Share of prompts whose greedy reply matches the task format, and the replies themselves.

    `examples` are prompt message lists (system/user turns, no final assistant turn); see
    `load_task_prompts`. Works with a plain model or a peft `PeftModel`.
    """
    if not examples:
        raise ValueError("format_match_rate needs at least one prompt")
    replies = generate_replies(model, tokenizer, examples, max_new_tokens=max_new_tokens)
    matched = sum(format_match(reply) for reply in replies)
    return matched / len(replies), replies
