"""The adapter registry and the inference gateway.

- `TAILOR_ENDPOINTS`: JSON list of the shared inference endpoints operators run, registered (created or
  updated) by `tailor endpoint sync`: `[{"name": "vllm", "kind": "vllm", "url": "http://vllm:8000",
  "base_models": {"llama-3.2-1b": "meta-llama/Llama-3.2-1B-Instruct"}, "delivery": "shared_volume",
  "adapter_root": "/var/lib/tailor/adapters", "served_adapter_root": "/adapters", "max_lora_rank": 64,
  "auto_deploy": true}]`. Empty: none.
- `TAILOR_ENDPOINT_TIMEOUT` (s, 30): one management call to an endpoint (load, blob upload, create).
- `TAILOR_SMOKE_TIMEOUT` (s, 60): the smoke chat request after a push.
- `TAILOR_DEPLOY_MAX_ATTEMPTS` (5): pushes of one deployment before transient failures fail it.
- `TAILOR_DEPLOY_RETRY_BASE_SECONDS` (2): first retry delay; it doubles per attempt (at most 300 s).
- `TAILOR_DEPLOY_STALE_SECONDS` (300): a push or undeploy silent for this long is sent again by the sweep.
- `TAILOR_GATEWAY_TIMEOUT` (s, 600): how long the gateway waits for an inference endpoint to answer.
- `TAILOR_DOWNLOAD_URL_SECONDS` (300): how long the presigned URLs of `GET /api/v1/adapters/{name}/download`
  work (S3 stores; a local store answers with Tailor's own stream URLs instead).
"""

from __future__ import annotations

import json

from django.core.exceptions import ImproperlyConfigured

from tailor.settings.env import env

_raw_endpoints = env.str("TAILOR_ENDPOINTS", default="").strip()
try:
    TAILOR_ENDPOINTS = json.loads(_raw_endpoints) if _raw_endpoints else []
except ValueError as exc:
    raise ImproperlyConfigured(f"TAILOR_ENDPOINTS is not valid JSON: {exc}") from None
if not isinstance(TAILOR_ENDPOINTS, list):
    raise ImproperlyConfigured("TAILOR_ENDPOINTS must be a JSON list of endpoint objects")

TAILOR_ENDPOINT_TIMEOUT = env.float("TAILOR_ENDPOINT_TIMEOUT", default=30.0)
TAILOR_SMOKE_TIMEOUT = env.float("TAILOR_SMOKE_TIMEOUT", default=60.0)
TAILOR_DEPLOY_MAX_ATTEMPTS = env.int("TAILOR_DEPLOY_MAX_ATTEMPTS", default=5)
TAILOR_DEPLOY_RETRY_BASE_SECONDS = env.float("TAILOR_DEPLOY_RETRY_BASE_SECONDS", default=2.0)
TAILOR_DEPLOY_STALE_SECONDS = env.int("TAILOR_DEPLOY_STALE_SECONDS", default=300)
TAILOR_GATEWAY_TIMEOUT = env.float("TAILOR_GATEWAY_TIMEOUT", default=600.0)
TAILOR_DOWNLOAD_URL_SECONDS = env.int("TAILOR_DOWNLOAD_URL_SECONDS", default=300)

if TAILOR_DEPLOY_MAX_ATTEMPTS < 1:
    raise ImproperlyConfigured(f"TAILOR_DEPLOY_MAX_ATTEMPTS must be at least 1, got {TAILOR_DEPLOY_MAX_ATTEMPTS}")
if not 1 <= TAILOR_DOWNLOAD_URL_SECONDS <= 7 * 24 * 3600:
    # S3 signatures (SigV4) last at most seven days.
    raise ImproperlyConfigured(
        f"TAILOR_DOWNLOAD_URL_SECONDS must be between 1 and 604800 (7 days), got {TAILOR_DOWNLOAD_URL_SECONDS}"
    )

__all__ = [
    "TAILOR_ENDPOINTS",
    "TAILOR_ENDPOINT_TIMEOUT",
    "TAILOR_SMOKE_TIMEOUT",
    "TAILOR_DEPLOY_MAX_ATTEMPTS",
    "TAILOR_DEPLOY_RETRY_BASE_SECONDS",
    "TAILOR_DEPLOY_STALE_SECONDS",
    "TAILOR_GATEWAY_TIMEOUT",
    "TAILOR_DOWNLOAD_URL_SECONDS",
]
