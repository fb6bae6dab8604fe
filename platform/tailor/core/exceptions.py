"""The single place where errors become HTTP responses: DRF's exception handler for every API view.

Domain errors (`ApplicationError`), DRF's own errors (validation, authentication, parsing, 404, 405, …)
and Django's (`Http404`, `PermissionDenied`, oversized request data) all leave the API in the OpenAI
envelope `{"error": {"message", "type", "param", "code"}}`, which the openai SDK turns into its typed
exceptions.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import SuspiciousOperation
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response
from rest_framework.views import set_rollback

from tailor.core.errors import ApplicationError

logger = logging.getLogger(__name__)

# DRF's codes renamed where OpenAI uses another word for the same thing.
_CODE_NAMES = {
    "required": "missing_required_parameter",
    "null": "missing_required_parameter",
    "authentication_failed": "invalid_api_key",
    "not_authenticated": "missing_api_key",
    "permission_denied": "insufficient_permissions",
    "parse_error": "invalid_request_body",
    "throttled": "rate_limit_exceeded",
}


def error_body(
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, dict[str, str | None]]:
    """The OpenAI error envelope."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_json_response(status: int, message: str, **fields: Any) -> JsonResponse:
    """The envelope as a plain Django response, for views outside DRF (unknown URLs under /v1)."""
    return JsonResponse(error_body(message, **fields), status=status)


def _first_validation_error(detail: Any, path: tuple[str, ...] = ()) -> tuple[tuple[str, ...], str, str]:
    """Walk DRF's nested error detail to its first leaf: (field path, message, code)."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            sub = () if key in ("non_field_errors", "detail") else (str(key),)
            return _first_validation_error(value, path + sub)
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], path)
    return path, str(detail), getattr(detail, "code", "invalid") or "invalid"


def _count_validation_errors(detail: Any) -> int:
    if isinstance(detail, dict):
        return sum(_count_validation_errors(v) for v in detail.values())
    if isinstance(detail, list):
        return sum(_count_validation_errors(v) for v in detail) if detail else 0
    return 1


def _param_name(path: tuple[str, ...]) -> str | None:
    # Nested fields are named as the client sends them: `expires_after[seconds]`.
    if not path:
        return None
    return path[0] + "".join(f"[{part}]" for part in path[1:])


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """Translate any exception raised inside an API view into the OpenAI error envelope."""
    headers: dict[str, str] = {}
    if isinstance(exc, ApplicationError):
        status, body = exc.status_code, exc.as_envelope()
    elif isinstance(exc, drf.ValidationError):
        path, message, code = _first_validation_error(exc.detail)
        param = _param_name(path)
        extra = _count_validation_errors(exc.detail) - 1
        text = f"{param}: {message}" if param else message
        if extra > 0:
            text += f" (and {extra} more {'error' if extra == 1 else 'errors'})"
        status, body = 400, error_body(text, param=param, code=_CODE_NAMES.get(code, code))
    elif isinstance(exc, drf.APIException):
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        detail = exc.detail
        code = getattr(detail, "code", None) or exc.default_code
        if isinstance(exc, drf.NotAuthenticated):
            detail = (
                "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
                "(Authorization: Bearer YOUR_KEY), or pass api_key= to the openai SDK."
            )
        error_type = (
            "rate_limit_error"
            if isinstance(exc, drf.Throttled)
            else "permission_error"
            if isinstance(exc, drf.PermissionDenied)
            else "invalid_request_error"
        )
        status = exc.status_code
        body = error_body(str(detail), error_type=error_type, code=_CODE_NAMES.get(code, code))
    elif isinstance(exc, Http404):
        status, body = 404, error_body(str(exc) or "Not found.", code="not_found")
    elif isinstance(exc, DjangoPermissionDenied):
        status, body = (
            403,
            error_body(
                str(exc) or "Permission denied.",
                error_type="permission_error",
                code="insufficient_permissions",
            ),
        )
    elif isinstance(exc, SuspiciousOperation):
        # Django's own request limits (too many fields, oversized form data, bad multipart).
        status, body = 400, error_body(str(exc) or "The request was refused.", code="invalid_request_body")
    else:
        logger.exception("Unhandled error in %s", context.get("view").__class__.__name__)
        status, body = (
            500,
            error_body(
                "The server had an error while processing your request.",
                error_type="server_error",
                code="internal_error",
            ),
        )
    set_rollback()
    return Response(body, status=status, headers=headers)
