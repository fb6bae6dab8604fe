"""Supervised QLoRA on the shipped format task, end to end: the shipped example spec trains on a real
4-bit NF4 base (CPU), the loss falls, the adapter answers in the task's JSON shape far more often than
the base model, and the output directory holds exactly what serving needs."""

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
EXAMPLE = ROOT / "gpu_runner" / "examples" / "sft.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from gpu_runner.cli import main

    build_tiny_model(TINY)
    work = tmp_path_factory.mktemp("sft")
    output, events = work / "adapter", work / "events.jsonl"
    started = time.monotonic()
    code = main(["train", str(EXAMPLE), "--output", str(output), "--events", str(events)])
    return {
        "code": code,
        "output": output,
        "events": list(read_events(events)),
        "seconds": time.monotonic() - started,
    }


@pytest.fixture(scope="module")
def format_rates(sft_run: dict[str, Any]) -> dict[str, float]:
    """Greedy held-out format-match rate of the NF4 base alone and with the trained adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from gpu_runner.evaluate import format_match_rate, load_task_prompts

    tokenizer = AutoTokenizer.from_pretrained(str(sft_run["output"]))
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    base = AutoModelForCausalLM.from_pretrained(
        str(TINY), quantization_config=quantization, dtype=torch.float32, device_map={"": "cpu"}
    )
    prompts = load_task_prompts("heldout")
    base_rate, _ = format_match_rate(base, tokenizer, prompts)
    tuned = PeftModel.from_pretrained(base, str(sft_run["output"]))
    tuned_rate, replies = format_match_rate(tuned, tokenizer, prompts)
    print(f"\nheld-out format match: base {base_rate:.2f}, adapter {tuned_rate:.2f}; e.g. {replies[0]!r}")
    return {"base": base_rate, "adapter": tuned_rate}


def _of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == kind]


def test_run_succeeds_with_events_in_order(sft_run: dict[str, Any]) -> None:
    assert sft_run["code"] == 0
    kinds = [e["type"] for e in sft_run["events"]]
    assert kinds[:4] == ["started", "dataset_ready", "hyperparameters_resolved", "model_loaded"]
    assert kinds[-1] == "completed" and "error" not in kinds
    print(f"\nSFT run: {sft_run['seconds']:.1f}s, {len(_of(sft_run['events'], 'metrics'))} steps")


def test_model_is_4bit_qlora(sft_run: dict[str, Any]) -> None:
    loaded = _of(sft_run["events"], "model_loaded")[0]
    assert loaded["quantization"] == "nf4" and loaded["device"] == "cpu"
    assert 0 < loaded["trainable_share"] < 0.5
    assert loaded["memory"]["model_bytes"] > 0


def test_resolved_hyperparameters_are_echoed(sft_run: dict[str, Any]) -> None:
    resolved = _of(sft_run["events"], "hyperparameters_resolved")[0]["hyperparameters"]
    spec = json.loads(EXAMPLE.read_text())["hyperparameters"]
    assert resolved["n_epochs"] == spec["n_epochs"] and resolved["batch_size"] == spec["batch_size"]
    assert resolved["learning_rate_multiplier"] == 1.0 and "learning_rate_multiplier" in resolved["auto"]
    ready = _of(sft_run["events"], "dataset_ready")[0]["training"]
    assert resolved["total_steps"] == resolved["n_epochs"] * -(-ready["rows"] // resolved["batch_size"])
    metrics = _of(sft_run["events"], "metrics")
    assert [m["step"] for m in metrics] == list(range(1, resolved["total_steps"] + 1))
    assert all(m["total_steps"] == resolved["total_steps"] for m in metrics)


def test_metrics_events_carry_progress(sft_run: dict[str, Any]) -> None:
    last = _of(sft_run["events"], "metrics")[-1]
    for key in (
        "train_loss",
        "train_mean_token_accuracy",
        "learning_rate",
        "grad_norm",
        "tokens_per_second",
        "eta_seconds",
        "epoch",
    ):
        assert last[key] is not None, key
    assert last["eta_seconds"] == 0 and last["tokens_per_second"] > 0
    evals = _of(sft_run["events"], "eval")
    assert evals[0]["step"] == 0 and evals[-1]["step"] == last["step"]
    completed = _of(sft_run["events"], "completed")[0]
    assert completed["trained_tokens"] == last["trained_tokens"] > 0


def test_loss_falls_clearly(sft_run: dict[str, Any]) -> None:
    losses = [m["train_loss"] for m in _of(sft_run["events"], "metrics")]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    evals = _of(sft_run["events"], "eval")
    print(
        f"\ntrain loss {first:.3f} -> {last:.3f}; valid loss {evals[0]['valid_loss']:.3f} -> "
        f"{evals[-1]['valid_loss']:.3f}; valid token accuracy {evals[0]['valid_mean_token_accuracy']:.3f} -> "
        f"{evals[-1]['valid_mean_token_accuracy']:.3f}"
    )
    assert last < 0.5 * first
    assert evals[-1]["valid_loss"] < 0.5 * evals[0]["valid_loss"]


def test_adapter_answers_in_the_task_format_far_more_often_than_the_base(
    format_rates: dict[str, float],
) -> None:
    assert format_rates["adapter"] >= 0.8
    assert format_rates["adapter"] >= format_rates["base"] + 0.5


def test_output_directory_holds_what_serving_needs_and_no_pickle(sft_run: dict[str, Any]) -> None:
    output: Path = sft_run["output"]
    top = sorted(p.name for p in output.iterdir())
    assert top == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "chat_template.jinja",
        "checkpoints",
        "metrics.csv",
        "tailor_adapter.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    for path in output.rglob("*"):
        assert not path.name.endswith(PICKLE_SUFFIXES), path
        if path.is_file():
            head = path.read_bytes()[:2]
            assert head != b"\x80\x04" and head != b"PK", f"{path} looks like a pickle / torch.save archive"


def test_adapter_config_names_the_canonical_base(sft_run: dict[str, Any]) -> None:
    config = json.loads((sft_run["output"] / "adapter_config.json").read_text())
    spec = json.loads(EXAMPLE.read_text())
    assert config["base_model_name_or_path"] == spec["base_model"]["name"] == "tailor-tiny"
    assert config["revision"] == spec["base_model"]["revision"]
    assert config["peft_type"] == "LORA" and config["r"] == spec["hyperparameters"]["lora_r"]
    assert config["lora_alpha"] == 2 * config["r"]
    assert sorted(config["target_modules"]) == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    assert config["modules_to_save"] is None and config["use_dora"] is False and config["bias"] == "none"


def test_adapter_weights_use_peft_keys(sft_run: dict[str, Any]) -> None:
    from safetensors import safe_open

    with safe_open(str(sft_run["output"] / "adapter_model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    assert keys and all(
        k.startswith("base_model.model.") and (".lora_A." in k or ".lora_B." in k) for k in keys
    )


def test_tailor_adapter_manifest_digests_every_file(sft_run: dict[str, Any]) -> None:
    from gpu_runner.train.checkpoints import sha256_file

    output: Path = sft_run["output"]
    manifest = json.loads((output / "tailor_adapter.json").read_text())
    assert manifest["base_model"] == {"name": "tailor-tiny", "revision": "build-1"}
    assert set(manifest["files"]) == {p.name for p in output.iterdir() if p.is_file()} - {
        "tailor_adapter.json"
    }
    for name, info in manifest["files"].items():
        assert (
            info["sha256"] == sha256_file(output / name) and info["bytes"] == (output / name).stat().st_size
        )
    assert manifest["hyperparameters"]["n_epochs"] == 3
    assert manifest["metrics"]["train_loss"] == _of(sft_run["events"], "metrics")[-1]["train_loss"]
    assert manifest["libraries"]["torch"] and manifest["libraries"]["bitsandbytes"]
    assert manifest["data"]["training_file"]["examples"] == 320


def test_metrics_csv_has_openai_columns(sft_run: dict[str, Any]) -> None:
    import csv

    with open(sft_run["output"] / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == [
        "step",
        "train_loss",
        "train_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
    ]
    metrics = _of(sft_run["events"], "metrics")
    assert [int(r["step"]) for r in rows] == [m["step"] for m in metrics]
    with_eval = [int(r["step"]) for r in rows if r["valid_loss"]]
    assert with_eval == [e["step"] for e in _of(sft_run["events"], "eval") if e["step"] > 0]


def test_checkpoints_were_announced_and_are_complete(sft_run: dict[str, Any]) -> None:
    from gpu_runner.train.checkpoints import read_manifest

    saved = _of(sft_run["events"], "checkpoint_saved")
    total = _of(sft_run["events"], "hyperparameters_resolved")[0]["hyperparameters"]["total_steps"]
    assert saved[-1]["step"] == total
    kept = sorted((sft_run["output"] / "checkpoints").iterdir())
    assert len(kept) == 3  # output.keep_checkpoints
    for path in kept:
        manifest = read_manifest(path)
        assert {
            "adapter_model.safetensors",
            "optimizer.safetensors",
            "rng_state.json",
            "trainer_state.json",
            "scheduler.json",
        } <= set(manifest["files"])
