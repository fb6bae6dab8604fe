"""The command line: bad input fails fast with exit code 2 and one error event, before any model is
loaded; events go to stdout when no file is given; make-tiny-model reuses its cache."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gpu_runner.events import read_events

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "var" / "models" / "tailor-tiny"


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpu_runner", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def write_spec(folder: Path, **overrides: Any) -> Path:
    spec: dict[str, Any] = {
        "spec_version": 1,
        "method": "supervised",
        "base_model": {"path": str(TINY), "name": "tailor-tiny"},
        "training_file": "train.jsonl",
    }
    spec.update(overrides)
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def test_invalid_spec_fails_fast_without_loading_anything(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        base_model={"path": "missing-model", "name": "x"},
        hyperparameters={"n_epochs": 0, "packing": "yes"},
    )
    events = tmp_path / "events.jsonl"
    probe = (
        "import sys, time; from gpu_runner.cli import main; start = time.monotonic(); "
        f"code = main(['train', {str(spec)!r}, '--output', {str(tmp_path / 'out')!r}, '--events', "
        f"{str(events)!r}]); elapsed = time.monotonic() - start; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules]; "
        "print(code, heavy, round(elapsed, 2)); sys.exit(0 if code == 2 and not heavy and elapsed < 5 else 1)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (error,) = list(read_events(events))
    assert error["type"] == "error" and error["data"]["code"] == "invalid_spec"
    fields = {issue["field"] for issue in error["data"]["issues"]}
    assert fields == {"hyperparameters.n_epochs", "hyperparameters.packing"}
    assert not (tmp_path / "out").exists()


def test_missing_files_are_named(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    result = run_cli(
        "train", str(spec), "--output", str(tmp_path / "out"), "--events", str(tmp_path / "e.jsonl")
    )
    assert result.returncode == 2
    error = list(read_events(tmp_path / "e.jsonl"))[-1]["data"]
    assert error["param"] == "training_file" and "does not exist" in error["issues"][0]["message"]


@pytest.fixture(scope="module")
def tiny_model() -> Path:
    from gpu_runner.tiny_model import build_tiny_model

    return build_tiny_model(TINY)


def test_invalid_training_file_names_the_line_and_events_go_to_stdout(
    tmp_path: Path, tiny_model: Path
) -> None:
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {"messages": [{"role": "robot", "content": "q"}]}
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in (good, good, bad, good)) + "\n")
    spec = write_spec(tmp_path)
    started = time.monotonic()
    result = run_cli("train", str(spec), "--output", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    events = [json.loads(line) for line in lines]  # stdout holds nothing but events
    assert [e["type"] for e in events] == ["started", "error"]
    error = events[-1]["data"]
    assert (
        error["code"] == "invalid_training_file" and error["line"] == 3 and error["param"] == "training_file"
    )
    assert error["field"] == "messages[0].role" and error["issue_code"] == "unrecognized_role"
    assert "line 3" in events[-1]["message"]
    print(f"\ninvalid training file refused after {time.monotonic() - started:.1f}s (process start included)")


def test_resume_from_a_missing_checkpoint_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    (tmp_path / "train.jsonl").write_text(json.dumps(good) + "\n")
    spec = write_spec(tmp_path)
    result = run_cli(
        "train",
        str(spec),
        "--output",
        str(tmp_path / "out"),
        "--events",
        str(tmp_path / "e.jsonl"),
        "--resume-from",
        str(tmp_path / "nope"),
    )
    assert result.returncode == 2
    error = list(read_events(tmp_path / "e.jsonl"))[-1]["data"]
    assert error["code"] == "invalid_spec" and error["param"] == "resume_from"


def test_bad_command_lines_exit_with_2() -> None:
    assert run_cli("train").returncode == 2
    assert run_cli("fly").returncode == 2


def test_make_tiny_model_prints_the_model_path(tiny_model: Path) -> None:
    started = time.monotonic()
    result = run_cli("make-tiny-model", str(tiny_model))
    assert result.returncode == 0, result.stderr[-2000:]
    assert Path(result.stdout.strip()) == tiny_model
    assert time.monotonic() - started < 60  # cached: nothing is rebuilt
    assert (tiny_model / "config.json").is_file()
