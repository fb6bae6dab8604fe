"""PEFT LoRA adapters on disk, shaped like peft writes them, for tests of the clients and the doubles.

`peft_config()` is adapter_config.json as peft 0.21 saves it for a LoRA on a Llama-style model (every
field peft writes, `inference_mode` true); `write_adapter()` writes that config and a safetensors file
whose tensor names follow peft's layout (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
The tensors are tiny zero-filled F32 arrays: the servers and doubles read names and shapes, not values.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

_ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}
_MLP = {"gate_proj", "up_proj", "down_proj"}


def peft_config(**overrides: Any) -> dict[str, Any]:
    """adapter_config.json as peft 0.21 saves a `LoraConfig(r=8, lora_alpha=16, target_modules=[q_proj,
    v_proj], task_type=CAUSAL_LM)` trained on `tailor-tiny`; keyword arguments replace fields."""
    config: dict[str, Any] = {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": "tailor-tiny",
        "bias": "none",
        "corda_config": None,
        "eva_config": None,
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": 16,
        "lora_bias": False,
        "lora_dropout": 0.05,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "peft_version": "0.21.2",
        "qalora_group_size": 16,
        "r": 8,
        "rank_pattern": {},
        "revision": None,
        "target_modules": ["q_proj", "v_proj"],
        "target_parameters": None,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": None,
        "use_dora": False,
        "use_qalora": False,
        "use_rslora": False,
    }
    config.update(overrides)
    return config


def safetensors_bytes(shapes: dict[str, tuple[int, ...]]) -> bytes:
    """A valid safetensors file of zero-filled F32 tensors with these names and shapes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes
    return struct.pack("<Q", len(raw)) + raw + b"\x00" * offset


def lora_shapes(
    modules: list[str], *, rank: int = 8, layers: int = 2, hidden: int = 64
) -> dict[str, tuple[int, ...]]:
    """peft's tensor names and shapes for LoRA on `modules` of a Llama-style model."""
    shapes: dict[str, tuple[int, ...]] = {}
    for module in modules:
        if module == "lm_head":
            shapes["base_model.model.lm_head.lora_A.weight"] = (rank, hidden)
            shapes["base_model.model.lm_head.lora_B.weight"] = (256, rank)
            continue
        if module == "embed_tokens":
            shapes["base_model.model.model.embed_tokens.lora_embedding_A"] = (rank, 256)
            shapes["base_model.model.model.embed_tokens.lora_embedding_B"] = (hidden, rank)
            continue
        block = "self_attn" if module in _ATTENTION else "mlp" if module in _MLP else "custom"
        for layer in range(layers):
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            shapes[f"{prefix}.lora_A.weight"] = (rank, hidden)
            shapes[f"{prefix}.lora_B.weight"] = (hidden, rank)
    return shapes


def write_adapter(
    directory: Path,
    *,
    config: dict[str, Any] | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    weights_file: str = "adapter_model.safetensors",
) -> dict[str, dict[str, Any]]:
    """Write an adapter folder; returns its manifest (file name → {"sha256", "bytes"})."""
    config = peft_config() if config is None else config
    if shapes is None:
        shapes = lora_shapes(list(config.get("target_modules") or []), rank=int(config.get("r") or 8))
    directory.mkdir(parents=True, exist_ok=True)
    files = {"adapter_config.json": json.dumps(config, indent=2).encode()}
    if weights_file:
        files[weights_file] = safetensors_bytes(shapes)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in files.items()
    }
