"""`tailor createkey --team SLUG [--name N]`: a new API key for an existing team, as JSON."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from tailor.core.errors import ApplicationError
from tailor.teams.models import APIKey
from tailor.teams.selectors import team_get
from tailor.teams.services import api_key_create


class Command(BaseCommand):
    help = "Issue a new API key for a team. Prints one JSON object on stdout: team, api_key, base_url."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--team", required=True, metavar="SLUG")
        parser.add_argument("--name", default="", help="a label to tell keys apart")
        parser.add_argument(
            "--read-only", action="store_true", help="grant only the read scope (GET requests)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        scopes = [str(APIKey.Scope.READ)] if options["read_only"] else None
        try:
            team = team_get(slug=options["team"])
            issued = api_key_create(team=team, name=options["name"], scopes=scopes)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(
            json.dumps({"team": team.slug, "api_key": issued.secret, "base_url": settings.TAILOR_PUBLIC_URL})
        )
