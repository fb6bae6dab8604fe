"""VLLMClient against a protocol-faithful vLLM double on loopback: every case of vLLM's LoRA API ends in
a loaded adapter or an `EndpointError` whose transient flag, reason code and message a user can act on.
The smoke request (`smoke_chat`) is checked here too, against the same server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpu_runner.endpoints.errors import EndpointError
from gpu_runner.endpoints.smoke import smoke_chat
from gpu_runner.endpoints.vllm import VLLMClient
from tests.doubles.adapters import lora_shapes, peft_config, write_adapter
from tests.doubles.vllm import VLLMDouble

NAME = "ft:tailor-tiny:acme:support:abcd1234"


@pytest.fixture
def vllm() -> Iterator[VLLMDouble]:
    with VLLMDouble(max_lora_rank=64) as double:
        yield double


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    write_adapter(tmp_path / "adapter")
    return tmp_path / "adapter"


def refused(call: object) -> EndpointError:
    assert callable(call)
    with pytest.raises(EndpointError) as caught:
        call()
    return caught.value


# Loading ------------------------------------------------------------------------------------------------


def test_load_registers_the_adapter_and_it_answers(vllm: VLLMDouble, adapter: Path) -> None:
    client = VLLMClient(vllm.url)
    client.load(NAME, str(adapter))
    cards = client.models()
    assert [card["id"] for card in cards] == ["tailor-tiny", NAME]
    assert cards[1]["root"] == str(adapter) and cards[1]["parent"] == "tailor-tiny"
    assert cards[0]["parent"] is None
    assert smoke_chat(vllm.url, model=NAME, timeout=5) == f"Hello from {NAME}."
    [chat] = vllm.requests_to("/v1/chat/completions")
    assert chat["body"]["model"] == NAME and chat["body"]["max_tokens"] <= 16


def test_base_url_may_be_the_openai_base(vllm: VLLMDouble, adapter: Path) -> None:
    VLLMClient(vllm.url + "/v1/").load(NAME, str(adapter))
    assert vllm.requests[-1]["path"] == "/v1/load_lora_adapter"
    assert smoke_chat(vllm.url + "/v1", model=NAME, timeout=5)


def test_a_second_load_of_the_name_is_refused_unless_in_place(
    vllm: VLLMDouble, adapter: Path, tmp_path: Path
) -> None:
    client = VLLMClient(vllm.url)
    client.load(NAME, str(adapter))
    error = refused(lambda: client.load(NAME, str(adapter)))
    assert (error.transient, error.status, error.reason_code) == (False, 400, "adapter_already_loaded")
    assert f"The lora adapter '{NAME}' has already been loaded." in error.message
    assert "load_inplace" in error.message

    newer = tmp_path / "newer"
    write_adapter(newer)
    first_id = vllm.loras[NAME].int_id
    client.load(NAME, str(newer), load_inplace=True)
    assert vllm.loras[NAME].int_id == first_id and vllm.loras[NAME].path == str(newer)
    assert vllm.requests[-1]["body"] == {"lora_name": NAME, "lora_path": str(newer), "load_inplace": True}
    assert [card["root"] for card in client.models()][1] == str(newer)


def test_older_vllm_duplicate_message_is_recognised_too(adapter: Path) -> None:
    with VLLMDouble(legacy_errors=True) as double:
        client = VLLMClient(double.url)
        client.load(NAME, str(adapter))
        error = refused(lambda: client.load(NAME, str(adapter)))
    assert error.reason_code == "adapter_already_loaded"
    assert error.message.endswith(f"The lora adapter '{NAME}' has already been loaded.")


def test_empty_name_is_a_request_error(vllm: VLLMDouble, adapter: Path) -> None:
    error = refused(lambda: VLLMClient(vllm.url).load("", str(adapter)))
    assert (error.transient, error.status, error.reason_code) == (False, 400, "invalid_request")
    assert "Both 'lora_name' and 'lora_path' must be provided." in error.message


def test_a_path_the_server_cannot_see_is_not_found(vllm: VLLMDouble, tmp_path: Path) -> None:
    missing = tmp_path / "not-there"
    error = refused(lambda: VLLMClient(vllm.url).load(NAME, str(missing)))
    assert (error.transient, error.status, error.reason_code) == (False, 404, "adapter_not_found")
    assert f"Loading lora {NAME} failed: No adapter found for {missing}" in error.message
    assert "vLLM server's own filesystem" in error.message
    assert vllm.models()[1:] == []


@pytest.mark.parametrize(
    ("status", "legacy", "kind"),
    [(500, False, "InternalServerError"), (400, True, "BadRequestError"), (400, False, "BadRequestError")],
    ids=["vllm-main", "vllm-legacy", "main-envelope-400"],
)
def test_an_adapter_above_the_rank_limit_is_refused_in_vllms_words(
    tmp_path: Path, status: int, legacy: bool, kind: str
) -> None:
    write_adapter(tmp_path / "big", config=peft_config(r=128, lora_alpha=256))
    with VLLMDouble(max_lora_rank=64, invalid_adapter_status=status, legacy_errors=legacy) as double:
        error = refused(lambda: VLLMClient(double.url).load(NAME, str(tmp_path / "big")))
        assert double.models()[1:] == []
    assert (error.transient, error.status, error.reason_code) == (False, status, "adapter_refused")
    assert error.message == (
        f"vLLM refused the adapter (HTTP {status} {kind}): LoRA rank 128 is greater than max_lora_rank 64."
    )


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (peft_config(use_dora=True), "vLLM does not yet support DoRA."),
        (peft_config(modules_to_save=["lm_head"]), "vLLM only supports modules_to_save being None."),
        (peft_config(bias="all"), "Adapter bias is not supported."),
        (
            peft_config(use_dora=True, r=128, bias="all"),
            "vLLM does not yet support DoRA. LoRA rank 128 is greater than max_lora_rank 64. "
            "Adapter bias is not supported.",
        ),
        (
            {"peft_type": "LORA", "r": 8, "lora_alpha": 16},
            "Missing required configuration fields: {'target_modules'}",
        ),
    ],
    ids=["dora", "modules_to_save", "bias", "several", "missing-field"],
)
def test_peft_config_refusals(vllm: VLLMDouble, tmp_path: Path, config: dict, expected: str) -> None:
    write_adapter(tmp_path / "a", config=config, shapes=lora_shapes(["q_proj"]))
    error = refused(lambda: VLLMClient(vllm.url).load(NAME, str(tmp_path / "a")))
    assert error.reason_code == "adapter_refused" and not error.transient and error.status == 500
    assert error.message.endswith(f"(HTTP 500 InternalServerError): {expected}")


def test_older_vllm_bias_message(tmp_path: Path) -> None:
    write_adapter(tmp_path / "a", config=peft_config(bias="lora_only"))
    with VLLMDouble(legacy_errors=True, invalid_adapter_status=400) as double:
        error = refused(lambda: VLLMClient(double.url).load(NAME, str(tmp_path / "a")))
    assert error.message.endswith(
        "(HTTP 400 BadRequestError): Adapter bias cannot be used without bias_enabled."
    )


def test_tensors_for_modules_the_model_lacks_are_refused(vllm: VLLMDouble, tmp_path: Path) -> None:
    config = peft_config(target_modules=["q_proj", "unembed_tokens"])
    write_adapter(tmp_path / "a", config=config, shapes=lora_shapes(["q_proj", "unembed_tokens"], layers=1))
    error = refused(lambda: VLLMClient(vllm.url).load(NAME, str(tmp_path / "a")))
    assert error.reason_code == "adapter_refused"
    assert "expected target modules in ['q_proj'," in error.message
    # vLLM lists the module once per tensor (lora_A and lora_B).
    assert (
        "but received ['model.layers.0.custom.unembed_tokens', 'model.layers.0.custom.unembed_tokens']"
        in (error.message)
    )


def test_full_module_weights_are_refused(vllm: VLLMDouble, tmp_path: Path) -> None:
    shapes = {**lora_shapes(["q_proj"], layers=1), "base_model.model.lm_head.weight": (256, 64)}
    write_adapter(tmp_path / "a", shapes=shapes)
    error = refused(lambda: VLLMClient(vllm.url).load(NAME, str(tmp_path / "a")))
    assert error.message.endswith("base_model.model.lm_head.weight is unsupported LoRA weight")


def test_a_folder_without_weights_is_refused(vllm: VLLMDouble, tmp_path: Path) -> None:
    write_adapter(tmp_path / "a", weights_file="")
    error = refused(lambda: VLLMClient(vllm.url).load(NAME, str(tmp_path / "a")))
    assert error.message.endswith(f"{tmp_path / 'a'} doesn't contain tensors")


def test_a_refused_load_leaves_other_adapters_serving(
    vllm: VLLMDouble, adapter: Path, tmp_path: Path
) -> None:
    client = VLLMClient(vllm.url)
    client.load("good", str(adapter))
    write_adapter(tmp_path / "bad", config=peft_config(use_dora=True))
    refused(lambda: client.load("bad", str(tmp_path / "bad")))
    assert [card["id"] for card in client.models()] == ["tailor-tiny", "good"]
    assert smoke_chat(vllm.url, model="good", timeout=5)
    error = refused(lambda: smoke_chat(vllm.url, model="bad", timeout=5))
    assert (error.status, error.reason_code) == (404, "smoke_model_not_found")
    assert "The model `bad` does not exist." in error.message


# Runtime updating off, unloading ------------------------------------------------------------------------


def test_runtime_lora_updating_switched_off_is_explained(adapter: Path) -> None:
    with VLLMDouble(runtime_updating=False) as double:
        client = VLLMClient(double.url)
        load = refused(lambda: client.load(NAME, str(adapter)))
        unload = refused(lambda: client.unload(NAME))
    for error in (load, unload):
        assert (error.transient, error.status, error.reason_code) == (
            False,
            404,
            "runtime_lora_updating_disabled",
        )
        assert "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in error.message


def test_unload_is_idempotent(vllm: VLLMDouble, adapter: Path) -> None:
    client = VLLMClient(vllm.url)
    client.load(NAME, str(adapter))
    assert client.unload(NAME) is True
    assert client.unload(NAME) is False
    assert [card["id"] for card in client.models()] == ["tailor-tiny"]


def test_unload_without_a_name_is_refused(vllm: VLLMDouble) -> None:
    error = refused(lambda: VLLMClient(vllm.url).unload(""))
    assert (error.transient, error.status) == (False, 400)
    assert "'lora_name' needs to be provided to unload a LoRA adapter." in error.message


# Transient failures, credentials, health ----------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_overload_and_gateway_errors_are_transient(vllm: VLLMDouble, adapter: Path, status: int) -> None:
    vllm.fail_next(
        "/v1/load_lora_adapter",
        status,
        {"error": {"message": "busy", "type": "ServiceUnavailable", "code": status}},
    )
    client = VLLMClient(vllm.url)
    error = refused(lambda: client.load(NAME, str(adapter)))
    assert (error.transient, error.status, error.reason_code) == (True, status, "endpoint_unavailable")
    assert f"HTTP {status} ServiceUnavailable: busy" in error.message
    client.load(NAME, str(adapter))  # the next attempt succeeds
    assert NAME in vllm.loras


def test_an_unreachable_server_is_transient(adapter: Path) -> None:
    double = VLLMDouble().start()
    url = double.url
    double.stop()
    error = refused(lambda: VLLMClient(url, timeout=2).load(NAME, str(adapter)))
    assert (error.transient, error.status, error.reason_code) == (True, None, "endpoint_unreachable")
    assert url in error.message


def test_a_server_that_does_not_answer_in_time_is_transient(vllm: VLLMDouble, adapter: Path) -> None:
    vllm.delay_next("/v1/load_lora_adapter", 2.0)
    error = refused(lambda: VLLMClient(vllm.url, timeout=0.3).load(NAME, str(adapter)))
    assert (error.transient, error.reason_code) == (True, "endpoint_timeout")


def test_the_api_key_is_sent_and_a_wrong_one_is_reported(adapter: Path) -> None:
    with VLLMDouble(api_key="sk-right") as double:
        VLLMClient(double.url, api_key="sk-right").load(NAME, str(adapter))
        VLLMClient(double.url, api_key="sk-right").health()
        error = refused(lambda: VLLMClient(double.url, api_key="sk-wrong").health())
    assert (error.transient, error.status, error.reason_code) == (False, 401, "endpoint_unauthorized")
    assert "Unauthorized" in error.message and "API key" in error.message


def test_health_of_a_server_that_is_down(vllm: VLLMDouble) -> None:
    vllm.fail_next("/health", 503, None)
    error = refused(lambda: VLLMClient(vllm.url).health())
    assert error.transient and error.status == 503


def test_a_failing_smoke_request_carries_the_servers_message(adapter: Path) -> None:
    with VLLMDouble(chat_fails_for={NAME}) as double:
        VLLMClient(double.url).load(NAME, str(adapter))
        error = refused(lambda: smoke_chat(double.url, model=NAME, timeout=5))
    assert (error.transient, error.status, error.reason_code) == (False, 500, "smoke_failed")
    assert f"The engine failed while generating with model '{NAME}'." in error.message


def test_an_engine_that_cannot_remove_the_adapter_is_reported(vllm: VLLMDouble, adapter: Path) -> None:
    client = VLLMClient(vllm.url)
    client.load(NAME, str(adapter))
    vllm.fail_next(
        "/v1/unload_lora_adapter",
        500,
        {
            "error": {
                "message": f"Failed to remove lora adapter '{NAME}' from the engine.",
                "type": "InternalServerError",
                "param": None,
                "code": 500,
            }
        },
    )
    error = refused(lambda: client.unload(NAME))
    assert (error.transient, error.status, error.reason_code) == (False, 500, "unload_failed")
    assert error.message == (
        f"vLLM could not unload {NAME!r} (HTTP 500 InternalServerError): Failed to remove lora adapter "
        f"'{NAME}' from the engine."
    )
