"""Django app configuration for uploaded files."""

from django.apps import AppConfig


class FilesConfig(AppConfig):
    name = "tailor.files"
    label = "files"
    verbose_name = "Files"
