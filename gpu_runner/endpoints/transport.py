"""HTTP plumbing shared by the endpoint clients: the server's root URL, auth headers, one request.

Each call opens its own short-lived `httpx.Client`: the registry talks to an endpoint a few times per
deployment, so a TCP handshake per call costs nothing, and no connection pool outlives the caller (the
control plane creates clients inside Celery tasks and never closes them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx

from gpu_runner.endpoints.errors import transport_error

DEFAULT_TIMEOUT = 30.0


def root_url(base_url: str) -> str:
    """The server's root from a registered URL: `http://h:8000/v1/` → `http://h:8000`. Operators often
    register the OpenAI-style base URL, while the management routes hang off the root."""
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"endpoint URL {base_url!r} must start with http:// or https://")
    return url.removesuffix("/v1")


class Transport:
    """Requests to one server, with its API key, translating no-answer failures into `EndpointError`."""

    def __init__(self, server: str, base_url: str, *, api_key: str | None, timeout: float) -> None:
        self.server = server
        self.root = root_url(base_url)
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        url = self.root + path
        try:
            with httpx.Client(headers=self.headers, timeout=timeout or self.timeout) as client:
                return client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise transport_error(self.server, method, url, exc) from exc

    @contextlib.contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed response; transport failures while reading it are translated too."""
        url = self.root + path
        try:
            with (
                httpx.Client(headers=self.headers, timeout=self.timeout) as client,
                client.stream(method, url, **kwargs) as response,
            ):
                yield response
        except httpx.HTTPError as exc:
            raise transport_error(self.server, method, url, exc) from exc
