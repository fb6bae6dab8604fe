"""WSGI entry point (gunicorn tailor.wsgi). Production settings refuse to load without DJANGO_SECRET_KEY."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tailor.settings")

application = get_wsgi_application()
