"""`tailor endpoint sync | add | list | check`: operators register inference endpoints from TAILOR_ENDPOINTS or
one at a time, every line is a JSON object a script can parse, the credential never appears, and a bad
entry or an unhealthy server ends the command with status 1 and a message that says what is wrong."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from tailor.registry.models import AutoDeployPolicy, InferenceEndpoint

from tests.tailor.factories import TeamFactory
from tests.tailor.registry_factories import InferenceEndpointFactory, healthy_vllm, llama_base

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.django_db


def run(*args: str) -> list[dict[str, Any]]:
    out = io.StringIO()
    call_command("endpoint", *args, stdout=out, stderr=io.StringIO())
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


@pytest.fixture
def base(db: None) -> Any:
    return llama_base()


ENTRIES = [
    {
        "name": "vllm",
        "kind": "vllm",
        "url": "http://127.0.0.1:9",
        "base_models": {"tailor-tiny": "TinyLlama", "llama-3.2-1b": "meta-llama/Llama-3.2-1B-Instruct"},
        "adapter_root": "/var/lib/tailor/adapters",
        "served_adapter_root": "/adapters",
        "max_lora_rank": 64,
        "credential": "operator-secret",
        "auto_deploy": True,
    },
    {"name": "ollama", "kind": "ollama", "url": "http://127.0.0.1:11434", "base_models": ["tailor-tiny"]},
]


def test_sync_registers_the_listed_shared_endpoints_idempotently(settings, base) -> None:
    settings.TAILOR_ENDPOINTS = ENTRIES
    first = run("sync")
    assert [(e["name"], e["team"], e["kind"]) for e in first] == [
        ("vllm", None, "vllm"),
        ("ollama", None, "ollama"),
    ]
    vllm = first[0]
    assert vllm["served_models"] == ENTRIES[0]["base_models"] and vllm["max_lora_rank"] == 64
    assert vllm["auto_deploy"] is True and vllm["has_credential"] is True
    assert "operator-secret" not in json.dumps(first) and "credential" not in vllm
    assert first[1]["delivery"] == "http" and first[1]["served_models"] == {"tailor-tiny": "tailor-tiny"}

    settings.TAILOR_ENDPOINTS = [{**ENTRIES[0], "max_lora_rank": 128}, ENTRIES[1]]
    again = run("sync")
    assert [e["id"] for e in again] == [e["id"] for e in first], "updated in place, not duplicated"
    assert again[0]["max_lora_rank"] == 128
    assert InferenceEndpoint.objects.count() == 2


def test_sync_refuses_a_bad_entry_clearly_and_registers_nothing(settings, base) -> None:
    settings.TAILOR_ENDPOINTS = [ENTRIES[0], {"name": "broken", "kind": "vllm"}]
    with pytest.raises(CommandError, match="TAILOR_ENDPOINTS entry 2: needs at least name, kind and url"):
        run("sync")
    settings.TAILOR_ENDPOINTS = [{**ENTRIES[0], "max_lora_rank": 48}]
    with pytest.raises(CommandError, match=r"entry 1 \(vllm\): max_lora_rank must be one of"):
        run("sync")
    assert not InferenceEndpoint.objects.exists()


def test_add_registers_a_shared_endpoint_that_deploys_every_teams_adapters(base, monkeypatch) -> None:
    monkeypatch.setenv("VLLM_TOKEN", "from-the-environment")
    [shown] = run(
        "add", "dev", "--kind", "vllm", "--url", "http://127.0.0.1:8000/v1",
        "--base-model", "tailor-tiny=tiny-served", "--adapter-root", "/srv/adapters",
        "--served-adapter-root", "/adapters", "--max-lora-rank", "64", "--credential-env", "VLLM_TOKEN",
        "--auto-deploy",
    )  # fmt: skip
    endpoint = InferenceEndpoint.objects.get(public_id=shown["id"])
    assert endpoint.shared and endpoint.auto_deploy_all_teams
    assert endpoint.base_url == "http://127.0.0.1:8000" and endpoint.served_models == {
        "tailor-tiny": "tiny-served"
    }
    assert (endpoint.adapter_root, endpoint.served_adapter_root) == ("/srv/adapters", "/adapters")
    assert endpoint.credential == "from-the-environment" and shown["has_credential"] is True
    assert "from-the-environment" not in json.dumps(shown)
    assert shown["team"] is None and shown["auto_deploy"] is True


def test_add_for_a_team_makes_its_own_endpoint_and_auto_deploy_policy(base) -> None:
    team = TeamFactory(slug="research")
    [shown] = run(
        "add", "ollama", "--kind", "ollama", "--url", "http://127.0.0.1:11434", "--base-model", "tailor-tiny",
        "--team", "research", "--auto-deploy",
    )  # fmt: skip
    assert shown["team"] == "research" and shown["delivery"] == "http" and shown["auto_deploy"] is True
    endpoint = InferenceEndpoint.objects.get(public_id=shown["id"])
    assert endpoint.team == team and not endpoint.auto_deploy_all_teams
    assert AutoDeployPolicy.objects.filter(team=team, endpoint=endpoint, base_model=None).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "ftp://x", "--base-model", "tailor-tiny"], "base_url must be an http"),
        (["--url", "http://127.0.0.1:9", "--base-model", "nope"], "unknown base models: nope"),
        (["--url", "http://127.0.0.1:9", "--base-model", "=x"], "expected NAME or NAME=SERVED_NAME"),
        (["--url", "http://127.0.0.1:9", "--base-model", "tailor-tiny", "--team", "ghosts"], "No team"),
        (
            ["--url", "http://127.0.0.1:9", "--base-model", "tailor-tiny", "--max-lora-rank", "48"],
            "max_lora_rank",
        ),
        (
            ["--url", "http://127.0.0.1:9", "--base-model", "tailor-tiny", "--credential-env", "UNSET_X"],
            "empty",
        ),
    ],
)
def test_add_refuses_what_would_not_work(base, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run("add", "dev", "--kind", "vllm", "--adapter-root", "/srv/adapters", *args)
    assert not InferenceEndpoint.objects.exists()


def test_add_refuses_a_name_taken_already(base) -> None:
    run("add", "dev", "--kind", "ollama", "--url", "http://127.0.0.1:9", "--base-model", "tailor-tiny")
    with pytest.raises(CommandError, match="exists already"):
        run("add", "dev", "--kind", "ollama", "--url", "http://127.0.0.1:8", "--base-model", "tailor-tiny")


def test_list_shows_every_endpoint_without_credentials(base) -> None:
    InferenceEndpointFactory(team=None, name="shared", credential="s3cret")
    InferenceEndpointFactory(team=TeamFactory(slug="research"), name="own")
    listed = run("list")
    assert [(e["name"], e["team"]) for e in listed] == [("own", "research"), ("shared", None)]
    assert [e["has_credential"] for e in listed] == [False, True] and "s3cret" not in json.dumps(listed)


def test_check_records_health_and_fails_when_the_server_is_down(base) -> None:
    with healthy_vllm(token="tok") as url:
        InferenceEndpointFactory(team=None, name="up", base_url=url, credential="tok")
        [shown] = run("check", "up")
    assert shown["health"] == "healthy" and InferenceEndpoint.objects.get(name="up").health_checked_at

    InferenceEndpointFactory(team=TeamFactory(slug="research"), name="down", base_url="http://127.0.0.1:9")
    with pytest.raises(CommandError, match="No endpoint 'down' shared"):
        run("check", "down")
    with pytest.raises(CommandError, match=r"Endpoint 'down' is unhealthy: .*could not be reached"):
        run("check", "down", "--team", "research")
    assert InferenceEndpoint.objects.get(name="down").health == "unhealthy"


def test_the_console_script_exits_1_with_the_message_on_a_bad_entry(tmp_path: Path) -> None:
    """What an operator's deploy script sees: status 1 and one clear line, no traceback."""
    paths = [
        str(ROOT / "platform"),
        str(ROOT),
        *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "TAILOR_HOME": str(tmp_path),
        "TAILOR_ENV_FILE": str(tmp_path / "none.env"),
        "TAILOR_ENDPOINTS": json.dumps([{"name": "vllm", "kind": "vllm"}]),
    }
    env.pop("DATABASE_URL", None)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "-m", "tailor.cli", "endpoint", "sync"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "TAILOR_ENDPOINTS entry 1: needs at least name, kind and url" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
