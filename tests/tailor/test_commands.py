"""`tailor createteam` and `tailor createkey` print exactly one JSON object a script can parse."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from tailor.teams.models import APIKey, Membership, Team
from tailor.teams.services import api_key_authenticate

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.django_db


def run(*args: str) -> dict:
    out = io.StringIO()
    call_command(*args, stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1, out.getvalue()
    return json.loads(lines[0])


def test_createteam_with_password_gives_team_key_url_and_username(settings) -> None:
    settings.TAILOR_PUBLIC_URL = "https://tailor.example.com/v1"
    result = run("createteam", "research", "--owner", "ada@example.com", "--password", "a-long-passphrase")
    assert set(result) == {"team", "api_key", "base_url", "username"}
    assert result["team"] == "research"
    assert result["base_url"] == "https://tailor.example.com/v1"
    assert result["username"] == "ada@example.com"
    key = api_key_authenticate(raw_key=result["api_key"])
    assert key is not None and key.team.slug == "research"
    membership = Membership.objects.get(team__slug="research")
    assert membership.role == "owner" and membership.user.is_staff
    assert membership.user.check_password("a-long-passphrase")


def test_createteam_without_password_is_api_only() -> None:
    result = run("createteam", "bots", "--owner", "bot@example.com")
    assert "username" not in result
    assert not Membership.objects.get(team__slug="bots").user.has_usable_password()


def test_createteam_refuses_an_existing_slug_and_changes_nothing() -> None:
    run("createteam", "research", "--owner", "ada@example.com")
    with pytest.raises(CommandError, match="already exists"):
        run("createteam", "research", "--owner", "eve@example.com")
    assert Team.objects.count() == 1 and APIKey.objects.count() == 1
    assert not Membership.objects.filter(user__username="eve@example.com").exists()


def test_createkey_issues_another_working_key() -> None:
    first = run("createteam", "research", "--owner", "ada@example.com")
    second = run("createkey", "--team", "research", "--name", "ci")
    assert set(second) == {"team", "api_key", "base_url"}
    assert second["api_key"] != first["api_key"]
    assert api_key_authenticate(raw_key=second["api_key"]).name == "ci"
    read_only = run("createkey", "--team", "research", "--read-only")
    assert api_key_authenticate(raw_key=read_only["api_key"]).scopes == ["read"]


def test_createkey_for_unknown_team_fails_clearly() -> None:
    with pytest.raises(CommandError, match="No team with slug 'ghosts'"):
        run("createkey", "--team", "ghosts")


def test_tailor_console_script_on_embedded_defaults(tmp_path: Path) -> None:
    """The command a README user runs: a fresh TAILOR_HOME, migrate, createteam, JSON on stdout only."""
    paths = [
        str(ROOT / "platform"),
        str(ROOT),
        *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
    ]
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join(paths),
        "TAILOR_HOME": str(tmp_path / "home"),
    }
    tailor = [sys.executable, "-m", "tailor.cli"]
    subprocess.run([*tailor, "migrate", "-v", "0"], env=env, cwd=tmp_path, check=True, timeout=300)
    done = subprocess.run(
        [*tailor, "createteam", "demo", "--owner", "demo@example.com", "--password", "pw-demo-123"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["team"] == "demo" and result["api_key"].startswith("tlr-")
    assert result["base_url"] == "http://127.0.0.1:8000/v1"
    assert (tmp_path / "home" / "tailor.sqlite3").is_file()
