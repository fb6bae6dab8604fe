"""An uploaded file: its bytes live in the object store, its metadata and validation report here."""

from __future__ import annotations

import secrets

from django.db import models

from tailor.teams.models import APIKey, Team

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def new_file_id() -> str:
    """`file-` and 24 random base62 characters, the shape the openai SDK expects."""
    return "file-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


class File(models.Model):
    """One upload of one team. `public_id` is what clients see and page by; rows are never reused, a
    deleted file keeps its row (status `deleted`) so jobs that trained on it still name it."""

    class Purpose(models.TextChoices):
        ASSISTANTS = "assistants"
        ASSISTANTS_OUTPUT = "assistants_output"
        BATCH = "batch"
        BATCH_OUTPUT = "batch_output"
        FINE_TUNE = "fine-tune"
        FINE_TUNE_RESULTS = "fine-tune-results"
        VISION = "vision"
        USER_DATA = "user_data"
        EVALS = "evals"

    # What clients may upload; the *_output and results purposes are written by the platform itself.
    UPLOAD_PURPOSES = (
        Purpose.ASSISTANTS,
        Purpose.BATCH,
        Purpose.FINE_TUNE,
        Purpose.VISION,
        Purpose.USER_DATA,
        Purpose.EVALS,
    )

    class Status(models.TextChoices):
        UPLOADED = "uploaded"
        PROCESSED = "processed"
        ERROR = "error"
        DELETED = "deleted"

    public_id = models.CharField(max_length=40, unique=True, default=new_file_id, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="files")
    purpose = models.CharField(max_length=32, choices=Purpose.choices)
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=255, blank=True)
    bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    storage_key = models.CharField(max_length=512)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UPLOADED)
    status_details = models.TextField(null=True, blank=True)
    format = models.CharField(max_length=32, blank=True, help_text="Dataset format found by validation.")
    validation_report = models.JSONField(null=True, blank=True)
    uploaded_with = models.ForeignKey(
        APIKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    validated_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["team", "id"], name="file_team_id"),
            models.Index(fields=["team", "purpose", "id"], name="file_team_purpose_id"),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.filename})"
