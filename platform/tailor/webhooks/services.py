"""Writes for webhooks: registering endpoints, recording events for delivery, and delivering them.

An event is recorded in the same transaction as the state change it reports (one WebhookDelivery per
subscribed endpoint, its payload built once) and handed to the control worker after commit. Each try
is logged on the delivery; a failed try is retried with `delivery.backoff_schedule`, driven by the
beat (`deliveries_due`), so a retry hours later never depends on a broker message waiting that long.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from tailor.core.errors import InvalidRequest
from tailor.teams.models import Team
from tailor.webhooks.delivery import (
    EVENT_TYPES,
    UnsafeWebhookDestination,
    WebhookDestinationError,
    backoff_schedule,
    build_event,
    check_destination,
    deliver,
    new_message_id,
)
from tailor.webhooks.models import WebhookDelivery, WebhookEndpoint
from tailor.webhooks.signing import generate_secret
from workers.app import DELIVER_WEBHOOK_TASK
from workers.app import app as celery_app

logger = logging.getLogger(__name__)

# A worker that takes a delivery moves its due time this far ahead first: longer than one try can
# last (deliver's 10 s timeout per address), so no other worker sends the same try meanwhile.
CLAIM_SECONDS = 120
LOG_ENTRIES_KEPT = 20


def _check_event_types(event_types: Iterable[str] | None) -> list[str]:
    chosen = list(event_types or [])
    unknown = sorted(set(chosen) - set(EVENT_TYPES))
    if unknown:
        raise InvalidRequest(
            f"Unknown event type(s) {', '.join(unknown)}; expected any of {', '.join(EVENT_TYPES)}.",
            param="event_types",
        )
    return sorted(set(chosen))


def _check_url(url: str) -> str:
    try:
        check_destination(url, allow_private=settings.TAILOR_WEBHOOK_ALLOW_PRIVATE)
    except UnsafeWebhookDestination as exc:
        raise InvalidRequest(str(exc), param="url", code="unsafe_url") from None
    except WebhookDestinationError as exc:
        raise InvalidRequest(str(exc), param="url", code="invalid_url") from None
    return url


@transaction.atomic
def endpoint_create(
    *, team: Team, url: str, description: str = "", event_types: Iterable[str] | None = None
) -> WebhookEndpoint:
    """Register a URL for the team's job events. The returned row's `secret` is shown to the client once."""
    return WebhookEndpoint.objects.create(
        team=team,
        url=_check_url(url),
        description=description,
        event_types=_check_event_types(event_types),
        secret=generate_secret(),
    )


@transaction.atomic
def endpoint_update(
    *,
    endpoint: WebhookEndpoint,
    url: str | None = None,
    description: str | None = None,
    enabled: bool | None = None,
    event_types: Iterable[str] | None = None,
) -> WebhookEndpoint:
    """Change an endpoint; only the fields given change."""
    if url is not None:
        endpoint.url = _check_url(url)
    if description is not None:
        endpoint.description = description
    if enabled is not None:
        endpoint.enabled = enabled
    if event_types is not None:
        endpoint.event_types = _check_event_types(event_types)
    endpoint.save()
    return endpoint


@transaction.atomic
def endpoint_rotate_secret(*, endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """Give the endpoint a new secret (shown once); deliveries from now on are signed with it."""
    endpoint.secret = generate_secret()
    endpoint.save(update_fields=["secret"])
    return endpoint


def endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    """Remove an endpoint and its delivery log."""
    endpoint.delete()


def enqueue_delivery(delivery_id: int) -> None:
    """Hand a delivery to the control worker (after the transaction that recorded it committed)."""
    celery_app.send_task(DELIVER_WEBHOOK_TASK, args=[delivery_id])


def event_publish(*, team: Team, event_type: str, data: Mapping[str, Any]) -> list[WebhookDelivery]:
    """Record `event_type` for every enabled endpoint of `team` that subscribes to it. Call inside the
    transaction of the change it reports: deliveries exist exactly when the change committed."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    endpoints = [e for e in WebhookEndpoint.objects.filter(team=team, enabled=True) if e.wants(event_type)]
    if not endpoints:
        return []
    payload = build_event(event_type=event_type, data=data)
    now = timezone.now()
    deliveries = []
    for endpoint in endpoints:
        delivery = WebhookDelivery.objects.create(
            endpoint=endpoint,
            event_id=payload["id"],
            event_type=event_type,
            msg_id=new_message_id(),
            payload=payload,
            next_attempt_at=now,
        )
        # robust: a broker outage must not undo the state change; the beat sends due deliveries anyway.
        transaction.on_commit(partial(enqueue_delivery, delivery.pk), robust=True)
        deliveries.append(delivery)
    return deliveries


def delivery_attempt(*, delivery_id: int) -> WebhookDelivery | None:
    """Send one try of a delivery if it is due, and log the outcome. Safe to call twice: a delivery that
    is not due (taken by another worker, delivered, given up) is left alone and None is returned."""
    now = timezone.now()
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now
    ).update(next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS))
    if not claimed:
        return None
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    endpoint = delivery.endpoint
    result_error: str | None
    status_code: int | None
    if not endpoint.enabled:
        result_error, status_code, ok, retryable, duration = "the endpoint is disabled", None, False, False, 0
    else:
        result = deliver(
            url=endpoint.url,
            secret=endpoint.secret,
            event_type=delivery.event_type,
            payload=delivery.payload,
            msg_id=delivery.msg_id,
            allow_private=settings.TAILOR_WEBHOOK_ALLOW_PRIVATE,
        )
        result_error, status_code, ok = result.error, result.status_code, result.ok
        retryable, duration = result.retryable, result.duration_ms
    finished = timezone.now()
    attempts = delivery.attempts + 1
    entry = {
        "at": int(finished.timestamp()),
        "attempt": attempts,
        "status_code": status_code,
        "error": result_error,
        "duration_ms": duration,
    }
    fields: dict[str, Any] = {
        "attempts": attempts,
        "last_status_code": status_code,
        "last_error": result_error or "",
        "log": [*delivery.log, entry][-LOG_ENTRIES_KEPT:],
    }
    delay = None if ok or not retryable else backoff_schedule(attempts)
    if ok:
        fields.update(status=WebhookDelivery.Status.SUCCEEDED, delivered_at=finished, next_attempt_at=None)
    elif delay is None:
        fields.update(status=WebhookDelivery.Status.FAILED, next_attempt_at=None)
    else:
        fields["next_attempt_at"] = finished + timedelta(seconds=delay)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(**fields)
    delivery.refresh_from_db()
    log = logger.info if ok else logger.warning
    log(
        "webhook %s to %s: try %s %s",
        delivery.event_type,
        endpoint.url,
        attempts,
        "delivered" if ok else f"failed ({result_error}); {delivery.status}",
    )
    return delivery


def deliveries_due(*, limit: int = 200) -> list[int]:
    """Ids of pending deliveries whose next try is due, oldest first."""
    return list(
        WebhookDelivery.objects.filter(
            status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=timezone.now()
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
