"""Readiness checks behind `GET /readyz`: can this API process serve requests right now?

An API process needs its database, the Celery broker (uploads, job creation and cancellation publish
tasks) and the object store (uploads and downloads). Each check is cheap — `SELECT 1`, a Redis `PING` or
a look at the filesystem broker's folder, a one-key listing of the store — and the broker and store
checks run side by side, each given `TAILOR_READYZ_TIMEOUT` seconds, so a hanging dependency makes the
probe fail rather than hang. `/healthz` stays the liveness check that touches nothing but the database.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection

from gpu_runner.storage import LocalObjectStore, ObjectStore, S3ObjectStore, open_store
from workers.app import app as celery_app


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "failing", "detail": self.detail}


class CheckFailed(Exception):
    """A dependency answered, but not as it should: the message says what is wrong."""


def check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return f"{connection.vendor} answered SELECT 1"


def check_broker(timeout: float) -> str:
    """Redis answers PING, or the filesystem broker's folder exists and is writable."""
    url = str(celery_app.conf.broker_url or "")
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss"):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
        return "redis answered PING"
    if scheme == "filesystem":
        folder = Path(str(celery_app.conf.broker_transport_options.get("data_folder_in", "")))
        if not folder.is_dir():
            raise CheckFailed(f"filesystem broker folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise CheckFailed(f"filesystem broker folder {folder} is not writable")
        return f"filesystem broker folder {folder} is writable"
    with celery_app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
    return f"{scheme} broker connected"


@functools.lru_cache(maxsize=4)
def _probe_store(url: str, timeout: float) -> ObjectStore:
    if urlsplit(url).scheme != "s3":
        return open_store(url)
    from botocore.config import Config

    # A client of its own, with short timeouts and no retries: the application's client waits a
    # minute and retries five times, right for an upload, wrong for a probe. Cached per URL, so the
    # probe reuses its connection.
    config = Config(
        connect_timeout=timeout, read_timeout=timeout, retries={"mode": "standard", "max_attempts": 1}
    )
    return open_store(url, config=config)


def check_object_store(timeout: float) -> str:
    """S3: a one-key ListObjectsV2 of the store's prefix (fails on a missing bucket or bad credentials).
    Local: the folder, or the nearest folder above it that will hold it, is writable."""
    url: str = settings.TAILOR_STORAGE_URL
    try:
        store = _probe_store(url, timeout)
    except ValueError as exc:
        raise CheckFailed(str(exc)) from None
    if isinstance(store, S3ObjectStore):
        prefix = f"{store.prefix}/" if store.prefix else ""
        store.client.list_objects_v2(Bucket=store.bucket, Prefix=prefix, MaxKeys=1)
        return f"listed s3://{store.bucket}/{store.prefix}"
    if isinstance(store, LocalObjectStore):
        root = store.root
        existing = next((folder for folder in (root, *root.parents) if folder.exists()), None)
        if existing is None or not existing.is_dir():
            raise CheckFailed(f"{existing or root} is not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise CheckFailed(f"{existing} is not writable")
        return (
            f"{root} is writable"
            if existing == root
            else f"{existing} is writable ({root} is created on first write)"
        )
    next(iter(store.list()), None)
    return f"listed {url}"


def _run(check: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(True, check())
    except Exception as exc:  # noqa: BLE001 - any failure is the answer, described
        message = str(exc).strip() or "no detail"
        return CheckResult(False, f"{type(exc).__name__}: {message}")


def run_checks() -> dict[str, CheckResult]:
    """Every check, by name: `database`, `broker`, `object_store`."""
    timeout: float = settings.TAILOR_READYZ_TIMEOUT
    # The database check stays on this thread: Django connections belong to the thread that opened them.
    results = {"database": _run(check_database)}
    remote = {
        "broker": functools.partial(check_broker, timeout),
        "object_store": functools.partial(check_object_store, timeout),
    }
    executor = ThreadPoolExecutor(max_workers=len(remote), thread_name_prefix="readyz")
    try:
        futures = {name: executor.submit(_run, check) for name, check in remote.items()}
        # Side by side: together they take at most `timeout`, plus a second's grace for the clients' own.
        wait(futures.values(), timeout=timeout + 1)
        for name, future in futures.items():
            done = future.done()
            results[name] = future.result() if done else CheckResult(False, f"no answer within {timeout:g} s")
    finally:
        # A hung check finishes in the background; the probe answers now.
        executor.shutdown(wait=False, cancel_futures=True)
    return results
