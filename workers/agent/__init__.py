"""The endpoint agent: a Celery worker beside a vLLM server that puts adapters on that server's own disk.

    tailor worker agent --endpoint NAME     (consumes the queue endpoint.NAME)

vLLM reads LoRA adapters from its local filesystem only. When the registry cannot share a volume with
the server (another node, another cluster), the agent runs next to it (a sidecar in Kubernetes): it
downloads the adapter from the object store, checks every file's sha256 and size, writes the folder
atomically under `TAILOR_AGENT_ADAPTER_DIR`, and calls the server's `/v1/load_lora_adapter` on
`TAILOR_AGENT_API_URL`; undeploy unloads and removes the folder. It reports each outcome to the control
plane (`tailor.control.deployment_pushed`), which then sends the smoke request and marks the deployment
live or failed. Like the GPU worker it imports no Django and holds no database credentials.

Environment: `TAILOR_AGENT_API_URL` (default http://127.0.0.1:8000), `TAILOR_AGENT_ADAPTER_DIR`
(default `TAILOR_HOME/adapters`), `TAILOR_AGENT_API_KEY` (the server's --api-key, if any),
`TAILOR_STORAGE_URL` and the AWS variables for the object store, `CELERY_BROKER_URL`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,59}$")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the endpoint agent of one endpoint in this process until it is stopped."""
    parser = argparse.ArgumentParser(
        prog="tailor worker agent",
        description="Deliver adapters to the vLLM server beside this process (queue endpoint.NAME).",
    )
    parser.add_argument(
        "--endpoint",
        default=os.environ.get("TAILOR_AGENT_ENDPOINT", ""),
        metavar="NAME",
        help="the registered endpoint's name (default: TAILOR_AGENT_ENDPOINT)",
    )
    parser.add_argument("--loglevel", "-l", default=os.environ.get("TAILOR_LOG_LEVEL", "INFO").upper())
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not _NAME.match(args.endpoint or ""):
        parser.error(
            "--endpoint NAME is required: the endpoint's registered name (lowercase, digits, - and _)"
        )
    if os.environ.get("DJANGO_SETTINGS_MODULE") and "workers.app" not in sys.modules:
        # As for the GPU worker: no Django fix-up on a node without database settings.
        del os.environ["DJANGO_SETTINGS_MODULE"]
    import workers.agent.tasks  # noqa: F401 - registers the agent's tasks
    from workers.app import agent_queue, app

    app.worker_main(
        [
            "worker",
            "--queues",
            agent_queue(args.endpoint),
            "--hostname",
            f"agent-{args.endpoint}@%h",
            # One push at a time: vLLM serialises loads per name anyway, and downloads share one disk.
            "--pool",
            "threads",
            "--concurrency",
            "1",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            args.loglevel,
        ]
    )
    return 0
