"""Reads of webhook endpoints and their delivery logs, always scoped to one team."""

from __future__ import annotations

from django.db.models import QuerySet

from tailor.core.errors import InvalidRequest, NotFound
from tailor.core.pagination import CursorPage, cursor_page
from tailor.teams.models import Team
from tailor.webhooks.models import WebhookDelivery, WebhookEndpoint


def endpoint_list(*, team: Team) -> QuerySet[WebhookEndpoint]:
    """The team's endpoints, newest first."""
    return WebhookEndpoint.objects.filter(team=team).order_by("-id")


def endpoint_get(*, team: Team, endpoint_id: str) -> WebhookEndpoint:
    """The team's endpoint with this id, or NotFound."""
    endpoint = WebhookEndpoint.objects.filter(team=team, public_id=endpoint_id).first()
    if endpoint is None:
        raise NotFound.for_object("WebhookEndpoint", endpoint_id)
    return endpoint


def delivery_list(
    *, endpoint: WebhookEndpoint, after: str | None = None, limit: int = 20
) -> CursorPage[WebhookDelivery]:
    """An endpoint's deliveries, newest first; `after` is a delivery's `webhook-id`."""
    cursor = None
    if after:
        cursor = WebhookDelivery.objects.filter(endpoint=endpoint, msg_id=after).only("pk").first()
        if cursor is None:
            raise InvalidRequest(f"No such delivery for cursor `after`: {after}", param="after")
    return cursor_page(endpoint.deliveries.all(), after=cursor, limit=limit, order="desc")
