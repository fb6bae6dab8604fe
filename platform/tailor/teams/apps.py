"""Django app configuration for teams, memberships and API keys."""

from django.apps import AppConfig


class TeamsConfig(AppConfig):
    name = "tailor.teams"
    label = "teams"
    verbose_name = "Teams and API keys"
