"""OllamaClient against a protocol-faithful Ollama double on loopback: blobs by digest, `/api/create`
with errors delivered in each of Ollama's three ways, tags, delete, and Ollama model names.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpu_runner.endpoints.errors import EndpointError
from gpu_runner.endpoints.ollama import OllamaClient, ollama_model_name
from gpu_runner.endpoints.smoke import smoke_chat
from gpu_runner.storage import open_store
from tests.doubles.adapters import lora_shapes, peft_config, safetensors_bytes
from tests.doubles.ollama import OllamaDouble, normalize_name

BASE = "llama3.2:1b"
MODEL = ollama_model_name("ft:tailor-tiny:acme:support:abcd1234", 1)
CONFIG = json.dumps(peft_config()).encode()
WEIGHTS = safetensors_bytes(lora_shapes(["q_proj", "v_proj"]))


def digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def opener(data: bytes) -> functools.partial[io.BytesIO]:
    return functools.partial(io.BytesIO, data)


@pytest.fixture
def ollama() -> Iterator[OllamaDouble]:
    with OllamaDouble() as double:
        yield double


def upload(client: OllamaClient, config: bytes = CONFIG, weights: bytes = WEIGHTS) -> dict[str, str]:
    files = {"adapter_config.json": config, "adapter_model.safetensors": weights}
    for data in files.values():
        client.ensure_blob(digest(data), opener(data))
    return {name: digest(data) for name, data in files.items()}


def refused(call: object) -> EndpointError:
    assert callable(call)
    with pytest.raises(EndpointError) as caught:
        call()
    return caught.value


# Blobs ----------------------------------------------------------------------------------------------------


def test_a_blob_is_uploaded_once(ollama: OllamaDouble) -> None:
    client = OllamaClient(ollama.url)
    assert client.ensure_blob(digest(WEIGHTS), opener(WEIGHTS)) is True
    assert client.ensure_blob(digest(WEIGHTS), opener(WEIGHTS)) is False
    calls = [(r["method"], r["path"]) for r in ollama.requests]
    path = f"/api/blobs/{digest(WEIGHTS)}"
    assert calls == [("HEAD", path), ("POST", path), ("HEAD", path)]
    assert ollama.blobs[digest(WEIGHTS)] == WEIGHTS


def test_blobs_stream_from_the_object_store(ollama: OllamaDouble, tmp_path: Path) -> None:
    store = open_store((tmp_path / "objects").as_uri())
    store.put_bytes("adapters/x/adapter_model.safetensors", WEIGHTS)
    client = OllamaClient(ollama.url)
    assert client.ensure_blob(
        digest(WEIGHTS), functools.partial(store.open, "adapters/x/adapter_model.safetensors")
    )
    assert ollama.blobs[digest(WEIGHTS)] == WEIGHTS

    error = refused(
        lambda: client.ensure_blob(digest(b"other"), functools.partial(store.open, "adapters/x/missing"))
    )
    assert (error.transient, error.reason_code) == (False, "adapter_file_missing")


def test_bytes_that_do_not_match_their_digest_are_refused(ollama: OllamaDouble) -> None:
    claimed = digest(WEIGHTS)
    error = refused(lambda: OllamaClient(ollama.url).ensure_blob(claimed, opener(b"corrupted")))
    assert (error.transient, error.status, error.reason_code) == (False, 400, "blob_digest_mismatch")
    assert f'digest mismatch, expected "{claimed}", got "{digest(b"corrupted")}"' in error.message
    assert claimed not in ollama.blobs


def test_a_malformed_digest_never_reaches_the_server(ollama: OllamaDouble) -> None:
    with pytest.raises(ValueError, match="sha256"):
        OllamaClient(ollama.url).ensure_blob("md5:abc", opener(b"x"))
    assert ollama.requests == []


# Create ---------------------------------------------------------------------------------------------------


def test_create_builds_the_model_and_it_answers(ollama: OllamaDouble) -> None:
    client = OllamaClient(ollama.url)
    adapters = upload(client)
    statuses = client.create(MODEL, from_=BASE, adapters=adapters)
    assert statuses[0] == "converting adapter" and statuses[-2:] == ["writing manifest", "success"]
    assert any(s.startswith("using existing layer sha256:") for s in statuses)
    assert any(s.startswith("creating new layer sha256:") for s in statuses)
    [create] = ollama.requests_to("/api/create")
    assert create["body"] == {"model": MODEL, "from": BASE, "adapters": adapters, "stream": True}
    assert MODEL in [model["name"] for model in client.tags()]
    assert smoke_chat(ollama.url, model=MODEL, timeout=5) == f"Hello from {MODEL}."


def test_create_without_streaming(ollama: OllamaDouble) -> None:
    client = OllamaClient(ollama.url)
    assert client.create(MODEL, from_=BASE, adapters=upload(client), stream=False) == ["success"]


def test_error_after_progress_lines_arrives_in_a_200(tmp_path: Path) -> None:
    # Ollama sends `converting adapter` before it looks at the base's architecture: the status 200 has
    # gone out, and the refusal is the stream's last line.
    with OllamaDouble(architecture="qwen2") as double:
        client = OllamaClient(double.url)
        error = refused(lambda: client.create(MODEL, from_=BASE, adapters=upload(client)))
        assert MODEL not in [model["name"] for model in client.tags()]
    assert (error.transient, error.status, error.reason_code) == (
        False,
        200,
        "ollama_unsupported_architecture",
    )
    assert error.message.startswith(
        f"Ollama refused to create model {MODEL!r} from {BASE!r} (after 'converting adapter' in the progress "
        "stream): unsupported architecture."
    )
    assert "only for llama and gemma2 bases" in error.message


def test_the_same_error_without_streaming_keeps_its_status() -> None:
    with OllamaDouble(architecture="qwen2") as double:
        client = OllamaClient(double.url)
        error = refused(lambda: client.create(MODEL, from_=BASE, adapters=upload(client), stream=False))
    assert (error.status, error.reason_code) == (400, "ollama_unsupported_architecture")
    assert "(HTTP 400): unsupported architecture" in error.message


def test_a_release_without_adapter_support_is_named_with_its_version() -> None:
    with OllamaDouble(version="0.35.0", adapters_removed=True) as double:
        client = OllamaClient(double.url)
        error = refused(lambda: client.create(MODEL, from_=BASE, adapters=upload(client)))
    assert (error.transient, error.status, error.reason_code) == (False, 400, "ollama_adapters_unsupported")
    assert "safetensors imports do not support adapters" in error.message
    assert "Ollama 0.35.0" in error.message


def test_a_base_the_server_lacks_fails_after_the_pull_starts(ollama: OllamaDouble) -> None:
    client = OllamaClient(ollama.url)
    error = refused(lambda: client.create(MODEL, from_="llama3.1:8b", adapters=upload(client)))
    assert (error.transient, error.status, error.reason_code) == (False, 200, "ollama_base_model_missing")
    assert "after 'pulling manifest'" in error.message
    assert "pull model manifest: file does not exist" in error.message
    assert "ollama pull llama3.1:8b" in error.message


def test_an_adapter_without_its_config_is_incomplete(ollama: OllamaDouble) -> None:
    client = OllamaClient(ollama.url)
    adapters = upload(client)
    del adapters["adapter_config.json"]
    error = refused(lambda: client.create(MODEL, from_=BASE, adapters=adapters))
    assert error.reason_code == "adapter_incomplete"
    assert "open adapter_config.json: file does not exist" in error.message


def test_a_fractional_lora_alpha_fails_ollamas_conversion(ollama: OllamaDouble) -> None:
    client = OllamaClient(ollama.url)
    adapters = upload(client, config=json.dumps(peft_config(lora_alpha=16.5)).encode())
    error = refused(lambda: client.create(MODEL, from_=BASE, adapters=adapters))
    assert error.reason_code == "adapter_refused"
    assert (
        "cannot unmarshal number 16.5 into Go struct field AdapterParameters.lora_alpha of type uint32"
        in (error.message)
    )


def test_an_invalid_model_name_is_refused_before_streaming(ollama: OllamaDouble) -> None:
    client = OllamaClient(ollama.url)
    error = refused(
        lambda: client.create("ft:tailor-tiny:acme:x:abcd1234", from_=BASE, adapters=upload(client))
    )
    assert (error.status, error.reason_code) == (400, "ollama_invalid_model_name")
    assert "(HTTP 400): invalid model name" in error.message


def test_an_adapter_blob_that_was_never_uploaded(ollama: OllamaDouble) -> None:
    client = OllamaClient(ollama.url)
    adapters = {"adapter_config.json": digest(CONFIG), "adapter_model.safetensors": digest(WEIGHTS)}
    error = refused(lambda: client.create(MODEL, from_=BASE, adapters=adapters))
    assert (error.transient, error.status, error.reason_code) == (False, 400, "ollama_create_refused")
    assert "no such file or directory" in error.message


def test_a_stream_that_ends_without_success_is_transient(ollama: OllamaDouble) -> None:
    ollama.fail_next("/api/create", 200, {"status": "converting adapter"})
    client = OllamaClient(ollama.url)
    error = refused(lambda: client.create(MODEL, from_=BASE, adapters=upload(client)))
    assert (error.transient, error.reason_code) == (True, "ollama_create_interrupted")


def test_a_busy_server_is_transient(ollama: OllamaDouble) -> None:
    ollama.fail_next("/api/create", 503, {"error": "server busy, please try again"})
    client = OllamaClient(ollama.url)
    error = refused(lambda: client.create(MODEL, from_=BASE, adapters=upload(client)))
    assert (error.transient, error.status, error.reason_code) == (True, 503, "endpoint_unavailable")
    assert "server busy, please try again" in error.message
    assert client.create(MODEL, from_=BASE, adapters=upload(client))[-1] == "success"


# Delete, version, tags --------------------------------------------------------------------------------------


def test_delete_is_idempotent(ollama: OllamaDouble) -> None:
    client = OllamaClient(ollama.url)
    client.create(MODEL, from_=BASE, adapters=upload(client))
    assert client.delete(MODEL) is True
    assert client.delete(MODEL) is False
    assert [model["name"] for model in client.tags()] == [BASE]
    error = refused(lambda: smoke_chat(ollama.url, model=MODEL, timeout=5))
    assert (error.status, error.reason_code) == (404, "smoke_model_not_found")
    assert f"model '{MODEL}' not found" in error.message


def test_version_and_health(ollama: OllamaDouble) -> None:
    client = OllamaClient(ollama.url + "/v1")
    assert client.version() == "0.12.6"
    client.health()


def test_an_unreachable_server_is_transient() -> None:
    double = OllamaDouble().start()
    url = double.url
    double.stop()
    error = refused(lambda: OllamaClient(url, timeout=2).version())
    assert (error.transient, error.reason_code) == (True, "endpoint_unreachable")


def test_a_proxy_key_is_sent(tmp_path: Path) -> None:
    with OllamaDouble(api_key="proxy-key") as double:
        assert OllamaClient(double.url, api_key="proxy-key").tags()
        error = refused(lambda: OllamaClient(double.url).tags())
    assert (error.status, error.reason_code) == (401, "endpoint_unauthorized")


# Model names ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "adapter_name",
    [
        "ft:tailor-tiny:acme:support:abcd1234",
        "ft:meta-llama/Llama-3.2-1B-Instruct:Acme Corp:My Bot!:abcd1234",
        "ft:" + "x" * 200 + ":acme:s:abcd1234",
        "ft:::::",
    ],
)
def test_model_names_are_valid_for_ollama_and_stable(adapter_name: str) -> None:
    name = ollama_model_name(adapter_name, 7)
    assert normalize_name(name) == name, name
    assert name == name.lower() and name.endswith(":v7")
    assert len(name.split(":")[0]) <= 80
    assert ollama_model_name(adapter_name, 7) == name


def test_model_names_are_unique() -> None:
    names = {
        ollama_model_name("ft:a-b:c:d:abcd1234", 1),
        ollama_model_name("ft:a:b-c:d:abcd1234", 1),
        ollama_model_name("ft:A:b-c:d:abcd1234", 1),
        ollama_model_name("ft:a:b-c:d:abcd1234", 2),
    }
    assert len(names) == 4
    assert re.fullmatch(r"tailor-tiny-acme-support-abcd1234-[0-9a-f]{8}:v1", MODEL)


def test_a_base_without_an_architecture_is_refused_like_an_unsupported_one() -> None:
    with OllamaDouble(architecture="") as double:
        client = OllamaClient(double.url)
        error = refused(lambda: client.create(MODEL, from_=BASE, adapters=upload(client)))
    assert error.reason_code == "ollama_unsupported_architecture"
    assert "architecture not set for the base model" in error.message


def test_an_empty_digest_is_refused_before_streaming(ollama: OllamaDouble) -> None:
    client = OllamaClient(ollama.url)
    error = refused(lambda: client.create(MODEL, from_=BASE, adapters={"adapter_config.json": ""}))
    assert (error.status, error.reason_code) == (400, "ollama_create_refused")
    assert "invalid digest format" in error.message


def test_a_blob_store_failure_is_reported(ollama: OllamaDouble) -> None:
    ollama.fail_next(f"/api/blobs/{digest(WEIGHTS)}", 404, None)  # HEAD: not there yet
    ollama.fail_next(
        f"/api/blobs/{digest(WEIGHTS)}", 500, {"error": "write /root/.ollama: no space left on device"}
    )
    error = refused(lambda: OllamaClient(ollama.url).ensure_blob(digest(WEIGHTS), opener(WEIGHTS)))
    assert (error.transient, error.status, error.reason_code) == (False, 500, "endpoint_error")
    assert "no space left on device" in error.message


def test_a_model_whose_runner_fails_fails_the_smoke_request() -> None:
    with OllamaDouble() as double:
        client = OllamaClient(double.url)
        client.create(MODEL, from_=BASE, adapters=upload(client))
        double.chat_fails_for.add(MODEL)
        error = refused(lambda: smoke_chat(double.url, model=MODEL, timeout=5))
    assert (error.transient, error.status, error.reason_code) == (False, 500, "smoke_failed")
    assert "llama runner process has terminated" in error.message
