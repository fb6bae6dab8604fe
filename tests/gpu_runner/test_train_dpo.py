"""DPO with QLoRA on the shipped preference task: on held-out pairs the reward margin rises above zero
and the preferred reply's log-probability rises relative to the rejected one."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from gpu_runner.events import read_events
from gpu_runner.tiny_model import build_tiny_model

pytestmark = pytest.mark.training

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "var" / "models" / "tailor-tiny"
EXAMPLE = ROOT / "gpu_runner" / "examples" / "dpo.json"


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from gpu_runner.cli import main

    build_tiny_model(TINY)
    work = tmp_path_factory.mktemp("dpo")
    output, events = work / "adapter", work / "events.jsonl"
    started = time.monotonic()
    code = main(["train", str(EXAMPLE), "--output", str(output), "--events", str(events)])
    return {
        "code": code,
        "output": output,
        "events": list(read_events(events)),
        "seconds": time.monotonic() - started,
    }


def _of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == kind]


def test_dpo_run_succeeds(dpo_run: dict[str, Any]) -> None:
    assert dpo_run["code"] == 0, _of(dpo_run["events"], "error")
    resolved = _of(dpo_run["events"], "hyperparameters_resolved")[0]["hyperparameters"]
    assert resolved["beta"] == 0.1 and resolved["learning_rate_multiplier"] == 0.25
    assert _of(dpo_run["events"], "model_loaded")[0]["quantization"] == "nf4"
    print(f"\nDPO run: {dpo_run['seconds']:.1f}s, {resolved['total_steps']} steps")


def test_held_out_reward_margin_rises_above_zero(dpo_run: dict[str, Any]) -> None:
    evals = _of(dpo_run["events"], "eval")
    before, after = evals[0], evals[-1]
    assert before["step"] == 0 and after["step"] == _of(dpo_run["events"], "metrics")[-1]["step"]
    # At step 0 the adapter is a no-op, so the policy equals the reference: every reward is zero.
    assert before["valid_reward_margin"] == pytest.approx(0.0, abs=1e-4)
    gap_before = before["valid_chosen_logps"] - before["valid_rejected_logps"]
    gap_after = after["valid_chosen_logps"] - after["valid_rejected_logps"]
    print(
        f"\nheld-out reward margin {before['valid_reward_margin']:.3f} -> {after['valid_reward_margin']:.3f}, "
        f"accuracy {after['valid_reward_accuracy']:.2f}; log p(chosen) - log p(rejected) {gap_before:.2f} -> "
        f"{gap_after:.2f}"
    )
    assert after["valid_reward_margin"] > 0.5
    assert after["valid_reward_accuracy"] >= 0.9
    assert gap_after > gap_before + 5


def test_training_reward_margins_rise(dpo_run: dict[str, Any]) -> None:
    metrics = _of(dpo_run["events"], "metrics")
    assert metrics[0]["reward_margin"] == pytest.approx(0.0, abs=1e-4)
    late = metrics[-5:]
    assert min(m["reward_margin"] for m in late) > 0


def test_dpo_adapter_is_a_plain_lora_adapter(dpo_run: dict[str, Any]) -> None:
    config = json.loads((dpo_run["output"] / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tailor-tiny" and config["peft_type"] == "LORA"
    manifest = json.loads((dpo_run["output"] / "tailor_adapter.json").read_text())
    assert manifest["method"] == "dpo" and manifest["metrics"]["reward_margin"] is not None
