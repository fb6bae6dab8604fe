"""Client for Ollama's model API: upload adapter files as blobs, build a model from a base and an adapter,
list and delete models, and read the server's version.

Ollama has no per-request adapter selection: each adapter becomes its own model, created with
`POST /api/create {"model", "from": <base>, "adapters": {filename: "sha256:…"}}` after every file was
uploaded by digest (`HEAD`, then `POST /api/blobs/sha256:…`). `/api/create` streams NDJSON progress, and
an error can arrive three ways: with its own status before any progress line, as the last NDJSON line of
a response whose status 200 was already sent, or as the single JSON answer of `"stream": false`. All
three raise `EndpointError` here with Ollama's message.

Ollama model names are `name:tag` with a restricted alphabet, so Tailor's `ft:base:team:suffix:id` names
map to Ollama names through `ollama_model_name`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO

from gpu_runner.endpoints.errors import (
    TRANSIENT_STATUSES,
    EndpointError,
    http_error,
    parse_body,
    server_message,
)
from gpu_runner.endpoints.transport import DEFAULT_TIMEOUT, Transport
from gpu_runner.storage.errors import ObjectNotFound, StorageError

SERVER = "Ollama"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_UPLOAD_CHUNK = 1024 * 1024
# Ollama's name rules (types/model/name.go): parts start with a letter, digit or '_', continue with those,
# '-' and '.', and hold at most 80 characters. Lowercase keeps names case-stable: Ollama compares
# names case-insensitively.
_NAME_PART_MAX = 80
_UNSAFE = re.compile(r"[^a-z0-9_.-]+")
# Newer Ollama releases refuse safetensors adapters ("safetensors imports do not support adapters");
# a third-party report (generative-computing/mellea#1651) dates the removal to v0.34.1 (ollama#14969).
_ADAPTERS_UNSUPPORTED = re.compile(
    r"(do(es)? not support adapters?|adapters? (are|is) (not|no longer) supported|"
    r"adapters? not supported|unsupported adapter|adapter (support|creation) (was )?removed)",
    re.IGNORECASE,
)

# Returns a binary stream that is also a context manager: a file, or what `ObjectStore.open` returns.
Opener = Callable[[], BinaryIO]


def ollama_model_name(adapter_name: str, version: int) -> str:
    """A valid, unique and stable Ollama model name for a Tailor adapter version.

    `ft:tailor-tiny:team:suffix:abcd1234`, version 3 → `tailor-tiny-team-suffix-abcd1234-<8 hex>:v3`: the
    readable part keeps what Ollama allows, and the hash of the full name keeps two names apart that
    differ only in characters Ollama refuses (or in case)."""
    if version < 0:
        raise ValueError(f"adapter version must be >= 0, got {version}")
    readable = adapter_name.removeprefix("ft:").lower()
    readable = _UNSAFE.sub("-", readable).strip("-.")
    readable = re.sub(r"-{2,}", "-", readable) or "adapter"
    suffix = "-" + hashlib.sha256(adapter_name.encode()).hexdigest()[:8]
    readable = readable[: _NAME_PART_MAX - len(suffix)].rstrip("-.")
    return f"{readable}{suffix}:v{version}"


def _read_failed(digest: str, exc: Exception) -> EndpointError:
    return EndpointError(
        f"reading the adapter file for blob {digest} from the object store failed: {exc}",
        transient=True,
        status=None,
        reason_code="storage_unavailable",
    )


class OllamaClient:
    """One Ollama server. `base_url` is its root (`http://host:11434`, a trailing `/v1` is dropped);
    `api_key` is sent as a bearer token for servers behind an authenticating proxy."""

    def __init__(
        self, base_url: str, *, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self._http = Transport(SERVER, base_url, api_key=api_key, timeout=timeout)
        self._version: str | None = None

    @property
    def base_url(self) -> str:
        return self._http.root

    # Server -------------------------------------------------------------------------------------------

    def version(self) -> str:
        """The server's version (`GET /api/version`), e.g. `0.12.6`."""
        response = self._http.request("GET", "/api/version")
        body = parse_body(response)
        if response.status_code != 200:
            raise http_error(SERVER, "GET", "/api/version", response, reason_code="endpoint_unhealthy")
        if not isinstance(body, dict) or not isinstance(body.get("version"), str):
            raise EndpointError(
                f"{self.base_url} answered /api/version with {str(body)[:200]!r}; is it an Ollama server?",
                transient=False,
                status=200,
                reason_code="unexpected_response",
            )
        self._version = body["version"]
        return self._version

    def health(self) -> None:
        """Raise `EndpointError` unless the server answers `/api/version`."""
        self.version()

    def tags(self) -> list[dict[str, Any]]:
        """The local models (`GET /api/tags`), each with `name` (`model:tag`), `digest`, `size`, `details`."""
        response = self._http.request("GET", "/api/tags")
        if response.status_code != 200:
            raise http_error(SERVER, "GET", "/api/tags", response)
        body = parse_body(response)
        models = body.get("models") if isinstance(body, dict) else None
        if not isinstance(models, list):
            raise EndpointError(
                f"Ollama at {self.base_url} answered /api/tags with {str(body)[:200]!r}",
                transient=False,
                status=200,
                reason_code="unexpected_response",
            )
        return [model for model in models if isinstance(model, dict)]

    # Blobs ----------------------------------------------------------------------------------------------

    def ensure_blob(self, digest: str, opener: Opener) -> bool:
        """Make sure the server holds the blob `digest` (`sha256:<64 hex>`): `HEAD` first, and only when
        the server lacks it, `POST` the bytes streamed from `opener()` (a callable returning a binary
        stream, e.g. `functools.partial(store.open, key)`). True if uploaded, False if already there.
        A digest mismatch (the bytes are not what the manifest says) is a permanent error."""
        if not _DIGEST.match(digest):
            raise ValueError(f"blob digest must be sha256:<64 lowercase hex>, got {digest!r}")
        path = f"/api/blobs/{digest}"
        head = self._http.request("HEAD", path)
        if head.status_code == 200:
            return False
        if head.status_code != 404:
            raise http_error(SERVER, "HEAD", path, head)

        try:
            source = opener()
        except ObjectNotFound as exc:
            raise EndpointError(
                f"the adapter file for blob {digest} is missing from the object store: {exc}",
                transient=False,
                status=None,
                reason_code="adapter_file_missing",
            ) from exc
        except (StorageError, OSError) as exc:
            raise _read_failed(digest, exc) from exc

        def chunks() -> Iterator[bytes]:
            try:
                while chunk := source.read(_UPLOAD_CHUNK):
                    yield chunk
            except (StorageError, OSError) as exc:
                raise _read_failed(digest, exc) from exc

        with source:
            response = self._http.request("POST", path, content=chunks())
        if response.status_code in (200, 201):
            return response.status_code == 201
        message, _ = server_message(parse_body(response))
        if response.status_code == 400 and "digest mismatch" in message:
            raise EndpointError(
                f"Ollama refused the upload of blob {digest}: {message}. The file read from the object "
                "store is not the one its manifest describes",
                transient=False,
                status=400,
                reason_code="blob_digest_mismatch",
            )
        raise http_error(SERVER, "POST", path, response)

    # Models ---------------------------------------------------------------------------------------------

    def create(
        self, model: str, *, from_: str, adapters: Mapping[str, str], stream: bool = True
    ) -> list[str]:
        """Create (or replace) the model `model` from the local base `from_` and the adapter files
        `adapters` (file name → `sha256:…` of a blob already uploaded). Returns the progress statuses,
        the last being `success`. Raises `EndpointError` with Ollama's message however it arrives."""
        body = {"model": model, "from": from_, "adapters": dict(adapters), "stream": stream}
        statuses: list[str] = []
        with self._http.stream("POST", "/api/create", json=body) as response:
            if response.status_code != 200:
                response.read()
                message, _ = server_message(parse_body(response))
                raise self._create_error(model, from_, message, status=response.status_code, after=None)
            if stream:
                items: Iterator[Any] = self._ndjson(response)
            else:
                response.read()
                items = iter([parse_body(response)])
            for item in items:
                if not isinstance(item, dict):
                    raise EndpointError(
                        f"Ollama answered /api/create with {str(item)[:200]!r}, not a progress object",
                        transient=False,
                        status=200,
                        reason_code="unexpected_response",
                    )
                if "error" in item:
                    message, _ = server_message(item)
                    after = statuses[-1] if statuses else None
                    raise self._create_error(model, from_, message, status=200, after=after)
                statuses.append(str(item.get("status", "")))
        if not statuses or statuses[-1] != "success":
            last = statuses[-1] if statuses else "nothing"
            raise EndpointError(
                f"Ollama's /api/create stream for {model!r} ended after {last!r} without success; the "
                "server may have restarted",
                transient=True,
                status=200,
                reason_code="ollama_create_interrupted",
            )
        return statuses

    @staticmethod
    def _ndjson(response: Any) -> Iterator[Any]:
        for line in response.iter_lines():
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError:
                yield line

    def _known_version(self) -> str:
        if self._version is None:
            try:
                self.version()
            except EndpointError:
                return "of unknown version"
        return str(self._version)

    def _create_error(
        self, model: str, base: str, message: str, *, status: int, after: str | None
    ) -> EndpointError:
        where = f"HTTP {status}" if after is None else f"after {after!r} in the progress stream"
        said = f"Ollama refused to create model {model!r} from {base!r} ({where}): {message}"
        lowered = message.lower()

        def refused(code: str, hint: str, *, transient: bool = False) -> EndpointError:
            return EndpointError(
                f"{said}. {hint}" if hint else said, transient=transient, status=status, reason_code=code
            )

        if _ADAPTERS_UNSUPPORTED.search(message):
            version = self._known_version()
            return refused(
                "ollama_adapters_unsupported",
                f"Ollama {version} does not create models from safetensors LoRA adapters (removed in "
                "v0.34.1 according to ollama/ollama#14969); serve this adapter with vLLM, or with an "
                "Ollama release before 0.34.1",
            )
        if "unsupported architecture" in lowered or "architecture not set" in lowered:
            return refused(
                "ollama_unsupported_architecture",
                f"Ollama converts safetensors adapters only for llama and gemma2 bases, and {base!r} is "
                "neither; a GGUF adapter would be needed, which Tailor does not build yet",
            )
        if "adapter_config.json" in lowered:
            return refused("adapter_incomplete", "the adapter's adapter_config.json did not reach Ollama")
        if "pull model manifest" in lowered or "file does not exist" in lowered:
            return refused(
                "ollama_base_model_missing",
                f"the server does not have the base model {base!r} and could not pull it; run "
                f"`ollama pull {base}` there, or correct the endpoint's served model name",
            )
        if "invalid model name" in lowered:
            return refused("ollama_invalid_model_name", "")
        if "cannot unmarshal" in lowered and "lora_alpha" in lowered:
            return refused("adapter_refused", "Ollama reads lora_alpha as an unsigned integer (uint32 in Go)")
        if status in TRANSIENT_STATUSES:
            return refused("endpoint_unavailable", "", transient=True)
        if 400 <= status < 500:
            return refused("ollama_create_refused", "")
        return refused("ollama_create_failed", "")

    def delete(self, model: str) -> bool:
        """Delete the model `model`. True if it existed; False if Ollama did not know it (undeploying twice
        is not an error)."""
        response = self._http.request("DELETE", "/api/delete", json={"model": model})
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise http_error(SERVER, "DELETE", "/api/delete", response)
