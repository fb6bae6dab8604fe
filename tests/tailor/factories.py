"""factory_boy factories and API-key helpers for control-plane tests (import from `tests.tailor.factories`)."""

from __future__ import annotations

import factory
from django.conf import settings
from rest_framework.test import APIClient
from tailor.files.models import File
from tailor.teams.models import Membership, Team
from tailor.teams.services import IssuedKey, api_key_create


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = settings.AUTH_USER_MODEL
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}@example.com")
    email = factory.SelfAttribute("username")
    password = factory.django.Password("correct horse battery staple")


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team

    slug = factory.Sequence(lambda n: f"team-{n}")
    name = factory.LazyAttribute(lambda team: team.slug.replace("-", " ").title())


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    team = factory.SubFactory(TeamFactory)
    role = Membership.Role.MEMBER


class FileFactory(factory.django.DjangoModelFactory):
    """A File row only (no bytes in the store): for admin and selector tests."""

    class Meta:
        model = File

    team = factory.SubFactory(TeamFactory)
    purpose = File.Purpose.FINE_TUNE
    filename = factory.Sequence(lambda n: f"data-{n}.jsonl")
    bytes = 1234
    sha256 = "0" * 64
    public_id = factory.Sequence(lambda n: f"file-factory{n:016d}")
    storage_key = factory.LazyAttribute(lambda f: f"teams/{f.team.pk}/files/{f.public_id}")


def issue_key(team: Team, *, scopes: list[str] | None = None, name: str = "test") -> IssuedKey:
    """A real key through the service that production uses."""
    return api_key_create(team=team, name=name, scopes=scopes)


def bearer_client(secret: str) -> APIClient:
    """A DRF test client that authenticates like the openai SDK."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client
