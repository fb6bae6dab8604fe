"""Who may do what in Tailor's web interfaces (the Django admin and the dashboard), by team role.

Owners and admins manage their team: members and roles, API keys, endpoints, auto-deploy policies, and
cancel / pause / resume of jobs. Members and viewers read their team's files, jobs, adapters and
deployments. A superuser manages every team. Another team's rows are never reachable: both interfaces
answer 404 for them, exactly as for rows that do not exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.http import Http404

from tailor.teams.models import Membership, Team

MANAGING_ROLES: tuple[str, ...] = tuple(str(role) for role in Membership.MANAGING_ROLES)
ALL_ROLES: tuple[str, ...] = tuple(Membership.Role.values)


@dataclass(frozen=True)
class TeamAccess:
    """A user's standing in one team."""

    team: Team
    role: str

    @property
    def can_manage(self) -> bool:
        """Owners and admins (and superusers, who hold every team as owners)."""
        return self.role in MANAGING_ROLES


def team_roles(*, user: AbstractBaseUser | AnonymousUser) -> dict[int, str]:
    """Team id → the user's role there; a superuser is an owner of every team."""
    if not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", False):
        return {}
    if getattr(user, "is_superuser", False):
        return {pk: str(Membership.Role.OWNER) for pk in Team.objects.values_list("pk", flat=True)}
    return dict(Membership.objects.filter(user=user).values_list("team_id", "role"))


def teams_of(*, user: AbstractBaseUser | AnonymousUser) -> list[TeamAccess]:
    """The teams the user belongs to, by slug, with their role in each."""
    roles = team_roles(user=user)
    teams = Team.objects.filter(pk__in=roles).order_by("slug")
    return [TeamAccess(team=team, role=roles[team.pk]) for team in teams]


def team_access(*, user: AbstractBaseUser | AnonymousUser, slug: str) -> TeamAccess:
    """The user's access to the team `slug`; Http404 when they are not in it (or it does not exist)."""
    team = Team.objects.filter(slug=slug).first()
    role = team_roles(user=user).get(team.pk) if team is not None else None
    if team is None or role is None:
        raise Http404(f"No team {slug!r}.")
    return TeamAccess(team=team, role=role)
