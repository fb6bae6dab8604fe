"""The registry's Prometheus families in a real scrape of /metrics: deployments by status, failures by
reason, request-to-live latency, endpoint health."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from tailor.registry.models import Deployment, InferenceEndpoint

from tests.tailor.adapter_factories import llama_base, stored_adapter
from tests.tailor.factories import TeamFactory
from tests.tailor.test_metrics import scrape, value

pytestmark = pytest.mark.django_db


def test_deployments_failures_latency_and_health_are_scraped() -> None:
    base = llama_base()
    team = TeamFactory()
    endpoint = InferenceEndpoint.objects.create(
        name="vllm-a",
        kind="vllm",
        base_url="http://127.0.0.1:9",
        served_models={base.name: base.name},
        max_lora_rank=64,
        adapter_root="/srv/adapters",
        health="healthy",
    )
    InferenceEndpoint.objects.create(
        name="ollama-b", kind="ollama", base_url="http://127.0.0.1:9", delivery="http", health="unhealthy"
    )
    now = timezone.now()
    for seconds in (1.5, 3.0, 40.0):
        row = Deployment.objects.create(
            team=team, adapter=stored_adapter(team, base), endpoint=endpoint, served_name="x", status="live"
        )
        Deployment.objects.filter(pk=row.pk).update(
            requested_at=now, live_at=now + timedelta(seconds=seconds)
        )
    for reason in ("smoke_failed", "smoke_failed", "adapter_refused"):
        Deployment.objects.create(
            team=team,
            adapter=stored_adapter(team, base),
            endpoint=endpoint,
            served_name="y",
            status="failed",
            reason_code=reason,
        )

    samples = scrape()
    assert value(samples, "tailor_deployments", status="live", endpoint="vllm-a") == 3
    assert value(samples, "tailor_deployments", status="failed", endpoint="vllm-a") == 3
    assert value(samples, "tailor_deployment_failures_total", endpoint="vllm-a", reason="smoke_failed") == 2
    assert (
        value(samples, "tailor_deployment_failures_total", endpoint="vllm-a", reason="adapter_refused") == 1
    )
    assert value(samples, "tailor_deployment_latency_seconds_bucket", endpoint="vllm-a", le="2.0") == 1
    assert value(samples, "tailor_deployment_latency_seconds_bucket", endpoint="vllm-a", le="5.0") == 2
    assert value(samples, "tailor_deployment_latency_seconds_bucket", endpoint="vllm-a", le="+Inf") == 3
    assert value(samples, "tailor_deployment_latency_seconds_count", endpoint="vllm-a") == 3
    assert value(samples, "tailor_deployment_latency_seconds_sum", endpoint="vllm-a") == pytest.approx(44.5)
    assert value(samples, "tailor_endpoint_healthy", endpoint="vllm-a", kind="vllm") == 1
    assert value(samples, "tailor_endpoint_healthy", endpoint="ollama-b", kind="ollama") == 0
    assert value(
        samples, "tailor_metrics_collector_errors", collector="tailor.registry.metrics.deployment_families"
    ) in (
        0,
        None,
    )
