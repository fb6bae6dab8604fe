"""Prometheus families of the registry, computed from the database at scrape time (like the job
families in `tailor.core.metrics`): deployments by status, push failures by reason, the time from a
deployment's request to live, and endpoint health."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Coalesce
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from tailor.core.metrics import register_collector
from tailor.registry.models import Deployment, InferenceEndpoint

# A push is seconds on a warm server; a cold vLLM or a large adapter over a slow link takes minutes.
LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


@register_collector
def deployment_families() -> Iterable[Metric]:
    """`tailor_deployments{status,endpoint}`, `tailor_deployment_failures_total{endpoint,reason}`,
    `tailor_deployment_latency_seconds{endpoint}` and `tailor_endpoint_healthy{endpoint,kind}`."""
    by_status = GaugeMetricFamily(
        "tailor_deployments",
        "Deployments of adapter versions, by status and endpoint.",
        labels=["status", "endpoint"],
    )
    for row in Deployment.objects.order_by().values("status", "endpoint__name").annotate(n=Count("id")):
        by_status.add_metric([row["status"], row["endpoint__name"]], row["n"])

    failures = CounterMetricFamily(
        "tailor_deployment_failures",
        "Deployments that ended failed, by endpoint and reason code.",
        labels=["endpoint", "reason"],
    )
    failed = Deployment.objects.order_by().filter(status=Deployment.Status.FAILED)
    for row in failed.values("endpoint__name", "reason_code").annotate(n=Count("id")):
        failures.add_metric([row["endpoint__name"], row["reason_code"] or "unknown"], row["n"])

    latency = HistogramMetricFamily(
        "tailor_deployment_latency_seconds",
        "Deployments that went live: requested (a job succeeded, or a client asked) to live.",
        labels=["endpoint"],
    )
    went_live = Deployment.objects.order_by().filter(live_at__isnull=False)
    buckets = {
        f"le_{index}": Count("id", filter=Q(live_at__lte=F("requested_at") + timedelta(seconds=bound)))
        for index, bound in enumerate(LATENCY_BUCKETS)
    }
    rows = went_live.values("endpoint__name").annotate(
        total=Count("id"),
        seconds=Coalesce(Sum(F("live_at") - F("requested_at")), timedelta(0)),
        **buckets,
    )
    for row in rows:
        latency.add_metric(
            [row["endpoint__name"]],
            buckets=[
                *((str(bound), int(row[f"le_{index}"])) for index, bound in enumerate(LATENCY_BUCKETS)),
                ("+Inf", int(row["total"])),
            ],
            sum_value=row["seconds"].total_seconds(),
        )

    health = GaugeMetricFamily(
        "tailor_endpoint_healthy",
        "1 when the endpoint's last health check passed, 0 when it failed (absent: not checked yet).",
        labels=["endpoint", "kind"],
    )
    for endpoint in InferenceEndpoint.objects.exclude(health=InferenceEndpoint.Health.UNKNOWN).only(
        "name", "kind", "health"
    ):
        health.add_metric(
            [endpoint.name, endpoint.kind], 1 if endpoint.health == InferenceEndpoint.Health.HEALTHY else 0
        )
    return [by_status, failures, latency, health]
