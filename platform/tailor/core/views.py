"""Health check and the OpenAI-style answer for unknown URLs under the API prefixes."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from tailor.core.exceptions import error_json_response


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness and database reachability, for load balancers and `make demo`."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # noqa: BLE001 - any database failure means "not ready"
        return JsonResponse({"status": "unavailable", "database": "unreachable"}, status=503)
    return JsonResponse({"status": "ok"})


@csrf_exempt
def unknown_api_url(request: HttpRequest, path: str = "") -> JsonResponse:
    """404 in the error envelope for any path under /v1 or /api that matches no endpoint."""
    return error_json_response(404, f"Invalid URL ({request.method} {request.path})", code="unknown_url")
