"""A vLLM OpenAI-compatible server with runtime LoRA updating, as far as Tailor's registry can tell.

Routes: `POST /v1/load_lora_adapter`, `POST /v1/unload_lora_adapter`, `GET /v1/models`,
`POST /v1/chat/completions`, `POST /v1/completions`, `GET /health`, `GET /version`. Behaviour copied from
vLLM (`vllm/entrypoints/serve/lora/`, `vllm/entrypoints/openai/models/serving.py`, `vllm/lora/peft_helper.py`,
`vllm/lora/models.py`):

- success answers to load/unload are plain text without a media type (`Success: LoRA adapter 'x' added
  successfully.`); errors use the nested envelope `{"error": {"message", "type", "param", "code"}}`, or the
  flat `{"object": "error", …}` one and older messages with `legacy_errors=True`;
- `runtime_updating=False` (no `VLLM_ALLOW_RUNTIME_LORA_UPDATING`): the management routes are not mounted,
  FastAPI answers `404 {"detail": "Not Found"}`;
- the adapter is read from this machine's disk at load time, like vLLM's engine does: no
  `adapter_config.json` → 404 `NotFoundError`; an adapter vLLM refuses (required fields, rank above
  `max_lora_rank`, DoRA, `modules_to_save`, bias, no tensors, tensors for modules the architecture has no
  LoRA layer for) → `invalid_adapter_status` (500 `InternalServerError` on current vLLM, 400
  `BadRequestError` on older releases) with vLLM's message; a refused load registers nothing;
- one registry entry per name, serialised per name; `load_inplace` keeps the adapter id and swaps the path;
  `/v1/models` lists the base first, then adapters in load order with `root` = path as sent and `parent` =
  the base; chat and completions answer a fixed text naming the model, 404 for unknown models;
- `api_key`: every `/v1` route wants `Authorization: Bearer <key>`, else `401 {"error": "Unauthorized"}`.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.doubles.base import DoubleServer, Reply, Request

# vllm/config/lora.py, `MaxLoRARanks`.
ALLOWED_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The modules a LoRA may target per architecture, in the order vLLM's worker builds the list: the model's
# LoRA layers (qkv_proj, o_proj, gate_up_proj, down_proj) unpacked through packed_modules_mapping, plus the
# embedding modules (vllm/model_executor/models/llama.py, qwen2.py).
EXPECTED_LORA_MODULES = {
    "llama": [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "embed_tokens",
        "lm_head",
    ],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B")


class _NotFound(Exception):
    pass


class _Invalid(Exception):
    pass


@dataclass
class LoadedLoRA:
    name: str
    int_id: int
    path: str
    base_model_name: str
    created: int


class VLLMDouble(DoubleServer):
    """vLLM serving `served_model` (a name, or several) with `--enable-lora --max-lora-rank <max_lora_rank>`.

    Knobs: `runtime_updating`, `legacy_errors`, `invalid_adapter_status` (500 or 400), `max_lora_rank`,
    `api_key`, `architecture` ("llama" or "qwen2": which target modules load), `chat_fails_for` (names
    whose chat and completion requests fail with 500), plus `fail_next(path, status, body)`."""

    server_name = "vllm"

    def __init__(
        self,
        *,
        served_model: str | Iterable[str] = "tailor-tiny",
        model_path: str = "/models/tailor-tiny",
        architecture: str = "llama",
        runtime_updating: bool = True,
        legacy_errors: bool = False,
        invalid_adapter_status: int = 500,
        max_lora_rank: int = 16,
        api_key: str | None = None,
        chat_fails_for: Iterable[str] = (),
        max_model_len: int = 2048,
        version: str = "0.11.0",
    ) -> None:
        super().__init__()
        if max_lora_rank not in ALLOWED_MAX_LORA_RANKS:
            # vLLM refuses to start; so does the double.
            raise ValueError(f"max_lora_rank must be one of {ALLOWED_MAX_LORA_RANKS}, got {max_lora_rank}")
        if invalid_adapter_status not in (400, 500):
            raise ValueError("invalid_adapter_status is 500 (current vLLM) or 400 (older releases)")
        if architecture not in EXPECTED_LORA_MODULES:
            raise ValueError(f"architecture must be one of {sorted(EXPECTED_LORA_MODULES)}")
        self.served_models = [served_model] if isinstance(served_model, str) else list(served_model)
        self.model_path = model_path
        self.architecture = architecture
        self.runtime_updating = runtime_updating
        self.legacy_errors = legacy_errors
        self.invalid_adapter_status = invalid_adapter_status
        self.max_lora_rank = max_lora_rank
        self.api_key = api_key
        self.chat_fails_for = set(chat_fails_for)
        self.max_model_len = max_model_len
        self.version = version
        self.loras: dict[str, LoadedLoRA] = {}
        self._next_id = 1
        self._name_locks: dict[str, threading.Lock] = {}
        self._created = int(time.time())

    # What a test inspects --------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """The cards `/v1/models` lists right now."""
        with self.lock:
            cards = [self._base_card(name) for name in self.served_models]
            cards += [self._lora_card(lora) for lora in self.loras.values()]
        return cards

    # Responses -------------------------------------------------------------------------------------

    def error(self, message: str, kind: str, status: int, param: str | None = None) -> Reply:
        if self.legacy_errors:
            body: dict[str, Any] = {
                "object": "error",
                "message": message,
                "type": kind,
                "param": param,
                "code": status,
            }
        else:
            body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
        return Reply(status, body)

    @staticmethod
    def _text(message: str) -> Reply:
        # vLLM returns `Response(status_code=200, content=<str>)`: no media type at all.
        return Reply(200, message, content_type=None)

    def _base_card(self, name: str) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": self._created,
            "owned_by": "vllm",
            "root": self.model_path,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [_permission()],
        }

    def _lora_card(self, lora: LoadedLoRA) -> dict[str, Any]:
        return {
            "id": lora.name,
            "object": "model",
            "created": lora.created,
            "owned_by": "vllm",
            "root": lora.path,
            "parent": lora.base_model_name,
            "max_model_len": None,
            "permission": [_permission()],
        }

    # Dispatch --------------------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        method, path = request.method, request.path
        if path == "/health" and method == "GET":
            return Reply(200, None, content_type=None)
        if path == "/version" and method == "GET":
            return Reply(200, {"version": self.version})
        if self.api_key and path.startswith("/v1"):
            if request.headers.get("authorization") != f"Bearer {self.api_key}":
                return Reply(401, {"error": "Unauthorized"})
        routes = {
            ("GET", "/v1/models"): self._list_models,
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completion,
        }
        if self.runtime_updating:
            routes[("POST", "/v1/load_lora_adapter")] = self._load
            routes[("POST", "/v1/unload_lora_adapter")] = self._unload
        route = routes.get((method, path))
        if route is None:
            if any(p == path for _, p in routes):
                return Reply(405, {"detail": "Method Not Allowed"})
            return Reply(404, {"detail": "Not Found"})
        return route(request)

    def _json_body(self, request: Request, model: str, fields: dict[str, type]) -> dict[str, Any] | Reply:
        """The request body validated like vLLM's pydantic request models (400 through its handler)."""
        if "application/json" not in request.headers.get("content-type", ""):
            return self.error(
                "Unsupported Media Type: Only 'application/json' is allowed", "BadRequestError", 400
            )
        body = request.json
        if not isinstance(body, dict):
            return self.error(
                f"1 validation error for {model}\n  Input should be a valid dictionary",
                "BadRequestError",
                400,
            )
        problems = []
        for name, kind in fields.items():
            if name not in body:
                problems.append(f"{name}\n  Field required")
            elif not isinstance(body[name], kind) or (kind is not bool and isinstance(body[name], bool)):
                problems.append(f"{name}\n  Input should be a valid {kind.__name__}")
        if problems:
            return self.error(
                f"{len(problems)} validation error{'s' if len(problems) > 1 else ''} for {model}\n"
                + "\n".join(problems),
                "BadRequestError",
                400,
            )
        return body

    def _name_lock(self, name: str) -> threading.Lock:
        with self.lock:
            return self._name_locks.setdefault(name, threading.Lock())

    def _load(self, request: Request) -> Reply:
        body = self._json_body(request, "LoadLoRAAdapterRequest", {"lora_name": str, "lora_path": str})
        if isinstance(body, Reply):
            return body
        load_inplace = body.get("load_inplace", False)
        if not isinstance(load_inplace, bool):
            return self.error(
                "1 validation error for LoadLoRAAdapterRequest\nload_inplace\n  Input should be a valid boolean",
                "BadRequestError",
                400,
            )
        name, path = body["lora_name"], body["lora_path"]
        with self._name_lock(name):
            if not name or not path:
                return self.error(
                    "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput", 400
                )
            with self.lock:
                existing = self.loras.get(name)
            if existing is not None and not load_inplace:
                message = f"The lora adapter '{name}' has already been loaded."
                if not self.legacy_errors:
                    message += " If you want to load the adapter in place, set 'load_inplace' to True."
                return self.error(message, "InvalidUserInput", 400)
            try:
                self._engine_add_lora(name, path)
            except _NotFound as exc:
                return self.error(str(exc), "NotFoundError", 404)
            except _Invalid as exc:
                kind = "InternalServerError" if self.invalid_adapter_status == 500 else "BadRequestError"
                return self.error(str(exc), kind, self.invalid_adapter_status)
            with self.lock:
                if existing is not None:
                    existing.path = path
                else:
                    self.loras[name] = LoadedLoRA(
                        name=name,
                        int_id=self._next_id,
                        path=path,
                        base_model_name=self.served_models[0],
                        created=int(time.time()),
                    )
                    self._next_id += 1
        return self._text(f"Success: LoRA adapter '{name}' added successfully.")

    def _unload(self, request: Request) -> Reply:
        body = self._json_body(request, "UnloadLoRAAdapterRequest", {"lora_name": str})
        if isinstance(body, Reply):
            return body
        name = body["lora_name"]
        with self._name_lock(name):
            if not name:
                message = (
                    "either 'lora_name' and 'lora_int_id' needs to be provided."
                    if self.legacy_errors
                    else "'lora_name' needs to be provided to unload a LoRA adapter."
                )
                return self.error(message, "InvalidUserInput", 400)
            with self.lock:
                if name not in self.loras:
                    return self.error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
                del self.loras[name]
        return self._text(f"Success: LoRA adapter '{name}' removed successfully.")

    def _list_models(self, request: Request) -> Reply:
        return Reply(200, {"object": "list", "data": self.models()})

    def _model_or_error(self, request: Request) -> str | Reply:
        body = request.json
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return self.error("1 validation error\nmodel\n  Field required", "BadRequestError", 400)
        model = body["model"]
        with self.lock:
            known = model in self.served_models or model in self.loras
        if not known:
            return self.error(f"The model `{model}` does not exist.", "NotFoundError", 404, param="model")
        if model in self.chat_fails_for:
            return self.error(
                f"The engine failed while generating with model '{model}'.", "InternalServerError", 500
            )
        return model

    def _chat(self, request: Request) -> Reply:
        model = self._model_or_error(request)
        if isinstance(model, Reply):
            return model
        text = answer_for(model)
        return Reply(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12},
            },
        )

    def _completion(self, request: Request) -> Reply:
        model = self._model_or_error(request)
        if isinstance(model, Reply):
            return model
        return Reply(
            200,
            {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {"index": 0, "text": answer_for(model), "finish_reason": "stop", "logprobs": None}
                ],
                "usage": {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12},
            },
        )

    # The engine's checks (vLLM's add_lora) -----------------------------------------------------------

    def _engine_add_lora(self, name: str, lora_path: str) -> None:
        # get_adapter_absolute_path: absolute as is, ~ expanded, an existing relative path made absolute;
        # anything else would be a Hugging Face repo id, which this double never downloads.
        expanded = os.path.expanduser(lora_path)
        directory = Path(os.path.abspath(expanded))
        config_file = directory / "adapter_config.json"
        try:
            text = config_file.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise _NotFound(f"Loading lora {name} failed: No adapter found for {lora_path}") from None
        try:
            config = json.loads(text)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
        if not isinstance(config, dict):
            raise _Invalid(f"{config_file} does not hold a JSON object")
        missing = {key for key in ("r", "lora_alpha", "target_modules") if key not in config}
        if missing:
            raise _Invalid(f"Missing required configuration fields: {missing}")
        self._validate_legal(config)
        self._check_tensors(directory, config)

    def _validate_legal(self, config: dict[str, Any]) -> None:
        """PEFTHelper.validate_legal: every problem, joined with spaces."""
        problems = []
        if config.get("modules_to_save"):
            problems.append("vLLM only supports modules_to_save being None.")
        if config.get("use_dora"):
            problems.append("vLLM does not yet support DoRA.")
        ranks = [config["r"], *(config.get("rank_pattern") or {}).values()]
        if not all(isinstance(rank, int) and not isinstance(rank, bool) for rank in ranks):
            raise _Invalid(f"LoRA rank must be an integer, got {ranks}")
        rank = ranks[0] if self.legacy_errors else max(ranks)  # older releases looked at r alone
        if rank > self.max_lora_rank:
            problems.append(f"LoRA rank {rank} is greater than max_lora_rank {self.max_lora_rank}.")
        if config.get("bias", "none") != "none":
            problems.append(
                "Adapter bias cannot be used without bias_enabled."
                if self.legacy_errors
                else "Adapter bias is not supported."
            )
        if problems:
            raise _Invalid(" ".join(problems))

    def _check_tensors(self, directory: Path, config: dict[str, Any]) -> None:
        """LoRAModel.from_local_checkpoint: safetensors keys are the source of truth; a .bin falls back to
        the config's target_modules; neither file → no tensors."""
        expected = EXPECTED_LORA_MODULES[self.architecture]
        unexpected: list[str] = []
        safetensors = directory / "adapter_model.safetensors"
        if safetensors.is_file():
            for key in _safetensors_keys(safetensors):
                module = key.removeprefix("base_model.model.")
                for suffix in _LORA_SUFFIXES:
                    if module.endswith(suffix):
                        module = module.removesuffix(suffix)
                        break
                else:
                    raise _Invalid(f"{key} is unsupported LoRA weight")
                if module.split(".")[-1] not in expected:
                    unexpected.append(module)
        elif (directory / "adapter_model.bin").is_file():
            targets = config["target_modules"]
            if not isinstance(targets, str):  # a regular expression is not checked by name
                unexpected = [m for m in targets if str(m).split(".")[-1] not in expected]
        else:
            raise _Invalid(f"{directory} doesn't contain tensors")
        if unexpected:
            raise _Invalid(
                f"While loading {directory}, expected target modules in {expected} but received "
                f"{unexpected}. Please verify that the loaded LoRA module is correct"
            )


def answer_for(model: str) -> str:
    """The fixed reply of the doubles, naming the model that answered."""
    return f"Hello from {model}."


def _permission() -> dict[str, Any]:
    return {
        "id": f"modelperm-{uuid.uuid4().hex}",
        "object": "model_permission",
        "created": int(time.time()),
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }


def _safetensors_keys(path: Path) -> list[str]:
    """Tensor names from a safetensors header, refused the way the safetensors library refuses them."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise _Invalid("Error while deserializing header: HeaderTooSmall")
        (length,) = struct.unpack("<Q", prefix)
        if length > 100_000_000:
            raise _Invalid("Error while deserializing header: HeaderTooLarge")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except ValueError:
        raise _Invalid("Error while deserializing header: InvalidHeaderDeserialization") from None
    if not isinstance(header, dict):
        raise _Invalid("Error while deserializing header: InvalidHeaderDeserialization")
    return [key for key in header if key != "__metadata__"]
