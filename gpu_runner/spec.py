"""The training job spec: what the control plane asks a GPU node to train, and how `"auto"` is resolved.

A spec is versioned JSON (`spec_version: 1`) validated by pydantic before anything heavy happens, so a
typo costs milliseconds, not a GPU-hour. Hyperparameters use OpenAI's names where OpenAI has one
(`n_epochs`, `batch_size`, `learning_rate_multiplier`, `beta`, each may be `"auto"`) and Together's names
for the rest. `resolve()` turns `"auto"` into numbers by the documented rules below (docs/gpu_runner.md
repeats them); the runner reports the result in its `hyperparameters_resolved` event.

This module is light on purpose (pydantic only, no torch): the control plane imports it to validate
specs at job creation.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

SPEC_VERSION = 1

Method = Literal["supervised", "dpo"]
Quantization = Literal["nf4", "int8", "none"]
ComputeDtype = Literal["auto", "bfloat16", "float16", "float32"]
LRScheduler = Literal["linear", "cosine", "constant"]

# --- "auto" rules -------------------------------------------------------------------------------
# n_epochs: OpenAI's cookbook heuristic (Chat_finetuning_data_prep.ipynb).
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25
# batch_size: about 0.2% of the examples, as a power of two, within [1, 256].
BATCH_SIZE_SHARE = 0.002
MAX_AUTO_BATCH_SIZE = 256
# learning_rate_multiplier: scales `learning_rate`; DPO wants a gentler step than SFT.
AUTO_LR_MULTIPLIER = {"supervised": 1.0, "dpo": 0.25}
AUTO_BETA = 0.1
# n_checkpoints: evenly spaced checkpoints over the run (epoch ends are always checkpointed too).
AUTO_N_CHECKPOINTS = 10


class SpecError(Exception):
    """A spec that cannot run. `issues` lists `(field, message)` pairs, fields in dotted form
    (`hyperparameters.batch_size`); `str()` reads as one line per issue."""

    def __init__(self, issues: list[tuple[str, str]]) -> None:
        if not issues:
            raise ValueError("SpecError needs at least one issue")
        self.issues = issues
        super().__init__("; ".join(f"{field}: {message}" if field else message for field, message in issues))

    @property
    def field(self) -> str:
        """The field of the first issue (empty for the whole spec)."""
        return self.issues[0][0]


# --- field types with readable errors ------------------------------------------------------------


def _auto_or(
    kind: type, low: float | None, high: float | None, *, low_open: bool = False, what: str
) -> Callable[[Any], Any]:
    """A before-validator accepting `"auto"` or a number of `kind` within bounds, with one clear message."""

    def check(value: Any) -> Any:
        if value == "auto":
            return value
        ok_type = isinstance(value, kind) and not isinstance(value, bool)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok_type, value = True, float(value)
        in_range = ok_type and (
            (low is None or (value > low if low_open else value >= low)) and (high is None or value <= high)
        )
        if not in_range:
            raise ValueError(f'expected "auto" or {what}, got {json.dumps(value, default=str)}')
        return value

    return check


AutoEpochs = Annotated[
    int | Literal["auto"], BeforeValidator(_auto_or(int, 1, 50, what="an integer from 1 to 50"))
]
AutoBatchSize = Annotated[
    int | Literal["auto"], BeforeValidator(_auto_or(int, 1, 1024, what="an integer from 1 to 1024"))
]
AutoPositiveFloat = Annotated[
    float | Literal["auto"], BeforeValidator(_auto_or(float, 0, None, low_open=True, what="a number > 0"))
]
AutoBeta = Annotated[
    float | Literal["auto"], BeforeValidator(_auto_or(float, 0, 2, low_open=True, what="a number in (0, 2]"))
]
AutoCount = Annotated[
    int | Literal["auto"], BeforeValidator(_auto_or(int, 0, 10_000, what="an integer >= 0"))
]
AutoPositiveCount = Annotated[
    int | Literal["auto"], BeforeValidator(_auto_or(int, 1, 10_000, what="an integer >= 1"))
]
AutoAlpha = Annotated[
    int | Literal["auto"], BeforeValidator(_auto_or(int, 1, 65_536, what="an integer >= 1"))
]
AutoTrainOnInputs = Annotated[
    bool | Literal["auto"],
    BeforeValidator(lambda v: v if v == "auto" or isinstance(v, bool) else _bad(v, 'true, false or "auto"')),
]


def _bad(value: Any, expected: str) -> Any:
    raise ValueError(f"expected {expected}, got {json.dumps(value, default=str)}")


def _number(value: Any) -> Any:
    """JSON numbers only: pydantic's lax mode would take `true` or `"0.1"` for a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        _bad(value, "a number")
    return value


Number = BeforeValidator(_number)


def _resolve_path(value: Any, info: ValidationInfo) -> Any:
    """Paths in a spec are absolute or relative to the spec file's folder (`context["base_dir"]`)."""
    if value is None and info.field_name == "validation_file":
        return None
    if not isinstance(value, str | os.PathLike) or not str(value):
        _bad(value, "a path (string)")
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return Path(os.path.normpath(path))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseModelRef(_Strict):
    """The base model: a local directory (the worker resolves object-store or hub sources to it) and
    the canonical name and revision written into the adapter, never the local path."""

    path: Path = Field(description="Local directory holding config.json, safetensors weights and tokenizer.")
    name: StrictStr = Field(
        min_length=1,
        max_length=256,
        description="Canonical name, e.g. `meta-llama/Llama-3.2-1B-Instruct` or `tailor-tiny`.",
    )
    revision: StrictStr | None = Field(
        default=None, max_length=128, description="Commit or version of the base."
    )

    _path = field_validator("path", mode="before")(_resolve_path)


class Hyperparameters(_Strict):
    """Training hyperparameters; every field has a default, and `"auto"` ones are settled by `resolve()`."""

    # OpenAI's names.
    n_epochs: AutoEpochs = "auto"
    batch_size: AutoBatchSize = Field(
        default="auto",
        description="Examples (packed rows with packing) per optimizer step, over all devices.",
    )
    learning_rate_multiplier: AutoPositiveFloat = "auto"
    beta: AutoBeta | None = Field(default=None, description="DPO only; `null` means auto for DPO.")
    # Together's names.
    learning_rate: Annotated[float, Field(gt=0, le=1), Number] = 2e-4
    lora_r: Annotated[StrictInt, Field(ge=1, le=1024)] = 16
    lora_alpha: AutoAlpha = "auto"
    lora_dropout: Annotated[float, Field(ge=0, lt=1), Number] = 0.05
    lora_trainable_modules: Literal["all-linear"] | Annotated[list[StrictStr], Field(min_length=1)] = (
        "all-linear"
    )
    warmup_ratio: Annotated[float, Field(ge=0, lt=1), Number] = 0.03
    max_grad_norm: Annotated[float, Field(ge=0), Number] = 1.0
    weight_decay: Annotated[float, Field(ge=0), Number] = 0.0
    lr_scheduler: LRScheduler = "linear"
    train_on_inputs: AutoTrainOnInputs = "auto"
    n_checkpoints: AutoPositiveCount = "auto"
    n_evals: AutoCount = "auto"
    # Memory and speed.
    quantization: Quantization = "nf4"
    compute_dtype: ComputeDtype = "auto"
    max_seq_length: Annotated[StrictInt, Field(ge=16, le=262_144)] = 2048
    packing: StrictBool = False
    gradient_accumulation_steps: AutoPositiveCount = "auto"
    max_batch_tokens: Annotated[StrictInt, Field(ge=256)] = Field(
        default=16_384,
        description="Token budget of one micro-batch (padded), used by gradient_accumulation_steps=auto.",
    )
    gradient_checkpointing: StrictBool = True
    use_rslora: StrictBool = False
    use_dora: StrictBool = False

    @field_validator("lora_trainable_modules", mode="before")
    @classmethod
    def _module_names(cls, value: Any) -> Any:
        if value == "all-linear":
            return value
        if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
            _bad(value, '"all-linear" or a non-empty list of module names such as ["q_proj", "v_proj"]')
        bad = [m for m in value if not m or not all(c.isalnum() or c in "_.-" for c in m)]
        if bad:
            raise ValueError(f"module names may hold letters, digits, '_', '.', '-'; got {bad}")
        if len(set(value)) != len(value):
            raise ValueError("module names must be unique")
        if any(m.split(".")[-1] in ("lm_head", "embed_tokens") for m in value):
            raise ValueError(
                "lm_head and embed_tokens cannot carry LoRA: serving engines (vLLM) refuse such "
                "adapters and the trainer computes log-probabilities from lm_head's weight directly"
            )
        return value


class OutputOptions(_Strict):
    """What the runner writes besides the adapter."""

    log_every_n_steps: Annotated[StrictInt, Field(ge=1)] = 1
    keep_checkpoints: Annotated[StrictInt, Field(ge=1)] = 3
    checkpoint_every_seconds: Annotated[StrictInt, Field(ge=10)] | None = Field(
        default=1800,
        description="Also checkpoint when this much wall time passed since the last one (bounds SIGKILL loss).",
    )


class JobSpec(_Strict):
    """A training job, version 1."""

    spec_version: Literal[1] = Field(description="Always 1 for this layout.")
    method: Method
    base_model: BaseModelRef
    training_file: Path
    validation_file: Path | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] = 0
    hyperparameters: Hyperparameters = Hyperparameters()
    output: OutputOptions = OutputOptions()

    _paths = field_validator("training_file", "validation_file", mode="before")(_resolve_path)

    @model_validator(mode="after")
    def _compatible(self) -> JobSpec:
        """Combinations that cannot train, each with the reason (Axolotl-style)."""
        hp = self.hyperparameters
        problems: list[tuple[str, str]] = []
        if self.method == "dpo":
            if hp.packing:
                problems.append(
                    (
                        "hyperparameters.packing",
                        "packing is not supported with method dpo: a preference pair must stay one "
                        "sequence per side to compare their log-probabilities",
                    )
                )
            if hp.train_on_inputs is True:
                problems.append(
                    (
                        "hyperparameters.train_on_inputs",
                        "train_on_inputs applies to method supervised; DPO scores only the replies",
                    )
                )
        else:
            if hp.beta is not None:
                problems.append(("hyperparameters.beta", "beta applies to method dpo only"))
        if isinstance(hp.n_evals, int) and hp.n_evals > 0 and self.validation_file is None:
            problems.append(("hyperparameters.n_evals", f"n_evals={hp.n_evals} needs a validation_file"))
        if (
            isinstance(hp.batch_size, int)
            and isinstance(hp.gradient_accumulation_steps, int)
            and hp.batch_size % hp.gradient_accumulation_steps
        ):
            problems.append(
                (
                    "hyperparameters.gradient_accumulation_steps",
                    f"batch_size={hp.batch_size} must be a multiple of gradient_accumulation_steps="
                    f"{hp.gradient_accumulation_steps} (each micro-batch holds batch_size / "
                    "gradient_accumulation_steps examples)",
                )
            )
        if self.validation_file is not None and self.validation_file == self.training_file:
            problems.append(("validation_file", "validation_file must differ from training_file"))
        if problems:
            raise _SpecProblems(problems)
        return self


class _SpecProblems(ValueError):
    """Cross-field problems raised from a model validator, unpacked by `_issues_from`."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))


def _issues_from(error: ValidationError) -> list[tuple[str, str]]:
    issues: list[tuple[str, str]] = []
    for item in error.errors(include_url=False):
        ctx_error = (item.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _SpecProblems):
            issues.extend(ctx_error.problems)
            continue
        loc = [str(p) for p in item["loc"] if not _is_union_member(p)]
        field = ".".join(loc)
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see docs/gpu_runner.md for the fields)"
        elif item["type"] == "missing":
            message = "required field is missing"
        elif item["type"] == "literal_error":
            message = f"{message}, got {json.dumps(item.get('input'), default=str)}"
        if (field, message) not in issues:
            issues.append((field, message))
    return issues


def _is_union_member(part: Any) -> bool:
    text = str(part)
    return text.startswith(("literal[", "function-", "constrained-", "list[")) or text in (
        "int",
        "float",
        "bool",
        "str",
        "json-or-python[json=function-after[",
    )


def parse_spec(
    data: dict[str, Any] | str | bytes, *, base_dir: str | os.PathLike[str] | None = None
) -> JobSpec:
    """Validate a spec from a dict or JSON text. Relative paths are taken from `base_dir`.

    Raises `SpecError` with one `(field, message)` per problem.
    """
    context = {"base_dir": Path(base_dir) if base_dir is not None else None}
    try:
        if isinstance(data, str | bytes):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise SpecError([("", f"the spec is not valid JSON: {exc}")]) from None
        if not isinstance(data, dict):
            raise SpecError([("", "the spec must be a JSON object")])
        version = data.get("spec_version")
        if version is not None and version != SPEC_VERSION:
            raise SpecError(
                [("spec_version", f"unsupported spec_version {version!r}; this runner reads {SPEC_VERSION}")]
            )
        return JobSpec.model_validate(data, context=context)
    except ValidationError as exc:
        raise SpecError(_issues_from(exc)) from None


def load_spec(path: str | os.PathLike[str]) -> JobSpec:
    """Read and validate a spec file; relative paths inside it are relative to its folder."""
    spec_path = Path(path)
    try:
        text = spec_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([("", f"cannot read spec file {spec_path}: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise SpecError([("", f"spec file {spec_path} is not UTF-8")]) from None
    return parse_spec(text, base_dir=spec_path.resolve().parent)


def check_paths(spec: JobSpec) -> None:
    """Fail with a field-level `SpecError` when a file or the base model folder is missing.

    Separate from validation so the control plane can validate specs whose paths exist only on a GPU node.
    """
    issues: list[tuple[str, str]] = []
    base = spec.base_model.path
    if not base.is_dir():
        issues.append(("base_model.path", f"{base} is not a directory"))
    elif not (base / "config.json").is_file():
        issues.append(
            ("base_model.path", f"{base} holds no config.json (expected a transformers model folder)")
        )
    for field in ("training_file", "validation_file"):
        path = getattr(spec, field)
        if path is not None and not path.is_file():
            issues.append((field, f"{path} does not exist or is not a file"))
    if issues:
        raise SpecError(issues)


def spec_fingerprint(spec: JobSpec) -> str:
    """sha256 of what decides the training trajectory (method, data paths, seed, hyperparameters),
    stored in checkpoints so a resume under a different spec is refused."""
    payload = spec.model_dump(mode="json", include={"method", "seed", "hyperparameters", "spec_version"})
    payload["base_model"] = {"name": spec.base_model.name, "revision": spec.base_model.revision}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --- resolution of "auto" --------------------------------------------------------------------------


class DatasetStats(_Strict):
    """What `resolve()` needs to know about the tokenized training data and the run."""

    n_examples: Annotated[int, Field(ge=1)] = Field(
        description="Training rows after dropping (packed rows with packing)."
    )
    max_tokens: Annotated[int, Field(ge=1)] = Field(
        description="Longest training row, in tokens, after truncation."
    )
    data_format: Literal["chat", "preference", "prompt_completion", "text"] = "chat"
    has_validation: bool = False
    world_size: Annotated[int, Field(ge=1)] = 1


class ResolvedHyperparameters(_Strict):
    """Concrete hyperparameters plus the step plan derived from them."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    beta: float | None
    learning_rate: float
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_trainable_modules: str | list[str]
    warmup_ratio: float
    max_grad_norm: float
    weight_decay: float
    lr_scheduler: LRScheduler
    train_on_inputs: bool
    n_checkpoints: int
    n_evals: int
    quantization: Quantization
    compute_dtype: ComputeDtype
    max_seq_length: int
    packing: bool
    gradient_accumulation_steps: int
    max_batch_tokens: int
    gradient_checkpointing: bool
    use_rslora: bool
    use_dora: bool
    # Derived.
    effective_learning_rate: float
    micro_batch_size: int
    world_size: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    checkpoint_every_n_steps: int
    eval_every_n_steps: int | None
    auto: list[str] = Field(description='Names of the fields that were "auto" in the spec.')


def resolve_train_on_inputs(value: bool | Literal["auto"], data_format: str) -> bool:
    """`auto` (Together's rule): train on everything for raw `text`, only on replies otherwise."""
    if value == "auto":
        return data_format == "text"
    return bool(value)


def auto_n_epochs(n_examples: int) -> int:
    """OpenAI's cookbook rule: 3 epochs, raised so that examples x epochs >= 100, lowered so that it stays
    <= 25,000, and kept within 1..25."""
    n_epochs = TARGET_EPOCHS
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        n_epochs = min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    elif n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        n_epochs = max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return max(MIN_DEFAULT_EPOCHS, min(MAX_DEFAULT_EPOCHS, n_epochs))


def auto_batch_size(n_examples: int, world_size: int = 1) -> int:
    """About 0.2% of the examples rounded down to a power of two, within [1, 256]; at least one example
    per device; never more than the dataset."""
    target = max(1.0, n_examples * BATCH_SIZE_SHARE)
    size = 2 ** int(math.floor(math.log2(target)))
    size = max(size, world_size)
    size = min(size, MAX_AUTO_BATCH_SIZE, max(n_examples, world_size))
    return max(1, size)


def auto_gradient_accumulation(per_device_batch: int, max_tokens: int, max_batch_tokens: int) -> int:
    """Smallest divisor g of the per-device batch such that a micro-batch of per_device_batch / g rows,
    each padded to the longest row of the dataset, fits the token budget."""
    for g in _divisors(per_device_batch):
        if (per_device_batch // g) * max_tokens <= max_batch_tokens:
            return g
    return per_device_batch


def _divisors(n: int) -> Iterable[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def resolve(spec: JobSpec, stats: DatasetStats) -> ResolvedHyperparameters:
    """Turn every `"auto"` of `spec.hyperparameters` into a value and derive the step plan.

    Rules (also in docs/gpu_runner.md):
    - n_epochs: `auto_n_epochs` (OpenAI's cookbook rule).
    - batch_size: `auto_batch_size` (0.2% of the examples, power of two, 1..256); an explicit batch_size is
      rounded up to a multiple of the world size.
    - learning_rate_multiplier: 1.0 for supervised, 0.25 for DPO; effective rate = learning_rate x multiplier.
    - beta: 0.1 (DPO).
    - lora_alpha: 2 x lora_r.
    - train_on_inputs: `resolve_train_on_inputs`.
    - gradient_accumulation_steps: `auto_gradient_accumulation` against `max_batch_tokens`.
    - n_checkpoints: 10 evenly spaced (at most one per step); epoch ends are always checkpointed.
    - n_evals: 0 without a validation file, otherwise one per epoch; the last step is always evaluated.
    - compute_dtype stays "auto" here; the runner picks bfloat16 on GPUs that support it, float16 on
      older GPUs, float32 on CPU.
    """
    hp = spec.hyperparameters
    auto = [name for name, value in hp if value == "auto"]
    if spec.method == "dpo" and hp.beta is None:
        auto.append("beta")
    world = stats.world_size
    n_epochs = auto_n_epochs(stats.n_examples) if hp.n_epochs == "auto" else hp.n_epochs
    if hp.batch_size == "auto":
        batch_size = auto_batch_size(stats.n_examples, world)
    else:
        batch_size = int(math.ceil(hp.batch_size / world) * world)
    per_device = batch_size // world
    if hp.gradient_accumulation_steps == "auto":
        grad_accum = auto_gradient_accumulation(
            per_device, min(stats.max_tokens, hp.max_seq_length), hp.max_batch_tokens
        )
    else:
        grad_accum = hp.gradient_accumulation_steps
        if per_device % grad_accum:
            raise SpecError(
                [
                    (
                        "hyperparameters.gradient_accumulation_steps",
                        f"the per-device batch ({per_device} = batch_size {batch_size} / {world} devices) "
                        f"must be a multiple of gradient_accumulation_steps={grad_accum}",
                    )
                ]
            )
    micro = per_device // grad_accum
    # Mirrors the trainer's count: each device gets ceil(micro-batches / devices) micro-batches per epoch.
    micro_batches = math.ceil(stats.n_examples / micro)
    per_device_micro_batches = math.ceil(micro_batches / world)
    steps_per_epoch = max(1, math.ceil(per_device_micro_batches / grad_accum))
    total_steps = steps_per_epoch * n_epochs

    multiplier = (
        AUTO_LR_MULTIPLIER[spec.method]
        if hp.learning_rate_multiplier == "auto"
        else hp.learning_rate_multiplier
    )
    beta = (
        (AUTO_BETA if hp.beta is None or hp.beta == "auto" else float(hp.beta))
        if spec.method == "dpo"
        else None
    )
    n_checkpoints = min(AUTO_N_CHECKPOINTS if hp.n_checkpoints == "auto" else hp.n_checkpoints, total_steps)
    if hp.n_evals == "auto":
        n_evals = n_epochs if stats.has_validation else 0
    else:
        n_evals = min(hp.n_evals, total_steps)
    if n_evals and not stats.has_validation:
        raise SpecError([("hyperparameters.n_evals", f"n_evals={n_evals} needs a validation_file")])

    return ResolvedHyperparameters(
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate_multiplier=float(multiplier),
        beta=beta,
        learning_rate=hp.learning_rate,
        lora_r=hp.lora_r,
        lora_alpha=2 * hp.lora_r if hp.lora_alpha == "auto" else hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        lora_trainable_modules=hp.lora_trainable_modules,
        warmup_ratio=hp.warmup_ratio,
        max_grad_norm=hp.max_grad_norm,
        weight_decay=hp.weight_decay,
        lr_scheduler=hp.lr_scheduler,
        train_on_inputs=resolve_train_on_inputs(hp.train_on_inputs, stats.data_format),
        n_checkpoints=n_checkpoints,
        n_evals=n_evals,
        quantization=hp.quantization,
        compute_dtype=hp.compute_dtype,
        max_seq_length=hp.max_seq_length,
        packing=hp.packing,
        gradient_accumulation_steps=grad_accum,
        max_batch_tokens=hp.max_batch_tokens,
        gradient_checkpointing=hp.gradient_checkpointing,
        use_rslora=hp.use_rslora,
        use_dora=hp.use_dora,
        effective_learning_rate=hp.learning_rate * float(multiplier),
        micro_batch_size=micro,
        world_size=world,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_steps=int(math.ceil(hp.warmup_ratio * total_steps)),
        checkpoint_every_n_steps=max(1, math.ceil(total_steps / n_checkpoints)),
        eval_every_n_steps=max(1, math.ceil(total_steps / n_evals)) if n_evals else None,
        auto=auto,
    )
