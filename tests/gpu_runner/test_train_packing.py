"""SFT with packing: examples are packed into max_seq_length rows and trained padding-free (the
no-cross-attention property itself is checked in test_train_data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpu_runner.events import read_events
from gpu_runner.tiny_model import build_tiny_model

pytestmark = pytest.mark.training

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "var" / "models" / "tailor-tiny"


def test_packed_training_runs_padding_free(tmp_path: Path) -> None:
    from gpu_runner.cli import main

    build_tiny_model(TINY)
    lines = (ROOT / "gpu_runner" / "data" / "task" / "train.jsonl").read_text().splitlines()[:64]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    spec = {
        "spec_version": 1,
        "method": "supervised",
        "base_model": {"path": str(TINY), "name": "tailor-tiny"},
        "training_file": "train.jsonl",
        "hyperparameters": {
            "n_epochs": 2,
            "batch_size": 2,
            "learning_rate": 0.003,
            "packing": True,
            "max_seq_length": 256,
            "gradient_checkpointing": False,
        },
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code = main(
        [
            "train",
            str(tmp_path / "spec.json"),
            "--output",
            str(tmp_path / "out"),
            "--events",
            str(tmp_path / "events.jsonl"),
        ]
    )
    assert code == 0
    events = list(read_events(tmp_path / "events.jsonl"))
    ready = next(e["data"]["training"] for e in events if e["type"] == "dataset_ready")
    resolved = next(e["data"]["hyperparameters"] for e in events if e["type"] == "hyperparameters_resolved")
    assert ready["examples"] == 64 and ready["tokens"] / 256 <= ready["packed_rows"] < 64 / 2
    assert resolved["packing"] is True and resolved["steps_per_epoch"] == -(-ready["packed_rows"] // 2)
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    assert len(metrics) == resolved["total_steps"]
    # Padding-free rows carry no padding: every counted token is a real one, each seen once per epoch.
    assert metrics[-1]["trained_tokens"] == 2 * ready["tokens"]
    assert metrics[-1]["train_loss"] < 0.8 * metrics[0]["train_loss"]
