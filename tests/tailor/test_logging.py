"""Structured logs: with `TAILOR_LOG_FORMAT=json` every line is one JSON object, a request's lines carry
the request id the response returns in `X-Request-ID` (and the team once its key is known), and a
Celery task's lines carry the task and the `ftjob-…` id of the job it handles — in the API, the control
worker and the GPU worker alike."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import transaction
from django.test import override_settings
from tailor.core.logging import RequestContextFilter
from tailor.tuning.models import FineTuningJob

from tests.tailor.factories import TeamFactory
from tests.tailor.jobs_factories import BaseModelFactory, create_job, take_dispatches
from tests.tailor.processes import (
    ROOT,
    PlatformProcess,
    delete_queue,
    platform_env,
    start_api_server,
    start_control_worker,
    wait_for,
)
from workers.app import JOB_STARTED_TASK, app
from workers.logcontext import JsonFormatter, TextFormatter, job_id_of, log_context_bound


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among a process's output lines (Celery's banner is plain text)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Root-logger output in the JSON format, as the settings configure it for TAILOR_LOG_FORMAT=json."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def access_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [line for line in json_lines(stream.getvalue()) if line["logger"] == "tailor.access"]


# In the API process ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_request_line_is_json_with_the_request_id_the_response_returns(api_client, team, json_log) -> None:
    response = api_client.get("/v1/files")
    assert response.status_code == 200
    [line] = access_lines(json_log)
    assert line["request_id"] == response["X-Request-ID"] and len(line["request_id"]) == 32
    assert line["team"] == team.slug  # known once DRF authenticated the key
    assert (line["level"], line["method"], line["route"], line["status"]) == ("INFO", "GET", "/v1/files", 200)
    assert line["message"].startswith("GET /v1/files 200 ")
    assert line["timestamp"].endswith("+00:00")


@pytest.mark.django_db
def test_a_callers_request_id_is_kept_and_a_malformed_one_replaced(api_client, json_log) -> None:
    kept = api_client.get("/v1/files", HTTP_X_REQUEST_ID="edge-7f3a.42")
    forged = api_client.get("/v1/files", HTTP_X_REQUEST_ID='x", "team": "someone-else')
    assert kept["X-Request-ID"] == "edge-7f3a.42"
    assert forged["X-Request-ID"] != 'x", "team": "someone-else' and len(forged["X-Request-ID"]) == 32
    assert [line["request_id"] for line in access_lines(json_log)] == ["edge-7f3a.42", forged["X-Request-ID"]]


@pytest.mark.django_db
def test_djangos_own_error_line_carries_the_request_id_too(client, json_log) -> None:
    response = client.get("/v1/files")  # no key: 401, logged by django.request after the middleware
    assert response.status_code == 401
    warning = next(line for line in json_lines(json_log.getvalue()) if line["logger"] == "django.request")
    assert warning["request_id"] == response["X-Request-ID"]
    assert "team" not in warning


def test_text_lines_end_with_the_context_in_brackets() -> None:
    record = logging.LogRecord("tailor.x", logging.INFO, __file__, 1, "validated %s", ("file-1",), None)
    with log_context_bound(task="tailor.control.validate_file", job_id=None):
        RequestContextFilter().filter(record)
    line = TextFormatter().format(record)
    assert line.endswith("INFO tailor.x: validated file-1 [task=tailor.control.validate_file]")


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (["ftjob-abc", 1, "gpu@host"], {}, "ftjob-abc"),  # the GPU workers' reports
        ([], {"dispatch": {"job_id": "ftjob-def", "attempt": 2}}, "ftjob-def"),  # tailor.gpu.run_job
        ([], {"job_id": "ftjob-ghi"}, "ftjob-ghi"),
        (["file-xyz"], {}, None),  # validate_file: no job
        ([], {}, None),
    ],
)
def test_the_job_id_is_found_in_the_task_arguments(args: list, kwargs: dict, expected: str | None) -> None:
    assert job_id_of(args, kwargs) == expected


# Real processes ----------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_an_api_server_in_json_mode_logs_one_object_per_line(storage_url: str, tmp_path: Path) -> None:
    server, root = start_api_server(platform_env(tmp_path, storage_url, TAILOR_LOG_FORMAT="json"), tmp_path)
    try:
        response = httpx.get(f"{root}/v1/files", headers={"X-Request-ID": "trace-5e1f"}, timeout=10)
        assert response.status_code == 401 and response.headers["X-Request-ID"] == "trace-5e1f"
        wait_for(lambda: "trace-5e1f" in server.log(), timeout=10, message="the request's log lines")
    finally:
        server.stop()
    lines = json_lines(server.log())
    # Only runserver's start-up banner is plain text, not its request lines ("[date] "GET …" 200").
    assert not [line for line in server.log().splitlines() if line.startswith("[")], server.log()[-3000:]
    assert any(line["logger"] == "django.server" for line in lines)
    mine = [line for line in lines if line.get("request_id") == "trace-5e1f"]
    assert {line["logger"] for line in mine} >= {"tailor.access", "django.request"}, mine
    assert all({"timestamp", "level", "logger", "message"} <= set(line) for line in lines)


@pytest.fixture
def json_control_worker(
    settings, django_db_setup: None, storage_url: str, tmp_path: Path
) -> Iterator[tuple[PlatformProcess, str]]:
    """A control worker logging JSON, on a control queue and a GPU-class queue of this test's own."""
    control, gpu = f"control-logs-{uuid.uuid4().hex[:8]}", f"gpu-logs-{uuid.uuid4().hex[:8]}"
    previous = os.environ["TAILOR_CONTROL_QUEUE"]
    os.environ["TAILOR_CONTROL_QUEUE"] = control
    env = platform_env(
        tmp_path,
        storage_url,
        TAILOR_CONTROL_QUEUE=control,
        TAILOR_GPU_CLASSES=f"default:24:{gpu}",
        TAILOR_LOG_FORMAT="json",
    )
    worker = start_control_worker(env, tmp_path, name="json-control-worker")
    try:
        with override_settings(TAILOR_GPU_CLASSES=f"default:24:{gpu}"):
            yield worker, gpu
    finally:
        worker.stop()
        os.environ["TAILOR_CONTROL_QUEUE"] = previous
        delete_queue(control)
        delete_queue(gpu)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_control_tasks_lines_carry_the_job_id(json_control_worker) -> None:
    worker, gpu_queue = json_control_worker
    with transaction.atomic():
        job = create_job(TeamFactory(), base=BaseModelFactory())
    [dispatch] = take_dispatches(gpu_queue, timeout=30)
    app.send_task(JOB_STARTED_TASK, args=[job.public_id, dispatch["attempt"], "gpu-logs@host"])
    wait_for(
        lambda: FineTuningJob.objects.get(pk=job.pk).status == FineTuningJob.Status.RUNNING,
        timeout=30,
        message=f"the job to run\n{worker.log()[-3000:]}",
    )
    wait_for(lambda: "running on gpu-logs@host" in worker.log(), timeout=10, message="the task's log line")

    [line] = [line for line in json_lines(worker.log()) if "running on gpu-logs@host" in line["message"]]
    assert line["job_id"] == job.public_id
    assert line["task"] == JOB_STARTED_TASK and line["task_id"]
    assert line["logger"] == "workers.control.tasks" and line["level"] == "INFO"
    # Celery's own line about the same task carries the job too.
    done = f"[{line['task_id']}] succeeded"
    wait_for(lambda: done in worker.log(), timeout=10, message="the task to end")
    [succeeded] = [entry for entry in json_lines(worker.log()) if done in entry["message"]]
    assert (succeeded["job_id"], succeeded["logger"]) == (job.public_id, "celery.app.trace")


GPU_WORKER_TASK = """
import logging
from workers.app import app

app.log.setup(loglevel="INFO")  # what `celery worker` does at start: fires setup_logging

@app.task(name="tailor.gpu.run_job_probe")
def probe(dispatch):
    logging.getLogger("workers.gpu.job").info("runner started for attempt %s", dispatch["attempt"])

probe.apply(kwargs={"dispatch": {"job_id": "ftjob-gpu123", "attempt": 2}})
logging.getLogger("workers.gpu").info("between jobs")
"""


def test_a_gpu_worker_without_django_logs_json_with_the_job_of_its_dispatch(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE",) and not key.startswith("TAILOR_")
    }
    env.update(TAILOR_LOG_FORMAT="json", TAILOR_HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", GPU_WORKER_TASK],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = json_lines(done.stderr)
    [started] = [line for line in lines if line["message"] == "runner started for attempt 2"]
    assert (started["job_id"], started["task"], started["logger"]) == (
        "ftjob-gpu123",
        "tailor.gpu.run_job_probe",
        "workers.gpu.job",
    )
    [after] = [line for line in lines if line["message"] == "between jobs"]
    assert "job_id" not in after and "task" not in after  # the context ended with the task
