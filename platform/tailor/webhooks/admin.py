"""Web admin for webhook endpoints and their delivery log, scoped to the teams a staff user manages.
Endpoints are registered through the API (which shows the secret once); the admin can disable them."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from tailor.teams.admin import TeamScopedAdmin
from tailor.webhooks.models import WebhookDelivery, WebhookEndpoint


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(TeamScopedAdmin):
    list_display = ["public_id", "team", "url", "enabled", "created_at"]
    list_filter = ["enabled"]
    search_fields = ["public_id", "url", "team__slug"]
    fields = ["public_id", "team", "url", "description", "enabled", "event_types", "created_at"]
    readonly_fields = ["public_id", "team", "url", "event_types", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(TeamScopedAdmin):
    team_lookup = "endpoint__team"
    list_display = [
        "msg_id",
        "event_type",
        "endpoint",
        "status",
        "attempts",
        "last_status_code",
        "created_at",
    ]
    list_filter = ["status", "event_type"]
    search_fields = ["msg_id", "event_id", "endpoint__url"]
    readonly_fields = [
        "endpoint",
        "event_id",
        "event_type",
        "msg_id",
        "payload",
        "status",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "last_error",
        "log",
        "created_at",
        "delivered_at",
    ]

    def team_id_of(self, obj: WebhookDelivery) -> int | None:
        return obj.endpoint.team_id

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: WebhookDelivery | None = None) -> bool:
        return False
