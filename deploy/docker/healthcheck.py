#!/usr/bin/env python3
"""Container health checks for Tailor's images: cheap enough to run every minute, specific enough to mean
something. Installed as `tailor-healthcheck` in both images.

    tailor-healthcheck http URL                   URL answers 2xx (the API's /healthz, a server's /health)
    tailor-healthcheck celery NODE                the Celery node NODE@<this host> answers a ping
    tailor-healthcheck fresh PATTERN SECONDS      a file matching PATTERN changed in the last SECONDS

`celery` is the check of the workers. `celery inspect ping` from the command line would start Celery's
whole CLI and broadcast to every node; this sends one ping addressed to this container's node only and
waits for its pong, which proves what matters: the worker's consumer is connected to the broker and
answering. A GPU worker answers while it trains, because the job runs in a pool thread and a subprocess,
not in the consumer's event loop.

`fresh` is the check of beat, which serves nothing to ask: its schedule file is rewritten every few
minutes while it runs (Celery's scheduler syncs it every 3 minutes), so a stale file means a stuck beat.

Exit status 0 when healthy, 1 when not or when the check itself is malformed (Docker reserves 2), with
the reason on stderr.
"""

from __future__ import annotations

import glob
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

USAGE = "usage: tailor-healthcheck http URL | celery NODE | fresh PATTERN SECONDS"


def check_http(url: str, *, timeout: float = 4.0) -> str | None:
    """None when `url` answers 2xx within `timeout`, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a URL of our own
            status = response.status
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{url} did not answer: {exc}"
    return None if 200 <= status < 300 else f"{url} answered {status}"


def check_celery(node: str, *, timeout: float = 10.0) -> str | None:
    """None when the Celery node `node@<hostname>` (Celery's `%h`) answers a ping within `timeout`."""
    from workers.app import app

    destination = node if "@" in node else f"{node}@{socket.gethostname()}"
    try:
        replies = app.control.ping(destination=[destination], timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any broker failure means "not healthy"
        return f"cannot reach the broker: {exc}"
    if not any(destination in reply for reply in replies or []):
        return f"Celery node {destination} did not answer a ping within {timeout:g}s"
    return None


def check_fresh(pattern: str, max_age: float, *, now: float | None = None) -> str | None:
    """None when a file matching `pattern` was modified less than `max_age` seconds ago."""
    mtimes = []
    for path in glob.glob(pattern):
        try:
            mtimes.append(os.stat(path).st_mtime)
        except FileNotFoundError:  # replaced between glob and stat
            continue
    if not mtimes:
        return f"no file matches {pattern}"
    age = (time.time() if now is None else now) - max(mtimes)
    return None if age <= max_age else f"{pattern} last changed {age:.0f}s ago (limit {max_age:g}s)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "http":
        problem = check_http(args[1])
    elif len(args) == 2 and args[0] == "celery":
        # The broker settings come from the environment alone: no Django fix-up in a health check.
        os.environ.pop("DJANGO_SETTINGS_MODULE", None)
        problem = check_celery(args[1])
    elif len(args) == 3 and args[0] == "fresh":
        try:
            max_age = float(args[2])
        except ValueError:
            print(f"unhealthy: SECONDS must be a number, got {args[2]!r}", file=sys.stderr)
            return 1
        problem = check_fresh(args[1], max_age)
    else:
        # A wrong check is a broken container definition: unhealthy (Docker reserves exit status 2).
        print(f"unhealthy: {USAGE}", file=sys.stderr)
        return 1
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
