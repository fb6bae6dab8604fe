"""The vLLM double answers as vLLM does, checked over raw HTTP against the documented behaviour, so that
client tests passing against it mean something."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.doubles.adapters import peft_config, write_adapter
from tests.doubles.vllm import VLLMDouble


@pytest.fixture
def vllm() -> Iterator[VLLMDouble]:
    with VLLMDouble() as double:
        yield double


def test_load_success_is_plain_text_without_a_media_type(vllm: VLLMDouble, tmp_path: Path) -> None:
    write_adapter(tmp_path / "a")
    response = httpx.post(
        vllm.url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path / "a")}
    )
    assert response.status_code == 200
    assert "content-type" not in response.headers
    assert response.text == "Success: LoRA adapter 'x' added successfully."
    response = httpx.post(vllm.url + "/v1/unload_lora_adapter", json={"lora_name": "x"})
    assert (response.status_code, response.text) == (200, "Success: LoRA adapter 'x' removed successfully.")


def test_errors_use_the_nested_envelope_with_code_equal_to_status(vllm: VLLMDouble) -> None:
    response = httpx.post(vllm.url + "/v1/unload_lora_adapter", json={"lora_name": "nope"})
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "The lora adapter 'nope' cannot be found.",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        }
    }


def test_older_releases_use_the_flat_envelope() -> None:
    with VLLMDouble(legacy_errors=True) as double:
        response = httpx.post(double.url + "/v1/unload_lora_adapter", json={"lora_name": ""})
    assert response.status_code == 400
    assert response.json() == {
        "object": "error",
        "message": "either 'lora_name' and 'lora_int_id' needs to be provided.",
        "type": "InvalidUserInput",
        "param": None,
        "code": 400,
    }


def test_without_runtime_updating_the_routes_do_not_exist() -> None:
    with VLLMDouble(runtime_updating=False) as double:
        for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            response = httpx.post(double.url + path, json={"lora_name": "x", "lora_path": "/x"})
            assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
        assert httpx.get(double.url + "/v1/models").status_code == 200


@pytest.mark.parametrize(("status", "kind"), [(500, "InternalServerError"), (400, "BadRequestError")])
def test_invalid_adapters_answer_500_on_main_and_400_on_older_releases(
    tmp_path: Path, status: int, kind: str
) -> None:
    write_adapter(tmp_path / "a", config=peft_config(r=32))
    with VLLMDouble(max_lora_rank=16, invalid_adapter_status=status) as double:
        response = httpx.post(
            double.url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path / "a")}
        )
        assert double.models()[1:] == []
    assert response.status_code == status
    assert response.json()["error"] == {
        "message": "LoRA rank 32 is greater than max_lora_rank 16.",
        "type": kind,
        "param": None,
        "code": status,
    }


def test_models_list_the_base_then_adapters_in_load_order(vllm: VLLMDouble, tmp_path: Path) -> None:
    for name in ("b", "a"):
        write_adapter(tmp_path / name)
        httpx.post(
            vllm.url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(tmp_path / name)}
        )
    body = httpx.get(vllm.url + "/v1/models").json()
    assert body["object"] == "list"
    cards = body["data"]
    assert [(c["id"], c["parent"], c["root"]) for c in cards] == [
        ("tailor-tiny", None, "/models/tailor-tiny"),
        ("b", "tailor-tiny", str(tmp_path / "b")),
        ("a", "tailor-tiny", str(tmp_path / "a")),
    ]
    assert all(c["object"] == "model" and c["owned_by"] == "vllm" for c in cards)
    assert cards[0]["max_model_len"] == 2048 and cards[0]["permission"][0]["object"] == "model_permission"


def test_chat_echoes_the_model_and_unknown_models_are_404(vllm: VLLMDouble) -> None:
    ok = httpx.post(vllm.url + "/v1/chat/completions", json={"model": "tailor-tiny", "messages": []})
    assert ok.json()["model"] == "tailor-tiny"
    assert ok.json()["choices"][0]["message"]["content"] == "Hello from tailor-tiny."
    missing = httpx.post(vllm.url + "/v1/chat/completions", json={"model": "x", "messages": []})
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "message": "The model `x` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


def test_the_api_key_guards_v1_routes_only() -> None:
    with VLLMDouble(api_key="k") as double:
        assert httpx.get(double.url + "/health").status_code == 200
        denied = httpx.get(double.url + "/v1/models")
        assert (denied.status_code, denied.json()) == (401, {"error": "Unauthorized"})
        assert httpx.get(double.url + "/v1/models", headers={"Authorization": "Bearer k"}).status_code == 200


def test_request_bodies_are_validated(vllm: VLLMDouble) -> None:
    missing = httpx.post(vllm.url + "/v1/load_lora_adapter", json={"lora_name": "x"})
    assert missing.status_code == 400 and "lora_path" in missing.json()["error"]["message"]
    not_json = httpx.post(
        vllm.url + "/v1/load_lora_adapter", content=b"lora_name=x", headers={"Content-Type": "text/plain"}
    )
    assert not_json.status_code == 400
    assert "Only 'application/json' is allowed" in not_json.json()["error"]["message"]


def test_fail_next_answers_before_the_double_then_lets_it_answer(vllm: VLLMDouble) -> None:
    vllm.fail_next("/v1/models", 503, {"error": {"message": "busy"}}, times=2)
    statuses = [httpx.get(vllm.url + "/v1/models").status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert [r["path"] for r in vllm.requests] == ["/v1/models"] * 3


def test_knobs_vllm_would_refuse_at_startup_are_refused() -> None:
    with pytest.raises(ValueError, match="max_lora_rank"):
        VLLMDouble(max_lora_rank=48)
