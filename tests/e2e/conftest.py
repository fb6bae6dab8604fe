"""Fixtures of the end-to-end suites: `platform` (real processes, one set per test module),
`tiny_model_dir`, and `client` (a new team with `tailor-tiny` registered, as the openai SDK sees it)."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings
from openai import OpenAI

from gpu_runner.tiny_model import build_tiny_model, default_model_dir
from tests.e2e.harness import HEARTBEAT_SECONDS, LEASE_SECONDS, Platform
from tests.tailor.factories import TeamFactory, issue_key
from tests.tailor.processes import (
    PlatformProcess,
    delete_queue,
    platform_env,
    start_control_worker,
    start_platform_process,
)


@pytest.fixture(scope="module")
def platform(
    django_db_setup: None, storage_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    control_queue, gpu_queue = f"control-e2e-{uuid.uuid4().hex[:8]}", f"gpu-e2e-{uuid.uuid4().hex[:8]}"
    previous = os.environ["TAILOR_CONTROL_QUEUE"]
    os.environ["TAILOR_CONTROL_QUEUE"] = control_queue
    home = tmp_path_factory.mktemp("jobs-e2e")
    settings = {
        "TAILOR_GPU_CLASSES": f"default:24:{gpu_queue}",
        "TAILOR_LEASE_SECONDS": str(LEASE_SECONDS),
        "TAILOR_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        "TAILOR_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    env = platform_env(
        home,
        storage_url,
        TAILOR_CONTROL_QUEUE=control_queue,
        TAILOR_SCHEDULE_INTERVAL="2",
        TAILOR_RECONCILE_INTERVAL="2",
        TAILOR_WEBHOOK_RETRY_INTERVAL="2",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="2",
        **settings,
    )
    overrides = override_settings(
        TAILOR_GPU_CLASSES=settings["TAILOR_GPU_CLASSES"],
        TAILOR_LEASE_SECONDS=LEASE_SECONDS,
        TAILOR_HEARTBEAT_SECONDS=HEARTBEAT_SECONDS,
        TAILOR_WEBHOOK_ALLOW_PRIVATE=True,
    )
    overrides.enable()
    processes: list[PlatformProcess] = []
    try:
        control = start_control_worker(env, home, name="e2e-control-worker")
        processes.append(control)
        beat = start_platform_process(
            "e2e-beat", ["worker", "beat"], env, home, ready=lambda proc: "beat: Starting" in proc.log()
        )
        processes.append(beat)
        platform = Platform(env, home, gpu_queue, control, beat)
        platform.gpu = platform.start_gpu_worker()
        try:
            yield platform
        finally:
            processes.append(platform.gpu)
    finally:
        for process in processes:
            process.stop()
        overrides.disable()
        os.environ["TAILOR_CONTROL_QUEUE"] = previous
        delete_queue(control_queue)
        delete_queue(gpu_queue)


@pytest.fixture(scope="module")
def tiny_model_dir() -> Path:
    return build_tiny_model(default_model_dir())


@pytest.fixture
def client(platform: Platform, live_server: Any, tiny_model_dir: Path) -> OpenAI:
    """A new team with `tailor-tiny` registered, as the SDK sees it."""
    call_command(
        "basemodel",
        "add",
        "tailor-tiny",
        "--source",
        str(tiny_model_dir),
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    secret = issue_key(TeamFactory()).secret
    return OpenAI(base_url=f"{live_server.url}/v1", api_key=secret, max_retries=0)
