"""Prometheus metrics of the control plane, served at `GET /metrics` (prometheus-client).

Two kinds of metric, kept apart on purpose:

- What the database and the broker know (jobs by status and team, queue depth, tokens trained, webhook
  failures, job duration and time to start) is computed at scrape time by `ScrapeTimeCollector`, so
  every API process answers the same whichever of them served the requests or ran the jobs. Any module
  adds its own families with `register_collector(fn)`, `fn` returning prometheus-client metric families
  built from aggregate queries; a family that fails is left out of that scrape, logged, and counted in
  `tailor_metrics_collector_errors{collector}`, so a broken broker never hides the job metrics.
- What one process observes (`tailor_http_request_duration_seconds`, from `tailor.core.middleware`) is a
  prometheus-client histogram. Under gunicorn set `PROMETHEUS_MULTIPROC_DIR` and prometheus-client's
  multiprocess mode sums the workers' files; without it the answering process reports its own
  requests, plus the usual `process_*` and `python_*` metrics.

Scrape cost: each family is one aggregate query (GROUP BY, conditional sums for histogram buckets)
returning a row per label set, never a row per job to Python. The histograms cover all history rather
than a recent window because Prometheus histograms must only grow: `increase()` and
`histogram_quantile()` over `_bucket` then give any window at query time. Their one per-job cost is
finding each dispatched job's first start among its events, an index probe per job (about 10 ms per
thousand jobs on PostgreSQL); a `started_at` column on the job would remove it.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection
from django.db.models import Count, DateTimeField, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gpu_runner.memory import parse_gpu_classes
from tailor.tuning.models import FineTuningJob, JobEvent
from tailor.webhooks.models import WebhookDelivery
from workers.app import app as celery_app

logger = logging.getLogger(__name__)

FamilyFunction = Callable[[], Iterable[Metric]]

# Seconds: API calls from milliseconds up to the long uploads and gateway calls (TAILOR_GATEWAY_TIMEOUT).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
HOUR, DAY = 3600, 86400
# Job times, one set for both histograms: from a few seconds (a free GPU, a tiny test job) to a week (a
# saturated GPU class or a team at its quota; a large QLoRA run).
JOB_BUCKETS = (
    5, 15, 30, 60, 120, 300, 600, 900, 1800,
    HOUR, 2 * HOUR, 4 * HOUR, 6 * HOUR, 8 * HOUR, 12 * HOUR,
    DAY, 2 * DAY, 3 * DAY, 7 * DAY,
)  # fmt: skip

HTTP_REQUEST_DURATION = Histogram(
    "tailor_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, URL pattern and status code.",
    ["method", "route", "status"],
    buckets=HTTP_BUCKETS,
)

_families: list[FamilyFunction] = []


def register_collector(fn: FamilyFunction) -> FamilyFunction:
    """Add `fn` to what every scrape collects (idempotent; usable as a decorator). `fn` takes no argument
    and returns metric families (`prometheus_client.core.GaugeMetricFamily`, `CounterMetricFamily`,
    `HistogramMetricFamily`, …) computed from the database; register it once, e.g. in an app's
    `AppConfig.ready()` or at the import of a module that is always imported."""
    if fn not in _families:
        _families.append(fn)
    return fn


def _collector_name(fn: FamilyFunction) -> str:
    return f"{fn.__module__}.{getattr(fn, '__qualname__', repr(fn))}"


class ScrapeTimeCollector(Collector):
    """Runs every registered family function at each scrape."""

    def collect(self) -> Iterator[Metric]:
        errors = GaugeMetricFamily(
            "tailor_metrics_collector_errors",
            "1 when a collector failed in this scrape (its metrics are missing; see the API log), else 0.",
            labels=["collector"],
        )
        for fn in list(_families):
            name = _collector_name(fn)
            try:
                families = list(fn())
            except Exception:  # noqa: BLE001 - one failing source must not blank the whole scrape
                logger.exception("metrics collector %s failed", name)
                errors.add_metric([name], 1)
                continue
            errors.add_metric([name], 0)
            yield from families
        yield errors


class _ProcessRegistry(Collector):
    """This process's own default registry (request histograms, process_* and python_* metrics)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def scrape_registry() -> CollectorRegistry:
    """What one scrape exposes: the request histograms of this process, or of all processes sharing
    `PROMETHEUS_MULTIPROC_DIR`, and the scrape-time families."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(_ProcessRegistry())
    registry.register(ScrapeTimeCollector())
    return registry


def exposition(accept_header: str | None) -> tuple[bytes, str]:
    """The body and content type of a scrape: Prometheus text, or OpenMetrics when the scraper asks."""
    encoder, content_type = choose_encoder(accept_header or "")
    return encoder(scrape_registry()), content_type


def scrape_allowed(request: HttpRequest) -> bool:
    """Open when `TAILOR_METRICS_TOKEN` is unset; otherwise the request must carry it as a bearer token."""
    token: str = settings.TAILOR_METRICS_TOKEN
    if not token:
        return True
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.encode())


# Families from the database ----------------------------------------------------------------------------


@register_collector
def job_counts() -> Iterable[Metric]:
    """`tailor_jobs{status,team}`: every status for each team that has jobs, 0 where none is in it, so a
    series never vanishes when its last job moves on."""
    family = GaugeMetricFamily(
        "tailor_jobs", "Fine-tuning jobs by status and team.", labels=["status", "team"]
    )
    counts: dict[str, dict[str, int]] = {}
    for row in FineTuningJob.objects.order_by().values("team__slug", "status").annotate(n=Count("pk")):
        counts.setdefault(row["team__slug"], {})[row["status"]] = row["n"]
    for team in sorted(counts):
        for status in FineTuningJob.Status.values:
            family.add_metric([status, team], counts[team].get(status, 0))
    queued = GaugeMetricFamily(
        "tailor_jobs_queued",
        "Queued jobs by GPU class, dispatched or waiting in the database for a free slot (demand to "
        "scale a GPU pool on).",
        labels=["gpu_class"],
    )
    waiting = dict(
        FineTuningJob.objects.filter(status=FineTuningJob.Status.QUEUED)
        .order_by()
        .values_list("gpu_class")
        .annotate(n=Count("pk"))
    )
    for gpu_class in parse_gpu_classes(settings.TAILOR_GPU_CLASSES):
        queued.add_metric([gpu_class.name], waiting.pop(gpu_class.name, 0))
    for gpu_class, n in sorted(waiting.items()):  # a class since removed from TAILOR_GPU_CLASSES
        queued.add_metric([gpu_class], n)
    return [family, queued]


@register_collector
def tokens_trained() -> Iterable[Metric]:
    """`tailor_tokens_trained_total{team}`: from each team's first job on, 0 until tokens are reported."""
    family = CounterMetricFamily(
        "tailor_tokens_trained", "Tokens trained by the team's fine-tuning jobs.", labels=["team"]
    )
    rows = (
        FineTuningJob.objects.order_by()
        .values("team__slug")
        .annotate(tokens=Coalesce(Sum("trained_tokens"), 0))
        .order_by("team__slug")
    )
    for row in rows:
        family.add_metric([row["team__slug"]], row["tokens"])
    return [family]


@register_collector
def webhook_failures() -> Iterable[Metric]:
    """`tailor_webhook_delivery_failures_total{team}`: failed tries. Every try but a delivery's successful
    last one failed, so failures = Σ attempts − deliveries that succeeded, one aggregate."""
    family = CounterMetricFamily(
        "tailor_webhook_delivery_failures",
        "Webhook delivery tries that failed (error status, timeout, refused), retried or not.",
        labels=["team"],
    )
    rows = (
        WebhookDelivery.objects.order_by()
        .values("endpoint__team__slug")
        .annotate(
            attempts=Coalesce(Sum("attempts"), 0),
            succeeded=Count("pk", filter=Q(status=WebhookDelivery.Status.SUCCEEDED)),
        )
        .order_by("endpoint__team__slug")
    )
    for row in rows:
        family.add_metric([row["endpoint__team__slug"]], max(0, row["attempts"] - row["succeeded"]))
    return [family]


def _job_times_sql() -> tuple[str, list[Any]]:
    """Per dispatched job: status, GPU class, created, finished, first started (NULL if never). A job has no
    column for its first start (attempt_started_at is cleared when an attempt ends); it is the first
    status event whose data names a worker, the one `job_report_started` records, found through the
    (job, id) index."""
    started = JobEvent.objects.filter(job=OuterRef("pk"), kind="status", data__has_key="worker").order_by(
        "id"
    )
    jobs = (
        FineTuningJob.objects.order_by()
        .filter(attempt__gt=0)  # never dispatched, never started: no lookup
        .annotate(started_at=Subquery(started.values("created_at")[:1], output_field=DateTimeField()))
        .values("status", "gpu_class", "created_at", "finished_at", "started_at")
    )
    sql, params = jobs.query.sql_with_params()
    return sql, list(params)


def _seconds_between(later: str, earlier: str) -> str:
    if connection.vendor == "postgresql":
        return f"EXTRACT(EPOCH FROM ({later} - {earlier}))"
    if connection.vendor == "sqlite":
        return f"((julianday({later}) - julianday({earlier})) * 86400.0)"
    raise NotImplementedError(f"job time histograms support PostgreSQL and SQLite, not {connection.vendor}")


@register_collector
def job_durations() -> Iterable[Metric]:
    """`tailor_job_duration_seconds{status}` (finished jobs, first start → finish) and
    `tailor_job_time_to_start_seconds{gpu_class}` (every started job, creation → first start).

    One statement: the per-job times are computed once into a materialized CTE (the ORM would repeat the
    first-start subquery in every bucket's condition), then counted per label with one conditional sum
    per bucket."""
    job_times, params = _job_times_sql()
    buckets = ", ".join(f"SUM(CASE WHEN seconds <= {bound} THEN 1 ELSE 0 END)" for bound in JOB_BUCKETS)
    terminal = ", ".join("%s" for _ in FineTuningJob.TERMINAL)
    materialized = "MATERIALIZED " if connection.vendor == "postgresql" else ""
    sql = f"""
        WITH job_times (status, gpu_class, created_at, finished_at, started_at) AS {materialized}({job_times})
        SELECT 'duration', status, COUNT(*), SUM(seconds), {buckets}
        FROM (SELECT status, {_seconds_between("finished_at", "started_at")} AS seconds FROM job_times
              WHERE started_at IS NOT NULL AND finished_at IS NOT NULL AND status IN ({terminal})) AS finished
        GROUP BY status
        UNION ALL
        SELECT 'wait', gpu_class, COUNT(*), SUM(seconds), {buckets}
        FROM (SELECT gpu_class, {_seconds_between("started_at", "created_at")} AS seconds FROM job_times
              WHERE started_at IS NOT NULL) AS started
        GROUP BY gpu_class
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *FineTuningJob.TERMINAL])
        rows = cursor.fetchall()
    duration = HistogramMetricFamily(
        "tailor_job_duration_seconds",
        "Finished fine-tuning jobs: first start to finish, by final status.",
        labels=["status"],
    )
    wait = HistogramMetricFamily(
        "tailor_job_time_to_start_seconds",
        "Fine-tuning jobs that started: creation to first start, by GPU class.",
        labels=["gpu_class"],
    )
    for kind, label, count, total, *cumulative in sorted(rows, key=lambda row: (row[0], row[1])):
        (duration if kind == "duration" else wait).add_metric(
            [label],
            buckets=[
                *((str(float(bound)), int(n or 0)) for bound, n in zip(JOB_BUCKETS, cumulative, strict=True)),
                ("+Inf", int(count)),
            ],
            sum_value=float(total or 0),
        )
    return [duration, wait]


# Broker queue depth ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _redis_client(url: str) -> Any:
    import redis

    # Short timeouts: a scrape must answer even while Redis does not.
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def _redis_queue_lengths(url: str, queues: list[str]) -> dict[str, int]:
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    # kombu keeps a Redis queue as one list per priority step: `name` for step 0, `name\x06\x16<step>`.
    names = {
        queue: [queue, *(f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS if step)]
        for queue in queues
    }
    pipe = _redis_client(url).pipeline(transaction=False)
    for keys in names.values():
        for key in keys:
            pipe.llen(key)
    lengths = iter(pipe.execute())
    return {queue: sum(next(lengths) for _ in keys) for queue, keys in names.items()}


def _filesystem_queue_lengths(folder: str, queues: list[str]) -> dict[str, int]:
    # kombu's filesystem transport names a message `<ms>_<uuid>.<queue>.msg` (its own `_size` rule).
    counts = dict.fromkeys(queues, 0)
    for entry in os.scandir(Path(folder)):
        queue = entry.name.partition(".")[2].removesuffix(".msg")
        if queue in counts and entry.name.endswith(".msg"):
            counts[queue] += 1
    return counts


@register_collector
def queue_depth() -> Iterable[Metric]:
    """`tailor_queue_depth{gpu_class,queue}`: messages waiting in each GPU class's broker queue — dispatched
    jobs no worker has taken yet. Redis (LLEN) and the filesystem broker are counted; other brokers
    (e.g. RabbitMQ, which has its own exporter) are left out."""
    classes = parse_gpu_classes(settings.TAILOR_GPU_CLASSES)
    queues = sorted({gpu_class.queue for gpu_class in classes})
    url = str(celery_app.conf.broker_url or "")
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss"):
        lengths = _redis_queue_lengths(url, queues)
    elif scheme == "filesystem":
        lengths = _filesystem_queue_lengths(
            celery_app.conf.broker_transport_options["data_folder_in"], queues
        )
    else:
        return []
    family = GaugeMetricFamily(
        "tailor_queue_depth",
        "Messages waiting in each GPU class's broker queue.",
        labels=["gpu_class", "queue"],
    )
    for gpu_class in classes:
        family.add_metric([gpu_class.name, gpu_class.queue], lengths[gpu_class.queue])
    return [family]
