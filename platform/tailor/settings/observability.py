"""Logs, metrics and readiness.

- `TAILOR_LOG_FORMAT`: `json` (one object a line, for log shippers) or `text`; default json in
  production, text in development. `TAILOR_LOG_LEVEL` (INFO): the root level. Lines carry `request_id`,
  `team`, `task` and `job_id` where known (workers.logcontext, tailor.core.logging).
- `TAILOR_METRICS_TOKEN`: when set, `GET /metrics` wants `Authorization: Bearer <token>`; unset, it is
  open, as usual when only the cluster network reaches it.
- `PROMETHEUS_MULTIPROC_DIR`: read by prometheus-client itself. Set it (to an empty folder that exists
  and is emptied at each start) when the API runs as several processes, e.g. gunicorn workers, so that
  `/metrics` sums the request histograms of all of them; unset, each process answers for itself.
- `TAILOR_READYZ_TIMEOUT` (s, 3): how long `/readyz` waits for the broker and the object store.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from tailor.settings.env import PRODUCTION, env
from workers.logcontext import LOG_FORMATS, logging_config

TAILOR_LOG_FORMAT = env.str("TAILOR_LOG_FORMAT", default="json" if PRODUCTION else "text").strip().lower()
if TAILOR_LOG_FORMAT not in LOG_FORMATS:
    raise ImproperlyConfigured(f"TAILOR_LOG_FORMAT must be 'json' or 'text', not {TAILOR_LOG_FORMAT!r}")
TAILOR_LOG_LEVEL = env.str("TAILOR_LOG_LEVEL", default="INFO").upper()

LOGGING = logging_config(
    fmt=TAILOR_LOG_FORMAT, level=TAILOR_LOG_LEVEL, context_filter="tailor.core.logging.RequestContextFilter"
)
# `tailor runserver` logs each request through a handler of Django's own: send it through ours.
LOGGING["loggers"] = {"django.server": {"handlers": ["console"], "level": "INFO", "propagate": False}}

TAILOR_METRICS_TOKEN = env.str("TAILOR_METRICS_TOKEN", default="")

# prometheus-client reads the variable when it is imported and fails on the first metric if the folder
# is missing; say so here, once, in words.
_multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if _multiproc_dir and not Path(_multiproc_dir).is_dir():
    raise ImproperlyConfigured(
        f"PROMETHEUS_MULTIPROC_DIR={_multiproc_dir!r} is not a folder; create it (empty) before the API starts"
    )

TAILOR_READYZ_TIMEOUT = env.float("TAILOR_READYZ_TIMEOUT", default=3.0)
if TAILOR_READYZ_TIMEOUT <= 0:
    raise ImproperlyConfigured(f"TAILOR_READYZ_TIMEOUT must be positive, got {TAILOR_READYZ_TIMEOUT}")

__all__ = [
    "TAILOR_LOG_FORMAT",
    "TAILOR_LOG_LEVEL",
    "LOGGING",
    "TAILOR_METRICS_TOKEN",
    "TAILOR_READYZ_TIMEOUT",
]
