"""The compatibility gate: every reason an endpoint would refuse an adapter, found before anything is pushed.

A pure function of the adapter's `adapter_config.json` (as peft writes it) and what the registry knows
about the endpoint. It lists all problems, not just the first, in words a user can act on. The rules copy
what the servers enforce at load time (serving-protocols reference, sections 1.5 and 2.3):

- vLLM (`vllm/lora/peft_helper.py`, `vllm/lora/models.py`): `r`, `lora_alpha` and `target_modules` are
  required; the rank (`max(r, *rank_pattern.values())`) must not exceed `--max-lora-rank`, itself one of
  1, 8, 16, 32, 64, 128, 256, 320, 512; no DoRA, no `modules_to_save`, `bias` "none"; every target module
  must be a LoRA-capable layer of the served architecture.
- Ollama (`convert/convert.go` `ConvertAdapter`): safetensors adapters are converted only onto `llama` and
  `gemma2` bases; `lora_alpha` is decoded into a Go `uint32`; `use_rslora` is ignored (the scale becomes
  alpha/r, not alpha/sqrt(r)); llama.cpp's loader takes LoRA A/B pairs only (no DoRA magnitudes, no full
  module copies, no biases).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# vLLM's `--max-lora-rank` accepts only these values (vllm/config/lora.py, `MaxLoRARanks`).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The module names a vLLM LoRA may target, per HF `model_type`, after unpacking vLLM's fused layers.
# LlamaForCausalLM (vllm/model_executor/models/llama.py): packed_modules_mapping = {"qkv_proj": ["q_proj",
# "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}; its LoRA layers are qkv_proj, o_proj,
# gate_up_proj and down_proj (the `supported_lora_modules` list of releases that still declared it), plus
# embedding_modules = {"embed_tokens": "input_embeddings", "lm_head": "output_embeddings"}.
# MistralForCausalLM is LlamaForCausalLM. Qwen2ForCausalLM (qwen2.py) has the same packing and
# `embedding_modules = {}`. Other architectures are left to vLLM's own check at load time.
VLLM_LORA_MODULES: dict[str, frozenset[str]] = {
    "llama": frozenset((*_PROJECTIONS, "embed_tokens", "lm_head")),
    "mistral": frozenset((*_PROJECTIONS, "embed_tokens", "lm_head")),
    "qwen2": frozenset(_PROJECTIONS),
}

# HF `model_type` → the GGUF architecture Ollama sees for that base. Mistral converts to `llama`.
OLLAMA_ADAPTER_ARCHITECTURES = {"llama": "llama", "mistral": "llama", "gemma2": "gemma2"}

KINDS = ("vllm", "ollama")
Refuse = Callable[[str, str], None]
_REQUIRED_FIELDS = ("r", "lora_alpha", "target_modules")


@dataclass(frozen=True)
class Incompatibility:
    """One reason the endpoint would refuse the adapter: a stable `code` and a sentence for the user."""

    code: str
    message: str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rank(config: Mapping[str, Any]) -> tuple[int | None, list[Any]]:
    """The largest LoRA rank of the adapter (r, or a bigger per-module rank from rank_pattern)."""
    pattern = config.get("rank_pattern") or {}
    values = [config.get("r"), *(pattern.values() if isinstance(pattern, Mapping) else [])]
    bad = [value for value in values if not _is_int(value) or value <= 0]
    if bad:
        return None, bad
    return max(values), []


def _next_vllm_rank(rank: int) -> int | None:
    return next((allowed for allowed in VLLM_MAX_LORA_RANKS if allowed >= rank), None)


def _target_modules(config: Mapping[str, Any]) -> list[str] | None:
    """The target module names, or None when peft stored a regular expression (not checkable by name)."""
    modules = config.get("target_modules")
    if isinstance(modules, str):
        return None
    return [str(module) for module in modules or []]


def check_compatibility(
    *,
    kind: str,
    adapter_config: Mapping[str, Any],
    adapter_base_model: str,
    endpoint_base_models: Sequence[str],
    base_architecture: str,
    max_lora_rank: int | None,
    formats: Sequence[str],
) -> list[Incompatibility]:
    """Every reason an endpoint of `kind` ("vllm" or "ollama") serving `endpoint_base_models` would refuse
    an adapter trained on `adapter_base_model` (whose HF `model_type` is `base_architecture`, "" if
    unknown) with `adapter_config`, available in `formats` ("peft-safetensors", "gguf"). `max_lora_rank`
    is the endpoint's limit (None: unknown; vLLM's default 16 is assumed for vLLM). Empty: compatible."""
    problems: list[Incompatibility] = []

    def refuse(code: str, message: str) -> None:
        problems.append(Incompatibility(code=code, message=message))

    if kind not in KINDS:
        refuse(
            "unknown_endpoint_kind", f"endpoints of kind {kind!r} are not supported (expected vllm or ollama)"
        )
        return problems
    server = "vLLM" if kind == "vllm" else "Ollama"
    architecture = (base_architecture or "").strip().lower()

    if adapter_base_model not in endpoint_base_models:
        served = ", ".join(repr(name) for name in endpoint_base_models) or "no base model"
        refuse(
            "base_model_not_served",
            f"the adapter was trained on {adapter_base_model!r}, but the endpoint serves {served}; an adapter "
            "only works on the base model it was trained on",
        )

    peft_type = adapter_config.get("peft_type", "LORA")
    if peft_type != "LORA":
        refuse("not_lora", f"the adapter is a {peft_type} adapter; {server} serves LoRA adapters only")

    missing = [field for field in _REQUIRED_FIELDS if adapter_config.get(field) in (None, "", [])]
    if missing:
        refuse(
            "missing_config_fields",
            f"adapter_config.json lacks {', '.join(missing)}, which {server} needs to load a LoRA adapter",
        )

    rank, bad_ranks = _rank(adapter_config) if "r" not in missing else (None, [])
    if bad_ranks:
        refuse("invalid_rank", f"the adapter's LoRA ranks {bad_ranks} are not positive integers")

    limit = max_lora_rank
    if kind == "vllm":
        if limit is None:
            limit = VLLM_DEFAULT_MAX_LORA_RANK
        elif limit not in VLLM_MAX_LORA_RANKS:
            refuse(
                "invalid_max_lora_rank",
                f"the endpoint's max LoRA rank {limit} is not a value vLLM accepts for --max-lora-rank "
                f"({', '.join(map(str, VLLM_MAX_LORA_RANKS))}); correct the endpoint's max_lora_rank",
            )
    if rank is not None and limit is not None and rank > limit:
        hint = ""
        if kind == "vllm":
            needed = _next_vllm_rank(rank)
            hint = (
                f"; restart vLLM with --max-lora-rank {needed} and update the endpoint"
                if needed
                else f"; vLLM serves ranks up to {VLLM_MAX_LORA_RANKS[-1]}, retrain with a smaller r"
            )
        source = "" if max_lora_rank is not None else " (vLLM's default, as the endpoint records none)"
        refuse(
            "rank_too_high",
            f"LoRA rank {rank} is greater than the endpoint's max LoRA rank {limit}{source}{hint}",
        )

    if adapter_config.get("use_dora"):
        refuse("dora_unsupported", f"the adapter uses DoRA (use_dora), which {server} cannot serve")
    modules_to_save = adapter_config.get("modules_to_save")
    if modules_to_save:
        refuse(
            "modules_to_save_unsupported",
            f"the adapter carries full copies of {sorted(modules_to_save)} (modules_to_save), but {server} "
            "loads LoRA weights only; train without modules_to_save",
        )
    bias = adapter_config.get("bias", "none")
    if bias not in (None, "none"):
        refuse(
            "bias_unsupported",
            f"the adapter trains biases (bias={bias!r}); {server} serves adapters with bias='none' only",
        )

    if kind == "vllm":
        _check_vllm_modules(adapter_config, architecture, refuse)
    else:
        _check_ollama(adapter_config, architecture, formats, refuse)
    return problems


def _check_vllm_modules(config: Mapping[str, Any], architecture: str, refuse: Refuse) -> None:
    supported = VLLM_LORA_MODULES.get(architecture)
    modules = _target_modules(config)
    if supported is None or not modules:
        return
    # vLLM compares the last dotted part of each module ("model.layers.0.self_attn.q_proj" → "q_proj").
    unexpected = sorted({module for module in modules if module.rsplit(".", 1)[-1] not in supported})
    if unexpected:
        refuse(
            "target_modules_unsupported",
            f"the adapter targets {unexpected}, which vLLM cannot serve on a {architecture} base; "
            f"it supports {sorted(supported)}",
        )


def _check_ollama(
    config: Mapping[str, Any], architecture: str, formats: Sequence[str], refuse: Refuse
) -> None:
    has_gguf = "gguf" in formats
    if not has_gguf and "peft-safetensors" not in formats:
        refuse(
            "format_unsupported",
            f"the adapter exists only as {', '.join(formats) or 'nothing'}; Ollama takes safetensors or "
            "GGUF adapters",
        )
    if not has_gguf and architecture and architecture not in OLLAMA_ADAPTER_ARCHITECTURES:
        refuse(
            "ollama_architecture_unsupported",
            "Ollama converts safetensors adapters only for llama and gemma2 bases; a GGUF adapter would be "
            f"needed for {architecture}, which Tailor does not build yet",
        )
    alpha = config.get("lora_alpha")
    if alpha is not None and (not _is_int(alpha) or alpha < 0):
        refuse(
            "lora_alpha_not_integer",
            f"lora_alpha is {alpha!r}, but Ollama reads it as an unsigned integer (a Go uint32), so "
            "conversion would fail; train with a whole-number lora_alpha",
        )
    if config.get("use_rslora"):
        refuse(
            "rslora_unsupported",
            "the adapter uses rank-stabilised LoRA (use_rslora): Ollama ignores that flag and scales by "
            "lora_alpha/r instead of lora_alpha/sqrt(r), so the served model would not behave as trained; "
            "train without use_rslora for Ollama",
        )
