"""Tailor's Django settings, composed from one module per integration.

Everything is configured by environment variables (12-factor); a `.env` file in the working directory
fills in what the OS environment leaves unset. With nothing set, the platform runs on one machine with
no external service: SQLite and the object store under `TAILOR_HOME` (default `./var`). `.env.example`
lists every variable.

The Celery broker is configured in `workers.app`, which stays Django-free so that GPU workers share it.
"""

from tailor.settings.base import *  # noqa: F403
from tailor.settings.database import *  # noqa: F403
from tailor.settings.env import *  # noqa: F403
from tailor.settings.jobs import *  # noqa: F403
from tailor.settings.observability import *  # noqa: F403
from tailor.settings.registry import *  # noqa: F403
from tailor.settings.security import *  # noqa: F403
from tailor.settings.storage import *  # noqa: F403
