"""The development server's model: one transformers base with many PEFT LoRA adapters, one request at a time.

Adapters are registered by name. At most `max_loras` of them are resident in the model (peft adapters);
the least recently used one is dropped when another is needed and reloaded from its directory on demand,
as vLLM does with `--max-cpu-loras`. Every use of the model, generation and adapter changes alike, holds
one lock: a single model serves one request at a time, which is what a development endpoint needs.

Generation is a plain token loop with a KV cache rather than `model.generate`, because the server streams
token by token, cuts at stop strings without ever sending part of one, and counts tokens for `usage`.
torch, transformers and peft are imported when an engine is created, never at import time.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_runner.serve.adapters import AdapterCheck, InvalidAdapterError, LinearShape, check_adapter

logger = logging.getLogger(__name__)


class UnknownAdapterError(Exception):
    """No adapter is registered under the name."""


class PromptError(Exception):
    """The request cannot be turned into a prompt this model accepts (answered with 400)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. A temperature of 0 is greedy decoding, the default, so answers repeat."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class TextPiece:
    """New text of the answer, safe to show: it never holds the start of a stop string."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The end of an answer: why it ended (`stop` or `length`) and how many tokens it took."""

    finish_reason: str
    stop_reason: str | None
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class RegisteredAdapter:
    """A LoRA adapter the server answers for: its name, its path as the client sent it, and where that
    path points."""

    name: str
    path: str
    directory: Path
    created: int


class _Detokenizer:
    """Turns generated tokens into text piece by piece. Byte-level tokens may end inside a UTF-8 character,
    so text is only released once it decodes cleanly (the prefix/read offsets of TGI and vLLM)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            return full[len(prefix) :]
        return ""


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of `text` could be the beginning of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class ServingEngine:
    """A loaded base model and its registered LoRA adapters."""

    def __init__(self, *, model_dir: str | Path, max_loras: int, max_lora_rank: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if max_loras < 1:
            raise ValueError(f"max_loras must be at least 1, got {max_loras}")
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto")
        self._model: Any = model.to(self.device).eval()
        self._peft: Any = None  # the PeftModel wrapping _model while any adapter is resident
        config = model.config
        self.max_model_len = int(
            getattr(config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        )
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self._eos_ids = frozenset(eos_ids)
        self._linear_layers = {
            name: LinearShape(module.in_features, module.out_features)
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
        }
        # transformers 5 renamed the forward's `past_key_values` to `cache`; pass whichever this one takes.
        self._cache_argument = (
            "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        )
        self._lock = threading.Lock()
        self._adapters: dict[str, RegisteredAdapter] = {}  # in load order, as /v1/models lists them
        self._resident: OrderedDict[str, str] = OrderedDict()  # adapter name → peft name, least recent first
        self._peft_names = (f"lora{number}" for number in itertools.count(1))

    # Adapters ---------------------------------------------------------------------------------------

    @property
    def adapters(self) -> list[RegisteredAdapter]:
        """The registered adapters in load order."""
        return list(self._adapters.values())

    def has_adapter(self, name: str) -> bool:
        return name in self._adapters

    def load_adapter(self, *, name: str, path: str) -> RegisteredAdapter:
        """Check the adapter at `path`, load it into the model and register it as `name`; an adapter already
        registered under that name is replaced in place and keeps its place in the list. Raises
        `AdapterNotFoundError` or `InvalidAdapterError`, and then the registrations are as they were."""
        self._check(name, path)
        with self._lock:
            check = self._check(name, path)  # again under the lock: the files may have changed meanwhile
            previous = self._resident.pop(name, None)
            if previous is not None:
                self._drop(previous)
            self._make_room()
            self._resident[name] = self._load(name, check.directory)
            created = self._adapters[name].created if name in self._adapters else int(time.time())
            record = RegisteredAdapter(name=name, path=path, directory=check.directory, created=created)
            self._adapters[name] = record
        logger.info("loaded LoRA adapter %s from %s", name, check.directory)
        return record

    def unload_adapter(self, *, name: str) -> None:
        """Forget the adapter `name` and free its weights. Raises `UnknownAdapterError`."""
        with self._lock:
            if name not in self._adapters:
                raise UnknownAdapterError(name)
            peft_name = self._resident.pop(name, None)
            if peft_name is not None:
                self._drop(peft_name)
            del self._adapters[name]
        logger.info("unloaded LoRA adapter %s", name)

    def _check(self, name: str, path: str) -> AdapterCheck:
        return check_adapter(
            lora_name=name,
            lora_path=path,
            max_lora_rank=self.max_lora_rank,
            linear_layers=self._linear_layers,
        )

    def _make_room(self) -> None:
        while len(self._resident) >= self.max_loras:
            evicted, peft_name = self._resident.popitem(last=False)
            self._drop(peft_name)
            logger.info("evicted LoRA adapter %s from memory (it reloads on its next request)", evicted)

    def _load(self, name: str, directory: Path) -> str:
        """Load the adapter into the model under a fresh peft name and return that name. Adapter names are
        the client's and may hold characters that module names cannot, so peft gets names of its own."""
        from peft import LoraConfig, PeftModel

        peft_name = next(self._peft_names)
        try:
            if self._peft is None:
                config = LoraConfig.from_pretrained(str(directory))
                config.inference_mode = True
                self._peft = PeftModel(self._model, config, adapter_name=peft_name)
            self._peft.load_adapter(str(directory), adapter_name=peft_name, torch_device=self.device)
        except Exception as exc:
            self._drop(peft_name)
            raise InvalidAdapterError(f"Loading lora {name} failed: {exc}") from exc
        self._peft.eval()
        return peft_name

    def _drop(self, peft_name: str) -> None:
        """Remove a peft adapter; with the last one gone the model is unwrapped to the plain base again,
        because a PeftModel without adapters cannot run its base (`disable_adapter` needs an active one)."""
        if self._peft is None or peft_name not in self._peft.peft_config:
            return
        if len(self._peft.peft_config) == 1:
            self._model = self._peft.unload()
            self._peft = None
        else:
            self._peft.delete_adapter(peft_name)

    def _activate(self, adapter: str | None) -> contextlib.AbstractContextManager[Any]:
        """Point the model at `adapter` (None: the base) for one request; the caller holds the lock."""
        if adapter is None:
            return self._peft.disable_adapter() if self._peft is not None else contextlib.nullcontext()
        record = self._adapters.get(adapter)
        if record is None:
            raise UnknownAdapterError(adapter)
        if adapter in self._resident:
            self._resident.move_to_end(adapter)
        else:
            check = self._check(adapter, record.path)
            self._make_room()
            self._resident[adapter] = self._load(adapter, check.directory)
            logger.info("reloaded LoRA adapter %s from %s", adapter, check.directory)
        self._peft.set_adapter(self._resident[adapter])
        return contextlib.nullcontext()

    # Prompts ----------------------------------------------------------------------------------------

    def chat_prompt(self, messages: list[dict[str, Any]], *, tools: list[Any] | None = None) -> list[int]:
        """Token ids of a conversation rendered with the model's chat template, ending with the assistant's
        turn. The template writes the special tokens itself, so none are added."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise PromptError(
                "As of transformers v4.44, default chat template is no longer allowed, so you must provide "
                "a chat template if the tokenizer does not define one."
            )
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # jinja's TemplateError, raise_exception() in templates, bad message shapes
            raise PromptError(f"The messages cannot be rendered with the chat template: {exc}") from exc
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def completion_prompt(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a completion prompt: text (with the tokenizer's special tokens) or token ids."""
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt)["input_ids"])
        vocab = len(self.tokenizer)
        bad = [token for token in prompt if not 0 <= token < vocab]
        if bad:
            raise PromptError(f"Token id {bad[0]} is out of vocabulary (size {vocab}).")
        return list(prompt)

    def max_tokens_for(self, prompt_len: int, requested: int | None) -> int:
        """The completion budget of a request, refused as vLLM does when it does not fit the context."""
        if prompt_len >= self.max_model_len:
            raise PromptError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, your request "
                f"has {prompt_len} input tokens. Please reduce the length of the input messages."
            )
        if requested is None:
            return self.max_model_len - prompt_len
        if prompt_len + requested > self.max_model_len:
            raise PromptError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                f"requested {prompt_len + requested} tokens ({prompt_len} in the messages, {requested} in "
                "the completion). Please reduce the length of the messages or completion."
            )
        return requested

    # Generation -------------------------------------------------------------------------------------

    def generate(
        self,
        *,
        adapter: str | None,
        prompt_ids: list[int],
        params: SamplingParams,
        cancelled: threading.Event | None = None,
    ) -> Iterator[TextPiece | Finished]:
        """Generate an answer with `adapter` (None: the base model), yielding text pieces and then one
        `Finished`. Holds the model for the whole answer; stops early when `cancelled` is set."""
        import torch

        with self._lock, self._activate(adapter), torch.inference_mode():
            model = self._peft if self._peft is not None else self._model
            generator = torch.Generator(device=self.device)
            if params.seed is not None:
                generator.manual_seed(params.seed)
            else:
                generator.seed()
            detokenizer = _Detokenizer(self.tokenizer)
            text, emitted, produced = "", 0, 0
            finish, stop_reason = "length", None
            inputs = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
            cache = {self._cache_argument: self._new_cache()}  # the cache fills in place, step by step
            while produced < params.max_tokens:
                if cancelled is not None and cancelled.is_set():
                    return
                output = model(input_ids=inputs, use_cache=True, logits_to_keep=1, **cache)
                token = self._sample(output.logits[0, -1], params, generator)
                produced += 1
                if token in self._eos_ids:
                    finish = "stop"
                    break
                inputs = torch.tensor([[token]], dtype=torch.long, device=self.device)
                text += detokenizer.add(token)
                hits = [(index, stop) for stop in params.stop if (index := text.find(stop, emitted)) >= 0]
                if hits:
                    index, stop_reason = min(hits)
                    text, finish = text[:index], "stop"
                    break
                safe_end = len(text) - _held_back(text, params.stop)
                if safe_end > emitted:
                    yield TextPiece(text[emitted:safe_end])
                    emitted = safe_end
            if len(text) > emitted:
                yield TextPiece(text[emitted:])
            yield Finished(
                finish_reason=finish,
                stop_reason=stop_reason,
                prompt_tokens=len(prompt_ids),
                completion_tokens=produced,
            )

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self._model.config)
        except TypeError:  # transformers before the layered caches builds them without a config
            return DynamicCache()

    @staticmethod
    def _sample(logits: Any, params: SamplingParams, generator: Any) -> int:
        import torch

        if params.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / params.temperature, dim=-1)
        if params.top_p < 1.0:
            # Nucleus sampling: keep the most likely tokens until their mass reaches top_p (at least one).
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) < params.top_p
            choice = torch.multinomial(sorted_probs * keep, 1, generator=generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=generator))
