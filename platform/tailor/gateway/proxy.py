"""Relaying an OpenAI-style inference request to the endpoint that serves the model, and the answer back.

The gateway rewrites exactly one thing each way: the request's `model` becomes the name the endpoint
knows (an adapter's served name, a base model's served name), and every answer's `model` becomes what
the client asked for again, in a plain JSON body and in each server-sent event of a stream. Streams are
relayed line by line as they arrive; nothing waits for the whole answer. One pooled HTTP client per
process keeps connections to the endpoints alive, so a request costs no new TCP handshake.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

_client: httpx.Client | None = None
_client_lock = threading.Lock()

# Hop-by-hop and framing headers are the relay's own business; content headers of the answer are kept.
PASSED_RESPONSE_HEADERS = ("content-type",)


def http_client() -> httpx.Client:
    """The process's pooled client (thread-safe; created on first use, after a fork)."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = httpx.Client(
                    limits=httpx.Limits(
                        max_connections=256, max_keepalive_connections=64, keepalive_expiry=60
                    ),
                    follow_redirects=False,
                )
    return _client


class UpstreamUnavailable(Exception):
    """The endpoint could not be reached, or did not answer in time."""

    def __init__(self, message: str, *, timeout: bool) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass
class UpstreamAnswer:
    status: int
    headers: dict[str, str]
    # Either a whole body (non-streamed answers and errors) or an iterator of relayed bytes.
    body: bytes | None
    stream: Iterator[bytes] | None


def rewrite_model(payload: bytes, model: str) -> bytes:
    """`payload` (one JSON object) with its top-level `model` set to `model`; anything else unchanged."""
    try:
        data = json.loads(payload)
    except ValueError:
        return payload
    if isinstance(data, dict) and "model" in data:
        data["model"] = model
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return payload


def _rewrite_event_line(line: bytes, model: str) -> bytes:
    if line.startswith(b"data:"):
        value = line[5:].strip()
        if value.startswith(b"{"):
            return b"data: " + rewrite_model(value, model)
    return line


def relay_sse(response: httpx.Response, model: str) -> Iterator[bytes]:
    """Relay a server-sent event stream line by line (each line as soon as it is complete), rewriting
    `model` in every `data:` JSON line. Closes the upstream response when done or abandoned."""
    pending = b""
    try:
        for chunk in response.iter_raw():
            pending += chunk
            while True:
                newline = pending.find(b"\n")
                if newline < 0:
                    break
                line, pending = pending[:newline].rstrip(b"\r"), pending[newline + 1 :]
                yield _rewrite_event_line(line, model) + b"\n"
        if pending:
            yield _rewrite_event_line(pending, model) + b"\n"
    finally:
        response.close()


def forward(
    *,
    base_url: str,
    path: str,
    body: dict[str, Any],
    credential: str,
    client_model: str,
    timeout: float,
    request_id: str | None = None,
) -> UpstreamAnswer:
    """POST `body` to `base_url + path` and return the answer with `model` rewritten to `client_model`."""
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if credential:
        headers["Authorization"] = f"Bearer {credential}"
    if request_id:
        headers["X-Request-ID"] = request_id
    client = http_client()
    request = client.build_request(
        "POST",
        base_url.rstrip("/") + path,
        content=json.dumps(body, ensure_ascii=False).encode(),
        headers=headers,
        timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
    )
    try:
        response = client.send(request, stream=True)
    except httpx.TimeoutException as exc:
        raise UpstreamUnavailable(f"timed out ({type(exc).__name__})", timeout=True) from None
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(f"{type(exc).__name__}", timeout=False) from None
    kept = {name: response.headers[name] for name in PASSED_RESPONSE_HEADERS if name in response.headers}
    content_type = response.headers.get("content-type", "")
    if response.status_code == 200 and content_type.startswith("text/event-stream"):
        return UpstreamAnswer(status=200, headers=kept, body=None, stream=relay_sse(response, client_model))
    try:
        content = response.read()
    except httpx.TimeoutException:
        response.close()
        raise UpstreamUnavailable("timed out while reading the answer", timeout=True) from None
    except httpx.HTTPError as exc:
        response.close()
        raise UpstreamUnavailable(f"{type(exc).__name__} while reading the answer", timeout=False) from None
    response.close()
    if response.status_code == 200 and content_type.startswith("application/json"):
        content = rewrite_model(content, client_model)
    return UpstreamAnswer(status=response.status_code, headers=kept, body=content, stream=None)
