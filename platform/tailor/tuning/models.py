"""Fine-tuning: the base models teams may tune, jobs and their events and checkpoints, and the adapters
successful jobs produce.

A job's row is the source of truth for its state; Celery only carries messages. The lease fields
(`attempt`, `dispatched_at`, `lease_expires_at`, …) record which dispatch of the job is current: the
attempt number is the fencing token every GPU-worker report carries (docs/job-protocol.md).
"""

from __future__ import annotations

import secrets

from django.db import models

from tailor.files.models import File
from tailor.teams.models import Team

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _random_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def new_job_id() -> str:
    """`ftjob-` and 24 random base62 characters."""
    return _random_id("ftjob-")


def new_event_id() -> str:
    """`ftevent-` and 24 random base62 characters."""
    return _random_id("ftevent-")


def new_checkpoint_id() -> str:
    """`ftckpt-` and 24 random base62 characters."""
    return _random_id("ftckpt-")


class BaseModel(models.Model):
    """A base model teams may fine-tune: its files sit in the object store under `prefix`
    (`models/<name>/<revision>/`), registered with `tailor basemodel add`."""

    name = models.CharField(max_length=200, unique=True, help_text="What clients pass as `model`.")
    revision = models.CharField(max_length=64, help_text="First 12 hex digits of the weights' sha256.")
    source_uri = models.CharField(max_length=1024, help_text="Where the model came from (path or URI).")
    prefix = models.CharField(max_length=512, help_text="Object-store prefix of the model directory.")
    architecture = models.JSONField(
        default=dict, help_text="Shape read from config.json (gpu_runner.memory.architecture_from_hf_config)."
    )
    parameters = models.BigIntegerField(help_text="Parameter count, from the safetensors headers.")
    chat_template = models.TextField(blank=True)
    available_to_all = models.BooleanField(
        default=True, help_text="Every team may use it; otherwise only the teams listed."
    )
    teams = models.ManyToManyField(Team, blank=True, related_name="base_models")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "base model"

    def __str__(self) -> str:
        return f"{self.name}@{self.revision}"


class FineTuningJob(models.Model):
    """One fine-tuning job of one team."""

    class Status(models.TextChoices):
        VALIDATING_FILES = "validating_files"
        QUEUED = "queued"
        RUNNING = "running"
        # A stop was asked for; the runner checkpoints and exits, then the job is paused or cancelled.
        PAUSING = "pausing"
        CANCELLING = "cancelling"
        PAUSED = "paused"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Method(models.TextChoices):
        SUPERVISED = "supervised"
        DPO = "dpo"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)
    # States in which a worker holds (or is about to hold) a GPU for the job.
    ON_GPU = (Status.RUNNING, Status.PAUSING, Status.CANCELLING)

    public_id = models.CharField(max_length=40, unique=True, default=new_job_id, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="fine_tuning_jobs")
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="jobs")
    # The base as it was when the job was created, so a re-registered model never changes a job midway.
    base_model_revision = models.CharField(max_length=64)
    base_model_prefix = models.CharField(max_length=512)
    training_file = models.ForeignKey(File, on_delete=models.PROTECT, related_name="training_jobs")
    validation_file = models.ForeignKey(
        File, null=True, blank=True, on_delete=models.PROTECT, related_name="validation_jobs"
    )
    method = models.CharField(max_length=16, choices=Method.choices)
    spec = models.JSONField(help_text="The gpu_runner spec without paths, identical for every attempt.")
    requested_hyperparameters = models.JSONField(default=dict, help_text="As the client sent them.")
    resolved_hyperparameters = models.JSONField(
        null=True,
        blank=True,
        help_text='"auto" resolved: estimated from the file report, then as the runner reported.',
    )
    suffix = models.CharField(max_length=64, blank=True)
    seed = models.BigIntegerField()
    metadata = models.JSONField(null=True, blank=True)
    integrations = models.JSONField(null=True, blank=True)

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.VALIDATING_FILES)
    error = models.JSONField(null=True, blank=True, help_text="{code, message, param} of a failed job.")
    fine_tuned_model = models.CharField(max_length=400, null=True, blank=True)
    result_file = models.ForeignKey(File, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    trained_tokens = models.BigIntegerField(null=True, blank=True)
    step = models.IntegerField(null=True, blank=True)
    total_steps = models.IntegerField(null=True, blank=True)
    estimated_finish = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    resume_requested = models.BooleanField(
        default=False, help_text="Resumed while still pausing: queue it again as soon as it is paused."
    )

    gpu_class = models.CharField(max_length=64)
    memory_estimate = models.JSONField(default=dict)
    priority = models.IntegerField(
        default=0, help_text="Set by operators: higher runs first, ahead of the turn-taking between teams."
    )
    queued_at = models.DateTimeField(
        null=True, blank=True, help_text="When it last entered the queue (FIFO)."
    )

    # The current dispatch (docs/job-protocol.md).
    attempt = models.PositiveIntegerField(default=0, help_text="Dispatches so far; the fencing token.")
    dispatched_at = models.DateTimeField(null=True, blank=True)
    last_dispatched_at = models.DateTimeField(null=True, blank=True)
    dispatch_message = models.JSONField(null=True, blank=True)
    dispatch_published_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=255, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempt_started_at = models.DateTimeField(null=True, blank=True)
    lost_attempts = models.PositiveIntegerField(
        default=0,
        help_text="Attempts a worker took and lost (lease expired, preempted); capped by TAILOR_MAX_ATTEMPTS.",
    )
    gpu_seconds = models.FloatField(
        default=0, help_text="GPU time of finished attempts, for the team's budget."
    )

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        verbose_name = "fine-tuning job"
        indexes = [
            models.Index(fields=["team", "id"], name="ftjob_team_id"),
            models.Index(fields=["status", "queued_at"], name="ftjob_status_queued"),
            models.Index(fields=["status", "lease_expires_at"], name="ftjob_status_lease"),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.status})"

    @property
    def is_dispatched(self) -> bool:
        """Queued with a dispatch message out for a worker to take."""
        return self.status == self.Status.QUEUED and self.dispatched_at is not None


class JobEvent(models.Model):
    """One line of a job's event log, as `GET /v1/fine_tuning/jobs/{id}/events` shows it.

    Events from the runner carry the attempt and `seq` (their line in that attempt's stream), unique per
    job, so a redelivered batch is stored once; the control plane's own events have neither.
    """

    class Level(models.TextChoices):
        INFO = "info"
        WARN = "warn"
        ERROR = "error"

    class Type(models.TextChoices):
        MESSAGE = "message"
        METRICS = "metrics"

    public_id = models.CharField(max_length=40, unique=True, default=new_event_id, editable=False)
    job = models.ForeignKey(FineTuningJob, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField()
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.INFO)
    type = models.CharField(max_length=16, choices=Type.choices, default=Type.MESSAGE)
    message = models.TextField()
    data = models.JSONField(null=True, blank=True)
    kind = models.CharField(max_length=40, help_text="Runner event type, or `status` for the platform's own.")
    attempt = models.PositiveIntegerField(null=True, blank=True)
    seq = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["job", "attempt", "seq"],
                condition=models.Q(seq__isnull=False),
                name="jobevent_unique_runner_line",
            )
        ]
        indexes = [models.Index(fields=["job", "id"], name="jobevent_job_id")]

    def __str__(self) -> str:
        return f"{self.public_id}: {self.message[:60]}"


class Checkpoint(models.Model):
    """A complete checkpoint of a job in the object store; the newest is where a resumed job continues."""

    public_id = models.CharField(max_length=40, unique=True, default=new_checkpoint_id, editable=False)
    job = models.ForeignKey(FineTuningJob, on_delete=models.CASCADE, related_name="checkpoints")
    step_number = models.PositiveIntegerField()
    prefix = models.CharField(max_length=512)
    metrics = models.JSONField(default=dict)
    attempt = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-step_number"]
        constraints = [
            models.UniqueConstraint(fields=["job", "step_number"], name="checkpoint_unique_job_step")
        ]

    def __str__(self) -> str:
        return f"{self.public_id} (step {self.step_number})"


class Adapter(models.Model):
    """The LoRA adapter a successful job produced: exactly one per job (the registry adds versions,
    formats and deployments on top)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="adapters")
    job = models.OneToOneField(FineTuningJob, on_delete=models.PROTECT, related_name="adapter")
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="adapters")
    name = models.CharField(max_length=400, unique=True, help_text="The fine_tuned_model name clients use.")
    family = models.CharField(
        max_length=400,
        db_index=True,
        default="",
        help_text="`ft:<base>:<team>:<suffix>`: the adapters of one team, base and suffix are versions of it.",
    )
    version = models.PositiveIntegerField(default=1, help_text="1, 2, … within the family.")
    prefix = models.CharField(max_length=512, help_text="Object-store prefix of the adapter directory.")
    config = models.JSONField(default=dict, help_text="adapter_config.json as PEFT wrote it.")
    lineage = models.JSONField(
        default=dict,
        help_text="Job, training/validation files with digests, base model and revision, resolved "
        "hyperparameters, library versions.",
    )
    formats = models.JSONField(default=list, help_text="Formats held, e.g. ['peft-safetensors'].")
    size_bytes = models.BigIntegerField(default=0)
    rank = models.PositiveIntegerField(null=True, blank=True)
    alpha = models.FloatField(null=True, blank=True)
    target_modules = models.JSONField(default=list)
    use_dora = models.BooleanField(default=False)
    use_rslora = models.BooleanField(default=False)
    files = models.JSONField(default=dict, help_text="sha256 and bytes of each file (tailor_adapter.json).")
    metrics = models.JSONField(default=dict)
    trained_tokens = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Soft delete: hidden from clients at once; the purge task removes the objects once nothing serves it.
    deleted_at = models.DateTimeField(null=True, blank=True)
    purged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["team", "family", "version"], name="adapter_version_unique"),
        ]

    def __str__(self) -> str:
        return self.name
