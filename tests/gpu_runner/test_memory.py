"""Memory estimates against published reference points, their monotonicity, and GPU class choice."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gpu_runner.memory import (
    GIB,
    GpuClass,
    NoGpuClassFits,
    architecture_from_hf_config,
    choose_gpu_class,
    estimate_training_memory,
    parse_gpu_classes,
)

# Llama-1/2 7B and LLaMA 65B as in their config.json (untied LM head, 32 000 vocabulary).
LLAMA_7B = {
    "parameters": 6_738_415_616,
    "hidden_size": 4096,
    "num_layers": 32,
    "vocab_size": 32_000,
    "intermediate_size": 11_008,
}
LLAMA_65B = {
    "parameters": 65_285_660_672,
    "hidden_size": 8192,
    "num_layers": 80,
    "vocab_size": 32_000,
    "intermediate_size": 22_016,
}
QLORA = {
    "quantization": "nf4",
    "compute_dtype": "bfloat16",
    "lora_r": 16,
    "max_seq_length": 512,
    "batch_size": 1,
    "gradient_checkpointing": True,
}


def estimate(**overrides):
    return estimate_training_memory(**{**LLAMA_7B, **QLORA, **overrides})


def test_qlora_7b_at_512_tokens_fits_a_consumer_gpu():
    # QLoRA's 7B recipes train on 8-12 GB cards at short sequences; LoRA at r=64 on all linears
    # (the paper's setting) stays under 10 GiB.
    for rank in (8, 16, 64):
        assert 5.5 <= estimate(lora_r=rank).total_gib <= 10, rank


def test_nf4_weights_of_65b_match_the_qlora_paper():
    # The paper stores LLaMA-65B in about 34 GB (4.127 bits per quantized parameter); the
    # embeddings and LM head stay in bfloat16.
    base = estimate(**LLAMA_65B).base_weights
    assert 33e9 <= base <= 35.5e9


def test_qlora_65b_fits_one_48_gib_gpu_but_16_bit_lora_does_not():
    qlora = estimate(**LLAMA_65B)
    assert qlora.total_gib * 1.1 <= 48
    bf16 = estimate(**LLAMA_65B, quantization="none")
    assert bf16.base_weights / 1e9 == pytest.approx(130.6, rel=0.01)  # 2 bytes × 65.3 B
    assert bf16.total_gib > 120


def test_bytes_per_parameter_by_quantization():
    by_quant = {q: estimate(quantization=q, lora_r=8) for q in ("nf4", "int8", "none")}
    embeddings = 2 * 32_000 * 4096 * 2
    quantized_params = LLAMA_7B["parameters"] - 2 * 32_000 * 4096
    assert (by_quant["nf4"].base_weights - embeddings) / quantized_params == pytest.approx(0.5159, abs=1e-4)
    assert (by_quant["int8"].base_weights - embeddings) / quantized_params == pytest.approx(1.0)
    assert by_quant["none"].base_weights == LLAMA_7B["parameters"] * 2
    fp32 = estimate(quantization="none", compute_dtype="float32")
    assert fp32.base_weights == LLAMA_7B["parameters"] * 4


def test_lora_parameters_match_peft_for_llama_7b():
    # PEFT reports 39,976,960 trainable parameters for r=16 on all linears of Llama-2-7B.
    e = estimate(lora_r=16)
    assert e.lora_parameters == 39_976_960
    assert e.lora_weights == 4 * e.lora_parameters
    assert e.gradients == 4 * e.lora_parameters
    assert e.optimizer == 8 * e.lora_parameters
    # q_proj and v_proj only: 2 × 16 × (4096 + 4096) × 32 = 8,388,608 (PEFT's figure for Llama-2-7B).
    assert estimate(lora_trainable_modules=["q_proj", "v_proj"]).lora_parameters == 8_388_608


def test_intermediate_size_is_derived_from_the_parameter_count():
    derived = estimate(intermediate_size=None)
    given = estimate()
    assert derived.lora_parameters == pytest.approx(given.lora_parameters, rel=1e-3)
    assert derived.total == pytest.approx(given.total, rel=1e-3)


@pytest.mark.parametrize(
    "name, low, high", [("max_seq_length", 256, 4096), ("batch_size", 1, 16), ("lora_r", 8, 256)]
)
def test_estimate_grows_with_sequence_batch_and_rank(name, low, high):
    values = [low, (low + high) // 2, high]
    totals = [estimate(**{name: v}).total for v in values]
    assert totals[0] < totals[1] < totals[2]


def test_activations_grow_linearly_in_tokens():
    short = estimate(max_seq_length=1024, gradient_checkpointing=False)
    long = estimate(max_seq_length=2048, gradient_checkpointing=False)
    fixed = max(4096 * 11_008, 4096 * 4096) * 2  # the dequantized weight does not scale with tokens
    assert (long.activations - fixed) == pytest.approx(2 * (short.activations - fixed), rel=1e-9)


def test_gradient_checkpointing_cuts_activations():
    with_ckpt = estimate(max_seq_length=2048, gradient_checkpointing=True)
    without = estimate(max_seq_length=2048, gradient_checkpointing=False)
    assert with_ckpt.activations * 5 < without.activations
    assert with_ckpt.base_weights == without.base_weights


def test_dpo_doubles_sequences_and_shares_the_base_as_reference():
    sft = estimate(method="supervised")
    dpo = estimate(method="dpo")
    assert sft.dpo_reference == 0
    assert dpo.base_weights == sft.base_weights  # no second copy of the model
    assert 0 < dpo.dpo_reference < dpo.activations
    assert dpo.activations > 1.8 * (sft.activations - 4096 * 11_008 * 2)
    assert "adapters disabled" in dpo.explain()


def test_full_logits_cost_more_than_the_fused_head_for_large_vocabularies():
    llama3 = {
        "parameters": 8_030_261_248,
        "hidden_size": 4096,
        "num_layers": 32,
        "vocab_size": 128_256,
        "intermediate_size": 14_336,
        "kv_hidden_size": 1024,
        "max_seq_length": 4096,
        "batch_size": 2,
    }
    fused = estimate(**llama3)
    full = estimate(**llama3, full_logits=True)
    assert full.logits == 128_256 * 8192 * (2 + 8)
    assert fused.logits < full.logits / 5


def test_breakdown_sums_to_total_and_serializes():
    e = estimate(method="dpo")
    data = e.to_dict()
    parts = [
        "base_weights",
        "lora_weights",
        "gradients",
        "optimizer",
        "activations",
        "logits",
        "dpo_reference",
        "overhead",
    ]
    assert sum(data[p] for p in parts) == data["total"] == e.total
    assert data["total_gib"] == pytest.approx(e.total / GIB, abs=1e-3)
    json.dumps(data)
    text = e.explain()
    assert f"{e.total_gib:.2f} GiB" in text
    assert "nf4" in text and "r=16" in text


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("batch_size", 0, "batch_size must be a positive integer"),
        ("quantization", "fp4", "quantization must be"),
        ("compute_dtype", "fp8", "compute_dtype must be"),
        ("method", "grpo", "method must be"),
        ("parameters", 1000, "not more than the embeddings"),
        ("lora_trainable_modules", ["c_attn"], "cannot size LoRA target module 'c_attn'"),
    ],
)
def test_impossible_inputs_are_refused_with_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        estimate(**{field: value})


def test_explicit_target_shapes_for_other_architectures():
    # GPT-2 small: c_attn 768 → 2304 in each of 12 layers.
    gpt2 = estimate_training_memory(
        parameters=124_439_808,
        hidden_size=768,
        num_layers=12,
        vocab_size=50_257,
        tie_word_embeddings=True,
        intermediate_size=3072,
        quantization="none",
        compute_dtype="float32",
        lora_r=8,
        max_seq_length=1024,
        batch_size=4,
        gradient_checkpointing=False,
        lora_target_shapes=[(768, 2304)],
    )
    assert gpt2.lora_parameters == 12 * 8 * (768 + 2304)


def test_architecture_from_hf_config_feeds_the_estimate():
    config = {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "vocab_size": 128_256,
        "intermediate_size": 14_336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
    }
    shape = architecture_from_hf_config(config)
    assert shape["kv_hidden_size"] == 1024
    e = estimate_training_memory(parameters=8_030_261_248, **shape, **QLORA)
    # Llama-3-8B with PEFT all-linear r=16: 41,943,040 trainable parameters.
    assert e.lora_parameters == 41_943_040
    with pytest.raises(ValueError, match="no 'vocab_size'"):
        architecture_from_hf_config({"hidden_size": 8, "num_hidden_layers": 2})


# GPU classes -------------------------------------------------------------------------------------------

CLASSES = parse_gpu_classes("a10g:24:gpu.a10g, h100:80:gpu.h100:8, l40s:48:gpu.l40s")


def test_parse_gpu_classes():
    assert CLASSES == [
        GpuClass("a10g", 24.0, "gpu.a10g"),
        GpuClass("h100", 80.0, "gpu.h100", gpus_per_node=8),
        GpuClass("l40s", 48.0, "gpu.l40s"),
    ]
    assert parse_gpu_classes("  ") == []
    assert parse_gpu_classes("mig:9.5:gpu.mig")[0].memory_gib == 9.5


@pytest.mark.parametrize(
    "text, message",
    [
        ("a10g:24", "GPU class 1 'a10g:24' must read name:memory_gib:queue"),
        ("a10g:24:q,,h100:80:q2", "GPU class 2 is empty"),
        ("a10g:lots:q", "memory_gib 'lots' is not a number"),
        ("a10g:-1:q", "memory_gib must be a positive"),
        ("a10g:24:q:0", "gpus_per_node '0' must be a positive integer"),
        ("a:24:q,a:48:r", "the name 'a' is used twice"),
        ("a:24::", "must read"),
    ],
)
def test_parse_gpu_classes_refuses_bad_entries(text, message):
    with pytest.raises(ValueError, match=message):
        parse_gpu_classes(text)


def test_smallest_fitting_class_is_chosen():
    assert choose_gpu_class(estimate(), CLASSES).name == "a10g"
    assert choose_gpu_class(estimate(**LLAMA_65B), CLASSES).name == "l40s"
    assert choose_gpu_class(estimate(**LLAMA_65B, quantization="int8"), CLASSES).name == "h100"


def test_safety_margin_pushes_a_tight_job_to_the_next_class():
    e = estimate(max_seq_length=8192, batch_size=2)
    tight = [GpuClass("exact", e.total_gib * 1.05, "q.exact"), GpuClass("roomy", e.total_gib * 2, "q.roomy")]
    assert choose_gpu_class(e, tight).name == "roomy"
    assert choose_gpu_class(e, tight, safety_margin=0.0).name == "exact"


def test_job_that_fits_nowhere_is_refused_with_the_estimate_and_largest_class():
    e = estimate(**LLAMA_65B, quantization="none")
    with pytest.raises(NoGpuClassFits) as refused:
        choose_gpu_class(e, CLASSES)
    message = str(refused.value)
    assert f"{e.total_gib:.1f} GiB" in message
    assert "h100" in message and "80 GiB" in message
    assert refused.value.estimate is e and refused.value.largest == CLASSES[1]
    with pytest.raises(NoGpuClassFits, match="no GPU classes are configured"):
        choose_gpu_class(estimate(), [])


def test_memory_module_imports_no_torch_stack():
    code = (
        "import sys, gpu_runner.memory; "
        "bad = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'trl') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
