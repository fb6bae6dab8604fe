"""Factories and helpers for fine-tuning tests (import from `tests.tailor.jobs_factories`): base models,
validated files, jobs created through the real service, and what a GPU worker would leave in the object
store and report."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import factory
from tailor.core.objectstore import object_store
from tailor.files.models import File
from tailor.teams.models import Team
from tailor.tuning import protocol
from tailor.tuning.models import BaseModel, FineTuningJob
from tailor.tuning.services import job_create

from tests.tailor.factories import FileFactory
from tests.tailor.processes import delete_queue
from workers.app import RUN_JOB_TASK, app

# The shape of gpu_runner's tiny model (gpu_runner.tiny_model.MODEL_SETTINGS).
TINY_ARCHITECTURE = {
    "hidden_size": 128,
    "num_layers": 4,
    "vocab_size": 3072,
    "intermediate_size": 384,
    "kv_hidden_size": 64,
    "tie_word_embeddings": False,
}
TINY_PARAMETERS = 1_574_016


class BaseModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = BaseModel

    name = factory.Sequence(lambda n: f"base-{n}")
    revision = "0123456789ab"
    source_uri = "/models/base"
    prefix = factory.LazyAttribute(lambda m: f"models/{m.name}/{m.revision}")
    architecture = factory.LazyFunction(lambda: dict(TINY_ARCHITECTURE))
    parameters = TINY_PARAMETERS
    chat_template = "{{ messages }}"
    available_to_all = True


def dataset_file(
    team: Team,
    *,
    data_format: str = "chat",
    examples: int = 40,
    status: str = File.Status.PROCESSED,
    details: str | None = None,
    purpose: str = File.Purpose.FINE_TUNE,
) -> File:
    """A File row as validation leaves it (no bytes in the store)."""
    report = None
    if status != File.Status.UPLOADED:
        report = {
            "ok": status == File.Status.PROCESSED,
            "format": data_format,
            "errors": [],
            "stats": {"example_count": examples, "tokens": {"max": 60, "total": examples * 40}},
        }
    return FileFactory(
        team=team,
        status=status,
        format=data_format if status != File.Status.UPLOADED else "",
        validation_report=report,
        status_details=details,
        purpose=purpose,
    )


def create_job(
    team: Team,
    *,
    base: BaseModel | None = None,
    method: str = "supervised",
    hyperparameters: dict[str, Any] | None = None,
    training: File | None = None,
    **extra: Any,
) -> FineTuningJob:
    """A job created through `job_create`, as the API creates it."""
    base = base or BaseModelFactory()
    training = training or dataset_file(team, data_format="preference" if method == "dpo" else "chat")
    return job_create(
        team=team,
        model=base.name,
        training_file=training.public_id,
        method={"type": method, method: {"hyperparameters": hyperparameters or {}}},
        **extra,
    )


def fresh(job: FineTuningJob) -> FineTuningJob:
    """The job as the database has it now."""
    return FineTuningJob.objects.get(pk=job.pk)


METRICS_CSV = (
    b"step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n1,2.5,0.3,,\n2,2.1,0.4,2.2,0.41\n"
)


def store_adapter(job: FineTuningJob, *, rank: int = 8) -> dict[str, Any]:
    """Put what a GPU worker uploads for a finished job into the object store; return the `result` of
    its `job_finished` report."""
    store = object_store()
    root = protocol.job_output_prefix(job)
    adapter = f"{root}/adapter"
    config = {"r": rank, "lora_alpha": 2 * rank, "target_modules": ["v_proj", "q_proj"], "peft_type": "LORA"}
    manifest = {
        "format": "tailor-adapter/1",
        "adapter": {
            "type": "lora",
            "r": rank,
            "lora_alpha": 2 * rank,
            "target_modules": ["q_proj", "v_proj"],
        },
        "metrics": {"train_loss": 2.1, "valid_loss": 2.2},
        "trained_tokens": 4321,
        "steps": 2,
        "files": {"adapter_model.safetensors": {"sha256": "ab" * 32, "bytes": 10}},
    }
    store.put(f"{adapter}/adapter_config.json", io.BytesIO(json.dumps(config).encode()))
    store.put(f"{adapter}/adapter_model.safetensors", io.BytesIO(b"0123456789"))
    store.put(f"{adapter}/tailor_adapter.json", io.BytesIO(json.dumps(manifest).encode()))
    store.put(f"{root}/metrics.csv", io.BytesIO(METRICS_CSV))
    return {"adapter_prefix": adapter, "metrics_key": f"{root}/metrics.csv", "trained_tokens": 4321}


def runner_event(seq: int, type: str, message: str = "", **data: Any) -> dict[str, Any]:
    """One line of the runner's event stream as a worker forwards it."""
    return {
        "seq": seq,
        "type": type,
        "created_at": 1_767_000_000 + seq,
        "level": "info",
        "message": message or type,
        "data": data,
    }


# The GPU class queue of one test: dispatches land in a queue nobody else consumes. -------------------


def isolated_gpu_queue(settings: Any) -> Iterator[str]:
    """Point the only GPU class at a queue of this test's own and yield its name (wrap it in a fixture:
    `yield from isolated_gpu_queue(settings)`); the queue is deleted afterwards."""
    name = f"gpu-test-{uuid.uuid4().hex[:8]}"
    settings.TAILOR_GPU_CLASSES = f"default:24:{name}"
    yield name
    delete_queue(name)


def take_messages(
    queue: str, *, expect: int = 1, timeout: float = 5
) -> list[tuple[str, list[Any], dict[str, Any]]]:
    """(task name, args, kwargs) of the messages waiting in `queue`, taken off it as a worker would;
    waits up to `timeout` for `expect` of them, then a moment longer for any extra one."""
    found: list[tuple[str, list[Any], dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue(queue)
        try:
            while time.monotonic() < deadline:
                try:
                    message = simple.get(block=True, timeout=0.2 if len(found) >= expect else 1)
                except simple.Empty:
                    if len(found) >= expect:
                        break
                    continue
                args, kwargs, _embed = message.decode()
                found.append((message.headers["task"], list(args), dict(kwargs)))
                message.ack()
        finally:
            simple.close()
    return found


def take_dispatches(queue: str, *, expect: int = 1, timeout: float = 5) -> list[dict[str, Any]]:
    """The `dispatch` arguments of `tailor.gpu.run_job` messages waiting in `queue` (taken off it), as a
    GPU worker would receive them; waits up to `timeout` for `expect` of them."""
    messages = take_messages(queue, expect=expect, timeout=timeout)
    assert all(task == RUN_JOB_TASK for task, _, _ in messages), messages
    return [kwargs["dispatch"] for _, _, kwargs in messages]
