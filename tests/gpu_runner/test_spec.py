"""The job spec fails fast with field-level errors, resolves paths from its own folder, and turns
"auto" into values by the documented rules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gpu_runner.spec import (
    DatasetStats,
    JobSpec,
    SpecError,
    auto_batch_size,
    auto_gradient_accumulation,
    auto_n_epochs,
    check_paths,
    load_spec,
    parse_spec,
    resolve,
    resolve_train_on_inputs,
    spec_fingerprint,
)

ROOT = Path(__file__).resolve().parents[2]


def minimal(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "spec_version": 1,
        "method": "supervised",
        "base_model": {"path": "models/tiny", "name": "tailor-tiny", "revision": "v1"},
        "training_file": "data/train.jsonl",
    }
    spec.update(overrides)
    return spec


def hp(**hyperparameters: Any) -> dict[str, Any]:
    return minimal(hyperparameters=hyperparameters)


def issues_of(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse_spec(data, base_dir="/specs")
    return caught.value.issues


def test_minimal_spec_gets_documented_defaults() -> None:
    spec = parse_spec(minimal(), base_dir="/specs")
    h = spec.hyperparameters
    assert (h.n_epochs, h.batch_size, h.learning_rate_multiplier) == ("auto", "auto", "auto")
    assert (h.quantization, h.compute_dtype, h.lora_trainable_modules) == ("nf4", "auto", "all-linear")
    assert (h.lora_r, h.learning_rate, h.max_seq_length, h.packing) == (16, 2e-4, 2048, False)
    assert spec.seed == 0 and spec.validation_file is None


def test_relative_paths_are_relative_to_the_spec_folder(tmp_path: Path) -> None:
    spec_file = tmp_path / "jobs" / "spec.json"
    spec_file.parent.mkdir()
    spec_file.write_text(json.dumps(minimal(validation_file="/abs/valid.jsonl")))
    spec = load_spec(spec_file)
    assert spec.training_file == tmp_path / "jobs" / "data" / "train.jsonl"
    assert spec.base_model.path == tmp_path / "jobs" / "models" / "tiny"
    assert spec.validation_file == Path("/abs/valid.jsonl")


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        (hp(n_epochs=0), "hyperparameters.n_epochs", 'expected "auto" or an integer from 1 to 50, got 0'),
        (hp(n_epochs="3"), "hyperparameters.n_epochs", 'got "3"'),
        (hp(batch_size=True), "hyperparameters.batch_size", "got true"),
        (hp(learning_rate_multiplier=-1), "hyperparameters.learning_rate_multiplier", "a number > 0"),
        (hp(learning_rate="0.1"), "hyperparameters.learning_rate", 'expected a number, got "0.1"'),
        (hp(lora_r=0), "hyperparameters.lora_r", "greater than or equal to 1"),
        (hp(lora_dropout=1.0), "hyperparameters.lora_dropout", "less than 1"),
        (hp(quantization="fp8"), "hyperparameters.quantization", "'nf4', 'int8' or 'none'"),
        (hp(lr_scheduler="cyclic"), "hyperparameters.lr_scheduler", '"cyclic"'),
        (hp(lora_trainable_modules=[]), "hyperparameters.lora_trainable_modules", "non-empty list"),
        (hp(lora_trainable_modules=["lm_head"]), "hyperparameters.lora_trainable_modules", "vLLM"),
        (hp(epochs=3), "hyperparameters.epochs", "unknown field"),
        (minimal(method="ppo"), "method", "'supervised' or 'dpo'"),
        (minimal(spec_version=2), "spec_version", "unsupported spec_version 2"),
        (minimal(base_model={"path": "m"}), "base_model.name", "required field is missing"),
        (minimal(seed=-1), "seed", "greater than or equal to 0"),
        (minimal(training_file=None), "training_file", "a path"),
    ],
)
def test_invalid_values_name_their_field(data: dict[str, Any], field: str, fragment: str) -> None:
    issues = issues_of(data)
    assert any(f == field and fragment in message for f, message in issues), issues


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ({**hp(packing=True), "method": "dpo"}, "hyperparameters.packing", "not supported with method dpo"),
        ({**hp(train_on_inputs=True), "method": "dpo"}, "hyperparameters.train_on_inputs", "supervised"),
        (hp(beta=0.1), "hyperparameters.beta", "dpo only"),
        (hp(n_evals=3), "hyperparameters.n_evals", "needs a validation_file"),
        (
            hp(batch_size=6, gradient_accumulation_steps=4),
            "hyperparameters.gradient_accumulation_steps",
            "multiple of gradient_accumulation_steps=4",
        ),
        (minimal(validation_file="data/train.jsonl"), "validation_file", "must differ"),
    ],
)
def test_incompatible_settings_are_explained(data: dict[str, Any], field: str, fragment: str) -> None:
    issues = issues_of(data)
    assert any(f == field and fragment in message for f, message in issues), issues


def test_every_problem_is_reported_at_once() -> None:
    issues = issues_of(hp(n_epochs=0, lora_r=0, bogus=1))
    assert {f for f, _ in issues} == {
        "hyperparameters.n_epochs",
        "hyperparameters.lora_r",
        "hyperparameters.bogus",
    }


def test_unreadable_or_malformed_spec_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_spec(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(SpecError, match="must be a JSON object"):
        load_spec(bad)


def test_check_paths_names_missing_files(tmp_path: Path) -> None:
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    spec = parse_spec(minimal(validation_file="data/valid.jsonl"), base_dir=tmp_path)
    with pytest.raises(SpecError) as caught:
        check_paths(spec)
    fields = [f for f, _ in caught.value.issues]
    assert fields == ["base_model.path", "training_file", "validation_file"]
    assert "no config.json" in caught.value.issues[0][1]


@pytest.mark.parametrize(
    ("examples", "epochs"),
    # OpenAI cookbook: 3 epochs, at least 100 and at most 25,000 example-passes, within 1..25.
    [
        (1, 25),
        (4, 25),
        (10, 10),
        (20, 5),
        (33, 3),
        (34, 3),
        (1000, 3),
        (8333, 3),
        (8334, 2),
        (12_500, 2),
        (12_501, 1),
        (1_000_000, 1),
    ],
)
def test_auto_n_epochs_follows_openai_rule(examples: int, epochs: int) -> None:
    assert auto_n_epochs(examples) == epochs


@pytest.mark.parametrize(
    ("examples", "world", "size"),
    [
        (10, 1, 1),
        (999, 1, 1),
        (1000, 1, 2),
        (10_000, 1, 16),
        (100_000, 1, 128),
        (10_000_000, 1, 256),
        (10, 4, 4),
        (3, 8, 8),
    ],
)
def test_auto_batch_size(examples: int, world: int, size: int) -> None:
    assert auto_batch_size(examples, world) == size


def test_auto_gradient_accumulation_keeps_micro_batches_within_the_token_budget() -> None:
    assert auto_gradient_accumulation(8, 512, 16_384) == 1  # 8 x 512 fits
    assert auto_gradient_accumulation(16, 2048, 16_384) == 2  # 8 x 2048 = 16384
    assert auto_gradient_accumulation(12, 4096, 16_384) == 3  # 4 x 4096, divisors of 12 only
    assert auto_gradient_accumulation(8, 100_000, 16_384) == 8  # one row per micro-batch at worst


def test_resolve_fills_auto_and_plans_steps() -> None:
    spec = parse_spec(minimal(validation_file="v.jsonl"), base_dir="/s")
    resolved = resolve(spec, DatasetStats(n_examples=2000, max_tokens=3000, has_validation=True))
    assert (resolved.n_epochs, resolved.batch_size) == (3, 4)
    assert resolved.gradient_accumulation_steps == 1 and resolved.micro_batch_size == 4  # 4 x 2048 <= 16384
    assert resolved.steps_per_epoch == 500 and resolved.total_steps == 1500
    assert resolved.learning_rate_multiplier == 1.0 and resolved.effective_learning_rate == pytest.approx(
        2e-4
    )
    assert resolved.lora_alpha == 32.0 and resolved.train_on_inputs is False and resolved.beta is None
    assert resolved.n_evals == 3 and resolved.eval_every_n_steps == 500
    assert resolved.n_checkpoints == 10 and resolved.checkpoint_every_n_steps == 150
    assert resolved.warmup_steps == 45
    assert set(resolved.auto) >= {
        "n_epochs",
        "batch_size",
        "learning_rate_multiplier",
        "lora_alpha",
        "gradient_accumulation_steps",
        "n_checkpoints",
        "n_evals",
        "train_on_inputs",
    }


def test_resolve_keeps_explicit_values_and_counts_devices() -> None:
    spec = parse_spec(
        hp(
            n_epochs=2,
            batch_size=10,
            gradient_accumulation_steps=1,
            learning_rate_multiplier=0.5,
            n_checkpoints=3,
            lora_alpha=8,
        ),
        base_dir="/s",
    )
    resolved = resolve(spec, DatasetStats(n_examples=101, max_tokens=50, world_size=4))
    assert resolved.batch_size == 12  # rounded up to a multiple of the 4 devices
    assert resolved.micro_batch_size == 3
    # 101 rows / 3 per micro-batch = 34 micro-batches, 9 per device (ceil), one per step
    assert resolved.steps_per_epoch == 9 and resolved.total_steps == 18
    assert resolved.checkpoint_every_n_steps == 6 and resolved.lora_alpha == 8
    assert resolved.effective_learning_rate == pytest.approx(1e-4)
    assert "n_epochs" not in resolved.auto and "batch_size" not in resolved.auto


def test_resolve_dpo_defaults() -> None:
    spec = parse_spec(minimal(method="dpo"), base_dir="/s")
    resolved = resolve(spec, DatasetStats(n_examples=500, max_tokens=100, data_format="preference"))
    assert resolved.beta == 0.1 and resolved.learning_rate_multiplier == 0.25 and "beta" in resolved.auto


def test_train_on_inputs_auto_depends_on_the_format() -> None:
    assert resolve_train_on_inputs("auto", "text") is True
    assert resolve_train_on_inputs("auto", "chat") is False
    assert resolve_train_on_inputs("auto", "prompt_completion") is False
    assert resolve_train_on_inputs(True, "chat") is True


def test_fingerprint_tracks_what_changes_the_run() -> None:
    a = parse_spec(minimal(), base_dir="/a")
    moved = parse_spec(minimal(), base_dir="/elsewhere")
    other = parse_spec(hp(lora_r=8), base_dir="/a")
    assert spec_fingerprint(a) == spec_fingerprint(moved)
    assert spec_fingerprint(a) != spec_fingerprint(other)


def test_json_schema_is_available_for_the_control_plane() -> None:
    schema = JobSpec.model_json_schema()
    assert "hyperparameters" in schema["properties"]


def test_light_modules_do_not_import_the_torch_stack() -> None:
    code = (
        "import sys, gpu_runner.spec, gpu_runner.events, gpu_runner.train, gpu_runner.train.signals, "
        "gpu_runner.cli; heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'bitsandbytes') "
        "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
