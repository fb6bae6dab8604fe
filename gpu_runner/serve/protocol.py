"""Request bodies of the development server: vLLM's LoRA management requests and the OpenAI completions.

OpenAI bodies accept fields they do not name, as vLLM does, so SDK versions that send more still work;
the named fields are validated (a bad value is a 400, like every other client error here).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class LoadLoRAAdapterRequest(BaseModel):
    """`POST /v1/load_lora_adapter` (vLLM's `LoadLoRAAdapterRequest`)."""

    lora_name: str
    lora_path: str
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(BaseModel):
    """`POST /v1/unload_lora_adapter`; `lora_int_id` is accepted and ignored, as in vLLM."""

    lora_name: str
    lora_int_id: int | None = None


class StreamOptions(BaseModel):
    include_usage: bool | None = False


class SamplingFields(BaseModel):
    """The sampling fields both completion requests share."""

    model_config = ConfigDict(extra="allow")

    model: str
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(stop for stop in stops if stop)


class ChatCompletionRequest(SamplingFields):
    """`POST /v1/chat/completions`."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None


class CompletionRequest(SamplingFields):
    """`POST /v1/completions`: one prompt, as text, a list of one text, or token ids."""

    prompt: str | list[str] | list[int]
    # OpenAI's (and vLLM's older) default for the legacy completions endpoint.
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool | None = False
