"""The finished adapter directory: exactly what serving needs, nothing pickled.

- `adapter_config.json`, `adapter_model.safetensors`: PEFT's layout, which vLLM and Ollama read;
  `base_model_name_or_path` is the base model's canonical name, never the local path.
- tokenizer files and `chat_template.jinja`, so serving renders prompts as training did;
- `metrics.csv` with OpenAI's results-file columns;
- `tailor_adapter.json`, written last (its presence means the directory is complete): base model name and
  revision, sha256 and size of every other file, resolved hyperparameters, final metrics, data digests and
  library versions.

`adapter_weights_digest` fingerprints adapter weights so that what each rank holds in memory can be compared
with what was saved: with `TAILOR_DEBUG_RANK_DIGEST_DIR` set, every rank writes `rank-<n>.sha256` there at the
end of training (`write_rank_digest`), which is how the DDP tests check that the ranks agree.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gpu_runner.spec import JobSpec, ResolvedHyperparameters
from gpu_runner.train.checkpoints import sha256_file
from gpu_runner.train.common import save_adapter

ADAPTER_MANIFEST = "tailor_adapter.json"
ADAPTER_MANIFEST_FORMAT = "tailor-adapter/1"
METRICS_CSV = "metrics.csv"
METRICS_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
RANK_DIGEST_DIR_ENV = "TAILOR_DEBUG_RANK_DIGEST_DIR"


def metrics_rows(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per logged step, validation cells empty where no evaluation ran (as in OpenAI's file)."""
    rows: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        step = entry.get("step")
        if not step:  # step 0 is the evaluation of the untrained adapter; the file starts at step 1
            continue
        if "loss" in entry:
            row = rows.setdefault(step, dict.fromkeys(METRICS_COLUMNS, ""))
            row.update(
                step=step, train_loss=entry["loss"], train_accuracy=entry.get("mean_token_accuracy", "")
            )
        elif "eval_loss" in entry:
            row = rows.setdefault(step, dict.fromkeys(METRICS_COLUMNS, ""))
            row.update(
                step=step,
                valid_loss=entry["eval_loss"],
                valid_mean_token_accuracy=entry.get("eval_mean_token_accuracy", ""),
            )
    return [rows[s] for s in sorted(rows)]


def final_metrics(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last training and the last validation figures."""
    out: dict[str, Any] = {
        "train_loss": None,
        "train_mean_token_accuracy": None,
        "valid_loss": None,
        "valid_mean_token_accuracy": None,
    }
    for entry in log_history:
        if "loss" in entry:
            out["train_loss"] = entry["loss"]
            out["train_mean_token_accuracy"] = entry.get("mean_token_accuracy")
            for key in ("rewards/margins", "rewards/accuracies"):
                if key in entry:
                    out["reward_margin" if key.endswith("margins") else "reward_accuracy"] = entry[key]
        elif "eval_loss" in entry:
            out["valid_loss"] = entry["eval_loss"]
            out["valid_mean_token_accuracy"] = entry.get("eval_mean_token_accuracy")
    return out


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_adapter(
    *,
    model: Any,
    tokenizer: Any,
    output_dir: Path,
    spec: JobSpec,
    resolved: ResolvedHyperparameters,
    log_history: list[dict[str, Any]],
    trained_tokens: int,
    steps: int,
    data: dict[str, Any],
    libraries: dict[str, Any],
    state_dict: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the adapter directory (rank 0 only) and return the contents of `tailor_adapter.json`.
    `state_dict`: a sharded model's trainable weights, gathered whole."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stale = output_dir / ADAPTER_MANIFEST
    if stale.exists():
        stale.unlink()  # the directory is incomplete until the new manifest lands
    save_adapter(
        model,
        output_dir,
        base_model_name=spec.base_model.name,
        base_model_revision=spec.base_model.revision,
        state_dict=state_dict,
    )
    config = json.loads((output_dir / "adapter_config.json").read_text(encoding="utf-8"))
    tokenizer.save_pretrained(str(output_dir))

    with open(output_dir / METRICS_CSV, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(METRICS_COLUMNS))
        writer.writeheader()
        writer.writerows(metrics_rows(log_history))

    files = {}
    for path in sorted(output_dir.iterdir()):
        if path.is_file() and path.name != ADAPTER_MANIFEST and not path.name.startswith("."):
            files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    template = output_dir / "chat_template.jinja"
    manifest = {
        "format": ADAPTER_MANIFEST_FORMAT,
        "created_at": int(time.time()),
        "base_model": {"name": spec.base_model.name, "revision": spec.base_model.revision},
        "method": spec.method,
        "adapter": {
            "type": "lora",
            "r": config.get("r"),
            "lora_alpha": config.get("lora_alpha"),
            "target_modules": sorted(config["target_modules"])
            if isinstance(config.get("target_modules"), list)
            else config.get("target_modules"),
            "use_dora": config.get("use_dora", False),
            "use_rslora": config.get("use_rslora", False),
            "modules_to_save": config.get("modules_to_save"),
        },
        "chat_template_sha256": files.get(template.name, {}).get("sha256"),
        "seed": spec.seed,
        "hyperparameters": resolved.model_dump(mode="json"),
        "metrics": final_metrics(log_history),
        "trained_tokens": trained_tokens,
        "steps": steps,
        "data": data,
        "libraries": libraries,
        "files": files,
    }
    _write_json(output_dir / ADAPTER_MANIFEST, manifest)
    return manifest


def adapter_weights_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over adapter tensors in name order (name, dtype, shape and raw bytes of each). Applied to the
    state dict PEFT saves and to `adapter_model.safetensors` loaded back, it gives the same value."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_rank_digest(model: Any, rank: int) -> Path | None:
    """With `TAILOR_DEBUG_RANK_DIGEST_DIR` set, write `rank-<rank>.sha256` there: `adapter_weights_digest` of
    the adapter weights this process holds (PEFT's saved key layout). Every rank calls it; a debugging and
    test aid that costs nothing when the variable is unset."""
    directory = os.environ.get(RANK_DIGEST_DIR_ENV)
    if not directory:
        return None
    from peft import get_peft_model_state_dict

    path = Path(directory) / f"rank-{rank}.sha256"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(adapter_weights_digest(get_peft_model_state_dict(model)) + "\n", encoding="utf-8")
    return path
