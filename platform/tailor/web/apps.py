"""Django app configuration for the web dashboard."""

from django.apps import AppConfig


class WebConfig(AppConfig):
    """The team dashboard: jobs with live loss curves, quotas, adapters, endpoints, API keys."""

    name = "tailor.web"
    label = "web"
    verbose_name = "Dashboard"
