"""Secret key, debug, hosts and HTTPS hardening.

Production (`TAILOR_ENV=production`) has no default secret key and refuses to start without
`DJANGO_SECRET_KEY`; its defaults pass `tailor check --deploy`. Development keeps a random key in
TAILOR_HOME so sessions survive restarts without anyone inventing one.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from tailor.settings.env import PRODUCTION, TAILOR_HOME, TAILOR_PUBLIC_URL, env


def _development_secret_key(home: Path) -> str:
    """Read, or create once, a random key under TAILOR_HOME for development use."""
    path = home / "secret_key"
    if path.is_file():
        return path.read_text().strip()
    home.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    path.write_text(key)
    path.chmod(0o600)
    return key


DEBUG = env.bool("DJANGO_DEBUG", default=False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DJANGO_DEBUG=true is refused when TAILOR_ENV=production")

SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Production (TAILOR_ENV=production) has no default secret key; "
            "set DJANGO_SECRET_KEY to a random string of at least 50 characters, e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`."
        )
    SECRET_KEY = _development_secret_key(TAILOR_HOME)

_public = urlsplit(TAILOR_PUBLIC_URL)
_public_host = _public.hostname or "127.0.0.1"
ALLOWED_HOSTS = env.list(
    "DJANGO_ALLOWED_HOSTS",
    default=[_public_host] if PRODUCTION else sorted({_public_host, "localhost", "127.0.0.1", "[::1]"}),
)
CSRF_TRUSTED_ORIGINS = env.list(
    "DJANGO_CSRF_TRUSTED_ORIGINS", default=[f"{_public.scheme}://{_public.netloc}"] if _public.netloc else []
)

SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if env.bool("DJANGO_SECURE_PROXY_SSL_HEADER", default=False):
    # Only behind a proxy that sets X-Forwarded-Proto itself; otherwise clients could forge it.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

if PRODUCTION:
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    # Liveness probes talk plain HTTP inside the cluster.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
