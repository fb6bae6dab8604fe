"""Django app configuration for Tailor's cross-cutting API pieces."""

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "tailor.core"
    label = "core"
    verbose_name = "Tailor core"

    def ready(self) -> None:
        # Registers the OpenAPI extensions with drf-spectacular.
        from tailor.core import schema  # noqa: F401
