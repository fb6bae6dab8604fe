"""What can go wrong when Tailor talks to an inference endpoint, in one exception.

`EndpointError` carries what the caller needs to decide and to tell the user: whether trying again later
may succeed (`transient`: the server was unreachable, slow, overloaded or restarting), the HTTP status if
the server answered, a stable `reason_code` that the registry stores on the deployment, and a message
that quotes the server's own words. The helpers below read the error bodies vLLM, FastAPI and Ollama
send, so every client reports them the same way.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

# Statuses a server sends when it is busy, restarting or behind a proxy that lost it: worth a retry.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 502, 503, 504})


class EndpointError(Exception):
    """An inference endpoint refused or failed a request.

    `transient`: retrying with backoff may succeed (connection refused or reset, timeouts, 429, 502, 503,
    504). Otherwise the endpoint refused for a reason retrying will not fix, and the message says which.
    `status`: the HTTP status when the server answered, else None. `reason_code`: a short stable code
    (`adapter_refused`, `runtime_lora_updating_disabled`, …) for the deployment's record.
    """

    def __init__(self, message: str, *, transient: bool, status: int | None, reason_code: str) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.status = status
        self.reason_code = reason_code

    def __repr__(self) -> str:
        return (
            f"EndpointError({self.message!r}, transient={self.transient}, status={self.status}, "
            f"reason_code={self.reason_code!r})"
        )


def parse_body(response: httpx.Response) -> Any:
    """The response's JSON, or its text when it is not JSON (vLLM's success answers are plain text)."""
    text = response.text
    try:
        return json.loads(text)
    except ValueError:
        return text


def server_message(body: Any) -> tuple[str, str]:
    """(message, type) from any error body the servers send: vLLM's nested `{"error": {"message", "type",
    "code"}}` (current) or flat `{"object": "error", "message", "type"}` (older releases), FastAPI's
    `{"detail": …}`, Ollama's `{"error": "…"}` and vLLM's `{"error": "Unauthorized"}`, or plain text."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or "").strip(), str(error.get("type") or "")
        if isinstance(error, str):
            return error.strip(), ""
        if "message" in body:
            return str(body.get("message") or "").strip(), str(body.get("type") or "")
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail.strip(), ""
        if isinstance(detail, list):  # pydantic validation errors through FastAPI
            parts = []
            for item in detail:
                if isinstance(item, dict):
                    where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
                    parts.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", "")))
                else:
                    parts.append(str(item))
            return "; ".join(parts), ""
        return json.dumps(body)[:500], ""
    if isinstance(body, str):
        return body.strip()[:500], ""
    return str(body)[:500], ""


def transport_error(server: str, method: str, url: str, exc: httpx.HTTPError) -> EndpointError:
    """A request that got no answer: unreachable, reset or timed out. Always transient."""
    if isinstance(exc, httpx.TimeoutException):
        return EndpointError(
            f"{server} at {url} did not answer {method} in time ({type(exc).__name__}); it may be busy "
            "loading or restarting",
            transient=True,
            status=None,
            reason_code="endpoint_timeout",
        )
    detail = str(exc) or type(exc).__name__
    return EndpointError(
        f"{server} at {url} could not be reached for {method}: {detail}",
        transient=True,
        status=None,
        reason_code="endpoint_unreachable",
    )


def http_error(
    server: str, method: str, path: str, response: httpx.Response, *, reason_code: str | None = None
) -> EndpointError:
    """The generic error for an answer the caller has no better words for; transient for 429/5xx-gateway."""
    message, kind = server_message(parse_body(response))
    status = response.status_code
    label = f"HTTP {status} {kind}".strip()
    if status in (401, 403):
        return EndpointError(
            f"{server} refused the credentials for {method} {path} ({label}): {message or 'Unauthorized'}; "
            "check the endpoint's API key",
            transient=False,
            status=status,
            reason_code="endpoint_unauthorized",
        )
    transient = status in TRANSIENT_STATUSES
    code = reason_code or ("endpoint_unavailable" if transient else "endpoint_error")
    return EndpointError(
        f"{server} answered {method} {path} with {label}: {message or '(no message)'}",
        transient=transient,
        status=status,
        reason_code=code,
    )
