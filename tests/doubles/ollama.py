"""An Ollama server, as far as Tailor's registry can tell: blobs by digest, models built from a base and an
adapter, listing, deletion, chat.

Routes: `HEAD`/`POST /api/blobs/:digest`, `POST /api/create`, `GET /api/tags`, `DELETE /api/delete`,
`POST /api/chat`, `POST /v1/chat/completions`, `GET /api/version`, `GET /`. Behaviour copied from Ollama
(server/routes.go, server/create.go, convert/convert.go, openai/openai.go):

- blobs are content-addressed: a malformed digest → 400 `invalid digest format`; an upload whose bytes do
  not hash to the digest → 400 `digest mismatch, expected "sha256:A", got "sha256:B"`; 201 for a new blob,
  200 (body unread) for one already held;
- `/api/create` checks the request synchronously (400 `missing request body`, `invalid model name`,
  `invalid digest format`), then produces its progress: a base missing locally is "pulled" and fails with
  `pull model manifest: file does not exist`; a safetensors adapter goes through `converting adapter`,
  needs `adapter_config.json`, a whole-number `lora_alpha` (Go `uint32`) and a base of architecture
  `llama` or `gemma2` (else `unsupported architecture`); a GGUF adapter goes through `parsing GGUF`, one
  file only, GGUF magic required; then `using existing layer …`, `creating new layer …`,
  `writing manifest`, `success`. An error before any progress line answers with its status and a JSON
  body; after a line it is the last NDJSON line of a 200; with `"stream": false` the first error wins;
- `adapters_removed=True` is a release that refuses safetensors adapters (400 `safetensors imports do not
  support adapters`, as newer Ollama's create.go answers);
- a GGUF adapter without `general.type=adapter` is stored as a second model layer, as Ollama does, and the
  model then fails at its first chat (500);
- `/api/delete` answers 200 with an empty body, 404 `model 'x' not found`; unknown models in chat → 404.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import struct
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.doubles.base import DoubleServer, Reply, Request, ndjson
from tests.doubles.vllm import answer_for

_DIGEST = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"
_NAME = re.compile(
    rf"^(?:(?:[A-Za-z0-9_][A-Za-z0-9_.-]{{0,349}}/)?[A-Za-z0-9_][A-Za-z0-9_-]{{0,79}}/)?({_PART})(?::({_PART}))?$"
)
ADAPTER_ARCHITECTURES = ("llama", "gemma2")
GGUF_MAGIC = b"GGUF"


class _Failure(Exception):
    """An error of the create pipeline; `status` None means Ollama's default, 500."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class OllamaModel:
    name: str
    architecture: str
    parent: str = ""
    layers: list[tuple[str, str]] = field(default_factory=list)  # (media type, digest)
    modified_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.layers).encode()).hexdigest()

    @property
    def broken(self) -> bool:
        return sum(1 for kind, _ in self.layers if kind == "application/vnd.ollama.image.model") > 1


def normalize_name(name: str) -> str | None:
    """`model[:tag]` with Ollama's defaults filled in (`:latest`), or None if Ollama would refuse it."""
    match = _NAME.match(name or "")
    if not match:
        return None
    return name if match.group(2) else f"{name}:latest"


class OllamaDouble(DoubleServer):
    """Ollama `version` holding the base models `base_models` (their GGUF architecture: `architecture`).

    Knobs: `architecture` ("llama" default; "qwen2" makes adapter conversion fail), `version`,
    `adapters_removed`, `api_key` (for a server behind an authenticating proxy), `chat_fails_for`,
    plus `fail_next(path, status, body)`."""

    server_name = "ollama"

    def __init__(
        self,
        *,
        version: str = "0.12.6",
        architecture: str = "llama",
        base_models: Iterable[str] = ("llama3.2:1b",),
        adapters_removed: bool = False,
        api_key: str | None = None,
        chat_fails_for: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.version = version
        self.architecture = architecture
        self.adapters_removed = adapters_removed
        self.api_key = api_key
        self.chat_fails_for = set(chat_fails_for)
        self.blobs: dict[str, bytes] = {}
        self.models: dict[str, OllamaModel] = {}
        for base in base_models:
            full = normalize_name(base)
            if full is None:
                raise ValueError(f"invalid Ollama model name {base!r}")
            weights = f"sha256:{hashlib.sha256(full.encode()).hexdigest()}"
            self.models[full] = OllamaModel(
                name=full, architecture=architecture, layers=[("application/vnd.ollama.image.model", weights)]
            )

    # What a test inspects ----------------------------------------------------------------------------

    def tags(self) -> list[dict[str, Any]]:
        """The models `/api/tags` lists right now."""
        with self.lock:
            return [self._tag(model) for model in self.models.values()]

    def _tag(self, model: OllamaModel) -> dict[str, Any]:
        return {
            "name": model.name,
            "model": model.name,
            "modified_at": model.modified_at,
            "size": 1_300_000_000 + 1000 * len(model.layers),
            "digest": model.digest,
            "details": {
                "parent_model": model.parent,
                "format": "gguf",
                "family": model.architecture,
                "families": [model.architecture],
                "parameter_size": "1.2B",
                "quantization_level": "Q8_0",
            },
        }

    # Dispatch ----------------------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        method, path = request.method, request.path
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return Reply(401, {"error": "unauthorized"})
        if path == "/" and method in ("GET", "HEAD"):
            return Reply(200, "Ollama is running", content_type="text/plain; charset=utf-8")
        if path == "/api/version" and method == "GET":
            return Reply(200, {"version": self.version})
        if path.startswith("/api/blobs/"):
            digest = path.removeprefix("/api/blobs/")
            if method == "HEAD":
                return self._head_blob(digest)
            if method == "POST":
                return self._post_blob(digest, request.raw)
        routes = {
            ("POST", "/api/create"): self._create,
            ("GET", "/api/tags"): lambda r: Reply(200, {"models": self.tags()}),
            ("HEAD", "/api/tags"): lambda r: Reply(200, {"models": self.tags()}),
            ("DELETE", "/api/delete"): self._delete,
            ("POST", "/api/chat"): self._chat,
            ("POST", "/v1/chat/completions"): self._openai_chat,
        }
        route = routes.get((method, path))
        if route is None:
            return Reply(404, "404 page not found", content_type="text/plain")
        return route(request)

    # Blobs -------------------------------------------------------------------------------------------

    def _head_blob(self, digest: str) -> Reply:
        match = _DIGEST.match(digest)
        if not match:
            return Reply(400, {"error": "invalid digest format"})
        with self.lock:
            if f"sha256:{match.group(1)}" in self.blobs:
                return Reply(200, None, content_type=None)
        return Reply(404, {"error": f'blob "{digest}" not found'})

    def _post_blob(self, digest: str, data: bytes) -> Reply:
        match = _DIGEST.match(digest)
        if not match:
            return Reply(400, {"error": "invalid digest format"})
        key = f"sha256:{match.group(1)}"
        with self.lock:
            if key in self.blobs:
                return Reply(200, None, content_type=None)
        actual = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if actual != digest:
            return Reply(400, {"error": f'digest mismatch, expected "{digest}", got "{actual}"'})
        with self.lock:
            self.blobs[key] = data
        return Reply(201, None, content_type=None)

    # Create ------------------------------------------------------------------------------------------

    def _create(self, request: Request) -> Reply:
        if not request.raw.strip():
            return Reply(400, {"error": "missing request body"})
        try:
            body = json.loads(request.raw)
        except ValueError as exc:
            return Reply(400, {"error": f"invalid character in JSON body: {exc}"})
        if not isinstance(body, dict):
            return Reply(
                400, {"error": "json: cannot unmarshal array into Go value of type api.CreateRequest"}
            )
        name = normalize_name(str(body.get("model") or body.get("name") or ""))
        if name is None:
            return Reply(400, {"error": "invalid model name"})
        for group in ("files", "adapters"):
            for path, digest in (body.get(group) or {}).items():
                if group == "files" and (path.startswith("/") or ".." in path.split("/")):
                    return Reply(400, {"error": "file path must be relative"})
                if not digest:
                    return Reply(400, {"error": "invalid digest format"})
        stream = body.get("stream", True) is not False
        progress: list[str] = []
        try:
            self._build(name, body, progress)
            failure = None
        except _Failure as exc:
            failure = exc
        if not stream:
            if failure is not None:
                return Reply(failure.status or 500, {"error": str(failure)})
            return Reply(200, {"status": "success"})
        if failure is not None and not progress:
            return Reply(failure.status or 500, {"error": str(failure)})
        lines: list[dict[str, Any]] = [{"status": status} for status in progress]
        lines.append({"error": str(failure)} if failure is not None else {"status": "success"})
        return Reply(200, stream=ndjson(*lines), content_type="application/x-ndjson")

    def _build(self, name: str, body: dict[str, Any], progress: list[str]) -> None:
        """The create pipeline; appends the progress statuses it would send, raises `_Failure`."""
        base: OllamaModel | None = None
        source = body.get("from")
        if source:
            base_name = normalize_name(str(source))
            if base_name is None:
                raise _Failure("invalid model name", 400)
            with self.lock:
                base = self.models.get(base_name)
            if base is None:
                progress.append("pulling manifest")
                raise _Failure("pull model manifest: file does not exist")
        elif not body.get("files"):
            raise _Failure("neither 'from' or 'files' was specified", 400)
        else:
            raise _Failure("creating models from weight files is not emulated by this double", 400)

        layers = list(base.layers)
        adapters = body.get("adapters") or {}
        if adapters:
            layers.extend(self._convert_adapter(adapters, base, progress))
        for _kind, digest in base.layers:
            progress.append(f"using existing layer {digest}")
        for _kind, digest in layers[len(base.layers) :]:
            progress.append(f"creating new layer {digest}")
        progress.append("writing manifest")
        with self.lock:
            self.models[name] = OllamaModel(
                name=name, architecture=base.architecture, parent=base.name, layers=layers
            )

    def _blob(self, digest: str) -> bytes:
        match = _DIGEST.match(digest)
        if not match:
            raise _Failure("invalid digest format", 400)
        with self.lock:
            data = self.blobs.get(f"sha256:{match.group(1)}")
        if data is None:
            raise _Failure(
                f"stat /root/.ollama/models/blobs/sha256-{match.group(1)}: no such file or directory", 400
            )
        return data

    def _convert_adapter(
        self, adapters: dict[str, str], base: OllamaModel, progress: list[str]
    ) -> list[tuple[str, str]]:
        """detectModelTypeFromFiles, then the safetensors converter or the GGUF parser. Adapter errors
        carry status 400."""
        kind = ""
        for filename, digest in adapters.items():
            if filename.endswith(".safetensors"):
                kind = "safetensors"
                break
            if filename.endswith(".gguf") or self._blob(digest)[:4] == GGUF_MAGIC:
                kind = "gguf"
                break
        if not kind:
            raise _Failure("unknown type", 400)
        if kind == "safetensors":
            if self.adapters_removed:
                raise _Failure("safetensors imports do not support adapters", 400)
            files = {filename: self._blob(digest) for filename, digest in adapters.items()}
            progress.append("converting adapter")
            if "adapter_config.json" not in files:
                raise _Failure("open adapter_config.json: file does not exist", 400)
            try:
                config = json.loads(files["adapter_config.json"])
            except ValueError as exc:
                raise _Failure(f"invalid character in adapter_config.json: {exc}", 400) from None
            alpha = config.get("lora_alpha", 0) if isinstance(config, dict) else 0
            if not isinstance(alpha, int) or isinstance(alpha, bool) or not 0 <= alpha < 2**32:
                raise _Failure(
                    f"json: cannot unmarshal number {json.dumps(alpha)} into Go struct field "
                    "AdapterParameters.lora_alpha of type uint32",
                    400,
                )
            if not base.architecture:
                raise _Failure("architecture not set for the base model", 400)
            if base.architecture not in ADAPTER_ARCHITECTURES:
                raise _Failure("unsupported architecture", 400)
            converted = hashlib.sha256(b"".join(files[name] for name in sorted(files))).hexdigest()
            return [("application/vnd.ollama.image.adapter", f"sha256:{converted}")]
        if len(adapters) > 1:
            raise _Failure("only one adapter is currently supported", 400)
        [(filename, digest)] = adapters.items()
        data = self._blob(digest)
        if data[:4] != GGUF_MAGIC:
            raise _Failure("supplied file was not in GGUF format", 400)
        progress.append("parsing GGUF")
        kv = gguf_metadata(data)
        media = (
            "application/vnd.ollama.image.adapter"
            if kv.get("general.type") == "adapter"
            else "application/vnd.ollama.image.model"
        )
        return [(media, digest.replace("-", ":", 1))]

    # Delete, chat ------------------------------------------------------------------------------------

    def _delete(self, request: Request) -> Reply:
        body = request.json
        if not request.raw.strip() or not isinstance(body, dict):
            return Reply(400, {"error": "missing request body"})
        raw_name = str(body.get("model") or body.get("name") or "")
        name = normalize_name(raw_name)
        if name is None:
            return Reply(400, {"error": f'name "{raw_name}" is invalid'})
        with self.lock:
            if name not in self.models:
                return Reply(404, {"error": f"model '{raw_name}' not found"})
            del self.models[name]
        return Reply(200, None, content_type=None)

    def _chat_target(self, request: Request) -> tuple[str, OllamaModel | None, str | None]:
        body = request.json if isinstance(request.json, dict) else {}
        raw_name = str(body.get("model") or "")
        name = normalize_name(raw_name)
        with self.lock:
            model = self.models.get(name) if name else None
        if model is None:
            return raw_name, None, f"model '{raw_name}' not found"
        if model.broken or raw_name in self.chat_fails_for or model.name in self.chat_fails_for:
            return raw_name, model, "llama runner process has terminated: error loading model"
        return raw_name, model, None

    def _chat(self, request: Request) -> Reply:
        raw_name, model, error = self._chat_target(request)
        if error:
            return Reply(404 if model is None else 500, {"error": error})
        now = dt.datetime.now(dt.UTC).isoformat()
        message = {"role": "assistant", "content": answer_for(raw_name)}
        final = {
            "model": raw_name,
            "created_at": now,
            "message": message,
            "done": True,
            "done_reason": "stop",
            "total_duration": 1000,
            "eval_count": 4,
        }
        body = request.json if isinstance(request.json, dict) else {}
        if body.get("stream", True) is False:
            return Reply(200, final)
        final["message"] = {"role": "assistant", "content": ""}
        first = {"model": raw_name, "created_at": now, "message": message, "done": False}
        return Reply(200, stream=ndjson(first, final), content_type="application/x-ndjson")

    def _openai_chat(self, request: Request) -> Reply:
        raw_name, model, error = self._chat_target(request)
        if error:
            status = 404 if model is None else 500
            kind = "not_found_error" if status == 404 else "api_error"
            return Reply(status, {"error": {"message": error, "type": kind, "param": None, "code": None}})
        return Reply(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().int % 1000}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": raw_name,
                "system_fingerprint": "fp_ollama",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer_for(raw_name)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12},
            },
        )


# GGUF metadata (just enough to read general.type) ------------------------------------------------------

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def gguf_metadata(data: bytes) -> dict[str, Any]:
    """The key/value metadata of a GGUF file (version 2 or 3); an unreadable header yields {}."""
    try:
        if data[:4] != GGUF_MAGIC:
            return {}
        offset = 8
        _tensors, count = struct.unpack_from("<QQ", data, offset)
        offset += 16
        metadata: dict[str, Any] = {}
        for _ in range(count):
            key, offset = _gguf_string(data, offset)
            (kind,) = struct.unpack_from("<I", data, offset)
            value, offset = _gguf_value(data, offset + 4, kind)
            metadata[key] = value
        return metadata
    except (struct.error, UnicodeDecodeError, ValueError):
        return {}


def _gguf_string(data: bytes, offset: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", data, offset)
    start = offset + 8
    return data[start : start + length].decode(), start + length


def _gguf_value(data: bytes, offset: int, kind: int) -> tuple[Any, int]:
    if kind == 8:
        return _gguf_string(data, offset)
    if kind == 9:
        item_kind, length = struct.unpack_from("<IQ", data, offset)
        offset += 12
        items = []
        for _ in range(length):
            item, offset = _gguf_value(data, offset, item_kind)
            items.append(item)
        return items, offset
    fmt = _SCALARS.get(kind)
    if fmt is None:
        raise ValueError(f"unknown GGUF value type {kind}")
    (value,) = struct.unpack_from(fmt, data, offset)
    return value, offset + struct.calcsize(fmt)


def gguf_bytes(metadata: dict[str, str | int | float]) -> bytes:
    """A tensor-less GGUF v3 file holding `metadata` (strings, ints as uint32, floats as float32), for tests."""
    out = bytearray(GGUF_MAGIC + struct.pack("<IQQ", 3, 0, len(metadata)))
    for key, value in metadata.items():
        encoded = key.encode()
        out += struct.pack("<Q", len(encoded)) + encoded
        if isinstance(value, str):
            text = value.encode()
            out += struct.pack("<IQ", 8, len(text)) + text
        elif isinstance(value, int):
            out += struct.pack("<II", 4, value)
        else:
            out += struct.pack("<If", 6, value)
    return bytes(out)
