"""The Ollama double answers as Ollama does, checked over raw HTTP against the documented behaviour."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.doubles.adapters import peft_config
from tests.doubles.ollama import OllamaDouble, gguf_bytes, gguf_metadata

CONFIG = json.dumps(peft_config()).encode()
WEIGHTS = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "


def digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.fixture
def ollama() -> Iterator[OllamaDouble]:
    with OllamaDouble() as double:
        yield double


def put(double: OllamaDouble, data: bytes) -> str:
    httpx.post(f"{double.url}/api/blobs/{digest(data)}", content=data).raise_for_status()
    return digest(data)


def test_blobs_are_content_addressed(ollama: OllamaDouble) -> None:
    url = f"{ollama.url}/api/blobs/{digest(WEIGHTS)}"
    head = httpx.head(url)
    assert head.status_code == 404 and head.content == b""
    assert httpx.post(url, content=WEIGHTS).status_code == 201
    assert httpx.post(url, content=WEIGHTS).status_code == 200
    assert httpx.head(url).status_code == 200
    other = f"{ollama.url}/api/blobs/{digest(b'a')}"
    mismatch = httpx.post(other, content=b"b")
    assert mismatch.status_code == 400
    assert mismatch.json() == {"error": f'digest mismatch, expected "{digest(b"a")}", got "{digest(b"b")}"'}
    bad = httpx.post(f"{ollama.url}/api/blobs/sha256:xyz", content=b"b")
    assert (bad.status_code, bad.json()) == (400, {"error": "invalid digest format"})


def test_create_streams_ndjson_progress_ending_in_success(ollama: OllamaDouble) -> None:
    adapters = {"adapter_config.json": put(ollama, CONFIG), "adapter_model.safetensors": put(ollama, WEIGHTS)}
    response = httpx.post(
        ollama.url + "/api/create", json={"model": "mine:v1", "from": "llama3.2:1b", "adapters": adapters}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
    assert response.headers.get("transfer-encoding") == "chunked"
    statuses = [json.loads(line)["status"] for line in response.text.splitlines()]
    assert statuses[0] == "converting adapter"
    assert statuses[1].startswith("using existing layer sha256:")
    assert statuses[2].startswith("creating new layer sha256:")
    assert statuses[-2:] == ["writing manifest", "success"]
    [tag] = [m for m in httpx.get(ollama.url + "/api/tags").json()["models"] if m["name"] == "mine:v1"]
    assert tag["details"]["parent_model"] == "llama3.2:1b" and tag["details"]["format"] == "gguf"
    assert len(tag["digest"]) == 64


def test_an_error_after_progress_is_the_last_line_of_a_200() -> None:
    with OllamaDouble(architecture="qwen2") as double:
        adapters = {
            "adapter_config.json": put(double, CONFIG),
            "adapter_model.safetensors": put(double, WEIGHTS),
        }
        response = httpx.post(
            double.url + "/api/create", json={"model": "mine", "from": "llama3.2:1b", "adapters": adapters}
        )
        quiet = httpx.post(
            double.url + "/api/create",
            json={"model": "mine", "from": "llama3.2:1b", "adapters": adapters, "stream": False},
        )
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines == [{"status": "converting adapter"}, {"error": "unsupported architecture"}]
    assert (quiet.status_code, quiet.json()) == (400, {"error": "unsupported architecture"})


def test_an_error_before_progress_keeps_its_status_and_is_json(ollama: OllamaDouble) -> None:
    response = httpx.post(ollama.url + "/api/create", json={"model": "ft:a:b", "from": "llama3.2:1b"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "invalid model name"}
    empty = httpx.post(ollama.url + "/api/create", content=b"")
    assert (empty.status_code, empty.json()) == (400, {"error": "missing request body"})
    neither = httpx.post(ollama.url + "/api/create", json={"model": "m"})
    assert (neither.status_code, neither.json()) == (
        400,
        {"error": "neither 'from' or 'files' was specified"},
    )


def test_a_release_without_adapter_creation() -> None:
    with OllamaDouble(adapters_removed=True, version="0.35.0") as double:
        assert httpx.get(double.url + "/api/version").json() == {"version": "0.35.0"}
        adapters = {
            "adapter_config.json": put(double, CONFIG),
            "adapter_model.safetensors": put(double, WEIGHTS),
        }
        response = httpx.post(
            double.url + "/api/create", json={"model": "m", "from": "llama3.2:1b", "adapters": adapters}
        )
    assert (response.status_code, response.json()) == (
        400,
        {"error": "safetensors imports do not support adapters"},
    )


def test_gguf_adapters_need_general_type_adapter(ollama: OllamaDouble) -> None:
    adapter = gguf_bytes(
        {"general.architecture": "llama", "general.type": "adapter", "adapter.lora.alpha": 16.0}
    )
    assert gguf_metadata(adapter)["general.type"] == "adapter"
    not_adapter = gguf_bytes({"general.architecture": "llama"})
    for name, blob in (("good", adapter), ("broken", not_adapter)):
        response = httpx.post(
            ollama.url + "/api/create",
            json={
                "model": name,
                "from": "llama3.2:1b",
                "adapters": {"lora.gguf": put(ollama, blob)},
                "stream": False,
            },
        )
        assert response.json() == {"status": "success"}
    chat = {"messages": [{"role": "user", "content": "hi"}], "stream": False}
    assert httpx.post(ollama.url + "/api/chat", json={"model": "good", **chat}).status_code == 200
    broken = httpx.post(ollama.url + "/api/chat", json={"model": "broken", **chat})
    assert broken.status_code == 500 and "error" in broken.json()
    two = httpx.post(
        ollama.url + "/api/create",
        json={
            "model": "m",
            "from": "llama3.2:1b",
            "adapters": {"a.gguf": put(ollama, adapter), "b.gguf": put(ollama, not_adapter)},
        },
    )
    assert two.json() == {"error": "only one adapter is currently supported"}
    not_gguf = httpx.post(
        ollama.url + "/api/create",
        json={"model": "m", "from": "llama3.2:1b", "adapters": {"a.gguf": put(ollama, b"not gguf")}},
    )
    assert not_gguf.json() == {"error": "supplied file was not in GGUF format"}
    unknown = httpx.post(
        ollama.url + "/api/create",
        json={"model": "m", "from": "llama3.2:1b", "adapters": {"a.bin": put(ollama, b"raw")}},
    )
    assert (unknown.status_code, unknown.json()) == (400, {"error": "unknown type"})


def test_delete_answers_an_empty_200_then_404(ollama: OllamaDouble) -> None:
    ok = httpx.request("DELETE", ollama.url + "/api/delete", json={"model": "llama3.2:1b"})
    assert (ok.status_code, ok.content) == (200, b"")
    gone = httpx.request("DELETE", ollama.url + "/api/delete", json={"model": "llama3.2:1b"})
    assert (gone.status_code, gone.json()) == (404, {"error": "model 'llama3.2:1b' not found"})
    assert httpx.get(ollama.url + "/api/tags").json() == {"models": []}


def test_openai_chat_uses_the_openai_error_envelope(ollama: OllamaDouble) -> None:
    ok = httpx.post(ollama.url + "/v1/chat/completions", json={"model": "llama3.2:1b", "messages": []})
    assert ok.json()["choices"][0]["message"]["content"] == "Hello from llama3.2:1b."
    missing = httpx.post(ollama.url + "/v1/chat/completions", json={"model": "nope", "messages": []})
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {"message": "model 'nope' not found", "type": "not_found_error", "param": None, "code": None}
    }
    native = httpx.post(ollama.url + "/api/chat", json={"model": "nope", "messages": []})
    assert (native.status_code, native.json()) == (404, {"error": "model 'nope' not found"})


def test_requests_ollama_refuses_before_doing_anything(ollama: OllamaDouble) -> None:
    head = httpx.head(ollama.url + "/api/blobs/sha256:short")
    assert head.status_code == 400 and head.content == b""
    no_body = httpx.request("DELETE", ollama.url + "/api/delete")
    assert (no_body.status_code, no_body.json()) == (400, {"error": "missing request body"})
    bad_name = httpx.request("DELETE", ollama.url + "/api/delete", json={"model": "a:b:c"})
    assert (bad_name.status_code, bad_name.json()) == (400, {"error": 'name "a:b:c" is invalid'})
    empty_digest = httpx.post(
        ollama.url + "/api/create",
        json={"model": "m", "from": "llama3.2:1b", "adapters": {"a.safetensors": ""}},
    )
    assert (empty_digest.status_code, empty_digest.json()) == (400, {"error": "invalid digest format"})
    missing_base = httpx.post(ollama.url + "/api/create", json={"model": "m", "from": "llama3.1:8b"})
    lines = [json.loads(line) for line in missing_base.text.splitlines()]
    assert lines == [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
