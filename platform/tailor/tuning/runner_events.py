"""The runner's event stream (docs/gpu_runner.md, "Events") as OpenAI's `fine_tuning.job.event` objects.

`metrics` and `eval` events become `type: "metrics"` with OpenAI's data keys first (`step`,
`total_steps`, `train_loss`, `train_mean_token_accuracy`, `valid_loss`, `valid_mean_token_accuracy`)
and the runner's other figures after them; every other runner event becomes a `type: "message"`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LEVELS = ("info", "warn", "error")


@dataclass(frozen=True)
class ShownEvent:
    """What the events endpoint shows for one runner event."""

    type: str
    level: str
    message: str
    data: dict[str, Any] | None


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _step_text(data: dict[str, Any]) -> str:
    step, total = data.get("step"), data.get("total_steps")
    return f"Step {step}/{total}" if total else f"Step {step}"


def shown_event(event: dict[str, Any]) -> ShownEvent:
    """OpenAI's view of one runner event."""
    kind = event.get("type")
    raw = event.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    level = str(event.get("level")) if event.get("level") in LEVELS else "info"
    message = str(event.get("message") or kind or "")
    if kind == "metrics":
        shown = {
            "step": data.get("step"),
            "total_steps": data.get("total_steps"),
            "train_loss": data.get("train_loss"),
            "train_mean_token_accuracy": data.get("train_mean_token_accuracy"),
        }
        shown.update({k: v for k, v in data.items() if k not in shown})
        text = f"{_step_text(data)}: training loss={_number(data.get('train_loss'))}"
        return ShownEvent("metrics", level, text, shown)
    if kind == "eval":
        shown = {
            "step": data.get("step"),
            "total_steps": data.get("total_steps"),
            "valid_loss": data.get("valid_loss"),
            "valid_mean_token_accuracy": data.get("valid_mean_token_accuracy"),
        }
        shown.update({k: v for k, v in data.items() if k not in shown})
        text = f"{_step_text(data)}: validation loss={_number(data.get('valid_loss'))}"
        return ShownEvent("metrics", level, text, shown)
    return ShownEvent("message", level, message, data or None)


CHECKPOINT_METRIC_KEYS = (
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


def checkpoint_metrics(step: int, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """OpenAI's checkpoint `metrics` object from the figures a worker reported with the checkpoint."""
    metrics = metrics or {}
    shown: dict[str, Any] = {"step": step}
    for key in CHECKPOINT_METRIC_KEYS:
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            shown[key] = value
    return shown
