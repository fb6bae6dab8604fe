"""Real platform processes for integration tests: control workers and API servers started as
`tailor …` subprocesses that share the test session's database, broker and object store
(import from `tests.tailor.processes`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.db import connection
from kombu import Exchange, Queue

from workers.app import app

ROOT = Path(__file__).resolve().parents[2]


def test_database_url() -> str:
    """A URL for the pytest-django test database, for processes the tests start."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] or ""
    if db.get("PASSWORD"):
        auth += f":{db['PASSWORD']}"
    host = db["HOST"] or "127.0.0.1"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}@{host}{port}/{db['NAME']}"


test_database_url.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def platform_env(tmp_home: Path, storage_url: str, **extra: str) -> dict[str, str]:
    """Environment for a platform process that shares this test session's database, broker and store."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "TAILOR_", "DATABASE_")) and key != "CELERY_BROKER_URL"
    }
    inherited = [path for path in os.environ.get("PYTHONPATH", "").split(os.pathsep) if path]
    env.update(
        DJANGO_SETTINGS_MODULE="tailor.settings",
        PYTHONPATH=os.pathsep.join([str(ROOT / "platform"), str(ROOT), *inherited]),
        PYTHONUNBUFFERED="1",
        TAILOR_HOME=str(tmp_home),
        TAILOR_STORAGE_URL=storage_url,
        TAILOR_CONTROL_QUEUE=os.environ["TAILOR_CONTROL_QUEUE"],
        DATABASE_URL=test_database_url(),
        DATABASE_CONN_MAX_AGE="0",
    )
    if os.environ.get("CELERY_BROKER_URL"):
        env["CELERY_BROKER_URL"] = os.environ["CELERY_BROKER_URL"]
    else:
        # The embedded filesystem broker lives under TAILOR_HOME: share this process's folders.
        env["TAILOR_HOME"] = str(settings.TAILOR_HOME)
    env.update(extra)
    return env


@dataclass
class PlatformProcess:
    """A platform process started by a test, with its log for failure messages."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_platform_process(
    name: str,
    args: list[str],
    env: dict[str, str],
    log_dir: Path,
    ready: Callable[[PlatformProcess], bool],
    timeout: float = 60,
) -> PlatformProcess:
    """Start `tailor <args>` and wait until `ready` says so; fail with its log if it exits or times out."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tailor.cli", *args],
            env=env,
            cwd=log_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    proc = PlatformProcess(name, process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode} during start-up:\n{proc.log()[-4000:]}")
        if ready(proc):
            return proc
        time.sleep(0.2)
    proc.stop()
    pytest.fail(f"{name} was not ready within {timeout:.0f} s:\n{proc.log()[-4000:]}")


def start_control_worker(env: dict[str, str], log_dir: Path, name: str = "control-worker") -> PlatformProcess:
    """`tailor worker control` as a real process: one solo-pool worker on the session's queue."""
    return start_platform_process(
        name,
        ["worker", "control", "--pool", "solo", "--concurrency", "1"],
        env,
        log_dir,
        ready=lambda proc: " ready." in proc.log(),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_api_server(env: dict[str, str], log_dir: Path) -> tuple[PlatformProcess, str]:
    """`tailor runserver` as a real process; returns it and its root URL."""
    port = free_port()
    root = f"http://127.0.0.1:{port}"

    def answers(_: PlatformProcess) -> bool:
        try:
            return httpx.get(f"{root}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    server = start_platform_process(
        "api-server", ["runserver", f"127.0.0.1:{port}", "--noreload", "--nothreading"], env, log_dir, answers
    )
    return server, root


def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 30, interval: float = 0.2, message: str = "condition"
) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `message` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {message}")


def delete_queue(name: str) -> None:
    """Drop the session's queue, its bindings and any message no worker was left to take."""
    try:
        with app.connection_for_write() as conn:
            # Declared here so that this channel knows the bindings it has to remove.
            queue = Queue(name, Exchange(name), routing_key=name, channel=conn.default_channel)
            queue.declare()
            queue.delete()
            queue.exchange.delete()
    except Exception:  # noqa: BLE001 - best-effort tidying of a shared broker
        pass
