"""A team's webhook endpoints and the log of every event delivered (or not) to them.

The signing secret is kept in the database because every delivery signs with it (an HMAC key cannot be
hashed away); the API shows it once, when the endpoint is created.
"""

from __future__ import annotations

import secrets

from django.db import models

from tailor.teams.models import Team

from .delivery import EVENT_TYPES

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def new_endpoint_id() -> str:
    """`wh_` and 24 random base62 characters."""
    return "wh_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


class WebhookEndpoint(models.Model):
    """A URL of a team's that receives job events, signed with the endpoint's own secret."""

    public_id = models.CharField(max_length=40, unique=True, default=new_endpoint_id, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField(max_length=2048)
    description = models.CharField(max_length=200, blank=True)
    secret = models.CharField(max_length=100, editable=False)
    enabled = models.BooleanField(default=True)
    event_types = models.JSONField(
        default=list, help_text=f"Events sent to this URL; empty means all: {', '.join(EVENT_TYPES)}."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        verbose_name = "webhook endpoint"

    def __str__(self) -> str:
        return f"{self.public_id} → {self.url}"

    def wants(self, event_type: str) -> bool:
        """Whether this endpoint subscribes to `event_type`."""
        return self.enabled and (not self.event_types or event_type in self.event_types)


class WebhookDelivery(models.Model):
    """One event for one endpoint: the payload signed and sent on every try, and how each try went.

    `next_attempt_at` is when the next try is due; a worker that takes the delivery moves it forward
    first, so two workers never send the same try.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.CharField(
        max_length=64, help_text="The event's `id` (evt_…), shared by its deliveries."
    )
    event_type = models.CharField(max_length=64)
    msg_id = models.CharField(max_length=64, unique=True, help_text="`webhook-id`, the same on every retry.")
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    log = models.JSONField(default=list, help_text="One entry per try: at, status_code, error, duration_ms.")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="webhookdelivery_due")]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.endpoint_id} ({self.status})"
