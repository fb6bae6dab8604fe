"""The inference gateway: `POST /v1/chat/completions` and `POST /v1/completions` for Tailor's teams.

A request naming one of the team's fine-tuned models (or an alias `<family>@<alias>`) goes to an
endpoint where that adapter is live; a base model goes to an endpoint serving it
(`tailor.registry.selectors.route_for_model`). vLLM and Ollama have no per-adapter access control, so
this is where teams are kept apart: a team can name only its own adapters, and the endpoint's URL and
credential never reach the client.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.parsers import BaseParser
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from tailor.core.authentication import request_team
from tailor.core.errors import ApplicationError, InvalidRequest
from tailor.gateway.proxy import UpstreamUnavailable, forward
from tailor.registry.selectors import route_for_model
from tailor.teams.models import APIKey


class UpstreamError(ApplicationError):
    status_code = 502
    error_type = "api_error"
    default_code = "endpoint_unreachable"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    default_code = "endpoint_timeout"


class RawJSONParser(BaseParser):
    """The body is read as bytes by the view: the gateway forwards it nearly untouched."""

    media_type = "*/*"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        return stream.read() if stream is not None else b""


class CanInfer(BasePermission):
    """Inference changes nothing stored: a key with either scope may call it."""

    message = "This API key has no scope."

    def has_permission(self, request: Request, view: Any) -> bool:
        key = request.auth
        return isinstance(key, APIKey) and bool(set(key.scopes) & {APIKey.Scope.READ, APIKey.Scope.WRITE})


def _body(request: Request) -> dict[str, Any]:
    raw = request.data if isinstance(request.data, bytes | bytearray) else request.body
    try:
        body = json.loads(raw or b"")
    except ValueError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    return body


class _InferenceView(APIView):
    parser_classes = [RawJSONParser]
    permission_classes = [CanInfer]
    upstream_path = ""

    def post(self, request: Request) -> HttpResponse:
        body = _body(request)
        model = body["model"]
        route = route_for_model(team=request_team(request), model=model)
        try:
            answer = forward(
                base_url=route.base_url,
                path=self.upstream_path,
                body={**body, "model": route.served_name},
                credential=route.credential,
                client_model=model,
                timeout=settings.TAILOR_GATEWAY_TIMEOUT,
                request_id=request.headers.get("X-Request-ID"),
            )
        except UpstreamUnavailable as exc:
            error = UpstreamTimeout if exc.timeout else UpstreamError
            raise error(
                f"The inference endpoint {route.endpoint_name!r} serving {model!r} did not answer: {exc}"
            ) from None
        if answer.stream is not None:
            response: HttpResponse | StreamingHttpResponse = StreamingHttpResponse(
                answer.stream, content_type=answer.headers.get("content-type", "text/event-stream")
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
        else:
            response = HttpResponse(
                answer.body or b"",
                status=answer.status,
                content_type=answer.headers.get("content-type", "application/json"),
            )
        response["X-Tailor-Endpoint"] = route.endpoint_name
        return response


class ChatCompletionsView(_InferenceView):
    upstream_path = "/v1/chat/completions"

    @extend_schema(
        operation_id="chat_completions_create",
        summary="Chat with a base model or one of the team's fine-tuned models (OpenAI-compatible)",
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiTypes.OBJECT},
    )
    def post(self, request: Request) -> HttpResponse:
        return super().post(request)


class CompletionsView(_InferenceView):
    upstream_path = "/v1/completions"

    @extend_schema(
        operation_id="completions_create",
        summary="Complete a prompt with a base model or one of the team's fine-tuned models",
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiTypes.OBJECT},
    )
    def post(self, request: Request) -> HttpResponse:
        return super().post(request)
