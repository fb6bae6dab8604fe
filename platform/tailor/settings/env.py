"""Where settings come from: the OS environment first, then `.env`, then embedded defaults."""

from __future__ import annotations

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

env = environ.Env()

# OS variables win: read_env only fills in names the environment does not already define.
_ENV_FILE = Path(os.environ.get("TAILOR_ENV_FILE", ".env"))
if _ENV_FILE.is_file():
    environ.Env.read_env(str(_ENV_FILE), overwrite=False)

TAILOR_ENV = env.str("TAILOR_ENV", default="development")
if TAILOR_ENV not in {"development", "production"}:
    raise ImproperlyConfigured(f"TAILOR_ENV must be 'development' or 'production', not {TAILOR_ENV!r}")
PRODUCTION = TAILOR_ENV == "production"

# Home of the embedded defaults: SQLite database, filesystem broker, local object store, dev secret key.
TAILOR_HOME = Path(env.str("TAILOR_HOME", default="var")).expanduser().resolve()

# The URL users and the openai SDK reach the API at; printed by `createteam` and `createkey`.
TAILOR_PUBLIC_URL = env.str("TAILOR_PUBLIC_URL", default="http://127.0.0.1:8000/v1").rstrip("/")

__all__ = ["env", "TAILOR_ENV", "PRODUCTION", "TAILOR_HOME", "TAILOR_PUBLIC_URL"]
