"""Teams, memberships and API keys as the services create, check and revoke them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from tailor.core.errors import Conflict, InvalidRequest
from tailor.teams.models import APIKey, Membership
from tailor.teams.selectors import teams_managed_by
from tailor.teams.services import (
    api_key_authenticate,
    api_key_create,
    api_key_revoke,
    hash_api_key,
    membership_set,
    team_create,
    user_get_or_create,
)

from tests.tailor.factories import MembershipFactory, TeamFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_team_create_makes_the_owner_an_owner() -> None:
    owner = UserFactory()
    team = team_create(slug="research", name="Research", owner=owner)
    assert Membership.objects.get(team=team, user=owner).role == Membership.Role.OWNER


def test_team_slugs_are_unique_and_checked() -> None:
    team_create(slug="research")
    with pytest.raises(Conflict):
        team_create(slug="research")
    with pytest.raises(InvalidRequest) as excinfo:
        team_create(slug="no spaces/please")
    assert excinfo.value.param == "slug"


def test_key_is_stored_only_as_a_hash_with_a_visible_prefix() -> None:
    issued = api_key_create(team=TeamFactory(), name="ci")
    row = APIKey.objects.get(pk=issued.api_key.pk)
    assert issued.secret.startswith("tlr-") and len(issued.secret) == 44
    assert row.key_hash == hash_api_key(issued.secret)
    assert issued.secret.startswith(row.prefix) and len(row.prefix) < len(issued.secret) // 2
    stored_text = " ".join(str(value) for value in APIKey.objects.filter(pk=row.pk).values().get().values())
    assert issued.secret not in stored_text


def test_keys_are_unique() -> None:
    team = TeamFactory()
    secrets = {api_key_create(team=team).secret for _ in range(20)}
    assert len(secrets) == 20


def test_authenticate_finds_the_key_and_refuses_others() -> None:
    issued = api_key_create(team=TeamFactory())
    assert api_key_authenticate(raw_key=issued.secret) == issued.api_key
    assert api_key_authenticate(raw_key=issued.secret[:-1] + "!") is None
    assert api_key_authenticate(raw_key="sk-something-else") is None


def test_last_used_is_recorded_at_most_once_a_minute() -> None:
    issued = api_key_create(team=TeamFactory())
    assert issued.api_key.last_used_at is None
    api_key_authenticate(raw_key=issued.secret)
    first = APIKey.objects.get(pk=issued.api_key.pk).last_used_at
    assert first is not None
    api_key_authenticate(raw_key=issued.secret)
    assert APIKey.objects.get(pk=issued.api_key.pk).last_used_at == first
    # Once the recorded use is older than a minute, the next use is written.
    APIKey.objects.filter(pk=issued.api_key.pk).update(last_used_at=first - timedelta(minutes=2))
    api_key_authenticate(raw_key=issued.secret)
    assert APIKey.objects.get(pk=issued.api_key.pk).last_used_at > first - timedelta(seconds=1)


def test_revoke_keeps_the_first_revocation_time() -> None:
    issued = api_key_create(team=TeamFactory())
    revoked = api_key_revoke(api_key=issued.api_key)
    assert revoked.revoked_at is not None and revoked.revoked_at <= timezone.now()
    again = api_key_revoke(api_key=issued.api_key)
    assert again.revoked_at == revoked.revoked_at
    assert api_key_authenticate(raw_key=issued.secret).revoked_at == revoked.revoked_at


def test_unknown_scope_is_refused() -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        api_key_create(team=TeamFactory(), scopes=["read", "admin"])
    assert excinfo.value.param == "scopes"


def test_user_get_or_create_by_email() -> None:
    user = user_get_or_create(email="ada@example.com", password="s3cret-pass-phrase", staff=True)
    assert user.username == "ada@example.com" and user.is_staff and user.check_password("s3cret-pass-phrase")
    assert user_get_or_create(email="ada@example.com") == user
    assert get_user_model().objects.filter(username="ada@example.com").count() == 1
    api_only = user_get_or_create(email="bot@example.com")
    assert not api_only.has_usable_password() and not api_only.is_staff
    with pytest.raises(InvalidRequest):
        user_get_or_create(email="not-an-email")


def test_membership_set_adds_then_changes_role() -> None:
    team, user = TeamFactory(), UserFactory()
    assert membership_set(team=team, user=user, role="viewer").role == "viewer"
    assert membership_set(team=team, user=user, role="admin").role == "admin"
    assert Membership.objects.filter(team=team, user=user).count() == 1
    with pytest.raises(InvalidRequest):
        membership_set(team=team, user=user, role="emperor")


def test_teams_managed_by_counts_only_owner_and_admin_roles() -> None:
    user = UserFactory()
    owned, administered, member_of, viewer_of, _unrelated = TeamFactory.create_batch(5)
    MembershipFactory(user=user, team=owned, role="owner")
    MembershipFactory(user=user, team=administered, role="admin")
    MembershipFactory(user=user, team=member_of, role="member")
    MembershipFactory(user=user, team=viewer_of, role="viewer")
    assert set(teams_managed_by(user=user)) == {owned, administered}
