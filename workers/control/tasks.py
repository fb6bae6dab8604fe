"""Tasks of the control queue. Each takes ids, re-reads state and is safe to deliver twice.

Imported only by the control worker (`tailor worker control`), after Django is set up; the API
publishes these tasks by name (`workers.app.VALIDATE_FILE_TASK`) and never imports this module.
"""

from __future__ import annotations

import logging

from celery.exceptions import SoftTimeLimitExceeded
from django.db import InterfaceError, OperationalError
from tailor.files.services import file_fail_validation, file_validate

from workers.app import VALIDATE_FILE_TASK, app

logger = logging.getLogger(__name__)

# A 512 MB upload validates in well under a minute; the limits only catch a stuck store or database.
VALIDATE_SOFT_TIME_LIMIT = 15 * 60
VALIDATE_TIME_LIMIT = VALIDATE_SOFT_TIME_LIMIT + 60


@app.task(
    name=VALIDATE_FILE_TASK,
    ignore_result=True,
    # Redelivered if the worker dies mid-validation; the task is idempotent.
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=VALIDATE_SOFT_TIME_LIMIT,
    time_limit=VALIDATE_TIME_LIMIT,
    # The database or object store hiccuped: try again with backoff rather than fail the file.
    autoretry_for=(OperationalError, InterfaceError, ConnectionError, TimeoutError),
    retry_backoff=5,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=8,
)
def validate_file(file_id: str) -> None:
    """Validate an uploaded file and record `processed` or `error` with its report."""
    try:
        file = file_validate(file_id=file_id)
    except SoftTimeLimitExceeded:
        file_fail_validation(
            file_id=file_id,
            details=f"Validation did not finish within {VALIDATE_SOFT_TIME_LIMIT // 60} minutes; upload the file again.",
        )
        return
    if file is not None:
        logger.info("validated %s: %s (%s)", file_id, file.status, file.status_details)
