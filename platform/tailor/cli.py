"""The `tailor` console script: Django's management commands with Tailor's settings, plus workers.

tailor migrate | runserver | createteam … | createkey … | check --deploy | …   (any manage.py command)
tailor worker control [celery worker options]   consume the control queue (validation, job bookkeeping)
tailor worker gpu --gpu-class NAME [options]     train jobs of one GPU class (workers.gpu; no database)
tailor worker beat [celery beat options]         send the periodic control tasks (scheduler, reconciler)
tailor worker agent --endpoint NAME              deliver adapters to the vLLM server beside it (no database)
tailor basemodel add NAME --source DIR           register a base model teams may fine-tune
tailor endpoint sync|add|list|check              register inference endpoints (TAILOR_ENDPOINTS, or one by one)
tailor serve --model DIR --served-model-name NAME [options]
                                                 the development serving endpoint (gpu_runner.serve; no database)
tailor demo                                      the walkthrough behind `make demo`
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path


def _load_settings() -> str | None:
    """Load the settings once, up front, so a configuration error is one clear line, not a traceback."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        settings.INSTALLED_APPS  # noqa: B018 - forces the settings module to load
    except ImproperlyConfigured as exc:
        return str(exc)
    return None


WORKERS = ("control", "gpu", "beat", "agent")


def run_worker(kind: str, extra: Sequence[str]) -> int:
    """Run a worker of `kind` in this process: `control` and `beat` need Django's settings, `gpu` does not
    (GPU nodes hold no database credentials)."""
    if kind == "gpu":
        from workers.gpu import main as gpu_main

        return int(gpu_main(list(extra)) or 0)
    if kind == "agent":
        from workers.agent import main as agent_main

        return int(agent_main(list(extra)) or 0)
    if kind not in WORKERS:
        print(f"tailor worker: unknown worker {kind!r}; available: {', '.join(WORKERS)}", file=sys.stderr)
        return 2
    import django

    django.setup()
    from workers.app import app, control_queue

    loglevel = os.environ.get("TAILOR_LOG_LEVEL", "INFO")
    if kind == "beat":
        from django.conf import settings

        home = Path(settings.TAILOR_HOME)
        home.mkdir(parents=True, exist_ok=True)
        app.start(["beat", "--loglevel", loglevel, "--schedule", str(home / "celerybeat-schedule"), *extra])
        return 0
    argv = [
        "worker",
        "--queues",
        control_queue(),
        "--include",
        "workers.control.tasks",
        "--hostname",
        "control@%h",
        # Mingle and gossip are cluster chatter these workers never use; they also add broker traffic.
        "--without-mingle",
        "--without-gossip",
        "--loglevel",
        loglevel,
        *extra,
    ]
    app.worker_main(argv)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tailor` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:2] in (["worker", "gpu"], ["worker", "agent"]):
        # Before anything of Django: GPU and inference nodes have no database and no secret key.
        return run_worker(args[1], args[2:])
    if args[:1] == ["serve"]:
        # Likewise: an inference node runs the development server without the control plane's settings.
        from gpu_runner.serve import main as serve_main

        return serve_main(args[1:], prog="tailor serve")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tailor.settings")
    if args[:1] == ["demo"]:
        from tailor.demo import main as demo_main

        return demo_main()
    problem = _load_settings()
    if problem is not None:
        print(f"tailor: configuration error: {problem}", file=sys.stderr)
        return 2
    if args[:1] == ["worker"]:
        if len(args) < 2:
            print("usage: tailor worker control|gpu|beat|agent [options]", file=sys.stderr)
            return 2
        return run_worker(args[1], args[2:])
    from django.core.management import execute_from_command_line

    execute_from_command_line(["tailor", *args])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
