"""The GPU worker: a Celery worker on a GPU node that trains dispatched jobs with gpu_runner.

    tailor worker gpu --gpu-class default          (or: python -c 'import workers.gpu as g; g.main([...])')

It consumes one GPU-class queue (`TAILOR_GPU_QUEUE`, else the class's queue in `TAILOR_GPU_CLASSES`, else
`gpu.<class>`), one job at a time, and
acknowledges each message when the job starts, so a multi-hour job never waits on the Redis visibility
timeout and is never delivered twice:

- a pool of one thread, not the solo pool: under the solo pool the job would block Celery's event loop,
  and the loop is where Celery sends the acknowledgement, so the message would stay unacknowledged in
  Redis for the whole job and be redelivered once the visibility timeout passed;
- `--disable-prefetch` (Redis): the worker reserves a message only while its one thread is free, so the
  next job waits in the queue for any worker of the class rather than inside a busy one;
- the job's supervisor runs in the worker process, and the runner subprocess has a parent-death signal:
  `kill -9` of the worker ends both.

On a node whose class lists several GPUs (`TAILOR_GPU_CLASSES`, `name:memory_gib:queue:gpus`) each job
runs under torchrun, one process per GPU (`workers.gpu.launch`).

It imports no Django and holds no database credentials: only `workers.app`, `gpu_runner`'s light
modules and the object store. See docs/job-protocol.md for the messages.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence

from gpu_runner.memory import parse_gpu_classes

_CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def gpu_queue(gpu_class: str, environ: Mapping[str, str] | None = None) -> str:
    """The queue a worker of `gpu_class` consumes: `TAILOR_GPU_QUEUE` when set, else the class's queue in
    `TAILOR_GPU_CLASSES` (where the control plane sends its jobs) when it lists the class, else `gpu.<class>`."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("TAILOR_GPU_QUEUE", "").strip()
    if explicit:
        return explicit
    try:
        classes = parse_gpu_classes(environ.get("TAILOR_GPU_CLASSES", ""))
    except ValueError:
        classes = []  # reported when a job starts (workers.gpu.launch.node_gpu_class)
    listed = next((c.queue for c in classes if c.name == gpu_class), None)
    return listed or f"gpu.{gpu_class}"


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailor worker gpu", description="Train fine-tuning jobs of one GPU class, one at a time."
    )
    parser.add_argument(
        "--gpu-class",
        default=environ.get("TAILOR_GPU_CLASS", "default"),
        metavar="NAME",
        help="the GPU class this node serves; its queue is gpu.NAME unless TAILOR_GPU_QUEUE "
        "is set (default: TAILOR_GPU_CLASS or 'default')",
    )
    parser.add_argument(
        "--loglevel",
        "-l",
        default=environ.get("TAILOR_LOG_LEVEL", "INFO").upper(),
        type=str.upper,
        choices=LOG_LEVELS,
    )
    parser.add_argument(
        "--hostname",
        "-n",
        default=None,
        help="Celery node name (default: gpu-NAME@%%h); reported to the control plane",
    )
    return parser


def worker_argv(
    argv: Sequence[str], environ: Mapping[str, str] | None = None, broker_url: str = ""
) -> list[str]:
    """The `celery worker` command line for a GPU worker started with `argv`.

    Raises `SystemExit` (from argparse) on a bad command line.
    """
    environ = os.environ if environ is None else environ
    parser = _parser(environ)
    args = parser.parse_args(list(argv))
    if not _CLASS_NAME.match(args.gpu_class):
        parser.error(f"--gpu-class {args.gpu_class!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    command = [
        "worker",
        "--queues",
        gpu_queue(args.gpu_class, environ),
        "--hostname",
        args.hostname or f"gpu-{args.gpu_class}@%h",
        # One job per GPU, in one thread of this process: see the module docstring.
        "--pool",
        "threads",
        "--concurrency",
        "1",
        "--prefetch-multiplier",
        "1",
        # Mingle and gossip are cluster chatter these workers never use.
        "--without-mingle",
        "--without-gossip",
        "--loglevel",
        args.loglevel,
    ]
    if broker_url.startswith(("redis://", "rediss://")):
        # Reserve a message only when the pool has a free slot (Celery supports this on Redis only).
        command.append("--disable-prefetch")
    return command


def main(argv: Sequence[str] | None = None) -> int:
    """Run a GPU worker in this process until it is stopped; returns the exit status."""
    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        # Celery installs its Django fix-up (django.setup() at worker start) when the app is created with
        # this variable set; a GPU node has no database settings to set up.
        if "workers.app" in sys.modules:
            print(
                "tailor worker gpu: workers.app was imported with DJANGO_SETTINGS_MODULE set; start the GPU "
                "worker before anything imports Django settings or the Celery app",
                file=sys.stderr,
            )
            return 2
        del os.environ["DJANGO_SETTINGS_MODULE"]
    from workers.app import app

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        command = worker_argv(args, broker_url=str(app.conf.broker_url or ""))
    except SystemExit as exc:  # argparse: --help exits 0, a bad command line 2
        return int(exc.code or 0)
    # Jobs read the node's class (GPUs per node, memory per GPU) from TAILOR_GPU_CLASSES under this name.
    os.environ["TAILOR_GPU_CLASS"] = _parser(os.environ).parse_args(args).gpu_class
    import workers.gpu.tasks  # noqa: F401 - registers tailor.gpu.run_job and the shutdown hook

    app.worker_main(command)
    return 0
