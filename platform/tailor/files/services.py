"""Writes of files: recording an upload, validating it (run by the control worker), deleting it."""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial

from django.db import transaction
from django.utils import timezone

from gpu_runner.formats import validate_stream
from gpu_runner.storage import ObjectNotFound, StoredObject
from tailor.core.objectstore import object_store
from tailor.files.models import File
from tailor.teams.models import APIKey, Team
from workers.app import VALIDATE_FILE_TASK
from workers.app import app as celery_app

logger = logging.getLogger(__name__)

# Purposes whose files are training data and get a validation pass; others are stored as they are.
VALIDATED_PURPOSES = frozenset({File.Purpose.FINE_TUNE})


def enqueue_file_validation(file_id: str) -> None:
    """Publish the validation task for a file (called after the upload's transaction committed)."""
    celery_app.send_task(VALIDATE_FILE_TASK, args=[file_id])


@transaction.atomic
def file_create(
    *,
    team: Team,
    file_id: str,
    purpose: str,
    filename: str,
    stored: StoredObject,
    content_type: str = "",
    expires_after_seconds: int | None = None,
    uploaded_with: APIKey | None = None,
) -> File:
    """Record an upload whose bytes are already in the object store, and queue its validation."""
    needs_validation = purpose in VALIDATED_PURPOSES
    now = timezone.now()
    file = File.objects.create(
        public_id=file_id,
        team=team,
        purpose=purpose,
        filename=filename,
        content_type=content_type,
        bytes=stored.size,
        sha256=stored.sha256,
        storage_key=stored.key,
        status=File.Status.UPLOADED if needs_validation else File.Status.PROCESSED,
        expires_at=now + timedelta(seconds=expires_after_seconds) if expires_after_seconds else None,
        uploaded_with=uploaded_with,
    )
    if needs_validation:
        # robust: a broker outage must not turn a stored upload into a 500; the file stays `uploaded`.
        transaction.on_commit(partial(enqueue_file_validation, file.public_id), robust=True)
    return file


def file_validate(*, file_id: str) -> File | None:
    """Validate an uploaded file in one streaming pass and record the outcome.

    Idempotent under redelivery: a file that is no longer `uploaded` (validated already, deleted) is
    left as it is, and the final write only lands while the row is still `uploaded`.
    """
    file = File.objects.filter(public_id=file_id).first()
    if file is None:
        logger.warning("validate_file: no file %s (deleted, or another database)", file_id)
        return None
    if file.status != File.Status.UPLOADED:
        return file
    try:
        with object_store().open(file.storage_key) as stream:
            report = validate_stream(stream)
    except ObjectNotFound:
        _finish_validation(
            file,
            status=File.Status.ERROR,
            details="The file's bytes are missing from the object store.",
            report=None,
            dataset_format="",
        )
        return file
    _finish_validation(
        file,
        status=File.Status.PROCESSED if report.ok else File.Status.ERROR,
        details=report.summary(),
        report=report.to_dict(),
        dataset_format=report.format.value if report.format is not None else "",
    )
    return file


def _finish_validation(
    file: File, *, status: str, details: str, report: dict | None, dataset_format: str
) -> None:
    now = timezone.now()
    File.objects.filter(pk=file.pk, status=File.Status.UPLOADED).update(
        status=status,
        status_details=details,
        validation_report=report,
        format=dataset_format,
        validated_at=now,
    )
    file.refresh_from_db()


def file_fail_validation(*, file_id: str, details: str) -> None:
    """Mark a still-`uploaded` file as `error` when validation cannot finish (e.g. it ran out of time)."""
    File.objects.filter(public_id=file_id, status=File.Status.UPLOADED).update(
        status=File.Status.ERROR, status_details=details, validated_at=timezone.now()
    )


def stored_object_discard(*, key: str) -> None:
    """Remove bytes that never became a File (the request failed after the upload streamed in)."""
    try:
        object_store().delete(key)
    except ObjectNotFound:
        pass
    except Exception:  # noqa: BLE001 - cleanup must not hide the error that caused it
        logger.exception("could not remove orphaned upload %s", key)


@transaction.atomic
def file_delete(*, file: File) -> File:
    """Delete a file: the row stays (status `deleted`) for the jobs that name it, the bytes go."""
    updated = (
        File.objects.filter(pk=file.pk)
        .exclude(status=File.Status.DELETED)
        .update(status=File.Status.DELETED, deleted_at=timezone.now())
    )
    if updated:
        transaction.on_commit(partial(stored_object_discard, key=file.storage_key), robust=True)
    file.refresh_from_db()
    return file
