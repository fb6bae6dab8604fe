"""Reads for teams and keys; the team-scoping helpers the admin and the API build on."""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import QuerySet

from tailor.core.errors import NotFound
from tailor.teams.models import APIKey, Membership, Team


def team_get(*, slug: str) -> Team:
    """The team with this slug, or NotFound."""
    team = Team.objects.filter(slug=slug).first()
    if team is None:
        raise NotFound(f"No team with slug {slug!r}.", param="team")
    return team


def teams_managed_by(*, user: AbstractBaseUser) -> QuerySet[Team]:
    """Teams in which `user` is an owner or admin; a superuser manages all teams."""
    if getattr(user, "is_superuser", False):
        return Team.objects.all()
    if not getattr(user, "is_authenticated", False):
        return Team.objects.none()
    return Team.objects.filter(
        memberships__user=user, memberships__role__in=Membership.MANAGING_ROLES
    ).distinct()


def api_key_list(*, team: Team) -> QuerySet[APIKey]:
    """A team's keys, newest first."""
    return APIKey.objects.filter(team=team).order_by("-created_at")
