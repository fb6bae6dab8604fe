"""`tailor createteam SLUG --owner EMAIL [--password P]`: a team, its owner and a first API key, as JSON."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from tailor.core.errors import ApplicationError
from tailor.teams.services import api_key_create, team_create, user_get_or_create


class Command(BaseCommand):
    help = (
        "Create a team with its owner and a first API key. Prints one JSON object on stdout: "
        "team, api_key, base_url, and username when a password was given (to sign in to the web admin)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("slug", help="short unique team name, e.g. research")
        parser.add_argument(
            "--owner", required=True, metavar="EMAIL", help="owner's e-mail (also the username)"
        )
        parser.add_argument("--password", help="owner's password for the web admin (omit for API-only use)")
        parser.add_argument("--name", default="", help="display name (defaults to the slug)")
        parser.add_argument("--key-name", default="default", help="name of the first API key")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            with transaction.atomic():
                owner = user_get_or_create(
                    email=options["owner"], password=options["password"], staff=bool(options["password"])
                )
                team = team_create(slug=options["slug"], name=options["name"], owner=owner)
                issued = api_key_create(team=team, name=options["key_name"], created_by=owner)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        result = {"team": team.slug, "api_key": issued.secret, "base_url": settings.TAILOR_PUBLIC_URL}
        if options["password"]:
            result["username"] = owner.get_username()
        self.stdout.write(json.dumps(result))
