"""API-key authentication for DRF: `Authorization: Bearer <key>`, the header the openai SDK sends.

A key authenticates its team, not a person: `request.user` is a `TeamPrincipal` and `request.auth` the
`APIKey` row, so views find the team as `request.auth.team`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from tailor.teams.models import APIKey, Team
from tailor.teams.services import api_key_authenticate


@dataclass(frozen=True)
class TeamPrincipal:
    """The caller behind an API key, shaped enough like a Django user for DRF's permission checks."""

    team: Team
    api_key: APIKey

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None

    def __str__(self) -> str:
        return f"{self.team.slug} ({self.api_key.prefix}…)"


class APIKeyAuthentication(BaseAuthentication):
    """Resolve a bearer API key to its team; a wrong or revoked key is a 401."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[TeamPrincipal, APIKey] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].decode("latin-1").lower() != self.keyword.lower():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header: expected `Authorization: Bearer <api key>`.",
                code="invalid_api_key",
            )
        try:
            raw_key = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed(
                "Incorrect API key provided.", code="invalid_api_key"
            ) from None
        key = api_key_authenticate(raw_key=raw_key)
        if key is None:
            raise exceptions.AuthenticationFailed(
                f"Incorrect API key provided: {_redact(raw_key)}.", code="invalid_api_key"
            )
        if key.revoked_at is not None:
            raise exceptions.AuthenticationFailed(
                f"The API key {key.prefix}… has been revoked.", code="invalid_api_key"
            )
        return TeamPrincipal(team=key.team, api_key=key), key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


def _redact(raw_key: str) -> str:
    # Enough to recognise which key was sent, never enough to use it.
    if len(raw_key) <= 12:
        return "*" * len(raw_key)
    return f"{raw_key[:8]}{'*' * 8}{raw_key[-4:]}"


def request_team(request: Request) -> Team:
    """The team whose API key authenticated `request`: every team-scoped view's scope."""
    return request.auth.team
