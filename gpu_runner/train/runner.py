"""One training run, start to finish: spec → data → "auto" resolved → model → train → adapter, with events.

Each phase fails fast before the costlier next one: validate the spec and its paths; machine checks and
the checkpoint to resume from; load the tokenizer; read, render, tokenize and mask the data; resolve
`"auto"`; load the (quantized) base model; train; write the adapter. Every failure ends with one `error`
event carrying a stable code, and `run` returns the matching `gpu_runner.events.ExitCode`.
"""

from __future__ import annotations

import hashlib
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from gpu_runner.events import EXIT_CODE_FOR_ERROR, ErrorCode, EventWriter, ExitCode
from gpu_runner.formats import DatasetError
from gpu_runner.spec import (
    DatasetStats,
    JobSpec,
    ResolvedHyperparameters,
    SpecError,
    check_paths,
    load_spec,
    resolve,
    resolve_train_on_inputs,
    spec_fingerprint,
)
from gpu_runner.train.signals import StopRequested, StopSwitch


@dataclass
class RunOptions:
    """Command-line options of `python -m gpu_runner train`."""

    spec_path: Path
    output_dir: Path
    checkpoint_dir: Path | None = None  # default: OUTPUT/checkpoints
    resume_from: str | None = None  # a checkpoint folder, or "auto" for the newest complete one


@dataclass
class _Progress:
    """What the error handler needs to know about how far the run got."""

    phase: str = "spec"
    resolved: ResolvedHyperparameters | None = None
    longest_row: int | None = None


class _Failure(Exception):
    """A failure with its stable error code and event fields."""

    def __init__(self, code: ErrorCode, message: str, **data: Any) -> None:
        self.code = code
        self.data = data
        super().__init__(message)


def run(
    options: RunOptions, events: EventWriter, *, is_writer: bool = True, restore_signals: bool = True
) -> ExitCode:
    """Run one job; returns the process exit code. `is_writer` is False on ranks other than 0.

    With `restore_signals=False` (the command line) SIGTERM/SIGINT stay deferred after the run: a stop
    that arrives once the outcome is written has nothing left to stop, and must not turn a finished run
    into one killed by a signal while the process exits."""
    stop = StopSwitch()
    stop.install()
    progress = _Progress()
    try:
        return _run(options, events, stop, progress, is_writer)
    except StopRequested as stopped:
        events.emit(
            "cancelled",
            f"Stopped by {stopped} before training began; no checkpoint was needed",
            signal=str(stopped),
            step=None,
            checkpoint=None,
        )
        return ExitCode.STOPPED
    except _Failure as failure:
        events.error(failure.code, str(failure), **failure.data)
        return EXIT_CODE_FOR_ERROR[failure.code]
    except SpecError as exc:
        events.error(
            ErrorCode.INVALID_SPEC,
            str(exc),
            param=exc.field,
            issues=[{"field": f, "message": m} for f, m in exc.issues],
        )
        return ExitCode.INVALID_INPUT
    except Exception as exc:  # noqa: BLE001 - the one place that turns any other failure into an event
        from gpu_runner.train.common import is_out_of_memory

        if is_out_of_memory(exc):
            return _report_out_of_memory(events, exc, progress)
        events.error(
            ErrorCode.INTERNAL_ERROR,
            f"{type(exc).__name__}: {exc}",
            phase=progress.phase,
            traceback=traceback.format_exc(limit=12),
        )
        return ExitCode.FAILED
    finally:
        if restore_signals:
            stop.uninstall()
        else:
            stop.deferred = True


def _report_out_of_memory(events: EventWriter, exc: BaseException, progress: _Progress) -> ExitCode:
    from gpu_runner.train.common import memory_advice

    advice = memory_advice(progress.resolved, progress.longest_row) if progress.resolved else []
    first_line = str(exc).splitlines()[0][:300] if str(exc) else ""
    hint = "; ".join(f"{a['param']}={a['value']}" for a in advice[:3])
    events.error(
        ErrorCode.OUT_OF_MEMORY,
        f"Out of memory during {progress.phase} ({type(exc).__name__}: {first_line})."
        + (f" Settings that lower memory: {hint}" if hint else ""),
        phase=progress.phase,
        suggestions=advice,
    )
    return ExitCode.OUT_OF_MEMORY


def _run(
    options: RunOptions, events: EventWriter, stop: StopSwitch, progress: _Progress, is_writer: bool
) -> ExitCode:
    started = time.monotonic()
    spec = load_spec(options.spec_path)
    check_paths(spec)
    output_dir = options.output_dir.resolve()
    checkpoint_dir = (options.checkpoint_dir or output_dir / "checkpoints").resolve()

    # The torch stack loads from here on.
    from gpu_runner.train import checkpoints as ckpt
    from gpu_runner.train.common import (
        launch_record,
        library_versions,
        pick_device,
        preflight,
        quiet_libraries,
        world,
    )

    device = pick_device()
    preflight(spec, device)
    launch = launch_record()
    resume, resume_manifest = _find_resume(options.resume_from, checkpoint_dir, spec)
    libraries = library_versions()
    events.emit(
        "started",
        f"Training {spec.method} on {spec.base_model.name}"
        + (f", resuming from {resume.name}" if resume else ""),
        method=spec.method,
        spec_version=spec.spec_version,
        base_model={"name": spec.base_model.name, "revision": spec.base_model.revision},
        training_file=str(spec.training_file),
        validation_file=str(spec.validation_file) if spec.validation_file else None,
        output_dir=str(output_dir),
        checkpoint_dir=str(checkpoint_dir),
        resume_from=str(resume) if resume else None,
        device=str(device),
        world_size=world()[2],
        libraries=libraries,
    )
    quiet_libraries()

    progress.phase = "tokenizer"
    from gpu_runner.train.common import ModelLoadError, load_tokenizer

    try:
        tokenizer = load_tokenizer(spec.base_model.path)
    except ModelLoadError as exc:
        raise _Failure(ErrorCode.MODEL_LOAD_FAILED, str(exc), param="base_model.path") from None

    progress.phase = "data"
    data = _prepare_data(spec, tokenizer, events)
    if resume_manifest is not None and resume_manifest.get("data_fingerprint") != data["fingerprint"]:
        raise SpecError(
            [
                (
                    "resume_from",
                    f"{resume.name if resume else ''} was trained on other data than "
                    "training_file/validation_file hold now; resuming would not continue the "
                    "same run",
                )
            ]
        )
    progress.longest_row = data["stats"].max_tokens

    from gpu_runner.train.common import pick_compute_dtype

    resolved = resolve(spec, data["stats"])
    dtype = pick_compute_dtype(resolved.compute_dtype, device)
    resolved = resolved.model_copy(update={"compute_dtype": str(dtype).removeprefix("torch.")})
    progress.resolved = resolved
    events.emit(
        "hyperparameters_resolved",
        f"Hyperparameters: n_epochs={resolved.n_epochs}, batch_size={resolved.batch_size}, "
        f"learning_rate_multiplier={resolved.learning_rate_multiplier}, {resolved.total_steps} steps"
        + (
            f" ({launch['strategy']} over {launch['world_size']} processes)"
            if launch["world_size"] > 1
            else ""
        ),
        hyperparameters=resolved.model_dump(mode="json"),
        launch=launch,
    )

    progress.phase = "model"
    trainer, callback = _build_trainer(
        spec, resolved, data, tokenizer, events, stop, device, dtype, checkpoint_dir, resume, is_writer
    )
    if is_writer:
        ckpt.remove_stale_temporaries(checkpoint_dir)

    progress.phase = "training"
    if stop.requested:  # a signal that landed while the model was loading
        raise StopRequested(cast(int, stop.signum))
    stop.deferred = True
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    step = trainer.state.global_step
    if stop.requested and callback.stopped_at_step is not None:
        name = signal.Signals(cast(int, stop.signum)).name
        saved = checkpoint_dir / f"{ckpt.CHECKPOINT_PREFIX}{trainer.tailor_last_saved_step}"
        events.emit(
            "cancelled",
            f"Stopped by {name} at step {step}; checkpoint {saved.name} holds the run",
            signal=name,
            step=step,
            total_steps=trainer.state.max_steps,
            checkpoint=str(saved),
        )
        return ExitCode.STOPPED

    progress.phase = "output"
    return _finish(trainer, tokenizer, spec, resolved, data, device, output_dir, libraries, events, started)


def _build_trainer(
    spec: JobSpec,
    resolved: ResolvedHyperparameters,
    data: dict[str, Any],
    tokenizer: Any,
    events: EventWriter,
    stop: StopSwitch,
    device: Any,
    dtype: Any,
    checkpoint_dir: Path,
    resume: Path | None,
    is_writer: bool,
) -> tuple[Any, Any]:
    """Load the base model, wrap it in the method's trainer with LoRA, and report `model_loaded`."""
    from gpu_runner.train.common import (
        ModelLoadError,
        RunCallback,
        attention_implementation,
        common_training_arguments,
        finish_peft_setup,
        load_base_model,
        lora_config,
        memory_figures,
        parameter_counts,
    )

    try:
        model = load_base_model(spec, resolved, device, dtype)
    except ModelLoadError as exc:
        raise _Failure(ErrorCode.MODEL_LOAD_FAILED, str(exc), param="base_model.path") from None
    peft_config = lora_config(resolved, model)
    arguments = common_training_arguments(spec, resolved, checkpoint_dir, device, dtype)
    # Evaluating before the first step gives the base model's validation figures (the adapter starts as a no-op).
    arguments["eval_on_start"] = data["eval"] is not None and resume is None
    callback = RunCallback(
        resolved=resolved,
        spec=spec,
        events=events,
        stop=stop,
        device=device,
        is_writer=is_writer,
        method=spec.method,
    )
    common = {
        "model": model,
        "tokenizer": tokenizer,
        "train_dataset": data["train"],
        "eval_dataset": data["eval"],
        "peft_config": peft_config,
        "arguments": arguments,
        "callbacks": [callback],
    }
    trainer: Any
    if spec.method == "supervised":
        from gpu_runner.train import sft

        padding_free = resolved.packing or attention_implementation(device).startswith("flash")
        trainer = sft.build_trainer(**common, padding_free=padding_free)
    else:
        from gpu_runner.train import dpo

        trainer = dpo.build_trainer(**common, beta=cast(float, resolved.beta))
    _quiet_default_callbacks(trainer)
    finish_peft_setup(trainer.model)

    trainer.tailor_checkpoint_dir = checkpoint_dir
    trainer.tailor_keep_checkpoints = spec.output.keep_checkpoints
    trainer.tailor_base_model = {
        "base_model_name": spec.base_model.name,
        "base_model_revision": spec.base_model.revision,
    }
    trainer.tailor_manifest = {
        "spec_fingerprint": spec_fingerprint(spec),
        "data_fingerprint": data["fingerprint"],
        "method": spec.method,
        "base_model": spec.base_model.name,
        "hyperparameters": resolved.model_dump(mode="json"),
    }

    def on_checkpoint(step: int, path: Path) -> None:
        latest = {
            k: v for k, v in callback.last_train.items() if k in ("train_loss", "train_mean_token_accuracy")
        }
        latest.update({k: v for k, v in callback.last_eval.items() if k.startswith("valid_")})
        events.emit(
            "checkpoint_saved",
            f"Checkpoint at step {step}: {path}",
            step=step,
            epoch=round(trainer.state.epoch or 0.0, 4),
            path=str(path),
            metrics=latest,
        )

    trainer.tailor_on_checkpoint = on_checkpoint

    total, trainable = parameter_counts(trainer.model)
    events.emit(
        "model_loaded",
        f"Loaded {spec.base_model.name} ({resolved.quantization}): {trainable:,} of "
        f"{total:,} parameters trainable ({trainable / max(total, 1):.3%})",
        parameters=total,
        trainable_parameters=trainable,
        trainable_share=trainable / max(total, 1),
        quantization=resolved.quantization,
        compute_dtype=resolved.compute_dtype,
        device=str(device),
        attention=attention_implementation(device),
        memory=memory_figures(trainer.model, device),
    )
    return trainer, callback


def _finish(
    trainer: Any,
    tokenizer: Any,
    spec: JobSpec,
    resolved: ResolvedHyperparameters,
    data: dict[str, Any],
    device: Any,
    output_dir: Path,
    libraries: dict[str, Any],
    events: EventWriter,
    started: float,
) -> ExitCode:
    """Write the adapter (rank 0) and report `completed`."""
    import torch

    from gpu_runner.train.checkpoints import gather_trainable_state, is_sharded
    from gpu_runner.train.common import memory_figures
    from gpu_runner.train.outputs import write_adapter, write_rank_digest

    step = trainer.state.global_step
    manifest: dict[str, Any] = {}
    # A sharded model's adapter is gathered by every rank, then written by rank 0.
    weights = gather_trainable_state(trainer.model) if is_sharded(trainer) else None
    if trainer.is_world_process_zero():
        manifest = write_adapter(
            model=trainer.accelerator.unwrap_model(trainer.model),
            tokenizer=tokenizer,
            output_dir=output_dir,
            spec=spec,
            resolved=resolved,
            log_history=trainer.state.log_history,
            trained_tokens=trainer.state.num_input_tokens_seen,
            steps=step,
            data=data["summary"],
            libraries=libraries,
            state_dict=weights,
        )
    write_rank_digest(trainer.accelerator.unwrap_model(trainer.model), trainer.args.process_index)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    events.emit(
        "completed",
        f"Training finished after {step} steps",
        trained_tokens=trainer.state.num_input_tokens_seen,
        steps=step,
        epochs=round(trainer.state.epoch or 0.0, 4),
        metrics=manifest.get("metrics", {}),
        output_dir=str(output_dir),
        files=sorted(manifest.get("files", {})),
        runtime_seconds=round(time.monotonic() - started, 1),
        memory=memory_figures(trainer.model, device),
    )
    return ExitCode.SUCCEEDED


def _quiet_default_callbacks(trainer: Any) -> None:
    """stdout may carry the event stream, so the Trainer's printers go; `RunCallback` draws the progress bar."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cls in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cls)


def _find_resume(
    resume_from: str | None, checkpoint_dir: Path, spec: JobSpec
) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to continue from and its manifest; `auto` without a checkpoint starts fresh."""
    from gpu_runner.train import checkpoints as ckpt

    if resume_from is None:
        return None, None
    if resume_from == "auto":
        path = ckpt.find_latest_checkpoint(checkpoint_dir)
        if path is None:
            return None, None
    else:
        path = Path(resume_from).resolve()
    try:
        manifest = ckpt.read_manifest(path)
    except ckpt.CheckpointError as exc:
        raise SpecError([("resume_from", str(exc))]) from None
    if manifest.get("spec_fingerprint") != spec_fingerprint(spec):
        raise SpecError(
            [
                (
                    "resume_from",
                    f"{path.name} was written by a run with a different spec (method, seed, "
                    "base model or hyperparameters); it cannot be continued under this one",
                )
            ]
        )
    return path, manifest


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _prepare_data(spec: JobSpec, tokenizer: Any, events: EventWriter) -> dict[str, Any]:
    """Tokenize both files, report `dataset_ready` (and `warning` for dropped examples), and return the
    datasets, the statistics `resolve` needs, a fingerprint of the data and its summary for the adapter."""
    from gpu_runner.train import data as data_module

    hp = spec.hyperparameters
    rows_by_file: dict[str, list[Any]] = {}
    reports: dict[str, data_module.DataReport] = {}
    for field in ("training_file", "validation_file"):
        path = getattr(spec, field)
        if path is None:
            continue
        code = (
            ErrorCode.INVALID_TRAINING_FILE if field == "training_file" else ErrorCode.INVALID_VALIDATION_FILE
        )
        rows: list[Any]
        try:
            if spec.method == "dpo":
                rows, report = data_module.build_preference_rows(
                    path, tokenizer, max_seq_length=hp.max_seq_length, source=field
                )
            else:
                fmt = data_module.detect_format(path)
                train_on_inputs = resolve_train_on_inputs(hp.train_on_inputs, fmt.value)
                rows, report = data_module.build_supervised_rows(
                    path,
                    tokenizer,
                    train_on_inputs=train_on_inputs,
                    max_seq_length=hp.max_seq_length,
                    source=field,
                )
        except DatasetError as exc:
            first = exc.issues[0]
            raise _Failure(
                code,
                str(exc),
                param=field,
                line=first.line,
                field=first.path,
                issue_code=first.code,
                issues=[i.to_dict() for i in exc.issues],
            ) from None
        except data_module.UntrainableExamplesError as exc:
            raise _Failure(
                code,
                str(exc),
                param=field,
                line=exc.lines[0],
                lines=exc.lines[:100],
                issue_code="no_trained_tokens",
            ) from None
        except data_module.TemplateError as exc:
            raise _Failure(
                code, str(exc), param=field, line=exc.line, issue_code="template_mismatch"
            ) from None
        if report.dropped_lines:
            events.emit(
                "warning",
                f"{field}: dropped {len(report.dropped_lines)} of {report.examples} examples "
                f"with no trained token (lines {report.dropped_lines[:20]})",
                level="warn",
                code="examples_dropped",
                param=field,
                lines=report.dropped_lines[:100],
                reasons={str(k): v for k, v in list(report.drop_reasons.items())[:20]},
            )
        rows_by_file[field] = rows
        reports[field] = report

    train_report = reports["training_file"]
    validation_rows = rows_by_file.get("validation_file")
    if spec.method == "dpo":
        from gpu_runner.train.dpo import preference_dataset

        train_dataset = preference_dataset(rows_by_file["training_file"])
        eval_dataset = preference_dataset(validation_rows) if validation_rows else None
    else:
        from gpu_runner.train.sft import pack_rows, supervised_dataset

        train_dataset = supervised_dataset(rows_by_file["training_file"])
        eval_dataset = supervised_dataset(validation_rows) if validation_rows else None
        if hp.packing:
            train_dataset = pack_rows(train_dataset, hp.max_seq_length)
            train_report.packed_rows = len(train_dataset)

    from gpu_runner.train.common import world

    stats = DatasetStats(
        n_examples=train_report.packed_rows or train_report.rows,
        max_tokens=max(train_report.max_tokens, 1),
        data_format=cast(Any, train_report.data_format),
        has_validation=eval_dataset is not None,
        world_size=world()[2],
    )
    fingerprint = hashlib.sha256()
    summary: dict[str, Any] = {}
    for field, report in reports.items():
        digest = _file_digest(getattr(spec, field))
        fingerprint.update(f"{field}:{digest}\n".encode())
        summary[field] = {
            "sha256": digest,
            "examples": report.examples,
            "rows": report.rows,
            "tokens": report.tokens,
            "trained_tokens": report.trained_tokens,
            "dropped": len(report.dropped_lines),
        }
    events.emit(
        "dataset_ready",
        f"Training data: {train_report.rows} examples, {train_report.tokens:,} tokens, "
        f"{train_report.truncated} truncated",
        training=train_report.as_event_data(),
        validation=reports["validation_file"].as_event_data() if "validation_file" in reports else None,
    )
    return {
        "train": train_dataset,
        "eval": eval_dataset,
        "stats": stats,
        "fingerprint": fingerprint.hexdigest(),
        "summary": summary,
    }
