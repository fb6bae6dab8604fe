"""`GET /metrics` answers what an operator's dashboards and alerts read: jobs by status and team, tokens
trained, webhook failures and job-time histograms straight from the database, the depth of each GPU
class's broker queue, and request latency by URL pattern — summed over processes in multiprocess mode."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone
from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families
from tailor.tuning.models import FineTuningJob, JobEvent
from tailor.tuning.scheduler import schedule_jobs
from tailor.tuning.services import job_report_finished, job_report_started
from tailor.webhooks.models import WebhookDelivery, WebhookEndpoint

from tests.tailor.factories import TeamFactory
from tests.tailor.jobs_factories import create_job, dataset_file, fresh, isolated_gpu_queue, store_adapter
from tests.tailor.processes import ROOT, delete_queue, platform_env
from workers.app import RUN_JOB_TASK, app

Status = FineTuningJob.Status
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: Client | None = None, **headers: str) -> Samples:
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/plain")
    return parse(response.content.decode())


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def use_broker(monkeypatch: pytest.MonkeyPatch, url: str, options: dict[str, object] | None = None) -> None:
    """Point the Celery app at another broker for one test (the environment's URL wins in Celery)."""
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.setitem(app.conf, "broker_url", url)
    monkeypatch.setitem(app.conf, "broker_transport_options", options or {})


@pytest.fixture
def gpu_queue(settings) -> Iterator[str]:
    yield from isolated_gpu_queue(settings)


def started_job(team, *, created_ago: float, waited: float) -> FineTuningJob:
    """A job dispatched and started through the services, its clock moved back: created `created_ago` s
    ago, started `waited` s after creation."""
    job = create_job(team)
    assert job.public_id in schedule_jobs()
    assert job_report_started(job_id=job.public_id, attempt=1, worker="gpu-test")
    created = timezone.now() - timedelta(seconds=created_ago)
    FineTuningJob.objects.filter(pk=job.pk).update(created_at=created)
    JobEvent.objects.filter(job=job, kind="status", data__has_key="worker").update(
        created_at=created + timedelta(seconds=waited)
    )
    return fresh(job)


def finish(job: FineTuningJob, outcome: str, *, ran: float) -> FineTuningJob:
    """Report `outcome` for the job's attempt and set its finish `ran` s after its start."""
    result = store_adapter(job) if outcome == "succeeded" else {"error": {"code": "oom", "message": "OOM"}}
    assert job_report_finished(job_id=job.public_id, attempt=1, outcome=outcome, result=result)
    started = JobEvent.objects.get(job=job, kind="status", data__has_key="worker").created_at
    FineTuningJob.objects.filter(pk=job.pk).update(finished_at=started + timedelta(seconds=ran))
    return fresh(job)


@pytest.mark.django_db
def test_job_metrics_count_each_team_and_status_from_the_database(gpu_queue, settings) -> None:
    settings.TAILOR_GPU_CLASS_SLOTS = {}
    alpha, beta = TeamFactory(max_concurrent_jobs=10), TeamFactory(max_concurrent_jobs=10)
    # alpha: succeeded (4321 tokens), failed, running; beta: running, queued, validating_files.
    finish(started_job(alpha, created_ago=9000, waited=30), "succeeded", ran=2000)
    finish(started_job(alpha, created_ago=9000, waited=400), "failed", ran=90)
    started_job(alpha, created_ago=100, waited=10)
    started_job(beta, created_ago=50, waited=20)
    queued = create_job(beta)
    create_job(beta, training=dataset_file(beta, status="uploaded"))
    assert queued.status == Status.QUEUED

    samples = scrape()

    expected = {
        alpha.slug: {"succeeded": 1, "failed": 1, "running": 1},
        beta.slug: {"running": 1, "queued": 1, "validating_files": 1},
    }
    for team, counts in expected.items():
        for status in Status.values:
            assert value(samples, "tailor_jobs", team=team, status=status) == counts.get(status, 0), (
                team,
                status,
            )
    assert value(samples, "tailor_jobs_queued", gpu_class="default") == 1
    assert value(samples, "tailor_tokens_trained_total", team=alpha.slug) == 4321
    assert value(samples, "tailor_tokens_trained_total", team=beta.slug) == 0

    # Durations: succeeded 2000 s, failed 90 s; waits 30, 400, 10 and 20 s, all on the default class.
    duration = "tailor_job_duration_seconds"
    assert value(samples, f"{duration}_count", status="succeeded") == 1
    assert value(samples, f"{duration}_sum", status="succeeded") == pytest.approx(2000)
    assert value(samples, f"{duration}_bucket", status="succeeded", le="1800.0") == 0
    assert value(samples, f"{duration}_bucket", status="succeeded", le="3600.0") == 1
    assert value(samples, f"{duration}_bucket", status="failed", le="60.0") == 0
    assert value(samples, f"{duration}_bucket", status="failed", le="300.0") == 1
    assert value(samples, f"{duration}_bucket", status="failed", le="+Inf") == 1
    wait = "tailor_job_time_to_start_seconds"
    assert value(samples, f"{wait}_count", gpu_class="default") == 4
    assert value(samples, f"{wait}_sum", gpu_class="default") == pytest.approx(460)
    assert value(samples, f"{wait}_bucket", gpu_class="default", le="5.0") == 0
    assert value(samples, f"{wait}_bucket", gpu_class="default", le="15.0") == 1
    assert value(samples, f"{wait}_bucket", gpu_class="default", le="30.0") == 3
    assert value(samples, f"{wait}_bucket", gpu_class="default", le="300.0") == 3
    assert value(samples, f"{wait}_bucket", gpu_class="default", le="600.0") == 4
    assert all(
        value(samples, "tailor_metrics_collector_errors", collector=f"tailor.core.metrics.{name}") == 0
        for name in ("job_counts", "tokens_trained", "webhook_failures", "job_durations", "queue_depth")
    )


@pytest.mark.django_db
def test_webhook_failures_count_every_failed_try_per_team() -> None:
    alpha, beta = TeamFactory(), TeamFactory()

    def delivery(team, status: str, attempts: int) -> None:
        endpoint = WebhookEndpoint.objects.create(team=team, url="https://hooks.example.com/x", secret="s")
        WebhookDelivery.objects.create(
            endpoint=endpoint,
            event_id=f"evt_{uuid.uuid4().hex}",
            event_type="fine_tuning.job.succeeded",
            msg_id=f"msg_{uuid.uuid4().hex}",
            payload={},
            status=status,
            attempts=attempts,
        )

    delivery(alpha, WebhookDelivery.Status.SUCCEEDED, 3)  # two failed tries, then delivered
    delivery(alpha, WebhookDelivery.Status.FAILED, 5)  # given up after five
    delivery(alpha, WebhookDelivery.Status.PENDING, 1)  # one failed so far, retry due
    delivery(beta, WebhookDelivery.Status.SUCCEEDED, 1)

    samples = scrape()
    assert value(samples, "tailor_webhook_delivery_failures_total", team=alpha.slug) == 8
    assert value(samples, "tailor_webhook_delivery_failures_total", team=beta.slug) == 0


@pytest.mark.django_db
def test_queue_depth_counts_messages_waiting_in_each_gpu_class_queue_in_redis(settings) -> None:
    if not str(app.conf.broker_url).startswith("redis"):
        pytest.skip("needs the Redis broker (CELERY_BROKER_URL=redis://…)")
    small, large = f"gpu-depth-{uuid.uuid4().hex[:8]}", f"gpu-depth-{uuid.uuid4().hex[:8]}"
    settings.TAILOR_GPU_CLASSES = f"small:24:{small},large:80:{large}"
    try:
        for _ in range(2):
            app.send_task(RUN_JOB_TASK, kwargs={"dispatch": {}}, queue=small)
        # kombu keeps prioritised messages in a list of their own; they wait all the same.
        app.send_task(RUN_JOB_TASK, kwargs={"dispatch": {}}, queue=small, priority=9)
        app.send_task(RUN_JOB_TASK, kwargs={"dispatch": {}}, queue=large)

        samples = scrape()

        assert value(samples, "tailor_queue_depth", gpu_class="small", queue=small) == 3
        assert value(samples, "tailor_queue_depth", gpu_class="large", queue=large) == 1
    finally:
        delete_queue(small)
        delete_queue(large)


@pytest.mark.django_db
def test_queue_depth_counts_messages_of_the_filesystem_broker(settings, monkeypatch, tmp_path: Path) -> None:
    folder = tmp_path / "queues"
    folder.mkdir()
    options = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "control_folder": str(tmp_path / "control"),
        "store_processed": False,
    }
    use_broker(monkeypatch, "filesystem://", options)
    settings.TAILOR_GPU_CLASSES = "default:24:gpu.fs,big:80:gpu.fs.big"
    with Connection("filesystem://", transport_options=options) as conn:
        queue = conn.SimpleQueue("gpu.fs")
        queue.put({"dispatch": 1})
        queue.put({"dispatch": 2})
        queue.close()

    samples = scrape()

    assert value(samples, "tailor_queue_depth", gpu_class="default", queue="gpu.fs") == 2
    assert value(samples, "tailor_queue_depth", gpu_class="big", queue="gpu.fs.big") == 0


@pytest.mark.django_db
def test_an_unreachable_broker_leaves_the_database_metrics_in_the_scrape(settings, monkeypatch) -> None:
    from tailor.core import metrics

    use_broker(monkeypatch, "redis://127.0.0.1:9/0")
    metrics._redis_client.cache_clear()
    team = TeamFactory()
    create_job(team)

    samples = scrape()

    assert value(samples, "tailor_metrics_collector_errors", collector="tailor.core.metrics.queue_depth") == 1
    assert not any(name == "tailor_queue_depth" for name, _ in samples)
    assert value(samples, "tailor_jobs", team=team.slug, status="queued") == 1


@pytest.mark.django_db
def test_request_latency_is_labelled_by_url_pattern_not_by_path(api_client) -> None:
    def count(samples: Samples, route: str, status: str) -> float:
        return (
            value(
                samples,
                "tailor_http_request_duration_seconds_count",
                method="GET",
                route=route,
                status=status,
            )
            or 0
        )

    before = scrape()
    for file_id in ("file-aaaaaaaaaaaaaaaaaaaaaaaa", "file-bbbbbbbbbbbbbbbbbbbbbbbb"):
        assert api_client.get(f"/v1/files/{file_id}").status_code == 404
    assert api_client.get("/v1/files").status_code == 200
    assert Client().get("/no/such/page").status_code == 404
    response = Client().get("/metrics")
    text = response.content.decode()
    after = parse(text)

    assert (
        count(after, "/v1/files/<str:file_id>", "404") - count(before, "/v1/files/<str:file_id>", "404") == 2
    )
    assert count(after, "/v1/files", "200") - count(before, "/v1/files", "200") == 1
    assert count(after, "<unmatched>", "404") - count(before, "<unmatched>", "404") == 1
    assert "file-aaaa" not in text and "/no/such/page" not in text
    buckets = [
        labels
        for name, labels in after
        if name == "tailor_http_request_duration_seconds_bucket" and ("route", "/v1/files") in labels
    ]
    assert {dict(labels)["le"] for labels in buckets} >= {"0.005", "1.0", "600.0", "+Inf"}


@pytest.mark.django_db
def test_a_metrics_token_is_required_when_configured(settings) -> None:
    settings.TAILOR_METRICS_TOKEN = "scrape-secret"
    client = Client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200


@pytest.mark.django_db
def test_probes_and_scrapes_answer_on_any_host_name() -> None:
    pod = Client(HTTP_HOST="10.12.0.7:8000")
    assert pod.get("/metrics").status_code == 200
    assert pod.get("/healthz").status_code == 200
    assert pod.get("/v1/files").status_code == 400  # the API itself still checks ALLOWED_HOSTS


# Multiprocess mode ---------------------------------------------------------------------------------------

SERVE_AND_EXIT = """
import json, sys, django
django.setup()
from django.test import Client
client = Client(HTTP_HOST="localhost")
for _ in range(int(sys.argv[1])):
    assert client.get("/v1/no-such-endpoint").status_code == 404
if sys.argv[2] == "scrape":
    print(json.dumps(client.get("/metrics").content.decode()))
"""


@pytest.mark.integration
def test_multiprocess_mode_sums_the_requests_of_every_process(
    django_db_setup, storage_url, tmp_path: Path
) -> None:
    """Two API processes share PROMETHEUS_MULTIPROC_DIR (as gunicorn workers do): the second one's scrape
    counts the first one's requests too, though that process has exited."""
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = platform_env(tmp_path, storage_url, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))

    def serve(requests: int, then: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", SERVE_AND_EXIT, str(requests), then],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    serve(3, "exit")
    samples = parse(json.loads(serve(2, "scrape").strip().splitlines()[-1]))

    route = "/v1/(?P<path>.*)$"
    assert (
        value(samples, "tailor_http_request_duration_seconds_count", method="GET", route=route, status="404")
        == 5
    )
    assert len(list(metrics_dir.glob("histogram_*.db"))) == 2
    assert any(name == "tailor_jobs_queued" for name, _ in samples)  # the database families are there too
