"""Factories for registry tests (import from `tests.tailor.registry_factories`): inference endpoints,
deployments, adapters as a succeeded job leaves them (files in the object store, digests in the row), and a
loopback HTTP server that answers health checks like vLLM."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import factory
from django.utils import timezone
from tailor.registry.models import Deployment, InferenceEndpoint
from tailor.teams.models import Team
from tailor.tuning.models import Adapter, BaseModel, FineTuningJob

from tests.tailor.adapter_factories import llama_base, stored_adapter
from tests.tailor.factories import TeamFactory

__all__ = ["DeploymentFactory", "InferenceEndpointFactory", "adapter_of", "healthy_vllm", "llama_base"]


class InferenceEndpointFactory(factory.django.DjangoModelFactory):
    """A vLLM endpoint with shared-volume delivery; `team=None` makes it shared. Nothing listens at its URL
    (port 9, discard): tests that need a server start one."""

    class Meta:
        model = InferenceEndpoint

    team = factory.SubFactory(TeamFactory)
    name = factory.Sequence(lambda n: f"vllm-{n}")
    kind = InferenceEndpoint.Kind.VLLM
    base_url = "http://127.0.0.1:9"
    served_models = factory.LazyFunction(lambda: {"tailor-tiny": "tailor-tiny"})
    max_lora_rank = 64
    delivery = InferenceEndpoint.Delivery.SHARED_VOLUME
    adapter_root = "/srv/tailor/adapters"
    served_adapter_root = "/adapters"


class DeploymentFactory(factory.django.DjangoModelFactory):
    """A deployment row in any state, without a push (the adapter and endpoint must be given)."""

    class Meta:
        model = Deployment

    team = factory.LazyAttribute(lambda d: d.adapter.team)
    status = Deployment.Status.LIVE
    served_name = factory.LazyAttribute(lambda d: d.adapter.name)
    live_at = factory.LazyFunction(timezone.now)


def adapter_of(team: Team, base: BaseModel, **config: Any) -> Adapter:
    """A new adapter version of `team`'s family on `base` (its job succeeded and named it), whose files
    (`adapter_config.json`, `adapter_model.safetensors`, `tokenizer.json`) are in the object store;
    `config` overrides adapter_config.json (e.g. `r=128`)."""
    adapter = stored_adapter(team, base, **config)
    FineTuningJob.objects.filter(pk=adapter.job_id).update(
        status=FineTuningJob.Status.SUCCEEDED, fine_tuned_model=adapter.name, finished_at=timezone.now()
    )
    Adapter.objects.filter(pk=adapter.pk).update(
        size_bytes=sum(entry["bytes"] for entry in adapter.files.values()),
        lineage={"job": adapter.job.public_id, "base_model": {"name": base.name, "revision": base.revision}},
        metrics={"train_loss": 1.25},
    )
    adapter.refresh_from_db()
    return adapter


@contextlib.contextmanager
def healthy_vllm(*, token: str = "") -> Iterator[str]:
    """A real HTTP server on loopback answering like a healthy vLLM: `/health` 200, and `/v1/models` 200 to
    `Authorization: Bearer <token>` (401 otherwise). Yields its base URL; stopped on exit."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/health":
                self._answer(200, b"")
            elif self.path == "/v1/models" and self.headers.get("Authorization", "") == f"Bearer {token}":
                self._answer(200, json.dumps({"object": "list", "data": []}).encode())
            else:
                self._answer(401, json.dumps({"error": {"message": "Unauthorized"}}).encode())

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
