"""Checkpoint files: no pickles, exact round trips, atomic writes, and discovery that never picks a
half-written or corrupted checkpoint."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gpu_runner.train.checkpoints import (
    MANIFEST_NAME,
    TEMP_PREFIX,
    CheckpointError,
    capture_rng_state,
    find_latest_checkpoint,
    list_checkpoints,
    load_state_tree,
    read_manifest,
    remove_stale_temporaries,
    restore_rng_state,
    rotate_checkpoints,
    save_state_tree,
    write_checkpoint,
)


def _trained_optimizer() -> tuple[
    torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler
]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def test_optimizer_and_scheduler_state_round_trip_exactly(tmp_path: Path) -> None:
    model, optimizer, scheduler = _trained_optimizer()
    files = save_state_tree(optimizer.state_dict(), tmp_path, "optimizer")
    save_state_tree(scheduler.state_dict(), tmp_path, "scheduler")
    assert files == ["optimizer.json", "optimizer.safetensors"]

    restored = torch.optim.AdamW(model.parameters(), lr=1.0)
    restored.load_state_dict(load_state_tree(tmp_path, "optimizer"))
    original = optimizer.state_dict()
    again = restored.state_dict()
    assert again["param_groups"] == original["param_groups"]  # betas come back as a tuple, lr exact
    for index, state in original["state"].items():
        for key, value in state.items():
            assert torch.equal(again["state"][index][key], value), (index, key)
    restored_scheduler = torch.optim.lr_scheduler.LambdaLR(restored, lambda step: 1.0 / (step + 1))
    restored_scheduler.load_state_dict(load_state_tree(tmp_path, "scheduler"))
    assert restored_scheduler.get_last_lr() == scheduler.get_last_lr()


def test_state_trees_keep_odd_values_and_refuse_what_would_need_pickle(tmp_path: Path) -> None:
    tree = {"nan": float("nan"), "inf": -math.inf, 3: (1, "a", None), "__x": [True, 2.5]}
    save_state_tree(tree, tmp_path, "odd")
    back = load_state_tree(tmp_path, "odd")
    assert math.isnan(back["nan"]) and back["inf"] == -math.inf
    assert back[3] == (1, "a", None) and back["__x"] == [True, 2.5]
    with pytest.raises(TypeError, match="without pickle"):
        save_state_tree({"fn": lambda: 1}, tmp_path, "bad")
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.pt"))


def test_rng_state_restores_every_generator() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = json.loads(json.dumps(capture_rng_state()))  # must survive JSON
    first = (
        random.random(),
        float(np.random.rand()),
        torch.rand(3).tolist(),
        torch.nn.functional.dropout(torch.ones(8), 0.5).tolist(),
    )
    random.random(), np.random.rand(), torch.rand(5)
    restore_rng_state(state)
    second = (
        random.random(),
        float(np.random.rand()),
        torch.rand(3).tolist(),
        torch.nn.functional.dropout(torch.ones(8), 0.5).tolist(),
    )
    assert first == second


def _write(directory: Path, step: int) -> Path:
    return write_checkpoint(
        directory, step, lambda tmp: (tmp / "weights.json").write_text(json.dumps([step])), {"epoch": 1.0}
    )


def test_checkpoints_are_renamed_into_place_with_a_manifest(tmp_path: Path) -> None:
    path = _write(tmp_path, 7)
    assert path == tmp_path / "checkpoint-7"
    manifest = read_manifest(path)
    assert manifest["step"] == 7 and manifest["epoch"] == 1.0
    assert set(manifest["files"]) == {"weights.json"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    def explode(tmp: Path) -> None:
        (tmp / "weights.json").write_text("[1]")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(tmp_path, 3, explode, {})
    assert list(tmp_path.iterdir()) == []


def test_latest_checkpoint_skips_half_written_and_corrupt_ones(tmp_path: Path) -> None:
    _write(tmp_path, 2)
    _write(tmp_path, 4)
    # A folder a killed writer left without its manifest, under a final-looking name.
    (tmp_path / "checkpoint-9").mkdir()
    (tmp_path / "checkpoint-9" / "weights.json").write_text("[9]")
    # A temporary folder is never a candidate.
    (tmp_path / f"{TEMP_PREFIX}12-999").mkdir()
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    # A file changed after the manifest was written: the digest check skips that checkpoint too.
    (tmp_path / "checkpoint-4" / "weights.json").write_text("[5]")
    with pytest.raises(CheckpointError, match="does not match its digest"):
        read_manifest(tmp_path / "checkpoint-4")
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    with pytest.raises(CheckpointError, match=MANIFEST_NAME):
        read_manifest(tmp_path / "checkpoint-9")
    remove_stale_temporaries(tmp_path)
    assert not (tmp_path / f"{TEMP_PREFIX}12-999").exists()


def test_saving_a_step_again_replaces_it_whole(tmp_path: Path) -> None:
    _write(tmp_path, 5)
    write_checkpoint(tmp_path, 5, lambda tmp: (tmp / "other.json").write_text("{}"), {})
    assert sorted(p.name for p in (tmp_path / "checkpoint-5").iterdir()) == sorted(
        [MANIFEST_NAME, "other.json"]
    )
    assert read_manifest(tmp_path / "checkpoint-5")["files"].keys() == {"other.json"}


def test_rotation_keeps_the_newest(tmp_path: Path) -> None:
    for step in (1, 2, 10, 20):
        _write(tmp_path, step)
    removed = rotate_checkpoints(tmp_path, keep=2)
    assert [p.name for p in removed] == ["checkpoint-1", "checkpoint-2"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-20"]
