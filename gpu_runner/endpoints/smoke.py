"""The smoke request after a push: one short OpenAI chat completion with `model=<served name>`.

vLLM, Ollama and Tailor's development server all speak `/v1/chat/completions`, so one function checks
that any of them now answers for the adapter. A failure is reported in the server's words; the registry
then rolls the push back.
"""

from __future__ import annotations

from gpu_runner.endpoints.errors import EndpointError, http_error, parse_body, server_message
from gpu_runner.endpoints.transport import DEFAULT_TIMEOUT, Transport

SMOKE_PROMPT = "Reply with one word: ready?"
SMOKE_MAX_TOKENS = 1


def smoke_chat(
    base_url: str, *, model: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> str:
    """Ask `model` for a few tokens at `base_url` (root or `/v1` base) and return the reply's text.

    Raises `EndpointError`: `smoke_model_not_found` when the server does not know the model,
    `smoke_failed` when it failed to answer (its message quoted), transient errors when it is
    unreachable, overloaded or timed out."""
    http = Transport("the endpoint", base_url, api_key=api_key, timeout=timeout)
    path = "/v1/chat/completions"
    response = http.request(
        "POST",
        path,
        json={
            "model": model,
            "messages": [{"role": "user", "content": SMOKE_PROMPT}],
            "max_tokens": SMOKE_MAX_TOKENS,
            "temperature": 0,
            "stream": False,
        },
    )
    body = parse_body(response)
    status = response.status_code
    if status != 200:
        message, kind = server_message(body)
        label = f"HTTP {status} {kind}".strip()
        if status == 404:
            raise EndpointError(
                f"the endpoint does not serve model {model!r} ({label}): {message}",
                transient=False,
                status=status,
                reason_code="smoke_model_not_found",
            )
        error = http_error("the endpoint", "POST", path, response, reason_code="smoke_failed")
        if error.transient or status in (401, 403):
            raise error
        raise EndpointError(
            f"a chat request to model {model!r} failed ({label}): {message or '(no message)'}",
            transient=False,
            status=status,
            reason_code="smoke_failed",
        )
    try:
        content = body["choices"][0]["message"].get("content") or ""
    except (TypeError, KeyError, IndexError, AttributeError):
        raise EndpointError(
            f"a chat request to model {model!r} answered HTTP 200 without a chat completion: {str(body)[:200]}",
            transient=False,
            status=status,
            reason_code="smoke_failed",
        ) from None
    return str(content)
