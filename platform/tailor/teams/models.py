"""Teams own everything on the platform; members reach them through the admin, programs through API keys."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Team(models.Model):
    """A tenant: every dataset, job and adapter belongs to exactly one team."""

    slug = models.SlugField(max_length=50, unique=True, help_text="Short unique name, e.g. `research`.")
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    # Scheduling quotas, set by platform operators (read-only for team admins in the web admin).
    max_concurrent_jobs = models.PositiveIntegerField(
        default=2, help_text="Fine-tuning jobs of this team that may hold a GPU at once; the rest wait queued."
    )
    gpu_hour_budget = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="GPU hours this team may use in all; once spent, its jobs stay queued. Empty: no limit.",
    )
    job_priority = models.IntegerField(
        default=0,
        help_text="Teams with a higher priority are served first; teams of equal priority take turns.",
    )

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    """A user's role in a team. Owners and admins manage the team in the web admin."""

    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"
        VIEWER = "viewer", "Viewer"

    MANAGING_ROLES = (Role.OWNER, Role.ADMIN)

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["team__slug", "user__username"]
        constraints = [models.UniqueConstraint(fields=["user", "team"], name="membership_unique_user_team")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"


class APIKey(models.Model):
    """A team credential. Only the SHA-256 of the key is stored (keys carry 256 bits of randomness, so a
    fast hash is enough); the prefix stays visible so people can tell keys apart."""

    class Scope(models.TextChoices):
        READ = "read", "Read"
        WRITE = "write", "Write"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, db_index=True, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.JSONField(default=list, help_text='Granted scopes: "read", "write".')
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or 'unnamed'})"

    @property
    def is_active(self) -> bool:
        """False once revoked."""
        return self.revoked_at is None
