"""What every Tailor process writes in its log lines besides the message: the request, team, task and
job a line is about, and the two formats those lines come in. Django-free, because GPU workers use it.

- Context: `request_id` and `team` in the API (set by `tailor.core.middleware`), `task`, `task_id` and
  `job_id` in Celery tasks (set by the task signal handlers below, for the control and GPU workers
  alike). The fields live in a context variable, so threads and tasks never see each other's;
  `ContextFilter` copies them onto every record that passes a handler.
- `TAILOR_LOG_FORMAT=json`: one JSON object a line (python-json-logger) with `timestamp`, `level`,
  `logger`, `message`, the context fields and any `extra=` of the call: what Loki, Elasticsearch or
  CloudWatch index. `text`: `time LEVEL logger: message [job_id=… task=…]` for a terminal. The default
  is json when `TAILOR_ENV=production`, text otherwise.

Django processes (the API, the control worker, beat) configure logging from `LOGGING` in the settings
(`tailor.settings.observability`); a GPU worker or endpoint agent has no settings, so the Celery
`setup_logging` handler here configures it from the same variables when the worker starts.
"""

from __future__ import annotations

import logging
import logging.config
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from celery.signals import setup_logging, task_postrun, task_prerun
from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

LOG_FORMATS = ("json", "text")
# The context fields, in the order the text format prints them.
CONTEXT_FIELDS = ("request_id", "team", "task", "task_id", "job_id")
JOB_ID_PREFIX = "ftjob-"

# Immutable: binding makes a new mapping, so a thread never changes what another context sees.
_context: ContextVar[Mapping[str, str]] = ContextVar("tailor_log_context", default=MappingProxyType({}))


def log_context() -> dict[str, str]:
    """The context fields bound in the current thread or task."""
    return dict(_context.get())


def bind_log_context(**fields: str | None) -> Token[Mapping[str, str]]:
    """Add `fields` (None values are left out) to the current context; undo with `reset_log_context`."""
    merged = {**_context.get(), **{key: str(value) for key, value in fields.items() if value is not None}}
    return _context.set(MappingProxyType(merged))


def reset_log_context(token: Token[Mapping[str, str]]) -> None:
    """Restore the context as it was before the `bind_log_context` that returned `token`."""
    _context.reset(token)


def clear_log_context() -> None:
    """Forget every bound field (where a unit of work ends without a token to reset, e.g. a response)."""
    _context.set(MappingProxyType({}))


@contextmanager
def log_context_bound(**fields: str | None) -> Iterator[None]:
    """`with log_context_bound(job_id=…):` — the fields hold for the block's log lines."""
    token = bind_log_context(**fields)
    try:
        yield
    finally:
        reset_log_context(token)


class ContextFilter(logging.Filter):
    """Copies the bound context fields onto each record (never overriding an `extra=` of the call)."""

    def context_fields(self) -> Mapping[str, str]:
        return _context.get()

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.context_fields().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object a line: timestamp (ISO 8601, UTC), level, logger, message, then context and extras."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        super().__init__("%(levelname)s %(name)s %(message)s", **kwargs)

    def add_fields(
        self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        # First in the object, so a line read by eye starts with when it happened.
        log_record["timestamp"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat(
            timespec="milliseconds"
        )
        super().add_fields(log_record, record, message_dict)


class TextFormatter(logging.Formatter):
    """`2026-01-01 12:00:00,000 INFO logger: message [request_id=… team=…]`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{key}={getattr(record, key)}" for key in CONTEXT_FIELDS if getattr(record, key, None)]
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the bracket
        return f"{head} [{' '.join(fields)}]{newline}{rest}"


def log_format(environ: Mapping[str, str] | None = None) -> str:
    """`TAILOR_LOG_FORMAT`, or its default for `TAILOR_ENV` (json in production, text otherwise)."""
    environ = os.environ if environ is None else environ
    default = "json" if environ.get("TAILOR_ENV", "development") == "production" else "text"
    value = environ.get("TAILOR_LOG_FORMAT", "").strip().lower() or default
    if value not in LOG_FORMATS:
        raise ValueError(f"TAILOR_LOG_FORMAT must be 'json' or 'text', not {value!r}")
    return value


def logging_config(
    *, fmt: str, level: str, context_filter: str = "workers.logcontext.ContextFilter"
) -> dict[str, Any]:
    """A `logging.config.dictConfig` dictionary: the root logger writes `fmt` lines to stderr at `level`,
    every record passing `context_filter` (a dotted path) on the way."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be 'json' or 'text', not {fmt!r}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": context_filter}},
        "formatters": {
            "json": {"()": "workers.logcontext.JsonFormatter"},
            "text": {"()": "workers.logcontext.TextFormatter"},
        },
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": fmt, "filters": ["context"]},
        },
        "root": {"handlers": ["console"], "level": level.upper()},
    }


def configure_logging(*, level: str | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Configure the root logger of a process without Django settings (GPU worker, endpoint agent)."""
    environ = os.environ if environ is None else environ
    level = level or environ.get("TAILOR_LOG_LEVEL", "INFO")
    logging.config.dictConfig(logging_config(fmt=log_format(environ), level=level))


# Celery -----------------------------------------------------------------------------------------------


def job_id_of(args: Any, kwargs: Any) -> str | None:
    """The `ftjob-…` id a task message is about: a `job_id` argument, the `job_id` of a GPU dispatch, or
    the first positional argument that is one (the GPU workers' reports send it first)."""
    candidates: list[Any] = []
    if isinstance(kwargs, Mapping):
        candidates += [kwargs.get("job_id"), kwargs.get("dispatch")]
    if isinstance(args, list | tuple):
        candidates += list(args)
    for value in candidates:
        if isinstance(value, Mapping):
            value = value.get("job_id")
        if isinstance(value, str) and value.startswith(JOB_ID_PREFIX):
            return value
    return None


_task_tokens: dict[str, Token[Mapping[str, str]]] = {}


def _bind_task(
    task_id: str | None = None, task: Any = None, args: Any = None, kwargs: Any = None, **_: Any
) -> None:
    token = bind_log_context(
        task=getattr(task, "name", None), task_id=task_id, job_id=job_id_of(args, kwargs)
    )
    if task_id is not None:
        _task_tokens[task_id] = token


def _unbind_task(task_id: str | None = None, **_: Any) -> None:
    token = _task_tokens.pop(task_id, None) if task_id is not None else None
    if token is not None:
        try:
            reset_log_context(token)
        except ValueError:  # bound in another context (cannot happen with Celery's pools; be safe)
            pass


def _configure_worker_logging(loglevel: Any = None, **_: Any) -> None:
    """Celery's `setup_logging`: with a receiver, Celery leaves logging alone. A worker that loaded Django
    settings (control, beat) already has LOGGING applied: only its `--loglevel` is taken; the others
    (GPU worker, endpoint agent) are configured here."""
    level = logging.getLevelName(loglevel) if isinstance(loglevel, int) else (loglevel or None)
    root = logging.getLogger()
    if root.handlers:
        if level:
            root.setLevel(level)
        return
    configure_logging(level=level)


def connect_celery_signals() -> None:
    """Bind the task context around every task and configure worker logging (idempotent)."""
    task_prerun.connect(_bind_task, weak=False, dispatch_uid="tailor.logcontext.bind_task")
    task_postrun.connect(_unbind_task, weak=False, dispatch_uid="tailor.logcontext.unbind_task")
    setup_logging.connect(_configure_worker_logging, weak=False, dispatch_uid="tailor.logcontext.setup")
