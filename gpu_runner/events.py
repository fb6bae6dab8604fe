"""The runner's event stream and exit codes: how a training run reports to whoever started it.

Each event is one JSON object per line, shaped like OpenAI's `fine_tuning.job.event`:
`{"type", "created_at", "level", "message", "data"}`. `type` is one of `EVENT_TYPES`; `data` holds the
machine-readable fields listed in docs/gpu_runner.md. The GPU worker tails this stream and turns it
into JobEvents; the exit code tells it how the run ended even when the stream was cut short.

Light on purpose (standard library only): the control plane imports the codes and `read_events`.
"""

from __future__ import annotations

import enum
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

EVENT_TYPES = frozenset(
    {
        "started",
        "dataset_ready",
        "hyperparameters_resolved",
        "model_loaded",
        "metrics",
        "eval",
        "checkpoint_saved",
        "warning",
        "completed",
        "cancelled",
        "error",
    }
)

Level = Literal["info", "warn", "error"]


class ErrorCode(enum.StrEnum):
    """Stable codes of the `error` event; the control plane stores them in `job.error.code`."""

    INVALID_SPEC = "invalid_spec"
    INVALID_TRAINING_FILE = "invalid_training_file"
    INVALID_VALIDATION_FILE = "invalid_validation_file"
    OUT_OF_MEMORY = "out_of_memory"
    MODEL_LOAD_FAILED = "model_load_failed"
    INTERNAL_ERROR = "internal_error"

    def __str__(self) -> str:
        return self.value


class ExitCode(enum.IntEnum):
    """Process exit codes of `python -m gpu_runner train`."""

    SUCCEEDED = 0
    FAILED = 1  # internal_error, model_load_failed: anything not listed below
    INVALID_INPUT = 2  # invalid_spec, invalid_training_file, invalid_validation_file; also bad command lines
    STOPPED = 3  # SIGTERM/SIGINT: checkpoint written (when training had begun), then exit; cancel or pause
    OUT_OF_MEMORY = 4  # out_of_memory (GPU or host)


EXIT_CODE_FOR_ERROR = {
    ErrorCode.INVALID_SPEC: ExitCode.INVALID_INPUT,
    ErrorCode.INVALID_TRAINING_FILE: ExitCode.INVALID_INPUT,
    ErrorCode.INVALID_VALIDATION_FILE: ExitCode.INVALID_INPUT,
    ErrorCode.OUT_OF_MEMORY: ExitCode.OUT_OF_MEMORY,
    ErrorCode.MODEL_LOAD_FAILED: ExitCode.FAILED,
    ErrorCode.INTERNAL_ERROR: ExitCode.FAILED,
}


def _json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON; a diverged loss is reported as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def make_event(
    type: str, message: str, *, level: Level = "info", created_at: float | None = None, **data: Any
) -> dict[str, Any]:
    """Build one event dict; `type` must be one of `EVENT_TYPES`."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    return {
        "type": type,
        "created_at": round(time.time() if created_at is None else created_at, 3),
        "level": level,
        "message": message,
        "data": _json_safe(data),
    }


class EventWriter:
    """Writes events as JSON lines to a file (appending) or a text stream, flushing each line so a
    reader tailing the file sees progress as it happens."""

    def __init__(self, target: str | os.PathLike[str] | IO[str] | None) -> None:
        self._lock = threading.Lock()
        self._owned = False
        self._stream: IO[str] | None
        if target is None:
            self._stream = None
        elif isinstance(target, str | os.PathLike):
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._stream = open(path, "a", encoding="utf-8", buffering=1)
            self._owned = True
        else:
            self._stream = target
        self.last: dict[str, Any] | None = None

    def emit(self, type: str, message: str, *, level: Level = "info", **data: Any) -> dict[str, Any]:
        """Write one event and return it."""
        event = make_event(type, message, level=level, **data)
        self.last = event
        if self._stream is not None:
            line = json.dumps(event, ensure_ascii=False, allow_nan=False)
            with self._lock:
                self._stream.write(line + "\n")
                self._stream.flush()
        return event

    def error(self, code: ErrorCode, message: str, **data: Any) -> dict[str, Any]:
        """Write the run's one `error` event with its stable code."""
        return self.emit("error", message, level="error", code=code.value, **data)

    def close(self) -> None:
        """Close the file when this writer opened it."""
        if self._owned and self._stream is not None:
            self._stream.close()
            self._stream = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullEventWriter(EventWriter):
    """Used on every rank but the first under DDP, so that only one process reports."""

    def __init__(self) -> None:
        super().__init__(None)


def read_events(source: str | os.PathLike[str] | IO[str]) -> Iterator[dict[str, Any]]:
    """Parse an event stream. A last line cut short by a killed writer is skipped; any other
    malformed line raises `ValueError` naming its line number."""
    if isinstance(source, str | os.PathLike):
        lines = Path(source).read_text(encoding="utf-8").split("\n")
    else:
        lines = source.read().split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            if number == len(lines):  # a torn final line (no newline after it)
                return
            raise ValueError(f"event stream line {number} is not JSON") from None
        if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
            raise ValueError(f"event stream line {number} is not an event")
        yield event
