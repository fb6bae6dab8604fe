"""The event stream is valid JSON lines a reader can tail, and the exit codes are stable."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from gpu_runner.events import (
    EVENT_TYPES,
    EXIT_CODE_FOR_ERROR,
    ErrorCode,
    EventWriter,
    ExitCode,
    NullEventWriter,
    make_event,
    read_events,
)


def test_events_are_json_lines_shaped_like_openai_events(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "events.jsonl"
    with EventWriter(path) as writer:
        writer.emit("metrics", "Step 1/2: training loss=1.0", step=1, total_steps=2, train_loss=1.0)
        writer.error(
            ErrorCode.INVALID_TRAINING_FILE, "train.jsonl line 3: bad", line=3, param="training_file"
        )
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert set(first) == {"type", "created_at", "level", "message", "data"}
    assert first["type"] == "metrics" and first["level"] == "info"
    assert first["data"] == {"step": 1, "total_steps": 2, "train_loss": 1.0}
    assert second["level"] == "error" and second["data"]["code"] == "invalid_training_file"
    assert second["data"]["line"] == 3


def test_each_event_is_flushed_as_it_is_written(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path)
    writer.emit("started", "go")
    assert json.loads(path.read_text())["type"] == "started"  # visible before close
    writer.close()


def test_a_second_writer_appends(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    for _ in range(2):
        with EventWriter(path) as writer:
            writer.emit("started", "go")
    assert [e["type"] for e in read_events(path)] == ["started", "started"]


def test_non_finite_numbers_become_null() -> None:
    stream = io.StringIO()
    EventWriter(stream).emit("metrics", "diverged", train_loss=float("nan"), grad_norm=float("inf"))
    event = json.loads(stream.getvalue())
    assert event["data"] == {"train_loss": None, "grad_norm": None}


def test_unknown_event_types_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        make_event("progress", "x")
    assert {
        "started",
        "metrics",
        "eval",
        "checkpoint_saved",
        "completed",
        "cancelled",
        "error",
    } <= EVENT_TYPES


def test_null_writer_writes_nothing() -> None:
    writer = NullEventWriter()
    event = writer.emit("started", "rank 1")
    assert event["type"] == "started" and writer.last is event


def test_reader_skips_a_torn_last_line_but_not_a_corrupt_middle_one() -> None:
    good = json.dumps(make_event("started", "go"))
    assert [e["type"] for e in read_events(io.StringIO(good + "\n" + good[:20]))] == ["started"]
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        list(read_events(io.StringIO(good + "\n{oops\n" + good + "\n")))
    with pytest.raises(ValueError, match="line 1 is not an event"):
        list(read_events(io.StringIO('{"type": "nope"}\n')))


def test_exit_codes_are_the_documented_ones() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4]
    assert EXIT_CODE_FOR_ERROR[ErrorCode.INVALID_SPEC] == ExitCode.INVALID_INPUT == 2
    assert EXIT_CODE_FOR_ERROR[ErrorCode.INVALID_TRAINING_FILE] == 2
    assert EXIT_CODE_FOR_ERROR[ErrorCode.OUT_OF_MEMORY] == ExitCode.OUT_OF_MEMORY == 4
    assert EXIT_CODE_FOR_ERROR[ErrorCode.INTERNAL_ERROR] == ExitCode.FAILED == 1
    assert ExitCode.STOPPED == 3
    assert set(EXIT_CODE_FOR_ERROR) == set(ErrorCode)
