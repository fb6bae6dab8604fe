"""The development server's HTTP API: vLLM's LoRA management routes and OpenAI's completions, on FastAPI.

Status codes, bodies and messages copy vLLM's API server, so Tailor's registry (and any vLLM client)
treats this server as a vLLM endpoint: plain-text `Success: …` answers to load and unload, the nested
error envelope `{"error": {"message", "type", "param", "code"}}`, `{"error": "Unauthorized"}` without the
API key, and FastAPI's own 404 for the management routes when runtime LoRA updating is off. Invalid
adapters answer 400 `BadRequestError`, as vLLM releases before its engine refactor do (newer ones: 500).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gpu_runner.serve.adapters import AdapterNotFoundError, InvalidAdapterError
from gpu_runner.serve.engine import (
    Finished,
    PromptError,
    SamplingParams,
    ServingEngine,
    TextPiece,
    UnknownAdapterError,
)
from gpu_runner.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    LoadLoRAAdapterRequest,
    SamplingFields,
    UnloadLoRAAdapterRequest,
)

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class APIError(Exception):
    """An error answered in vLLM's envelope."""

    def __init__(self, message: str, err_type: str, status: HTTPStatus, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.err_type, self.status, self.param = message, err_type, status, param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.err_type,
                "param": self.param,
                "code": int(self.status),
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=int(self.status))


def _bad_request(message: str) -> APIError:
    return APIError(message, "BadRequestError", HTTPStatus.BAD_REQUEST)


def _adapter_error(exc: Exception) -> APIError:
    if isinstance(exc, AdapterNotFoundError):
        return APIError(str(exc), "NotFoundError", HTTPStatus.NOT_FOUND)
    return _bad_request(str(exc))


class APIKeyMiddleware:
    """vLLM's `--api-key`: every `/v1` request needs `Authorization: Bearer KEY`; `/health` stays open."""

    def __init__(self, app: Callable[[_Scope, _Receive, _Send], Awaitable[None]], api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "http" and scope["method"] != "OPTIONS" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def require_json(request: Request) -> None:
    """vLLM's `validate_json_request`: request bodies must be JSON."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HTTPException(
            status_code=HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            detail="Unsupported Media Type: Only 'application/json' is allowed",
        )


_END = object()


class _Generation:
    """One answer generated on a worker thread and handed to the event loop event by event, so the loop
    keeps serving (health checks, other requests queueing for the model) while tokens are produced."""

    def __init__(
        self, engine: ServingEngine, *, adapter: str | None, prompt_ids: list[int], params: SamplingParams
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = threading.Event()
        self._thread = threading.Thread(
            target=self._produce, args=(engine, adapter, prompt_ids, params), daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop has closed: the server is shutting down
            self.cancelled.set()

    def _produce(
        self, engine: ServingEngine, adapter: str | None, prompt_ids: list[int], params: SamplingParams
    ) -> None:
        try:
            for event in engine.generate(
                adapter=adapter, prompt_ids=prompt_ids, params=params, cancelled=self.cancelled
            ):
                self._put(event)
        except Exception as exc:
            self._put(exc)
        finally:
            self._put(_END)

    async def next_event(self) -> TextPiece | Finished | None:
        """The next event, None at the end; errors of the generation are raised here."""
        item = await self._queue.get()
        if item is _END:
            return None
        if isinstance(item, UnknownAdapterError):
            raise _model_not_found(str(item))
        if isinstance(item, (AdapterNotFoundError, InvalidAdapterError)):
            raise _adapter_error(item)
        if isinstance(item, BaseException):
            raise item
        return item


def _model_not_found(name: str) -> APIError:
    return APIError(f"The model `{name}` does not exist.", "NotFoundError", HTTPStatus.NOT_FOUND, "model")


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _usage(finished: Finished) -> dict[str, Any]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
        "completion_tokens": finished.completion_tokens,
        "prompt_tokens_details": None,
    }


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


def create_app(
    engine: ServingEngine,
    *,
    served_model_name: str,
    model_path: str,
    api_key: str | None = None,
    allow_runtime_lora_updating: bool = True,
) -> FastAPI:
    """The ASGI application serving `engine` under `served_model_name`."""
    app = FastAPI(title="Tailor development serving endpoint", docs_url=None, redoc_url=None)
    router = APIRouter()
    name_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @app.exception_handler(APIError)
    async def api_error_handler(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error_handler(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg', 'invalid')}"
            for error in exc.errors()
        )
        return _bad_request(problems or "Invalid request body.").response()

    @router.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @router.get("/v1/models")
    async def list_models() -> JSONResponse:
        base = {
            "id": served_model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": model_path,
            "parent": None,
            "max_model_len": engine.max_model_len,
            "permission": [_permission()],
        }
        loras = [
            {
                "id": adapter.name,
                "object": "model",
                "created": adapter.created,
                "owned_by": "vllm",
                "root": adapter.path,
                "parent": served_model_name,
                "max_model_len": None,
                "permission": [_permission()],
            }
            for adapter in engine.adapters
        ]
        return JSONResponse({"object": "list", "data": [base, *loras]})

    def resolve_model(name: str) -> str | None:
        """The adapter a request's `model` names, None for the base model."""
        if name == served_model_name:
            return None
        if engine.has_adapter(name):
            return name
        raise _model_not_found(name)

    def sampling_params(request: SamplingFields, max_tokens: int) -> SamplingParams:
        if request.n not in (None, 1):
            raise _bad_request(
                f"n={request.n} is not supported: the development server returns one choice (n=1)."
            )
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=request.temperature or 0.0,
            top_p=1.0 if request.top_p is None else request.top_p,
            stop=request.stop_strings(),
            seed=request.seed,
        )

    async def generate(
        request: SamplingFields,
        adapter: str | None,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        chunk: Callable[[str | None, Finished | None], dict[str, Any]],
        first_chunk: dict[str, Any] | None,
        complete: Callable[[str, Finished], dict[str, Any]],
    ) -> Response:
        generation = _Generation(engine, adapter=adapter, prompt_ids=prompt_ids, params=params)
        try:
            # Wait for the first event before answering, so that a failure to select the adapter (unloaded
            # meanwhile, or its files gone) is an HTTP error, not an event inside a 200 stream.
            first = await generation.next_event()
        except BaseException:
            generation.cancelled.set()
            raise
        if not request.stream:
            pieces: list[str] = []
            event = first
            while not isinstance(event, Finished):
                assert isinstance(event, TextPiece)
                pieces.append(event.text)
                event = await generation.next_event()
            return JSONResponse(complete("".join(pieces), event))

        include_usage = bool(request.stream_options and request.stream_options.include_usage)

        async def events() -> AsyncIterator[str]:
            try:
                if first_chunk is not None:
                    yield _sse(first_chunk)
                event = first
                while event is not None:
                    if isinstance(event, TextPiece):
                        yield _sse(chunk(event.text, None))
                    else:
                        yield _sse(chunk(None, event))
                        if include_usage:
                            final = chunk(None, None)
                            final["choices"] = []
                            final["usage"] = _usage(event)
                            yield _sse(final)
                    event = await generation.next_event()
            except APIError as exc:
                yield _sse(exc.body())
            finally:
                generation.cancelled.set()  # the client went away, or the answer is complete
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @router.post("/v1/chat/completions", dependencies=[Depends(require_json)])
    async def chat_completions(request: ChatCompletionRequest) -> Response:
        adapter = resolve_model(request.model)
        try:
            prompt_ids = engine.chat_prompt(request.messages, tools=request.tools)
            max_tokens = engine.max_tokens_for(
                len(prompt_ids), request.max_completion_tokens or request.max_tokens
            )
        except PromptError as exc:
            raise _bad_request(str(exc)) from exc
        params = sampling_params(request, max_tokens)
        response_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def envelope(kind: str, choice: dict[str, Any]) -> dict[str, Any]:
            return {
                "id": response_id,
                "object": kind,
                "created": created,
                "model": request.model,
                "choices": [choice],
            }

        def chunk(text: str | None, finished: Finished | None) -> dict[str, Any]:
            return envelope(
                "chat.completion.chunk",
                {
                    "index": 0,
                    "delta": {} if text is None else {"content": text},
                    "logprobs": None,
                    "finish_reason": finished.finish_reason if finished else None,
                    "stop_reason": finished.stop_reason if finished else None,
                },
            )

        def complete(text: str, finished: Finished) -> dict[str, Any]:
            body = envelope(
                "chat.completion",
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "tool_calls": []},
                    "logprobs": None,
                    "finish_reason": finished.finish_reason,
                    "stop_reason": finished.stop_reason,
                },
            )
            body["system_fingerprint"] = None
            body["usage"] = _usage(finished)
            return body

        first_chunk = chunk("", None)
        first_chunk["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        return await generate(
            request, adapter, prompt_ids, params, chunk=chunk, first_chunk=first_chunk, complete=complete
        )

    @router.post("/v1/completions", dependencies=[Depends(require_json)])
    async def completions(request: CompletionRequest) -> Response:
        adapter = resolve_model(request.model)
        if request.echo:
            raise _bad_request("echo is not supported by the development server.")
        prompt: str | list[int]
        if isinstance(request.prompt, list) and request.prompt and isinstance(request.prompt[0], str):
            if len(request.prompt) != 1:
                raise _bad_request("The development server takes one prompt per request.")
            prompt = str(request.prompt[0])
        elif isinstance(request.prompt, list):
            prompt = [int(token) for token in request.prompt]
            if not prompt:
                raise _bad_request("The prompt is empty.")
        else:
            prompt = request.prompt
        try:
            prompt_ids = engine.completion_prompt(prompt)
            max_tokens = engine.max_tokens_for(len(prompt_ids), request.max_tokens)
        except PromptError as exc:
            raise _bad_request(str(exc)) from exc
        params = sampling_params(request, max_tokens)
        response_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def body(text: str, finished: Finished | None) -> dict[str, Any]:
            return {
                "id": response_id,
                "object": "text_completion",
                "created": created,
                "model": request.model,
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": finished.finish_reason if finished else None,
                        "stop_reason": finished.stop_reason if finished else None,
                    }
                ],
            }

        def complete(text: str, finished: Finished) -> dict[str, Any]:
            return {**body(text, finished), "system_fingerprint": None, "usage": _usage(finished)}

        return await generate(
            request,
            adapter,
            prompt_ids,
            params,
            chunk=lambda text, finished: body(text or "", finished),
            first_chunk=None,
            complete=complete,
        )

    lora_router = APIRouter()

    @lora_router.post("/v1/load_lora_adapter", dependencies=[Depends(require_json)])
    async def load_lora_adapter(request: LoadLoRAAdapterRequest) -> Response:
        name = request.lora_name
        if not name or not request.lora_path:
            raise APIError(
                "Both 'lora_name' and 'lora_path' must be provided.",
                "InvalidUserInput",
                HTTPStatus.BAD_REQUEST,
            )
        if name == served_model_name:
            raise APIError(
                f"The lora adapter name '{name}' is the served model's name.",
                "InvalidUserInput",
                HTTPStatus.BAD_REQUEST,
            )
        async with name_locks[name]:
            if engine.has_adapter(name) and not request.load_inplace:
                raise APIError(
                    f"The lora adapter '{name}' has already been loaded. If you want to load the adapter "
                    "in place, set 'load_inplace' to True.",
                    "InvalidUserInput",
                    HTTPStatus.BAD_REQUEST,
                )
            try:
                await anyio.to_thread.run_sync(lambda: engine.load_adapter(name=name, path=request.lora_path))
            except (AdapterNotFoundError, InvalidAdapterError) as exc:
                raise _adapter_error(exc) from exc
        return Response(status_code=200, content=f"Success: LoRA adapter '{name}' added successfully.")

    @lora_router.post("/v1/unload_lora_adapter", dependencies=[Depends(require_json)])
    async def unload_lora_adapter(request: UnloadLoRAAdapterRequest) -> Response:
        name = request.lora_name
        if not name:
            raise APIError(
                "'lora_name' needs to be provided to unload a LoRA adapter.",
                "InvalidUserInput",
                HTTPStatus.BAD_REQUEST,
            )
        async with name_locks[name]:
            try:
                await anyio.to_thread.run_sync(lambda: engine.unload_adapter(name=name))
            except UnknownAdapterError as exc:
                raise APIError(
                    f"The lora adapter '{name}' cannot be found.", "NotFoundError", HTTPStatus.NOT_FOUND
                ) from exc
        return Response(status_code=200, content=f"Success: LoRA adapter '{name}' removed successfully.")

    app.include_router(router)
    if allow_runtime_lora_updating:
        app.include_router(lora_router)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    return app
