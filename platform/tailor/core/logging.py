"""Structured logs of the control plane: the `LOGGING` dictionary the settings install, and the filter that
names the request and team behind each line of the API.

The fields, formats and Celery handlers are shared with the GPU workers and live in `workers.logcontext`
(Django-free); this module adds what only an HTTP request knows. `tailor.core.middleware` binds the
request id and the request itself for the duration of each request. The team is read from the request
when a line is written rather than bound once, because DRF authenticates inside the view: lines from
before authentication have no team, lines after it have the API key's team.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from django.http import HttpRequest
from django.utils.functional import LazyObject

from workers.logcontext import ContextFilter, logging_config

_request: ContextVar[HttpRequest | None] = ContextVar("tailor_log_request", default=None)


def bind_request(request: HttpRequest) -> None:
    """Make `request` the one whose team the current thread's log lines name."""
    _request.set(request)


def forget_request() -> None:
    """No request is being served any more."""
    _request.set(None)


def request_team_slug(request: HttpRequest) -> str | None:
    """The slug of the team whose API key authenticated `request`, once DRF has authenticated it.

    Reads the user DRF stored on the request without evaluating Django's lazy session user: that would
    query the database from inside a log call."""
    user = request.__dict__.get("user")
    if user is None or isinstance(user, LazyObject):
        return None
    team = getattr(user, "team", None)  # tailor.core.authentication.TeamPrincipal
    slug = getattr(team, "slug", None)
    return slug if isinstance(slug, str) else None


class RequestContextFilter(ContextFilter):
    """The bound context fields, plus the `team` of the request being served."""

    def context_fields(self) -> Mapping[str, str]:
        fields = super().context_fields()
        request = _request.get()
        if request is None or "team" in fields:
            return fields
        team = request_team_slug(request)
        return {**fields, "team": team} if team else fields


def logging_settings(*, fmt: str, level: str) -> dict[str, Any]:
    """`LOGGING` for Django processes: `fmt` (json or text) lines on stderr at `level`, with context."""
    return logging_config(fmt=fmt, level=level, context_filter="tailor.core.logging.RequestContextFilter")
