"""Routes of the native webhooks API."""

from __future__ import annotations

from django.urls import path

from tailor.webhooks.views import (
    DeliveryListView,
    EndpointDetailView,
    EndpointListCreateView,
    EndpointRotateSecretView,
)

native_urlpatterns = [
    path("webhooks", EndpointListCreateView.as_view(), name="webhooks"),
    path("webhooks/<str:endpoint_id>", EndpointDetailView.as_view(), name="webhook"),
    path(
        "webhooks/<str:endpoint_id>/rotate_secret", EndpointRotateSecretView.as_view(), name="webhook-rotate"
    ),
    path("webhooks/<str:endpoint_id>/deliveries", DeliveryListView.as_view(), name="webhook-deliveries"),
]
