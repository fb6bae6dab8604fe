"""Wire shapes of the native webhooks API (`/api/v1/webhooks`)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from tailor.core.serializers import ConstantField, UnixTimestampField
from tailor.webhooks.delivery import EVENT_TYPES
from tailor.webhooks.models import WebhookDelivery, WebhookEndpoint


class EndpointCreateSerializer(serializers.Serializer):
    url = serializers.URLField(max_length=2048, help_text="http(s) URL that receives signed POSTs.")
    description = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENT_TYPES),
        required=False,
        default=list,
        help_text="Events to send; empty or absent means all.",
    )


class EndpointUpdateSerializer(serializers.Serializer):
    url = serializers.URLField(max_length=2048, required=False)
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)
    enabled = serializers.BooleanField(required=False)
    event_types = serializers.ListField(child=serializers.ChoiceField(choices=EVENT_TYPES), required=False)


class EndpointSerializer(serializers.Serializer):
    """A webhook endpoint. `secret` appears only in the answer that created or rotated it."""

    id = serializers.CharField(source="public_id")
    object = ConstantField("webhook_endpoint")
    url = serializers.CharField()
    description = serializers.CharField()
    enabled = serializers.BooleanField()
    event_types = serializers.ListField(child=serializers.CharField())
    created_at = UnixTimestampField()
    secret_hint = serializers.SerializerMethodField(
        help_text="The secret's first characters, to tell secrets apart."
    )

    def get_secret_hint(self, endpoint: WebhookEndpoint) -> str:
        return endpoint.secret[:10] + "…"


class EndpointWithSecretSerializer(EndpointSerializer):
    secret = serializers.CharField(help_text="`whsec_…`: verify deliveries with it. Shown this once.")


class EndpointListSerializer(serializers.Serializer):
    object = ConstantField("list")
    data = EndpointSerializer(many=True)


class DeliverySerializer(serializers.Serializer):
    """One event sent (or being sent) to an endpoint, with every try."""

    id = serializers.CharField(source="msg_id", help_text="The `webhook-id` header of every try.")
    object = ConstantField("webhook_delivery")
    event_id = serializers.CharField()
    event_type = serializers.CharField()
    status = serializers.ChoiceField(choices=WebhookDelivery.Status.choices)
    attempts = serializers.IntegerField()
    next_attempt_at = UnixTimestampField(allow_null=True)
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField()
    created_at = UnixTimestampField()
    delivered_at = UnixTimestampField(allow_null=True)
    payload = serializers.JSONField()
    log = serializers.ListField(child=serializers.DictField())

    def to_representation(self, instance: WebhookDelivery) -> dict[str, Any]:
        data = super().to_representation(instance)
        if instance.status != WebhookDelivery.Status.PENDING:
            data["next_attempt_at"] = None
        return data


class DeliveryListSerializer(serializers.Serializer):
    object = ConstantField("list")
    data = DeliverySerializer(many=True)
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class DeliveryListParamsSerializer(serializers.Serializer):
    after = serializers.CharField(required=False)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=100, default=20)
