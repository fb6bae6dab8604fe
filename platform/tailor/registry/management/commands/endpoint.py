"""`tailor endpoint sync | add | list | check`: the inference endpoints adapters are deployed to.

- `sync` registers the shared endpoints listed in TAILOR_ENDPOINTS (created or updated, idempotently).
- `add NAME --kind vllm --url URL --base-model tailor-tiny[=served-name] …` registers one endpoint: a
  shared one (every team may deploy to it, none may change it), or with `--team SLUG` one team's own.
- `list` shows every endpoint; `check NAME` asks the server whether it is up and records the answer
  (exit status 1 when it is not).

Each prints one JSON object per endpoint on stdout. The credential never appears: only `has_credential`.
"""

from __future__ import annotations

import json
import os
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from tailor.core.errors import ApplicationError
from tailor.registry.models import InferenceEndpoint
from tailor.registry.services import (
    endpoint_check_health,
    endpoint_create,
    endpoints_sync,
    policy_create,
)
from tailor.teams.models import Team
from tailor.teams.selectors import team_get


def describe(endpoint: InferenceEndpoint) -> dict[str, Any]:
    """What an operator sees of an endpoint: everything but the credential."""
    return {
        "id": endpoint.public_id,
        "name": endpoint.name,
        "team": endpoint.team.slug if endpoint.team is not None else None,
        "kind": endpoint.kind,
        "base_url": endpoint.base_url,
        "served_models": endpoint.served_models,
        "max_lora_rank": endpoint.max_lora_rank,
        "max_adapters": endpoint.max_adapters,
        "delivery": endpoint.delivery,
        "adapter_root": endpoint.adapter_root,
        "served_adapter_root": endpoint.served_adapter_root,
        "auto_deploy": endpoint.auto_deploy_all_teams
        if endpoint.shared
        else endpoint.policies.filter(enabled=True).exists(),
        "enabled": endpoint.enabled,
        "has_credential": bool(endpoint.credential),
        "health": endpoint.health,
        "health_error": endpoint.health_error,
        "server_version": endpoint.server_version,
    }


def parse_base_models(values: list[str]) -> dict[str, str]:
    """`tailor-tiny` or `tailor-tiny=served-name` (the name the server serves it under) → a mapping."""
    served: dict[str, str] = {}
    for value in values:
        name, _, served_name = value.partition("=")
        if not name.strip() or (value.endswith("=") and not served_name):
            raise CommandError(f"--base-model {value!r}: expected NAME or NAME=SERVED_NAME")
        served[name.strip()] = served_name.strip() or name.strip()
    return served


class Command(BaseCommand):
    help = "Register inference endpoints (sync from TAILOR_ENDPOINTS, or add one), list them, check one."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("sync", help="create or update the shared endpoints listed in TAILOR_ENDPOINTS")

        add = sub.add_parser("add", help="register one endpoint")
        add.add_argument("name", help="unique per team (or among shared endpoints); names the agent queue")
        add.add_argument("--kind", required=True, choices=InferenceEndpoint.Kind.values)
        add.add_argument("--url", required=True, help="the server's base URL, e.g. http://vllm:8000")
        add.add_argument(
            "--base-model",
            dest="base_models",
            action="append",
            required=True,
            metavar="NAME[=SERVED]",
            help="a Tailor base model it serves, and the name it serves it under if different (repeatable)",
        )
        add.add_argument(
            "--team", metavar="SLUG", help="the team that owns it (default: shared by all teams)"
        )
        add.add_argument(
            "--delivery",
            choices=InferenceEndpoint.Delivery.values,
            help="how adapters reach the server (default: shared_volume for vLLM, http for Ollama)",
        )
        add.add_argument(
            "--adapter-root", default="", help="shared_volume: where the registry writes adapters"
        )
        add.add_argument(
            "--served-adapter-root", default="", help="shared_volume: the same folder as the server sees it"
        )
        add.add_argument("--max-lora-rank", type=int, default=16, help="vLLM's --max-lora-rank (default 16)")
        add.add_argument("--max-adapters", type=int, default=None, help="most adapters live at once")
        add.add_argument(
            "--credential-env",
            metavar="VAR",
            help="an environment variable holding the bearer token the server expects (kept off the "
            "command line, where other users could read it)",
        )
        add.add_argument(
            "--auto-deploy",
            action="store_true",
            help="deploy new adapters here when their job succeeds (shared: every team's; --team: that team's)",
        )

        sub.add_parser("list", help="print every endpoint as JSON lines")
        check = sub.add_parser("check", help="check an endpoint's health now")
        check.add_argument("name")
        check.add_argument("--team", metavar="SLUG", help="the team's own endpoint of that name")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, f"handle_{options['action']}")(options)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc

    def emit(self, endpoint: InferenceEndpoint) -> None:
        self.stdout.write(json.dumps(describe(endpoint)))

    def handle_sync(self, options: dict[str, Any]) -> None:
        entries = settings.TAILOR_ENDPOINTS
        if not entries:
            self.stderr.write("TAILOR_ENDPOINTS lists no endpoint; nothing to sync.")
            return
        with transaction.atomic():
            synced = endpoints_sync(entries=entries)
        for endpoint in synced:
            self.emit(endpoint)

    def handle_add(self, options: dict[str, Any]) -> None:
        team: Team | None = team_get(slug=options["team"]) if options["team"] else None
        fields: dict[str, Any] = {
            "served_models": parse_base_models(options["base_models"]),
            "max_lora_rank": options["max_lora_rank"],
            "max_adapters": options["max_adapters"],
            "adapter_root": options["adapter_root"],
            "served_adapter_root": options["served_adapter_root"],
        }
        if options["delivery"]:
            fields["delivery"] = options["delivery"]
        if options["credential_env"]:
            credential = os.environ.get(options["credential_env"], "")
            if not credential:
                raise CommandError(
                    f"--credential-env: the environment variable {options['credential_env']} is empty"
                )
            fields["credential"] = credential
        with transaction.atomic():
            endpoint = endpoint_create(
                team=team,
                name=options["name"],
                kind=options["kind"],
                base_url=options["url"],
                auto_deploy_all_teams=options["auto_deploy"] and team is None,
                **fields,
            )
            if options["auto_deploy"] and team is not None:
                policy_create(team=team, endpoint=endpoint)
        self.emit(endpoint)

    def handle_list(self, options: dict[str, Any]) -> None:
        for endpoint in InferenceEndpoint.objects.select_related("team").order_by("team_id", "name"):
            self.emit(endpoint)

    def handle_check(self, options: dict[str, Any]) -> None:
        team = team_get(slug=options["team"]) if options["team"] else None
        endpoint = InferenceEndpoint.objects.filter(team=team, name=options["name"]).first()
        if endpoint is None:
            where = (
                f"of team {team.slug!r}" if team is not None else "shared (pass --team SLUG for a team's own)"
            )
            raise CommandError(f"No endpoint {options['name']!r} {where}")
        endpoint = endpoint_check_health(endpoint=endpoint)
        self.emit(endpoint)
        if endpoint.health != InferenceEndpoint.Health.HEALTHY:
            raise CommandError(f"Endpoint {endpoint.name!r} is unhealthy: {endpoint.health_error}")
