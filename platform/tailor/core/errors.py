"""The domain's error family. Services and selectors raise these; one exception handler turns them into
the OpenAI error envelope `{"error": {"message", "type", "param", "code"}}` with the matching status."""

from __future__ import annotations


class ApplicationError(Exception):
    """An error a client caused or must know about; `param` names the offending request field."""

    status_code = 400
    error_type = "invalid_request_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code

    def as_envelope(self) -> dict[str, dict[str, str | None]]:
        """The body an API client receives."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(ApplicationError):
    """The request is well-formed HTTP but asks for something invalid (400)."""

    default_code = "invalid_value"


class AuthenticationFailed(ApplicationError):
    """No usable API key (401)."""

    status_code = 401
    default_code = "invalid_api_key"


class PermissionDenied(ApplicationError):
    """The key is valid but may not do this (403)."""

    status_code = 403
    error_type = "permission_error"
    default_code = "insufficient_permissions"


class NotFound(ApplicationError):
    """The object does not exist for this team; another team's object answers exactly the same (404)."""

    status_code = 404
    default_code = "not_found"

    @classmethod
    def for_object(cls, kind: str, object_id: str, *, param: str | None = None) -> NotFound:
        """`No such File object: file-…`, OpenAI's wording."""
        return cls(f"No such {kind} object: {object_id}", param=param)


class Conflict(ApplicationError):
    """The object's state does not allow the operation (409)."""

    status_code = 409
    default_code = "conflict"


class PayloadTooLarge(ApplicationError):
    """An upload over the configured size limit (413)."""

    status_code = 413
    default_code = "file_too_large"


class ServiceUnavailable(ApplicationError):
    """A dependency (database, broker, object store) is down (503); clients may retry."""

    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"
