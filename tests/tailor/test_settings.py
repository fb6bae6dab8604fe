"""Configuration is environment-only with embedded defaults, and production refuses to run unsafely."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, django
django.setup()
from django.conf import settings
from django.db import connection
from workers.app import app
db = settings.DATABASES["default"]
print(json.dumps({
    "engine": db["ENGINE"], "name": str(db["NAME"]), "storage": settings.TAILOR_STORAGE_URL,
    "max_upload": settings.TAILOR_MAX_UPLOAD_BYTES, "public_url": settings.TAILOR_PUBLIC_URL,
    "broker": app.conf.broker_url, "broker_options": app.conf.broker_transport_options,
    "debug": settings.DEBUG, "driver": connection.Database.__name__,
}))
"""


def clean_env(**extra: str) -> dict[str, str]:
    """Only what a fresh shell would have, plus `extra`: none of the test session's configuration."""
    paths = [
        str(ROOT / "platform"),
        str(ROOT),
        *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
    ]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": os.pathsep.join(paths),
        "DJANGO_SETTINGS_MODULE": "tailor.settings",
    }
    env.update(extra)
    return env


def run_tailor(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tailor.cli", *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def probe(cwd: Path, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def production_env(**extra: str) -> dict[str, str]:
    return {"TAILOR_ENV": "production", "DJANGO_ALLOWED_HOSTS": "tailor.example.com", **extra}


def test_embedded_defaults_need_no_service(tmp_path: Path) -> None:
    seen = probe(tmp_path)
    home = tmp_path.resolve() / "var"
    assert seen["engine"] == "django.db.backends.sqlite3"
    assert seen["name"] == str(home / "tailor.sqlite3")
    assert seen["storage"] == (home / "objects").as_uri()
    assert seen["broker"] == "filesystem://"
    assert seen["broker_options"]["data_folder_in"] == str(home / "broker" / "queues")
    assert seen["max_upload"] == 512 * 1024 * 1024
    assert seen["public_url"] == "http://127.0.0.1:8000/v1"
    assert seen["debug"] is False


def test_production_services_come_from_the_environment(tmp_path: Path) -> None:
    seen = probe(
        tmp_path,
        DATABASE_URL="postgres://tailor:pw@db.internal:5432/tailor",
        CELERY_BROKER_URL="redis://redis.internal:6379/0",
        TAILOR_STORAGE_URL="s3://tailor-artifacts/prod",
        TAILOR_HOME=str(tmp_path / "home"),
    )
    assert seen["engine"] == "django.db.backends.postgresql"
    assert seen["driver"] == "psycopg"  # psycopg 3, not psycopg2
    assert seen["name"] == "tailor"
    assert seen["broker"] == "redis://redis.internal:6379/0"
    assert seen["storage"] == "s3://tailor-artifacts/prod"


def test_os_environment_wins_over_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# local overrides\nTAILOR_PUBLIC_URL=http://from-dotenv:9000/v1\nTAILOR_MAX_UPLOAD_BYTES=12345\n"
    )
    seen = probe(tmp_path, TAILOR_PUBLIC_URL="https://from-os.example.com/v1")
    assert seen["public_url"] == "https://from-os.example.com/v1"
    assert seen["max_upload"] == 12345  # what the OS leaves unset, .env fills in


def test_production_refuses_to_start_without_secret_key(tmp_path: Path) -> None:
    result = run_tailor(["check"], tmp_path, **production_env())
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr
    # The WSGI entry point (gunicorn) refuses too.
    wsgi = subprocess.run(
        [sys.executable, "-c", "import tailor.wsgi"],
        cwd=tmp_path,
        env=clean_env(**production_env()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wsgi.returncode != 0
    assert "ImproperlyConfigured" in wsgi.stderr and "DJANGO_SECRET_KEY" in wsgi.stderr


def test_production_passes_check_deploy(tmp_path: Path) -> None:
    result = run_tailor(
        ["check", "--deploy", "--fail-level", "WARNING"],
        tmp_path,
        **production_env(DJANGO_SECRET_KEY=secrets.token_urlsafe(50), TAILOR_HOME=str(tmp_path / "home")),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_development_settings_fail_check_deploy(tmp_path: Path) -> None:
    # The deploy check is meaningful: the development defaults do not pass it.
    result = run_tailor(["check", "--deploy", "--fail-level", "WARNING"], tmp_path)
    assert result.returncode != 0
    assert "SECURE_HSTS_SECONDS" in result.stderr + result.stdout


def test_production_refuses_debug(tmp_path: Path) -> None:
    result = run_tailor(
        ["check"],
        tmp_path,
        **production_env(DJANGO_SECRET_KEY=secrets.token_urlsafe(50), DJANGO_DEBUG="true"),
    )
    assert result.returncode != 0
    assert "DJANGO_DEBUG" in result.stderr


def test_env_example_lists_every_variable_the_code_reads() -> None:
    import re

    sources = [*(ROOT / "platform" / "tailor" / "settings").glob("*.py"), ROOT / "workers" / "app.py"]
    pattern = re.compile(r"""(?:env\.\w+\(\s*|environ\.get\(\s*|\.get\(\s*)"([A-Z][A-Z0-9_]+)\"""")
    read = {name for path in sources for name in pattern.findall(path.read_text())}
    assert {"DATABASE_URL", "CELERY_BROKER_URL", "TAILOR_STORAGE_URL", "DJANGO_SECRET_KEY"} <= read
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert read - documented == set()
