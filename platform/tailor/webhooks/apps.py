"""Django app configuration for webhooks."""

from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "tailor.webhooks"
    label = "webhooks"
    verbose_name = "Webhooks"
