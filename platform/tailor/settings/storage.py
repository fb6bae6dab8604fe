"""The object store for uploaded files and artefacts, and the upload size limit.

`TAILOR_STORAGE_URL` is `file:///dir` (default: TAILOR_HOME/objects) or `s3://bucket/prefix`; the S3
backend reads `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_DEFAULT_REGION`
from the environment itself (boto3's own names), so MinIO, R2, Ceph and AWS all work unchanged.
"""

from __future__ import annotations

from tailor.settings.env import TAILOR_HOME, env

TAILOR_STORAGE_URL = env.str("TAILOR_STORAGE_URL", default=(TAILOR_HOME / "objects").as_uri())

# OpenAI's own per-file limit; an upload over it is refused with 413 and leaves nothing stored.
TAILOR_MAX_UPLOAD_BYTES = env.int("TAILOR_MAX_UPLOAD_BYTES", default=512 * 1024 * 1024)

__all__ = ["TAILOR_STORAGE_URL", "TAILOR_MAX_UPLOAD_BYTES"]
