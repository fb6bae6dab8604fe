"""Middleware that makes every HTTP request observable — a request id on its log lines and response, an
access-log line, its latency in `tailor_http_request_duration_seconds` — and lets probes and scrapes in.

They come first in `MIDDLEWARE`, so they see the response every other middleware produced (a redirect,
a CSRF refusal, a 500 page) and every later log line carries the request id.

`ProbeMiddleware` answers `/healthz`, `/readyz` and `/metrics` before the host check and the HTTPS
redirect: Kubernetes probes and Prometheus reach a pod by its IP address over plain HTTP, an address no
`ALLOWED_HOSTS` can list in advance. Those views read no host, set no cookie and `/metrics` has its
own token, so skipping the host check there exposes nothing.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from django.core.signals import request_finished
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.urls import resolve

from tailor.core.logging import bind_request, forget_request
from tailor.core.metrics import HTTP_REQUEST_DURATION
from workers.logcontext import bind_log_context, clear_log_context

REQUEST_ID_HEADER = "X-Request-ID"
# A proxy's or client's id is kept only when it is short and plain, so no one writes arbitrary text (or
# fake JSON fields) into the logs through the header.
_ACCEPTED_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
# Probes and scrapes arrive every few seconds: their access lines are DEBUG, not INFO.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"

access_logger = logging.getLogger("tailor.access")


def request_id_for(request: HttpRequest) -> str:
    """The caller's `X-Request-ID` when it is acceptable, else a new random id."""
    sent = request.headers.get(REQUEST_ID_HEADER, "").strip()
    return sent if _ACCEPTED_REQUEST_ID.match(sent) else uuid.uuid4().hex


def route_of(request: HttpRequest) -> str:
    """The URL pattern that served `request` (`/v1/files/<str:file_id>`), never the path with its ids, so
    the metric's label set stays small; `<unmatched>` when no pattern matched."""
    match = getattr(request, "resolver_match", None)
    if match is None or not match.route:
        return UNMATCHED_ROUTE
    return "/" + match.route.lstrip("^")


class RequestContextMiddleware:
    """Binds `request_id` (and, once authenticated, the team) to the request's log lines, echoes the id
    in the `X-Request-ID` response header, and writes one access line per request."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_for(request)
        request.request_id = request_id
        # Bound until the response is closed, not just until this returns: Django logs 4xx and 5xx
        # answers (`django.request`) after the middleware chain, and those lines need the id too.
        clear_log_context()
        bind_log_context(request_id=request_id)
        bind_request(request)
        started = time.perf_counter()
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        elapsed_ms = (time.perf_counter() - started) * 1000
        access_logger.log(
            logging.DEBUG if request.path in QUIET_PATHS else logging.INFO,
            "%s %s %s %.1f ms",
            request.method,
            request.path,
            response.status_code,
            elapsed_ms,
            extra={
                "method": request.method,
                "path": request.path,
                "route": route_of(request),
                "status": response.status_code,
                "duration_ms": round(elapsed_ms, 3),
            },
        )
        return response


@receiver(request_finished, dispatch_uid="tailor.core.middleware.forget_request_context")
def _forget_request_context(**_: object) -> None:
    # The response was closed (sent): this thread's next log lines belong to no request.
    clear_log_context()
    forget_request()


class RequestMetricsMiddleware:
    """Observes each request's latency by method, route pattern and status code."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        method = request.method if request.method in KNOWN_METHODS else "other"
        HTTP_REQUEST_DURATION.labels(method, route_of(request), str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response


class ProbeMiddleware:
    """Serves the probe and scrape paths directly, ahead of the host check and the HTTPS redirect."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info not in QUIET_PATHS:
            return self.get_response(request)
        match = resolve(request.path_info)
        request.resolver_match = match
        return match.func(request, *match.args, **match.kwargs)
