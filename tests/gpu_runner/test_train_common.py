"""Machine checks before loading, out-of-memory recognition and the advice that comes with it."""

from __future__ import annotations

import pytest
import torch

from gpu_runner.spec import DatasetStats, SpecError, parse_spec, resolve
from gpu_runner.train.common import is_out_of_memory, memory_advice, pick_compute_dtype, preflight


def spec(**hyperparameters: object):  # type: ignore[no-untyped-def]
    return parse_spec(
        {
            "spec_version": 1,
            "method": "supervised",
            "base_model": {"path": "/m", "name": "tiny"},
            "training_file": "/t.jsonl",
            "hyperparameters": hyperparameters,
        }
    )


def test_cpu_runs_in_float32_unless_asked_otherwise() -> None:
    cpu = torch.device("cpu")
    assert pick_compute_dtype("auto", cpu) == torch.float32
    assert pick_compute_dtype("bfloat16", cpu) == torch.bfloat16


def test_float16_on_the_cpu_is_refused_before_loading() -> None:
    with pytest.raises(SpecError) as caught:
        preflight(spec(compute_dtype="float16"), torch.device("cpu"))
    assert caught.value.field == "hyperparameters.compute_dtype"
    preflight(spec(compute_dtype="float32"), torch.device("cpu"))  # fine


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (MemoryError(), True),
        (
            RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
            True,
        ),
        (RuntimeError("shape mismatch"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_out_of_memory_is_recognised(error: BaseException, expected: bool) -> None:
    assert is_out_of_memory(error) is expected


def test_memory_advice_names_settings_with_values() -> None:
    resolved = resolve(
        spec(
            batch_size=16,
            gradient_accumulation_steps=2,
            gradient_checkpointing=False,
            quantization="none",
            lora_r=32,
            max_seq_length=4096,
        ),
        DatasetStats(n_examples=1000, max_tokens=3000),
    )
    advice = memory_advice(resolved, longest_row=3000)
    params = [a["param"] for a in advice]
    assert params[:2] == [
        "hyperparameters.gradient_accumulation_steps",
        "hyperparameters.gradient_checkpointing",
    ]
    assert advice[0]["value"] == 4 and "8 -> 4 examples" in advice[0]["reason"]
    assert {"param": "hyperparameters.max_seq_length", "value": 1500} == {
        k: advice[2][k] for k in ("param", "value")
    }
    assert "hyperparameters.quantization" in params and "hyperparameters.lora_r" in params
