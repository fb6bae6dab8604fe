"""The one exception a GPU job ends with when it cannot train: the error the user sees on the job.

`code` uses gpu_runner's stable error codes (`gpu_runner.events.ErrorCode`) so that a problem found by the
worker (a damaged training file, a missing base model) reads the same as one found by the runner.
"""

from __future__ import annotations

from typing import Any

from gpu_runner.events import ErrorCode


class JobError(Exception):
    """A job that failed for a reason worth telling the user: `job.error = {code, message, param}`."""

    def __init__(self, code: ErrorCode | str, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message
        self.param = param

    def as_error(self) -> dict[str, Any]:
        """The `error` object of a failed job's `job_finished` report."""
        return {"code": self.code, "message": self.message, "param": self.param}
