"""The database: `DATABASE_URL` (PostgreSQL through psycopg 3 in production), SQLite under TAILOR_HOME by default."""

from __future__ import annotations

from tailor.settings.env import TAILOR_HOME, env

_default = env.db_url("DATABASE_URL", default=f"sqlite:///{TAILOR_HOME / 'tailor.sqlite3'}")

if _default["ENGINE"] == "django.db.backends.sqlite3":
    TAILOR_HOME.mkdir(parents=True, exist_ok=True)
    # The API server and the control worker write concurrently: WAL lets readers proceed during a
    # write, IMMEDIATE transactions take the write lock up front instead of failing half-way.
    _default.setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # A file, not Django's in-memory default, so worker processes started by the tests share it.
    _default["TEST"] = {"NAME": str(TAILOR_HOME / "test_tailor.sqlite3")}
else:
    _default["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    _default["CONN_HEALTH_CHECKS"] = True

DATABASES = {"default": _default}

__all__ = ["DATABASES"]
