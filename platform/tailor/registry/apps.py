from django.apps import AppConfig


class RegistryConfig(AppConfig):
    """Adapter versions and aliases, inference endpoints, deployments and auto-deploy policies."""

    name = "tailor.registry"
    label = "registry"
    verbose_name = "Adapter registry"

    def ready(self) -> None:
        from tailor.registry import metrics  # noqa: F401 - registers the registry's Prometheus families
