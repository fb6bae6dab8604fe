"""Checks a PEFT LoRA adapter directory the way vLLM does before the development server loads it.

The rules and the error texts follow vLLM's `PEFTHelper` and `LoRAModel.from_local_checkpoint` in the
releases whose LoRA load errors answer 400 (newer vLLM answers 500 for the same adapters), so a client
tested against this server recognises vLLM's refusals. Beyond vLLM, every LoRA tensor's shape is
compared with the base model's layer here, because peft would otherwise fail half-way through a load.

Nothing here imports torch: tensor names and shapes are read from the safetensors header.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# vLLM's `--max-lora-rank` accepts only these values (vllm/config/lora.py, `MaxLoRARanks`).
ALLOWED_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLED_WEIGHTS_FILE = "adapter_model.bin"
_REQUIRED_FIELDS = ("r", "lora_alpha", "target_modules")
_PEFT_PREFIX = "base_model.model."


class AdapterNotFoundError(Exception):
    """No adapter at the path (vLLM's `LoRAAdapterNotFoundError`, answered with 404)."""

    def __init__(self, lora_name: str, lora_path: str) -> None:
        super().__init__(f"Loading lora {lora_name} failed: No adapter found for {lora_path}")


class InvalidAdapterError(Exception):
    """The adapter exists but cannot be served by this base model (answered with 400)."""


@dataclass(frozen=True)
class LinearShape:
    """A linear layer of the base model: `in_features` → `out_features`."""

    in_features: int
    out_features: int


@dataclass(frozen=True)
class AdapterCheck:
    """What a successful check learnt about an adapter directory."""

    directory: Path
    config: dict[str, Any]
    rank: int
    modules: tuple[str, ...]


def resolve_adapter_path(lora_path: str) -> Path:
    """Where an adapter path points, as vLLM's `get_adapter_absolute_path` resolves local paths: absolute
    paths as they are, `~` expanded, relative paths from the working directory. vLLM would then try a
    Hugging Face repository id; this server never downloads, so such a path simply is not found."""
    return Path(os.path.abspath(os.path.expanduser(lora_path)))


def read_safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors file's JSON header, without reading the tensors."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise InvalidAdapterError(f"{path} is not a safetensors file: it is shorter than its header")
        (length,) = struct.unpack("<Q", prefix)
        if length > 100_000_000:
            raise InvalidAdapterError(f"{path} is not a safetensors file: header length {length}")
        try:
            header = json.loads(handle.read(length))
        except ValueError as exc:
            raise InvalidAdapterError(f"{path} is not a safetensors file: {exc}") from exc
    if not isinstance(header, dict):
        raise InvalidAdapterError(f"{path} is not a safetensors file: its header is not an object")
    return {
        name: tuple(entry["shape"])
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and "shape" in entry
    }


def parse_lora_tensor_name(name: str) -> tuple[str, str]:
    """(module, part) of a PEFT tensor name, part being `lora_A`, `lora_B`, `lora_embedding_A` or
    `lora_embedding_B`; vLLM's `parse_fine_tuned_lora_name` refuses every other key the same way."""
    module = name.removeprefix(_PEFT_PREFIX)
    for suffix, part in (
        (".lora_A.weight", "lora_A"),
        (".lora_B.weight", "lora_B"),
        (".lora_embedding_A", "lora_embedding_A"),
        (".lora_embedding_B", "lora_embedding_B"),
    ):
        if module.endswith(suffix):
            return module.removesuffix(suffix), part
    raise InvalidAdapterError(f"{name} is unsupported LoRA weight")


def _read_config(directory: Path, lora_name: str, lora_path: str) -> dict[str, Any]:
    try:
        text = (directory / CONFIG_FILE).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise AdapterNotFoundError(lora_name, lora_path) from exc
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise InvalidAdapterError(f"{directory / CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise InvalidAdapterError(f"{directory / CONFIG_FILE} does not hold a JSON object")
    return config


def _config_rank(config: dict[str, Any]) -> int:
    ranks = [config["r"], *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(rank, int) and not isinstance(rank, bool) and rank > 0 for rank in ranks):
        raise InvalidAdapterError(f"LoRA rank must be a positive integer, got {ranks}.")
    return max(ranks)


def check_adapter(
    *, lora_name: str, lora_path: str, max_lora_rank: int, linear_layers: dict[str, LinearShape] | None
) -> AdapterCheck:
    """Check the adapter at `lora_path` against the server's limits and the base model's linear layers
    (`linear_layers`: module name → shape; None checks all but the modules, before a model is loaded).
    Raises `AdapterNotFoundError` or `InvalidAdapterError`."""
    directory = resolve_adapter_path(lora_path)
    config = _read_config(directory, lora_name, lora_path)

    missing = set(_REQUIRED_FIELDS) - set(config)
    if missing:
        raise InvalidAdapterError(f"Missing required configuration fields: {missing}")
    if config.get("peft_type", "LORA") != "LORA":
        raise InvalidAdapterError(f"Only LoRA adapters are supported, got peft_type {config['peft_type']!r}.")

    problems = []
    if config.get("modules_to_save"):
        problems.append("vLLM only supports modules_to_save being None.")
    if config.get("use_dora"):
        problems.append("vLLM does not yet support DoRA.")
    rank = _config_rank(config)
    if rank > max_lora_rank:
        problems.append(f"LoRA rank {rank} is greater than max_lora_rank {max_lora_rank}.")
    if config.get("bias", "none") != "none":
        problems.append("Adapter bias cannot be used without bias_enabled.")
    if problems:
        raise InvalidAdapterError(" ".join(problems))

    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        if (directory / PICKLED_WEIGHTS_FILE).is_file():
            raise InvalidAdapterError(
                f"{directory} doesn't contain tensors in {WEIGHTS_FILE}; the development server does not "
                f"load pickled {PICKLED_WEIGHTS_FILE} files"
            )
        raise InvalidAdapterError(f"{directory} doesn't contain tensors")
    shapes = read_safetensors_shapes(weights)
    parsed = {name: parse_lora_tensor_name(name) for name in shapes}

    if linear_layers is None:
        return AdapterCheck(
            directory=directory,
            config=config,
            rank=rank,
            modules=tuple(sorted({module for module, _ in parsed.values()})),
        )
    # vLLM compares the last part of each module name with the layer kinds LoRA can wrap.
    expected = sorted({module.rsplit(".", 1)[-1] for module in linear_layers})
    unexpected = sorted(
        {module for module, _ in parsed.values() if module.rsplit(".", 1)[-1] not in expected}
    )
    if unexpected:
        raise InvalidAdapterError(
            f"While loading {directory}, expected target modules in {expected} but received {unexpected}."
            " Please verify that the loaded LoRA module is correct"
        )
    _check_shapes(directory, shapes, parsed, linear_layers, config)
    modules = tuple(sorted({module for module, _ in parsed.values()}))
    if not modules:
        raise InvalidAdapterError(f"{directory} doesn't contain tensors")
    return AdapterCheck(directory=directory, config=config, rank=rank, modules=modules)


def _check_shapes(
    directory: Path,
    shapes: dict[str, tuple[int, ...]],
    parsed: dict[str, tuple[str, str]],
    linear_layers: dict[str, LinearShape],
    config: dict[str, Any],
) -> None:
    """Each module must exist in the base and its A (rank × in) and B (out × rank) must fit the layer and
    the configured rank, so that a wrong base model is refused before peft changes the model."""
    ranks: dict[str, set[int]] = {}
    parts: dict[str, set[str]] = {}
    for name, (module, part) in sorted(parsed.items()):
        layer = linear_layers.get(module)
        if layer is None:
            raise InvalidAdapterError(
                f"While loading {directory}, the adapter holds weights for {module}, which the base model "
                "does not have. Please verify that the adapter was trained on this base model"
            )
        if part not in ("lora_A", "lora_B"):
            raise InvalidAdapterError(f"{name} is unsupported LoRA weight")
        shape = shapes[name]
        if len(shape) != 2:
            raise InvalidAdapterError(f"{name} has shape {list(shape)}, expected a matrix")
        expected_dim, actual_dim, axis = (
            (layer.in_features, shape[1], 1) if part == "lora_A" else (layer.out_features, shape[0], 0)
        )
        if actual_dim != expected_dim:
            raise InvalidAdapterError(
                f"The size of tensor a ({actual_dim}) must match the size of tensor b ({expected_dim}) at "
                f"non-singleton dimension {axis}: {name} has shape {list(shape)} but {module} of the base "
                f"model maps {layer.in_features} to {layer.out_features} features"
            )
        ranks.setdefault(module, set()).add(shape[0] if part == "lora_A" else shape[1])
        parts.setdefault(module, set()).add(part)
    for module, module_parts in sorted(parts.items()):
        if module_parts != {"lora_A", "lora_B"}:
            raise InvalidAdapterError(f"LoRA tensor pair for {module} is missing one component")
    for module, module_ranks in sorted(ranks.items()):
        # A rank_pattern gives modules their own rank; without one every module has rank r.
        if len(module_ranks) != 1 or (not config.get("rank_pattern") and module_ranks != {config["r"]}):
            raise InvalidAdapterError(
                f"While loading {directory}, {module} has LoRA weights of rank {sorted(module_ranks)} but "
                f"adapter_config.json says r={config['r']}"
            )
