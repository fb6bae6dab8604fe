"""The adapter registry: aliases over adapter versions, the inference endpoints (vLLM, Ollama, the
development server) adapters are pushed to, deployments of one adapter version on one endpoint, and the
policies that deploy a team's new adapters automatically.

Adapters themselves are `tailor.tuning.models.Adapter` rows (one per successful job, a version of its
family). A Deployment's row is the source of truth for what is live where; the push itself happens in
control-worker tasks (or, for `agent` delivery, in the endpoint agent beside the server).
"""

from __future__ import annotations

import secrets

from django.db import models
from django.db.models import Q

from tailor.teams.models import Team
from tailor.tuning.models import Adapter, BaseModel

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _random_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))


def new_endpoint_id() -> str:
    return _random_id("ep-")


def new_deployment_id() -> str:
    return _random_id("dep-")


def new_policy_id() -> str:
    return _random_id("adp-")


class InferenceEndpoint(models.Model):
    """A vLLM or Ollama server (or Tailor's development server, which speaks vLLM's protocol) that serves
    base models and takes LoRA adapters at runtime. `team` empty: a shared endpoint that operators run
    for every team; teams cannot change it, and `auto_deploy_all_teams` deploys everyone's adapters to it."""

    class Kind(models.TextChoices):
        VLLM = "vllm"
        OLLAMA = "ollama"

    class Delivery(models.TextChoices):
        # The registry writes the verified files under `adapter_root`, which the server sees at
        # `served_adapter_root`.
        SHARED_VOLUME = "shared_volume"
        # The endpoint agent beside the server downloads, verifies and loads (queue `endpoint.<name>`).
        AGENT = "agent"
        # Ollama takes the bytes over HTTP (blobs); nothing to share.
        HTTP = "http"

    class Health(models.TextChoices):
        UNKNOWN = "unknown"
        HEALTHY = "healthy"
        UNHEALTHY = "unhealthy"

    public_id = models.CharField(max_length=40, unique=True, default=new_endpoint_id, editable=False)
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.CASCADE, related_name="inference_endpoints"
    )
    name = models.SlugField(
        max_length=60, help_text="Unique per team; names the agent queue endpoint.<name>."
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    base_url = models.URLField(max_length=500, help_text="e.g. http://vllm:8000 (no /v1).")
    credential = models.CharField(
        max_length=500, blank=True, help_text="Bearer token the server expects; write-only, never returned."
    )
    served_models = models.JSONField(
        default=dict,
        help_text="Tailor base model name -> the name this server serves it under (vLLM's "
        "--served-model-name, Ollama's model tag).",
    )
    max_lora_rank = models.PositiveIntegerField(default=16, help_text="vLLM --max-lora-rank.")
    max_adapters = models.PositiveIntegerField(
        null=True, blank=True, help_text="Most adapters live at once; empty: no limit."
    )
    delivery = models.CharField(max_length=16, choices=Delivery.choices, default=Delivery.SHARED_VOLUME)
    adapter_root = models.CharField(
        max_length=500, blank=True, help_text="shared_volume: where the registry writes adapter folders."
    )
    served_adapter_root = models.CharField(
        max_length=500, blank=True, help_text="shared_volume: the same folder as the server sees it."
    )
    auto_deploy_all_teams = models.BooleanField(
        default=False, help_text="Shared endpoints only: deploy every team's new adapters here."
    )
    enabled = models.BooleanField(default=True)
    health = models.CharField(max_length=16, choices=Health.choices, default=Health.UNKNOWN)
    health_error = models.TextField(blank=True)
    health_checked_at = models.DateTimeField(null=True, blank=True)
    server_version = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="endpoint_name_unique_per_team"),
            models.UniqueConstraint(
                fields=["name"], condition=Q(team__isnull=True), name="shared_endpoint_name_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    @property
    def shared(self) -> bool:
        return self.team_id is None

    def served_name_of(self, base_model: BaseModel) -> str | None:
        """The name this endpoint serves `base_model` under, or None when it does not serve it."""
        value = (self.served_models or {}).get(base_model.name)
        return str(value) if value else None


class AdapterAlias(models.Model):
    """A named pointer (e.g. `production`) at one version of an adapter family. Clients call it as
    `<family>@<name>`; moving it to another version is the rollback."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="adapter_aliases")
    family = models.CharField(max_length=400)
    name = models.SlugField(max_length=60)
    adapter = models.ForeignKey(Adapter, on_delete=models.PROTECT, related_name="aliases")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["family", "name"]
        verbose_name = "adapter alias"
        verbose_name_plural = "adapter aliases"
        constraints = [
            models.UniqueConstraint(fields=["team", "family", "name"], name="alias_unique_per_family"),
        ]

    def __str__(self) -> str:
        return self.model_id

    @property
    def model_id(self) -> str:
        return f"{self.family}@{self.name}"


class Deployment(models.Model):
    """One adapter version on one endpoint.

    pending → deploying → live | failed;  live → undeploying → undeployed.
    A transient failure (server unreachable, 503) puts it back to pending with `next_attempt_at`; a
    permanent one (the server refused the adapter, the smoke request failed) ends in failed with
    `reason_code` and `last_error`."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DEPLOYING = "deploying"
        LIVE = "live"
        FAILED = "failed"
        UNDEPLOYING = "undeploying"
        UNDEPLOYED = "undeployed"

    ACTIVE = (Status.PENDING, Status.DEPLOYING, Status.LIVE, Status.UNDEPLOYING)

    public_id = models.CharField(max_length=40, unique=True, default=new_deployment_id, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="deployments")
    adapter = models.ForeignKey(Adapter, on_delete=models.PROTECT, related_name="deployments")
    endpoint = models.ForeignKey(InferenceEndpoint, on_delete=models.PROTECT, related_name="deployments")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    served_name = models.CharField(max_length=200, help_text="The model name the endpoint knows it by.")
    adapter_path = models.CharField(max_length=500, blank=True, help_text="Where the server reads it.")
    reason_code = models.CharField(max_length=64, blank=True)
    last_error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    auto = models.BooleanField(default=False, help_text="Created by an auto-deploy policy.")
    requested_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    live_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["adapter", "endpoint"],
                condition=Q(status__in=["pending", "deploying", "live", "undeploying"]),
                name="one_active_deployment_per_adapter_endpoint",
            ),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.public_id} {self.served_name} on {self.endpoint_id}: {self.status}"


class AutoDeployPolicy(models.Model):
    """When a job of `team` succeeds, deploy its adapter to `endpoint` (if that endpoint serves the job's
    base model, and `base_model` is empty or matches)."""

    public_id = models.CharField(max_length=40, unique=True, default=new_policy_id, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="auto_deploy_policies")
    endpoint = models.ForeignKey(InferenceEndpoint, on_delete=models.CASCADE, related_name="policies")
    base_model = models.ForeignKey(BaseModel, null=True, blank=True, on_delete=models.CASCADE)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "auto-deploy policy"
        verbose_name_plural = "auto-deploy policies"
        constraints = [
            models.UniqueConstraint(
                fields=["team", "endpoint", "base_model"], name="one_policy_per_team_endpoint_base"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.team_id} → {self.endpoint_id}"
