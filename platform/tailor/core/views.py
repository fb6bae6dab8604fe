"""Probes and scrapes (liveness, readiness, Prometheus metrics) and the OpenAI-style answer for unknown URLs
under the API prefixes."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from tailor.core import metrics as metrics_exposition
from tailor.core.exceptions import error_json_response
from tailor.core.readiness import run_checks


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness and database reachability, for load balancers and `make demo`."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # noqa: BLE001 - any database failure means "not ready"
        return JsonResponse({"status": "unavailable", "database": "unreachable"}, status=503)
    return JsonResponse({"status": "ok"})


@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 when the database, the broker and the object store all answer, else 503 naming
    each failing check and why (`tailor.core.readiness`)."""
    results = run_checks()
    ready = all(result.ok for result in results.values())
    body = {
        "status": "ok" if ready else "unavailable",
        "checks": {name: result.as_json() for name, result in results.items()},
    }
    if not ready:
        body["failing"] = sorted(name for name, result in results.items() if not result.ok)
    return JsonResponse(body, status=200 if ready else 503)


@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus scrape (`tailor.core.metrics`); a bearer token is wanted when TAILOR_METRICS_TOKEN is set."""
    if not metrics_exposition.scrape_allowed(request):
        response = HttpResponse("A valid bearer token is required (TAILOR_METRICS_TOKEN).\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body, content_type = metrics_exposition.exposition(request.headers.get("Accept"))
    return HttpResponse(body, content_type=content_type)


@csrf_exempt
def unknown_api_url(request: HttpRequest, path: str = "") -> JsonResponse:
    """404 in the error envelope for any path under /v1 or /api that matches no endpoint."""
    return error_json_response(404, f"Invalid URL ({request.method} {request.path})", code="unknown_url")
