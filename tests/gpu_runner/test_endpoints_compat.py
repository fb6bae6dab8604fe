"""The compatibility gate: every reason vLLM or Ollama would refuse an adapter, listed before a push.

Adapter configs are shaped as peft writes them (tests.doubles.adapters.peft_config).
"""

from __future__ import annotations

from typing import Any

import pytest

from gpu_runner.endpoints.compat import Incompatibility, check_compatibility
from tests.doubles.adapters import peft_config


def check(kind: str = "vllm", **overrides: Any) -> list[Incompatibility]:
    arguments: dict[str, Any] = {
        "kind": kind,
        "adapter_config": peft_config(),
        "adapter_base_model": "tailor-tiny",
        "endpoint_base_models": ["tailor-tiny"],
        "base_architecture": "llama",
        "max_lora_rank": 64,
        "formats": ["peft-safetensors"],
    }
    arguments.update(overrides)
    return check_compatibility(**arguments)


def codes(problems: list[Incompatibility]) -> list[str]:
    return [problem.code for problem in problems]


@pytest.mark.parametrize("kind", ["vllm", "ollama"])
def test_a_plain_peft_lora_on_the_served_base_is_compatible(kind: str) -> None:
    assert check(kind) == []


def test_every_problem_is_listed_not_just_the_first() -> None:
    config = peft_config(r=128, lora_alpha=256, use_dora=True, modules_to_save=["lm_head"], bias="lora_only")
    problems = check(adapter_config=config, adapter_base_model="llama-3-8b")
    assert codes(problems) == [
        "base_model_not_served",
        "rank_too_high",
        "dora_unsupported",
        "modules_to_save_unsupported",
        "bias_unsupported",
    ]
    by_code = {problem.code: problem.message for problem in problems}
    assert (
        "'llama-3-8b'" in by_code["base_model_not_served"]
        and "'tailor-tiny'" in by_code["base_model_not_served"]
    )
    assert by_code["rank_too_high"] == (
        "LoRA rank 128 is greater than the endpoint's max LoRA rank 64; restart vLLM with "
        "--max-lora-rank 128 and update the endpoint"
    )
    assert "['lm_head']" in by_code["modules_to_save_unsupported"]
    assert "'lora_only'" in by_code["bias_unsupported"]


def test_rank_pattern_counts_towards_the_rank() -> None:
    config = peft_config(r=8, rank_pattern={"model.layers.0.self_attn.q_proj": 32})
    [problem] = check(adapter_config=config, max_lora_rank=16)
    assert problem.code == "rank_too_high" and "LoRA rank 32" in problem.message
    assert "--max-lora-rank 32" in problem.message


def test_vllm_rank_limit_is_rounded_up_to_a_value_vllm_accepts() -> None:
    [problem] = check(adapter_config=peft_config(r=48, lora_alpha=96), max_lora_rank=32)
    assert "--max-lora-rank 64" in problem.message


def test_a_vllm_endpoint_without_a_recorded_limit_is_held_to_vllm_default_16() -> None:
    [problem] = check(adapter_config=peft_config(r=32, lora_alpha=64), max_lora_rank=None)
    assert problem.code == "rank_too_high" and "16" in problem.message and "default" in problem.message
    assert check(adapter_config=peft_config(r=16), max_lora_rank=None) == []


def test_a_vllm_max_lora_rank_outside_the_allowed_values_is_itself_a_problem() -> None:
    problems = check(max_lora_rank=48)
    assert codes(problems) == ["invalid_max_lora_rank"]
    assert "1, 8, 16, 32, 64, 128, 256, 320, 512" in problems[0].message


def test_required_fields_are_checked() -> None:
    config = peft_config()
    del config["lora_alpha"], config["target_modules"]
    [problem] = check(adapter_config=config)
    assert problem.code == "missing_config_fields"
    assert "lora_alpha, target_modules" in problem.message


def test_non_lora_peft_adapters_are_refused() -> None:
    assert "not_lora" in codes(check(adapter_config=peft_config(peft_type="IA3")))


@pytest.mark.parametrize(
    "modules",
    [
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"],
        ["q_proj", "v_proj", "embed_tokens", "lm_head"],
    ],
)
def test_llama_modules_vllm_serves_pass(modules: list[str]) -> None:
    assert check(adapter_config=peft_config(target_modules=modules)) == []


def test_modules_vllm_cannot_serve_are_named() -> None:
    config = peft_config(target_modules=["q_proj", "unembed_tokens", "vision_tower.proj"])
    [problem] = check(adapter_config=config)
    assert problem.code == "target_modules_unsupported"
    assert "['unembed_tokens', 'vision_tower.proj']" in problem.message


def test_qwen2_has_no_embedding_loras_in_vllm() -> None:
    config = peft_config(target_modules=["q_proj", "lm_head"])
    [problem] = check(adapter_config=config, base_architecture="qwen2")
    assert "['lm_head']" in problem.message


def test_unknown_architectures_and_regex_targets_are_left_to_the_server() -> None:
    assert check(adapter_config=peft_config(target_modules=["wqkv"]), base_architecture="internlm2") == []
    assert (
        check(adapter_config=peft_config(target_modules=r".*\.(q|v)_proj"), base_architecture="llama") == []
    )


def test_vllm_serves_rank_stabilised_lora() -> None:
    assert check(adapter_config=peft_config(use_rslora=True)) == []


# Ollama ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["llama", "mistral", "gemma2"])
def test_ollama_converts_adapters_for_llama_and_gemma2_bases(architecture: str) -> None:
    assert check("ollama", base_architecture=architecture, max_lora_rank=None) == []


@pytest.mark.parametrize("architecture", ["qwen2", "phi3", "gemma3"])
def test_ollama_refuses_other_bases_and_says_why(architecture: str) -> None:
    [problem] = check("ollama", base_architecture=architecture)
    assert problem == Incompatibility(
        code="ollama_architecture_unsupported",
        message=(
            "Ollama converts safetensors adapters only for llama and gemma2 bases; a GGUF adapter would be "
            f"needed for {architecture}, which Tailor does not build yet"
        ),
    )
    assert check("ollama", base_architecture=architecture, formats=["peft-safetensors", "gguf"]) == []


@pytest.mark.parametrize("alpha", [16.5, 16.0, -4])
def test_ollama_needs_a_whole_number_lora_alpha(alpha: float) -> None:
    [problem] = check("ollama", adapter_config=peft_config(lora_alpha=alpha))
    assert problem.code == "lora_alpha_not_integer" and repr(alpha) in problem.message
    assert "uint32" in problem.message


def test_ollama_refuses_rslora_because_it_would_scale_differently() -> None:
    [problem] = check("ollama", adapter_config=peft_config(use_rslora=True))
    assert problem.code == "rslora_unsupported" and "alpha/sqrt(r)" in problem.message


def test_ollama_refuses_dora() -> None:
    assert codes(check("ollama", adapter_config=peft_config(use_dora=True))) == ["dora_unsupported"]


def test_ollama_base_mismatch_and_format() -> None:
    problems = check("ollama", endpoint_base_models=[], formats=["merged"])
    assert codes(problems) == ["base_model_not_served", "format_unsupported"]
    assert "serves no base model" in problems[0].message


def test_unknown_endpoint_kind() -> None:
    assert codes(check("lorax")) == ["unknown_endpoint_kind"]
