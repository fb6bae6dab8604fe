"""Client for vLLM's runtime LoRA API: load and unload adapters, list models, check health.

vLLM mounts `/v1/load_lora_adapter` and `/v1/unload_lora_adapter` only when it runs with `--enable-lora`
and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`; otherwise FastAPI answers `404 {"detail":"Not Found"}`, which
this client explains instead of passing on. Successful loads and unloads answer plain text
(`Success: LoRA adapter 'x' added successfully.`). Errors come in the nested envelope
`{"error": {"message", "type", "param", "code"}}` of current releases or the flat one
(`{"object": "error", "message", …}`) of older ones, and an adapter vLLM cannot serve is refused with 500
`InternalServerError` by current releases and 400 `BadRequestError` by older ones: all are read here.

vLLM reads `lora_path` from its own filesystem, so the path must be where the server sees the adapter
(a shared volume, or the folder the endpoint agent wrote beside it).
"""

from __future__ import annotations

from typing import Any

import httpx

from gpu_runner.endpoints.errors import EndpointError, http_error, parse_body, server_message
from gpu_runner.endpoints.transport import DEFAULT_TIMEOUT, Transport

SERVER = "vLLM"
LOAD_PATH = "/v1/load_lora_adapter"
UNLOAD_PATH = "/v1/unload_lora_adapter"
RUNTIME_UPDATING_HINT = (
    "start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True so that it accepts adapters "
    "at runtime"
)


def _is_route_missing(response: httpx.Response) -> bool:
    """FastAPI's own 404 for a route that is not mounted, as opposed to vLLM's NotFoundError envelope."""
    body = parse_body(response)
    return response.status_code == 404 and isinstance(body, dict) and body.get("detail") == "Not Found"


class VLLMClient:
    """One vLLM server. `base_url` is its root or its OpenAI base (`http://host:8000[/v1]`); `api_key` is
    what the server was started with (`--api-key`), if anything."""

    def __init__(
        self, base_url: str, *, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self._http = Transport(SERVER, base_url, api_key=api_key, timeout=timeout)

    @property
    def base_url(self) -> str:
        return self._http.root

    def _route_missing_error(self, path: str) -> EndpointError:
        return EndpointError(
            f"vLLM at {self.base_url} has no {path} route (HTTP 404 Not Found): runtime LoRA updating is "
            f"switched off; {RUNTIME_UPDATING_HINT}",
            transient=False,
            status=404,
            reason_code="runtime_lora_updating_disabled",
        )

    def load(self, name: str, path: str, *, load_inplace: bool = False) -> None:
        """Load the adapter folder `path` (as the server sees it) under the model name `name`.

        `load_inplace=True` replaces an adapter already loaded under `name` (the same id, new weights),
        which makes a repeated deploy idempotent; without it a second load of the name is refused.
        Raises `EndpointError`: `adapter_not_found` (the server cannot see `path`), `adapter_refused` (the
        server validated the adapter and said no, in its words), `adapter_already_loaded`,
        `runtime_lora_updating_disabled`, or a transient error worth retrying."""
        body: dict[str, Any] = {"lora_name": name, "lora_path": path}
        if load_inplace:
            # Sent only when asked for: vLLM releases before ~v0.11 have no such field.
            body["load_inplace"] = True
        response = self._http.request("POST", LOAD_PATH, json=body)
        if response.status_code == 200:
            return
        if _is_route_missing(response):
            raise self._route_missing_error(LOAD_PATH)
        message, kind = server_message(parse_body(response))
        status = response.status_code
        label = f"HTTP {status} {kind}".strip()
        if status == 404:
            raise EndpointError(
                f"vLLM cannot find the adapter for {name!r} at {path} ({label}): {message}. The path must "
                "exist on the vLLM server's own filesystem (a volume it shares with Tailor, or the endpoint "
                "agent's folder)",
                transient=False,
                status=status,
                reason_code="adapter_not_found",
            )
        if status == 400 and kind == "InvalidUserInput" and "already been loaded" in message:
            raise EndpointError(
                f"vLLM already serves an adapter named {name!r} ({label}): {message}",
                transient=False,
                status=status,
                reason_code="adapter_already_loaded",
            )
        if status == 422 or (status == 400 and kind == "InvalidUserInput"):
            raise EndpointError(
                f"vLLM refused the load request ({label}): {message}",
                transient=False,
                status=status,
                reason_code="invalid_request",
            )
        if status in (400, 500):
            # The engine's verdict on the adapter: 500 InternalServerError on current releases, 400
            # BadRequestError on older ones, with the same message (rank, DoRA, modules, missing files).
            raise EndpointError(
                f"vLLM refused the adapter ({label}): {message or '(no message)'}",
                transient=False,
                status=status,
                reason_code="adapter_refused",
            )
        raise http_error(SERVER, "POST", LOAD_PATH, response)

    def unload(self, name: str) -> bool:
        """Unload the adapter named `name`. True if it was loaded; False if vLLM did not know the name
        (undeploying twice is not an error)."""
        response = self._http.request("POST", UNLOAD_PATH, json={"lora_name": name})
        if response.status_code == 200:
            return True
        if _is_route_missing(response):
            raise self._route_missing_error(UNLOAD_PATH)
        if response.status_code == 404:
            return False
        message, kind = server_message(parse_body(response))
        if response.status_code == 500:
            raise EndpointError(
                f"vLLM could not unload {name!r} ({f'HTTP 500 {kind}'.strip()}): {message}",
                transient=False,
                status=500,
                reason_code="unload_failed",
            )
        raise http_error(SERVER, "POST", UNLOAD_PATH, response)

    def models(self) -> list[dict[str, Any]]:
        """The model cards of `/v1/models`: the served base models first, then the loaded adapters (whose
        `root` is the path they were loaded from and `parent` their base)."""
        response = self._http.request("GET", "/v1/models")
        if response.status_code != 200:
            raise http_error(SERVER, "GET", "/v1/models", response)
        body = parse_body(response)
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise EndpointError(
                f"vLLM at {self.base_url} answered /v1/models with something that is not a model list: "
                f"{str(body)[:200]}",
                transient=False,
                status=200,
                reason_code="unexpected_response",
            )
        return [card for card in body["data"] if isinstance(card, dict)]

    def health(self) -> None:
        """Raise `EndpointError` unless the server is up (`/health`) and accepts the API key (`/v1/models`)."""
        response = self._http.request("GET", "/health")
        if response.status_code != 200:
            raise http_error(SERVER, "GET", "/health", response, reason_code="endpoint_unhealthy")
        self.models()
