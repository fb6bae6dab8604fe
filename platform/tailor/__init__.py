"""Tailor's control plane: the Django project behind the OpenAI-compatible API and the web admin."""

__version__ = "0.1.0"
