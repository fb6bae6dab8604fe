"""Writes for teams, memberships and API keys. Keyword-only, atomic, and the only code that creates keys."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email, validate_slug
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from tailor.core.errors import Conflict, InvalidRequest
from tailor.teams.models import APIKey, Membership, Team

# `tlr-` marks Tailor keys in logs and secret scanners; 40 base62 characters carry ~238 bits.
KEY_PREFIX = "tlr-"
_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_KEY_BODY_LENGTH = 40
_VISIBLE_PREFIX_LENGTH = len(KEY_PREFIX) + 8
# Writing last_used_at on every request would turn every read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)

DEFAULT_SCOPES = [str(APIKey.Scope.READ), str(APIKey.Scope.WRITE)]


@dataclass(frozen=True)
class IssuedKey:
    """A freshly created key: the row, and the secret that is shown this once and never stored."""

    api_key: APIKey
    secret: str


def hash_api_key(raw_key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


@transaction.atomic
def team_create(*, slug: str, name: str = "", owner: AbstractBaseUser | None = None) -> Team:
    """Create a team and, when given, make `owner` its owner."""
    try:
        validate_slug(slug)
    except DjangoValidationError:
        raise InvalidRequest(
            f"Invalid team slug {slug!r}: use letters, digits, hyphens and underscores.", param="slug"
        ) from None
    if Team.objects.filter(slug=slug).exists():
        raise Conflict(f"A team with slug {slug!r} already exists.", param="slug", code="team_exists")
    team = Team.objects.create(slug=slug, name=name or slug)
    if owner is not None:
        Membership.objects.create(team=team, user=owner, role=Membership.Role.OWNER)
    return team


@transaction.atomic
def user_get_or_create(*, email: str, password: str | None = None, staff: bool = False) -> AbstractBaseUser:
    """The user with this e-mail (also their username), created when missing. A password, when given,
    is set; `staff` lets them sign in to the web admin, where they see only the teams they manage."""
    try:
        validate_email(email)
    except DjangoValidationError:
        raise InvalidRequest(f"Invalid e-mail address {email!r}.", param="email") from None
    User = get_user_model()
    user, created = User.objects.get_or_create(username=email, defaults={"email": email})
    changed = False
    if password:
        user.set_password(password)
        changed = True
    elif created:
        user.set_unusable_password()
        changed = True
    if staff and not user.is_staff:
        user.is_staff = True
        changed = True
    if changed:
        user.save()
    return user


@transaction.atomic
def membership_set(*, team: Team, user: AbstractBaseUser, role: str) -> Membership:
    """Give `user` the `role` in `team`, adding them when they are not a member yet."""
    if role not in Membership.Role.values:
        raise InvalidRequest(
            f"Unknown role {role!r}; expected one of {', '.join(Membership.Role.values)}.", param="role"
        )
    membership, _ = Membership.objects.update_or_create(team=team, user=user, defaults={"role": role})
    return membership


@transaction.atomic
def api_key_create(
    *, team: Team, name: str = "", created_by: AbstractBaseUser | None = None, scopes: list[str] | None = None
) -> IssuedKey:
    """Issue a new key for `team`. The secret is returned once; only its hash is kept."""
    scopes = list(DEFAULT_SCOPES if scopes is None else scopes)
    unknown = sorted(set(scopes) - set(APIKey.Scope.values))
    if unknown:
        raise InvalidRequest(
            f"Unknown scope(s) {', '.join(unknown)}; expected read and/or write.", param="scopes"
        )
    secret = KEY_PREFIX + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(_KEY_BODY_LENGTH))
    api_key = APIKey.objects.create(
        team=team,
        name=name,
        prefix=secret[:_VISIBLE_PREFIX_LENGTH],
        key_hash=hash_api_key(secret),
        scopes=scopes,
        created_by=created_by,
    )
    return IssuedKey(api_key=api_key, secret=secret)


@transaction.atomic
def api_key_revoke(*, api_key: APIKey) -> APIKey:
    """Revoke a key; it answers 401 from the next request on. Revoking twice keeps the first time."""
    APIKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


def api_key_authenticate(*, raw_key: str) -> APIKey | None:
    """The key row for a presented secret (revoked or not), recording its use at most once a minute."""
    if not raw_key.startswith(KEY_PREFIX):
        return None
    api_key = APIKey.objects.select_related("team").filter(key_hash=hash_api_key(raw_key)).first()
    if api_key is None or api_key.revoked_at is not None:
        return api_key
    now = timezone.now()
    stale = now - LAST_USED_RESOLUTION
    if api_key.last_used_at is None or api_key.last_used_at < stale:
        # The guarded UPDATE keeps concurrent requests from all writing the same minute.
        APIKey.objects.filter(pk=api_key.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale)
        ).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key
