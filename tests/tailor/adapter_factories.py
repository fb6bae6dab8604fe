"""Adapters as successful jobs leave them (files in the object store, digests in the row), for registry
tests (import from `tests.tailor.adapter_factories`)."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

from tailor.core.objectstore import object_store
from tailor.teams.models import Team
from tailor.tuning.models import Adapter, BaseModel
from tailor.tuning.services import fine_tuned_model_name

from tests.tailor.jobs_factories import BaseModelFactory, create_job

WEIGHTS = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + b"\x00" * 64  # bytes the doubles only digest


def peft_config(**overrides: Any) -> dict[str, Any]:
    """adapter_config.json as PEFT writes it for a LoRA on the tiny Llama."""
    return {
        "peft_type": "LORA",
        "base_model_name_or_path": "tailor-tiny",
        "r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "modules_to_save": None,
        "use_dora": False,
        "use_rslora": False,
        "task_type": "CAUSAL_LM",
        **overrides,
    }


def stored_adapter(team: Team, base: BaseModel, **config: Any) -> Adapter:
    """An adapter as a successful job leaves it: files in the object store, digests in the row."""
    job = create_job(team, base=base, suffix="push")
    name = fine_tuned_model_name(job)
    prefix = f"jobs/{job.public_id}/adapter"
    files = {
        "adapter_config.json": json.dumps(peft_config(**config)).encode(),
        "adapter_model.safetensors": WEIGHTS,
        "tokenizer.json": b"{}",
    }
    store = object_store()
    for filename, data in files.items():
        store.put(f"{prefix}/{filename}", io.BytesIO(data))
    family = name.rsplit(":", 1)[0]
    return Adapter.objects.create(
        team=team,
        job=job,
        base_model=base,
        name=name,
        family=family,
        version=Adapter.objects.filter(team=team, family=family).count() + 1,
        prefix=prefix,
        config=peft_config(**config),
        rank=peft_config(**config)["r"],
        alpha=peft_config(**config)["lora_alpha"],
        target_modules=peft_config(**config)["target_modules"],
        files={n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in files.items()},
        formats=["peft-safetensors"],
    )


def llama_base(name: str = "tailor-tiny", model_type: str = "llama") -> BaseModel:
    """A registered base model whose config.json (in the object store) names its architecture."""
    base = BaseModelFactory(name=name)
    config = {"model_type": model_type, "architectures": ["LlamaForCausalLM"], "hidden_size": 128}
    object_store().put(f"{base.prefix}/config.json", io.BytesIO(json.dumps(config).encode()))
    return base
