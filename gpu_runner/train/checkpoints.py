"""Checkpoints without pickles, written atomically, and the Trainer hooks that use them.

transformers' Trainer saves `optimizer.pt`, `scheduler.pt`, `rng_state.pth` and `training_args.bin`
with `torch.save` (pickle) and loads them back with `torch.load`. Tailor replaces all of it:

- the adapter: `adapter_model.safetensors` + `adapter_config.json` (PEFT's own format);
- optimizer, scheduler and gradient-scaler state: `<name>.json` (structure, numbers) plus
  `<name>.safetensors` (every tensor), see `save_state_tree`;
- RNG state of Python, NumPy, torch CPU and CUDA, per rank: `rng_state.json`;
- `trainer_state.json` (Trainer's own JSON);
- `tailor_checkpoint.json`, the manifest, written last: step, epoch, spec and data fingerprints, and the
  sha256 of every other file.

A checkpoint is written into `.tmp-checkpoint-<step>-<pid>` and renamed to `checkpoint-<step>` when
complete, so a reader never sees a half-written one; `find_latest_checkpoint` also checks the digests and
skips a checkpoint whose files do not match. Only rank 0 writes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_PREFIX = "checkpoint-"
TEMP_PREFIX = ".tmp-checkpoint-"
MANIFEST_NAME = "tailor_checkpoint.json"
MANIFEST_FORMAT = "tailor-checkpoint/1"
RNG_STATE_NAME = "rng_state.json"
TRAINER_STATE_NAME = "trainer_state.json"


class CheckpointError(Exception):
    """A checkpoint that cannot be used (missing, corrupt, or from another spec)."""


# --- state trees: JSON structure + safetensors tensors ------------------------------------------------


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "root"
        tensors[key] = obj.detach().to("cpu").clone().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, bool) or obj is None or isinstance(obj, int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), tensors, path)
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{path}.{k}" if path else k) for k, v in obj.items()}
        pairs = []
        for k, v in obj.items():
            if not isinstance(k, int | str | bool | float) or isinstance(k, float) and not math.isfinite(k):
                raise TypeError(f"cannot store a dict key of type {type(k).__name__} at {path or 'root'}")
            pairs.append([k, _encode(v, tensors, f"{path}.{k}" if path else str(k))])
        return {"__dict__": pairs}
    raise TypeError(f"cannot store a {type(obj).__name__} at {path or 'root'} without pickle")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__float__" in obj:
            return float(obj["__float__"])
        if "__dict__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__dict__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


def save_state_tree(obj: Any, directory: Path, name: str) -> list[str]:
    """Store a state dict (nested dicts, lists, tuples, numbers, strings, tensors) as `<name>.json` and
    `<name>.safetensors`. Anything else raises `TypeError`: nothing is ever pickled. Returns the file names."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(obj, tensors, "")
    files = [f"{name}.json"]
    (directory / f"{name}.json").write_text(json.dumps(structure), encoding="utf-8")
    if tensors:
        save_file(tensors, str(directory / f"{name}.safetensors"), metadata={"format": "pt"})
        files.append(f"{name}.safetensors")
    return files


def load_state_tree(directory: Path, name: str) -> Any:
    """Inverse of `save_state_tree` (tensors come back on the CPU)."""
    structure = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    tensor_file = directory / f"{name}.safetensors"
    tensors = load_file(str(tensor_file)) if tensor_file.exists() else {}
    return _decode(structure, tensors)


# --- RNG state as JSON -------------------------------------------------------------------------------


def _bytes_of(t: torch.Tensor) -> str:
    return base64.b64encode(t.to("cpu").numpy().tobytes()).decode("ascii")


def _tensor_of(data: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(data)), dtype=torch.uint8).clone()


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states (Python, NumPy, torch CPU, CUDA devices) as JSON-able data."""
    version, internal, gauss = random.getstate()
    key, state, pos, has_gauss, cached = np.random.get_state(legacy=True)
    out: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {
            "key": key,
            "state": [int(x) for x in state],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch_cpu": _bytes_of(torch.random.get_rng_state()),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [_bytes_of(s) for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["key"],
            np.array(npy["state"], dtype=np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.random.set_rng_state(_tensor_of(state["torch_cpu"]))
    if state.get("cuda") and torch.cuda.is_available():
        states = [_tensor_of(s) for s in state["cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# --- files: digests, atomic directory writes, discovery --------------------------------------------------


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(
    checkpoint_dir: Path, step: int, write: Callable[[Path], None], manifest: dict[str, Any]
) -> Path:
    """Run `write(tmp)` to fill a temporary folder, add the manifest (with file digests) last, fsync, and
    rename it to `checkpoint_dir/checkpoint-<step>`. Returns the final path."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = checkpoint_dir / f"{TEMP_PREFIX}{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
        files = {}
        for path in sorted(tmp.iterdir()):
            if path.is_file():
                files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
                with open(path, "rb") as stream:
                    os.fsync(stream.fileno())
        body = {"format": MANIFEST_FORMAT, "step": step, **manifest, "files": files}
        manifest_path = tmp / MANIFEST_NAME
        with open(manifest_path, "w", encoding="utf-8") as stream:
            json.dump(body, stream, indent=1)
            stream.flush()
            os.fsync(stream.fileno())
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. after a resume): replace it whole
            stale = checkpoint_dir / f"{TEMP_PREFIX}{step}-old-{os.getpid()}"
            os.rename(final, stale)
            os.rename(tmp, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(checkpoint_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_manifest(checkpoint: Path) -> dict[str, Any]:
    """The manifest of a complete checkpoint; `CheckpointError` if it is missing, unreadable or if a
    file's digest differs from it."""
    manifest_path = checkpoint / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{checkpoint} is not a complete checkpoint (no readable {MANIFEST_NAME}): {exc}"
        ) from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{checkpoint}: unknown checkpoint format {manifest.get('format')!r}")
    for name, info in manifest.get("files", {}).items():
        path = checkpoint / name
        if not path.is_file() or sha256_file(path) != info["sha256"]:
            raise CheckpointError(f"{checkpoint}: {name} is missing or does not match its digest")
    return manifest


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Checkpoint folders by step, oldest first (temporary folders are never listed)."""
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in checkpoint_dir.iterdir():
        suffix = path.name[len(CHECKPOINT_PREFIX) :]
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit():
            found.append((int(suffix), path))
    return [p for _, p in sorted(found)]


def find_latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest checkpoint whose manifest and digests check out, or None."""
    for path in reversed(list_checkpoints(checkpoint_dir)):
        try:
            read_manifest(path)
        except CheckpointError:
            continue
        return path
    return None


def remove_stale_temporaries(checkpoint_dir: Path) -> None:
    """Delete half-written checkpoints left by a killed run."""
    if checkpoint_dir.is_dir():
        for path in checkpoint_dir.iterdir():
            if path.name.startswith(TEMP_PREFIX):
                shutil.rmtree(path, ignore_errors=True)


def rotate_checkpoints(checkpoint_dir: Path, keep: int) -> list[Path]:
    """Keep the newest `keep` checkpoints; returns the removed ones."""
    existing = list_checkpoints(checkpoint_dir)
    removed = existing[:-keep] if keep > 0 else []
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


# --- Trainer integration ---------------------------------------------------------------------------------


class SafeCheckpointMixin:
    """Replaces transformers.Trainer's checkpoint writing and reading with the pickle-free layout above.

    Put it before the TRL trainer class in the bases. The runner sets `tailor_checkpoint_dir`,
    `tailor_keep_checkpoints`, `tailor_manifest` (extra manifest fields), `tailor_base_model` and `tailor_on_checkpoint`
    (called on rank 0 with the step and path after each save).
    """

    tailor_checkpoint_dir: Path
    tailor_keep_checkpoints: int = 3
    tailor_manifest: dict[str, Any]
    tailor_base_model: dict[str, Any]  # save_adapter's base_model_name / base_model_revision
    tailor_on_checkpoint: Callable[[int, Path], None] | None = None
    tailor_last_saved_step: int | None = None

    # Trainer attributes used here (declared for type checkers).
    state: Any
    args: Any
    model: Any
    optimizer: Any
    lr_scheduler: Any
    accelerator: Any
    callback_handler: Any
    control: Any

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        step = self.state.global_step
        if self.tailor_last_saved_step == step:
            return
        self.store_flos()  # type: ignore[attr-defined]
        rng_states = _gather_rng_states()
        # Sharded weights and optimizer state are gathered by every rank; rank 0 then writes them whole.
        gathered = (
            (gather_trainable_state(self.model), gather_optimizer_state(self.model, self.optimizer))
            if is_sharded(self)
            else None
        )
        if self.args.should_save:
            self._tailor_update_stateful_callbacks()
            final = write_checkpoint(
                self.tailor_checkpoint_dir,
                step,
                lambda tmp: self._tailor_write(tmp, rng_states, gathered),
                {"epoch": self.state.epoch, **getattr(self, "tailor_manifest", {})},
            )
            rotate_checkpoints(self.tailor_checkpoint_dir, self.tailor_keep_checkpoints)
            if self.tailor_on_checkpoint is not None:
                self.tailor_on_checkpoint(step, final)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        self.tailor_last_saved_step = step

    def _tailor_update_stateful_callbacks(self) -> None:
        from transformers.trainer_callback import ExportableState

        for cb in [
            c for c in self.callback_handler.callbacks + [self.control] if isinstance(c, ExportableState)
        ]:
            name = cb.__class__.__name__
            if isinstance(self.state.stateful_callbacks.get(name), list):
                self.state.stateful_callbacks[name].append(cb.state())
            else:
                self.state.stateful_callbacks[name] = cb.state()

    def _tailor_write(
        self,
        directory: Path,
        rng_states: list[dict[str, Any]],
        gathered: tuple[dict[str, Any], dict[str, Any]] | None = None,
    ) -> None:
        from gpu_runner.train.common import save_adapter

        model = self.accelerator.unwrap_model(self.model)
        if gathered is None:
            save_adapter(model, directory, **self.tailor_base_model)
            save_state_tree(self.optimizer.state_dict(), directory, "optimizer")
        else:
            weights, optimizer_state = gathered
            save_adapter(model, directory, state_dict=weights, **self.tailor_base_model)
            save_state_tree(optimizer_state, directory, "optimizer")
        save_state_tree(self.lr_scheduler.state_dict(), directory, "scheduler")
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:
            save_state_tree(scaler.state_dict(), directory, "scaler")
        (directory / RNG_STATE_NAME).write_text(json.dumps({"ranks": rng_states}), encoding="utf-8")
        self.state.save_to_json(str(directory / TRAINER_STATE_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        from peft import set_peft_model_state_dict

        checkpoint = Path(resume_from_checkpoint)
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        weights = load_file(str(checkpoint / "adapter_model.safetensors"))
        if is_sharded(self):
            restore_trainable_state(model if model is not None else self.model, weights, source=checkpoint)
            return
        result = set_peft_model_state_dict(target, weights)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise CheckpointError(
                f"{checkpoint}: adapter weights do not fit this model ({unexpected[:3]} ...)"
            )

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        directory = Path(checkpoint)
        if is_sharded(self):
            restore_optimizer_state(self.model, self.optimizer, load_state_tree(directory, "optimizer"))
        else:
            self.optimizer.load_state_dict(load_state_tree(directory, "optimizer"))
        self.lr_scheduler.load_state_dict(load_state_tree(directory, "scheduler"))

    def _load_scaler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and (Path(checkpoint) / "scaler.json").exists():
            scaler.load_state_dict(load_state_tree(Path(checkpoint), "scaler"))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        path = Path(checkpoint) / RNG_STATE_NAME
        if not path.exists():
            return
        ranks = json.loads(path.read_text(encoding="utf-8"))["ranks"]
        index = self.args.process_index if self.args.process_index < len(ranks) else 0
        restore_rng_state(ranks[index])

    def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
        # Counts real (non-padding) tokens: attention masks when batches are padded, every position when
        # they are flattened without padding (packing / padding-free), where the pad id may equal EOS.
        if "attention_mask" in inputs:
            count = inputs["attention_mask"].sum()
        else:
            count = torch.tensor(inputs["input_ids"].numel())
        count = torch.as_tensor(count, device=self.args.device, dtype=torch.int64)
        self.state.num_input_tokens_seen += int(self.accelerator.gather(count).sum().item())


def _gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state, on every rank (so rank 0 can write them all). Sent as JSON bytes in
    tensors rather than with `all_gather_object`, which pickles."""
    state = capture_rng_state()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [state]
    dist = torch.distributed
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    payload = torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8, device=device)
    size = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload
    buffers = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(buffers, padded)
    return [
        json.loads(bytes(b[: int(n.item())].tolist()).decode()) for b, n in zip(buffers, sizes, strict=True)
    ]


# --- FSDP: whole states from sharded ranks -----------------------------------------------------------------
#
# Under FSDP every parameter and optimizer moment is a DTensor holding this rank's shard. Checkpoints and the
# adapter keep the single-process layout (PEFT's adapter file; the optimizer keyed by parameter name), so a
# sharded run writes what any run can read: every rank takes part in gathering the whole trainable state
# (torch.distributed.checkpoint.state_dict, full_state_dict on rank 0's CPU), and rank 0 writes it. On
# resume every rank reads the files and takes its shard. Frozen base weights are never gathered.


def is_sharded(trainer: Any) -> bool:
    """Whether the trainer's model is sharded with FSDP (the launcher's `fsdp` strategy on GPUs)."""
    return bool(getattr(trainer, "is_fsdp_enabled", False))


def _unwrapped_optimizer(optimizer: Any) -> Any:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the real one


def _full_options(*, ignore_frozen_params: bool = False) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=ignore_frozen_params)


def gather_trainable_state(model: Any) -> dict[str, Any]:
    """The whole trainable weights of a sharded model, by parameter name, on rank 0 (empty on the other
    ranks). A collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options(ignore_frozen_params=True))


def gather_optimizer_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The whole optimizer state of a sharded model, keyed by parameter name, on rank 0 (empty elsewhere).
    A collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, _unwrapped_optimizer(optimizer), options=_full_options())


def _trainable_names(model: Any) -> list[str]:
    # Activation checkpointing wraps modules; state dict names leave the wrapper out.
    return [
        name.replace("_checkpoint_wrapped_module.", "")
        for name, param in model.named_parameters()
        if param.requires_grad
    ]


def restore_trainable_state(model: Any, weights: dict[str, torch.Tensor], *, source: Path) -> None:
    """Load adapter weights saved in PEFT's layout (`…lora_A.weight`, no adapter name) into a sharded model,
    each rank keeping its shard. Raises CheckpointError when they do not fit the model's adapters."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    adapter = getattr(model, "active_adapter", None) or "default"
    by_saved_name = {name.replace(f".{adapter}.", "."): name for name in _trainable_names(model)}
    unknown = sorted(set(weights) - set(by_saved_name))
    missing = sorted(set(by_saved_name) - set(weights))
    if unknown or missing:
        raise CheckpointError(
            f"{source}: adapter weights do not fit this model ({(unknown or missing)[:3]} ...)"
        )
    state: dict[str, Any] = {by_saved_name[key]: tensor for key, tensor in weights.items()}
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def restore_optimizer_state(model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Load an optimizer state gathered by `gather_optimizer_state` into a sharded model's optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        model,
        _unwrapped_optimizer(optimizer),
        state,
        options=StateDictOptions(full_state_dict=True),
    )
