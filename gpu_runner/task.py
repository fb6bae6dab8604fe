"""The shipped fine-tuning task, without torch: its files, its prompts, and the check of its answer format.

The task (see `gpu_runner/data/task/`) asks for replies of exactly the form
`{"answer": "<non-empty text>", "confidence": "high" | "medium" | "low"}`. Tests, the demo and the
control plane's walkthrough compare how often the base model and a fine-tuned adapter answer in that
shape; `gpu_runner.evaluate` scores a loaded model with the same check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIDENCE_LEVELS = frozenset({"high", "medium", "low"})
TASK_DIR = Path(__file__).resolve().parent / "data" / "task"


def format_match(text: str) -> bool:
    """True when `text` (surrounding whitespace aside) is exactly one task-shaped JSON object."""
    try:
        value = json.loads(text.strip())
    except ValueError:
        return False
    return (
        isinstance(value, dict)
        and set(value) == {"answer", "confidence"}
        and isinstance(value["answer"], str)
        and value["answer"].strip() != ""
        and value["confidence"] in CONFIDENCE_LEVELS
    )


def prompt_messages(example: dict[str, Any]) -> list[dict[str, Any]]:
    """The prompt of a task example: an SFT row up to its last assistant turn, or a DPO row's input."""
    if "input" in example:
        return list(example["input"]["messages"])
    messages = list(example["messages"])
    last_assistant = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last_assistant]


def load_task_prompts(name: str = "heldout") -> list[list[dict[str, Any]]]:
    """Prompts of one shipped task file (`heldout`, `train`, `preference_heldout`, ...)."""
    path = TASK_DIR / f"{name}.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [prompt_messages(json.loads(line)) for line in lines if line.strip()]
