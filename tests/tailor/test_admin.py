"""The web admin: team-scoped for staff who are not superusers, keys shown once, soft file deletion."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from tailor.files.models import File
from tailor.teams.models import APIKey, Membership
from tailor.teams.services import api_key_authenticate

from tests.tailor.factories import FileFactory, MembershipFactory, TeamFactory, UserFactory, issue_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    """Two teams with a key, a file and members each; alice administers A, bob is a plain member of A."""
    a, b = TeamFactory(slug="alpha"), TeamFactory(slug="beta")
    alice = UserFactory(username="alice@example.com", is_staff=True)
    bob = UserFactory(username="bob@example.com", is_staff=True)
    MembershipFactory(user=alice, team=a, role="admin")
    MembershipFactory(user=bob, team=a, role="member")
    MembershipFactory(user=UserFactory(username="carol@example.com"), team=b, role="owner")
    keys = {"a": issue_key(a, name="alpha-key"), "b": issue_key(b, name="beta-key")}
    files = {
        "a": FileFactory(team=a, filename="alpha.jsonl"),
        "b": FileFactory(team=b, filename="beta.jsonl"),
    }
    return {"a": a, "b": b, "alice": alice, "bob": bob, "keys": keys, "files": files}


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_team_admin_sees_only_their_teams_rows(world) -> None:
    alice = client_for(world["alice"])
    keys = alice.get("/admin/teams/apikey/").content.decode()
    assert world["keys"]["a"].api_key.prefix in keys and world["keys"]["b"].api_key.prefix not in keys
    files = alice.get("/admin/files/file/").content.decode()
    assert "alpha.jsonl" in files and "beta.jsonl" not in files
    teams = alice.get("/admin/teams/team/").content.decode()
    assert "alpha" in teams and "beta" not in teams
    members = alice.get("/admin/teams/membership/").content.decode()
    assert "bob@example.com" in members and "carol@example.com" not in members


def test_another_teams_row_is_404_exactly_like_a_missing_one(world) -> None:
    alice = client_for(world["alice"])
    theirs = {
        "apikey": world["keys"]["b"].api_key.pk,
        "file": world["files"]["b"].pk,
        "team": world["b"].pk,
        "membership": Membership.objects.get(team=world["b"]).pk,
    }
    for model, pk in theirs.items():
        app = "files" if model == "file" else "teams"
        for suffix in ("change/", "delete/", "history/"):
            assert alice.get(f"/admin/{app}/{model}/{pk}/{suffix}").status_code == 404, (model, suffix)
            assert alice.get(f"/admin/{app}/{model}/999999/{suffix}").status_code == 404
    assert alice.get(f"/admin/teams/apikey/{world['keys']['a'].api_key.pk}/change/").status_code == 200
    assert alice.post(f"/admin/teams/apikey/{theirs['apikey']}/delete/", {"post": "yes"}).status_code == 404
    assert APIKey.objects.filter(pk=theirs["apikey"]).exists()


def test_plain_members_get_no_admin_access(world) -> None:
    bob = client_for(world["bob"])
    assert "Teams and API keys" not in bob.get("/admin/").content.decode()
    assert bob.get("/admin/teams/apikey/").status_code == 403
    assert bob.get(f"/admin/teams/apikey/{world['keys']['a'].api_key.pk}/change/").status_code in (403, 404)


def test_superuser_sees_every_team() -> None:
    root = UserFactory(username="root@example.com", is_staff=True, is_superuser=True)
    issue_key(TeamFactory(slug="one"))
    issue_key(TeamFactory(slug="two"))
    page = client_for(root).get("/admin/teams/apikey/").content.decode()
    assert page.count("tlr-") >= 2


def test_creating_a_key_shows_the_secret_once(world) -> None:
    alice = client_for(world["alice"])
    response = alice.post(
        "/admin/teams/apikey/add/", {"team": world["a"].pk, "name": "from-admin", "scopes": ["read", "write"]}
    )
    assert response.status_code == 200
    secrets_shown = re.findall(r"tlr-[A-Za-z0-9]{40}", response.content.decode())
    assert len(set(secrets_shown)) == 1
    key = api_key_authenticate(raw_key=secrets_shown[0])
    assert key.team == world["a"] and key.name == "from-admin" and key.created_by == world["alice"]
    # From then on only the prefix appears.
    for page in (alice.get("/admin/teams/apikey/"), alice.get(f"/admin/teams/apikey/{key.pk}/change/")):
        text = page.content.decode()
        assert key.prefix in text and secrets_shown[0] not in text


def test_keys_cannot_be_created_for_another_team(world) -> None:
    alice = client_for(world["alice"])
    before = APIKey.objects.count()
    response = alice.post(
        "/admin/teams/apikey/add/", {"team": world["b"].pk, "name": "sneaky", "scopes": ["read"]}
    )
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert APIKey.objects.count() == before


def test_revoke_action(world) -> None:
    alice = client_for(world["alice"])
    key = world["keys"]["a"].api_key
    alice.post("/admin/teams/apikey/", {"action": "revoke_keys", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.revoked_at is not None
    # Selecting another team's key through a forged form does nothing.
    other = world["keys"]["b"].api_key
    alice.post("/admin/teams/apikey/", {"action": "revoke_keys", "_selected_action": [other.pk]})
    other.refresh_from_db()
    assert other.revoked_at is None


def test_members_are_added_by_email_and_only_owners_grant_ownership(world) -> None:
    alice = client_for(world["alice"])
    response = alice.post(
        "/admin/teams/membership/add/", {"team": world["a"].pk, "email": "dan@example.com", "role": "member"}
    )
    assert response.status_code == 302
    assert Membership.objects.get(user__username="dan@example.com").team == world["a"]
    refused = alice.post(
        "/admin/teams/membership/add/", {"team": world["a"].pk, "email": "eve@example.com", "role": "owner"}
    )
    assert "Only an owner" in refused.content.decode()
    assert not Membership.objects.filter(user__username="eve@example.com").exists()
    owner = UserFactory(username="olga@example.com", is_staff=True)
    MembershipFactory(user=owner, team=world["a"], role="owner")
    granted = client_for(owner).post(
        "/admin/teams/membership/add/", {"team": world["a"].pk, "email": "eve@example.com", "role": "owner"}
    )
    assert granted.status_code == 302


def test_deleting_a_file_in_the_admin_is_the_api_deletion(world, django_capture_on_commit_callbacks) -> None:
    alice = client_for(world["alice"])
    file = world["files"]["a"]
    with django_capture_on_commit_callbacks(execute=True):
        response = alice.post(f"/admin/files/file/{file.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    file.refresh_from_db()
    assert file.status == File.Status.DELETED and file.deleted_at is not None


def test_admin_pages_and_assets_are_served_in_development(world) -> None:
    alice = client_for(world["alice"])
    assert alice.get("/admin/").status_code == 200
    # WhiteNoise serves the admin's CSS straight from the installed apps, no collectstatic needed.
    asset = Client().get("/static/admin/css/base.css")
    assert asset.status_code == 200
    assert b"".join(asset.streaming_content).startswith(b"/*")
