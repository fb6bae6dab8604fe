"""Django app configuration for fine-tuning jobs."""

from django.apps import AppConfig


class TuningConfig(AppConfig):
    name = "tailor.tuning"
    label = "tuning"
    verbose_name = "Fine-tuning"
