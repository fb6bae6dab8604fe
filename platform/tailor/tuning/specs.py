"""From a create request to a gpu_runner spec: the `method` block and hyperparameters checked with
gpu_runner's own validator, the memory estimate and GPU class, and "auto" resolved for display.

The spec stored on a job has no paths (`{spec_version, method, seed, hyperparameters}`); the GPU worker
fills in the local paths. It is validated here with placeholder paths, so a typo in a hyperparameter is
a 400 naming the field (`method.supervised.hyperparameters.lora_r`) before anything is queued.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from gpu_runner.memory import (
    CUDA_CONTEXT_BYTES,
    GIB,
    GpuClass,
    MemoryEstimate,
    NoGpuClassFits,
    choose_gpu_class,
    estimate_spec_memory,
    parse_gpu_classes,
)
from gpu_runner.spec import (
    MAX_AUTO_BATCH_SIZE,
    SPEC_VERSION,
    DatasetStats,
    Hyperparameters,
    JobSpec,
    SpecError,
    auto_batch_size,
    parse_spec,
    resolve,
)
from tailor.core.errors import InvalidRequest
from tailor.tuning.models import BaseModel, FineTuningJob

METHODS = (FineTuningJob.Method.SUPERVISED, FineTuningJob.Method.DPO)
# Dataset formats each method trains on (gpu_runner.train.data reads the same sets).
METHOD_FORMATS: dict[str, tuple[str, ...]] = {
    "supervised": ("chat", "prompt_completion", "text"),
    "dpo": ("preference",),
}
# The hyperparameters OpenAI's job object always shows.
OPENAI_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
HYPERPARAMETER_NAMES = tuple(Hyperparameters.model_fields)


@dataclass(frozen=True)
class MethodRequest:
    """The method and hyperparameters a client asked for, and the request path they came under."""

    method: str
    hyperparameters: dict[str, Any]
    param_prefix: str  # `method.supervised.hyperparameters` or the deprecated `hyperparameters`


def gpu_classes() -> list[GpuClass]:
    """The configured GPU classes (TAILOR_GPU_CLASSES)."""
    return parse_gpu_classes(settings.TAILOR_GPU_CLASSES)


def parse_method(method: Any, hyperparameters: Any) -> MethodRequest:
    """Read OpenAI's `method` block and the deprecated top-level `hyperparameters`.

    `method` is `{"type": "supervised" | "dpo", "<type>": {"hyperparameters": {...}}}`; without it the
    job is supervised. Tailor's LoRA options ride inside the same hyperparameters object.
    """
    if hyperparameters is not None and not isinstance(hyperparameters, dict):
        raise InvalidRequest("hyperparameters must be an object.", param="hyperparameters")
    if method is None:
        return MethodRequest("supervised", dict(hyperparameters or {}), "hyperparameters")
    if not isinstance(method, dict):
        raise InvalidRequest('method must be an object such as {"type": "supervised"}.', param="method")
    kind = method.get("type")
    if kind is None:
        raise InvalidRequest(
            "Missing required parameter: 'method.type'.",
            param="method.type",
            code="missing_required_parameter",
        )
    if kind not in METHODS:
        raise InvalidRequest(
            f"Unsupported method.type {json.dumps(kind)}: Tailor trains `supervised` and `dpo`.",
            param="method.type",
        )
    for key in method:
        if key not in ("type", kind):
            raise InvalidRequest(
                f"Unexpected key method.{key}: method.type is {kind!r}, so the options go under method.{kind}.",
                param=f"method.{key}",
            )
    block = method.get(kind)
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise InvalidRequest(f"method.{kind} must be an object.", param=f"method.{kind}")
    for key in block:
        if key != "hyperparameters":
            raise InvalidRequest(
                f"Unknown parameter method.{kind}.{key}; expected only `hyperparameters`.",
                param=f"method.{kind}.{key}",
            )
    nested = block.get("hyperparameters")
    if nested is not None and not isinstance(nested, dict):
        raise InvalidRequest(
            f"method.{kind}.hyperparameters must be an object.", param=f"method.{kind}.hyperparameters"
        )
    if nested and hyperparameters:
        raise InvalidRequest(
            f"Pass hyperparameters either in method.{kind}.hyperparameters or in the deprecated top-level "
            "hyperparameters, not both.",
            param="hyperparameters",
        )
    if hyperparameters and not nested:
        return MethodRequest(kind, dict(hyperparameters), "hyperparameters")
    return MethodRequest(kind, dict(nested or {}), f"method.{kind}.hyperparameters")


def _param_for(field: str, request: MethodRequest) -> str:
    if field.startswith("hyperparameters."):
        return request.param_prefix + field[len("hyperparameters") :]
    if field == "hyperparameters":
        return request.param_prefix
    if field == "method":
        return "method.type"
    return field or request.param_prefix


def build_spec(
    *, request: MethodRequest, seed: int, base_model: BaseModel, has_validation_file: bool
) -> tuple[dict[str, Any], JobSpec]:
    """The stored spec (no paths) and its validated form. Raises InvalidRequest naming the field."""
    stored = {
        "spec_version": SPEC_VERSION,
        "method": request.method,
        "seed": seed,
        "hyperparameters": request.hyperparameters,
    }
    probe = {
        **stored,
        # Placeholders: validation must not depend on paths that exist only on a GPU node.
        "base_model": {"path": "/base-model", "name": base_model.name, "revision": base_model.revision},
        "training_file": "/inputs/training_file.jsonl",
        "validation_file": "/inputs/validation_file.jsonl" if has_validation_file else None,
    }
    try:
        spec = parse_spec(probe)
    except SpecError as exc:
        field, message = exc.issues[0]
        param = _param_for(field, request)
        more = len(exc.issues) - 1
        suffix = f" (and {more} more {'problem' if more == 1 else 'problems'})" if more else ""
        raise InvalidRequest(
            f"{param}: {message}{suffix}", param=param, code="invalid_hyperparameters"
        ) from None
    return stored, spec


def _micro_batch(spec: JobSpec, n_examples: int | None) -> int:
    """Rows in one forward pass, as the runner will choose them (upper bound when the data is unknown)."""
    hp = spec.hyperparameters
    if isinstance(hp.batch_size, int):
        batch = hp.batch_size
    elif n_examples:
        batch = auto_batch_size(n_examples)
    else:
        batch = MAX_AUTO_BATCH_SIZE
    if hp.gradient_accumulation_steps == "auto":
        # The runner splits the batch until a micro-batch holds at most max_batch_tokens tokens; with
        # rows as long as max_seq_length, that is max_batch_tokens // max_seq_length rows.
        return max(1, min(batch, hp.max_batch_tokens // hp.max_seq_length))
    return max(1, batch // hp.gradient_accumulation_steps)


def estimate_memory(spec: JobSpec, base_model: BaseModel, *, n_examples: int | None = None) -> MemoryEstimate:
    """Peak GPU memory of the job (gpu_runner.memory), from the base model's shape and the spec."""
    return estimate_spec_memory(
        {"parameters": base_model.parameters, **base_model.architecture},
        spec.hyperparameters,
        batch_size=_micro_batch(spec, n_examples),
        method=spec.method,
    )


def choose_class(estimate: MemoryEstimate, *, request: MethodRequest) -> GpuClass:
    """The smallest configured GPU class that holds the estimate (on one GPU, or sharded across a multi-GPU
    node when no single GPU does); a 400 with the estimate otherwise."""
    classes = gpu_classes()
    try:
        return choose_gpu_class(estimate, classes, sharding=True)
    except NoGpuClassFits as exc:
        largest = max((c.memory_gib for c in classes), default=0.0)
        # The weights alone do not fit: no hyperparameter can help, the base model is too large.
        base_only = (estimate.base_weights + CUDA_CONTEXT_BYTES) / GIB
        param = "model" if base_only >= largest else request.param_prefix
        raise InvalidRequest(
            f"No GPU class can run this job: {exc}.", param=param, code="insufficient_gpu_memory"
        ) from None


def estimate_resolution(
    spec: JobSpec, *, training_report: dict[str, Any] | None, data_format: str, has_validation_file: bool
) -> dict[str, Any] | None:
    """ "auto" resolved from the training file's validation report, shown until the runner reports the
    values it really uses (its token counts come from the model's tokenizer, so the plan may differ)."""
    stats = (training_report or {}).get("stats") or {}
    examples = stats.get("example_count")
    if not examples or data_format not in ("chat", "preference", "prompt_completion", "text"):
        return None
    longest = ((stats.get("tokens") or {}).get("max")) or 1
    try:
        resolved = resolve(
            spec,
            DatasetStats(
                n_examples=examples,
                max_tokens=max(1, min(int(longest), spec.hyperparameters.max_seq_length)),
                data_format=data_format,  # type: ignore[arg-type]  # checked against the four formats above
                has_validation=has_validation_file,
            ),
        )
    except (SpecError, ValueError):
        return None
    return resolved.model_dump(mode="json")


def hyperparameters_shown(job: FineTuningJob) -> dict[str, Any]:
    """Every hyperparameter of the job, resolved where known, otherwise as requested (possibly "auto")."""
    if job.resolved_hyperparameters:
        values = {k: v for k, v in job.resolved_hyperparameters.items() if k in HYPERPARAMETER_NAMES}
    else:
        values = {name: "auto" for name in OPENAI_HYPERPARAMETERS}
        if job.method == FineTuningJob.Method.DPO:
            values["beta"] = "auto"
        values.update(job.requested_hyperparameters)
    if job.method != FineTuningJob.Method.DPO:
        values.pop("beta", None)
    elif values.get("beta") is None:
        values["beta"] = "auto"
    return values
