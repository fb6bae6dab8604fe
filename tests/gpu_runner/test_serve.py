"""The development serving endpoint, as a client sees it: a real `python -m gpu_runner serve` process on
loopback, driven over HTTP with httpx and the official `openai` SDK.

It must answer vLLM's LoRA management API exactly as vLLM does (status codes, plain-text successes, error
types and messages), serve the base and every adapter per request with the adapter really applied (the
answers are compared token for token with peft's own `generate`), keep answering adapters it evicted,
stream what it would answer at once, and enforce its API key.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gpu_runner.tiny_model import build_tiny_model
from tests.gpu_runner.serve_helpers import (
    ROOT,
    TINY,
    ServeProcess,
    edit_adapter_config,
    launch_server,
    make_adapter,
    serve_env,
    start_server,
    wait_ready,
)


@pytest.fixture(scope="module", autouse=True)
def _tiny_model() -> None:
    """The base model every server here serves: built once (deterministic, cached), never skipped."""
    build_tiny_model(TINY)

API_KEY = "test-serve-key"
BASE = "tailor-tiny"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUESTION = "What is the capital of France?"
MAX_TOKENS = 8


def _refused_adapters(root: Path, alpha: Path) -> dict[str, Path]:
    """One adapter for every way an adapter can be refused."""
    made = {
        "rank128": make_adapter(root / "rank128", seed=11, r=128),
        "dora": make_adapter(root / "dora", seed=12, use_dora=True),
        "embedding": make_adapter(root / "embedding", seed=13, target_modules=("embed_tokens",)),
        "other_base": make_adapter(
            root / "other_base",
            seed=14,
            base_config={
                "vocab_size": 3072,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
            },
        ),
    }
    edits: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
        ("bias", {"bias": "all"}, ()),
        ("modules_to_save", {"modules_to_save": ["lm_head"]}, ()),
        ("no_rank", {}, ("r",)),
    ]
    for name, changes, remove in edits:
        made[name] = edit_adapter_config(shutil.copytree(alpha, root / name), remove=remove, **changes)
    made["no_tensors"] = shutil.copytree(alpha, root / "no_tensors")
    (made["no_tensors"] / "adapter_model.safetensors").unlink()
    made["empty"] = root / "empty"
    made["empty"].mkdir()
    return made


@dataclass
class Servers:
    adapters: dict[str, Path]
    main: ServeProcess  # one adapter in memory at a time (so every switch evicts and reloads), an API key
    plain: ServeProcess  # `tailor serve` without runtime LoRA updating


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Both servers of the module, started side by side while the test adapters are made."""
    root, logs = tmp_path_factory.mktemp("adapters"), tmp_path_factory.mktemp("serve")
    adapters = {
        "startup": make_adapter(root / "startup", seed=10, target_modules=("o_proj", "down_proj")),
        "beta": make_adapter(root / "beta", seed=1),
    }
    main = launch_server(
        *("--model", str(TINY), "--served-model-name", BASE, "--max-loras", "1", "--api-key", API_KEY),
        *("--lora-modules", f"startup={adapters['startup']}"),
        log_dir=logs / "main",
    )
    plain = launch_server(
        *("--model", str(TINY), "--served-model-name", BASE, "--no-allow-runtime-lora-updating"),
        *("--lora-modules", json.dumps({"name": "fixed", "path": str(adapters["beta"])})),
        log_dir=logs / "plain",
        launcher="tailor",
    )
    try:
        adapters["alpha"] = make_adapter(root / "alpha", seed=0)
        adapters["gamma"] = make_adapter(root / "gamma", seed=2)
        adapters.update(_refused_adapters(root, adapters["alpha"]))
        yield Servers(adapters, wait_ready(main), wait_ready(plain))
    finally:
        codes = (main.stop(), plain.stop())
    assert codes[0] == 0, main.log()


@pytest.fixture(scope="module")
def adapters(servers: Servers) -> dict[str, Path]:
    return servers.adapters


@pytest.fixture(scope="module")
def server(servers: Servers) -> ServeProcess:
    return servers.main


@pytest.fixture(scope="module")
def http(server: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def sdk(server: ServeProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def reference() -> Any:
    """peft's own greedy generation on the tiny model, to hold the server's answers against."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TINY))
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the device the server chooses too

    def answer(adapter: Path | None, content: str = QUESTION, max_tokens: int = MAX_TOKENS) -> str:
        model: Any = AutoModelForCausalLM.from_pretrained(str(TINY))
        model = model.to(device).eval()
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter)).eval()
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        inputs = torch.tensor([ids], device=device)
        with torch.inference_mode():
            output = model.generate(
                input_ids=inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=max_tokens,
                do_sample=False,
            )
        return str(tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True))

    return answer


def chat(http: httpx.Client, model: str, content: str = QUESTION, **options: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": MAX_TOKENS}
    return http.post("/v1/chat/completions", json={**body, **options})


def answer_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def load(http: httpx.Client, name: str, path: Path | str, **options: Any) -> httpx.Response:
    return http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path), **options})


def unload(http: httpx.Client, name: str) -> httpx.Response:
    return http.post("/v1/unload_lora_adapter", json={"lora_name": name})


def model_ids(http: httpx.Client) -> list[str]:
    return [card["id"] for card in http.get("/v1/models").json()["data"]]


def error_of(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert error["code"] == response.status_code
    return dict(error)


# Health, models, API key ---------------------------------------------------------------------------


def test_health_and_models_list_the_base_first_then_adapters(
    server: ServeProcess, http: httpx.Client, adapters: dict[str, Path]
) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200  # no key needed
    cards = http.get("/v1/models").json()
    base, startup = cards["data"][:2]
    assert cards["object"] == "list"
    assert base["id"] == BASE and base["parent"] is None and base["root"] == str(TINY)
    assert base["max_model_len"] == 1024 and base["owned_by"] == "vllm"
    assert startup["id"] == "startup" and startup["parent"] == BASE
    assert startup["root"] == str(adapters["startup"])


def test_every_v1_route_needs_the_api_key(server: ServeProcess) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = httpx.get(f"{server.url}/v1/models", headers=headers)
        assert (response.status_code, response.json()) == (401, {"error": "Unauthorized"})
        response = httpx.post(
            f"{server.url}/v1/load_lora_adapter", headers=headers, json={"lora_name": "x", "lora_path": "/x"}
        )
        assert response.status_code == 401
    wrong_key = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong_key.models.list()


# Loading and unloading ------------------------------------------------------------------------------


def test_load_and_unload_answer_plain_text_and_update_the_model_list(
    http: httpx.Client, adapters: dict[str, Path]
) -> None:
    as_sent = f"{adapters['alpha'].parent}/./alpha"  # the card's root is the path exactly as sent
    response = load(http, "alpha-load", as_sent)
    assert response.status_code == 200
    assert response.text == "Success: LoRA adapter 'alpha-load' added successfully."
    assert "application/json" not in response.headers.get("content-type", "")
    card = http.get("/v1/models").json()["data"][-1]
    assert (card["id"], card["root"], card["parent"]) == ("alpha-load", as_sent, BASE)
    assert answer_of(chat(http, "alpha-load"))

    response = unload(http, "alpha-load")
    assert (response.status_code, response.text) == (
        200,
        "Success: LoRA adapter 'alpha-load' removed successfully.",
    )
    assert "alpha-load" not in model_ids(http)
    error = error_of(chat(http, "alpha-load"))
    assert error == {
        "message": "The model `alpha-load` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


def _invalid_cases(adapters: dict[str, Path]) -> list[tuple[str, int, str, str]]:
    """(adapter, status, type, message) for every refusal the server copies from vLLM."""
    linear = "['down_proj', 'gate_proj', 'k_proj', 'lm_head', 'o_proj', 'q_proj', 'up_proj', 'v_proj']"
    return [
        ("empty", 404, "NotFoundError", f"Loading lora x failed: No adapter found for {adapters['empty']}"),
        ("rank128", 400, "BadRequestError", "LoRA rank 128 is greater than max_lora_rank 64."),
        ("dora", 400, "BadRequestError", "vLLM does not yet support DoRA."),
        ("modules_to_save", 400, "BadRequestError", "vLLM only supports modules_to_save being None."),
        ("bias", 400, "BadRequestError", "Adapter bias cannot be used without bias_enabled."),
        ("no_rank", 400, "BadRequestError", "Missing required configuration fields: {'r'}"),
        ("no_tensors", 400, "BadRequestError", f"{adapters['no_tensors']} doesn't contain tensors"),
        (
            "embedding",
            400,
            "BadRequestError",
            f"While loading {adapters['embedding']}, expected target modules in {linear} but received "
            "['model.embed_tokens']. Please verify that the loaded LoRA module is correct",
        ),
    ]


def test_invalid_adapters_are_refused_with_vllms_errors_and_register_nothing(
    http: httpx.Client, adapters: dict[str, Path]
) -> None:
    before = model_ids(http)
    for adapter, status, err_type, message in _invalid_cases(adapters):
        response = load(http, "x", adapters[adapter])
        assert response.status_code == status, (adapter, response.text)
        assert error_of(response) == {"message": message, "type": err_type, "param": None, "code": status}
    missing = load(http, "x", "/nonexistent/adapter")
    assert (missing.status_code, error_of(missing)["message"]) == (
        404,
        "Loading lora x failed: No adapter found for /nonexistent/adapter",
    )
    # An adapter trained on another base has matrices of the wrong size: refused before peft touches the model.
    wrong_base = error_of(load(http, "x", adapters["other_base"]))
    assert wrong_base["type"] == "BadRequestError"
    assert wrong_base["message"].startswith("The size of tensor a (64) must match the size of tensor b (128)")
    assert model_ids(http) == before
    assert answer_of(chat(http, "startup"))  # the adapters already there still serve


def test_request_errors_of_the_management_routes(http: httpx.Client, adapters: dict[str, Path]) -> None:
    for body in ({"lora_name": "", "lora_path": str(adapters["alpha"])}, {"lora_name": "x", "lora_path": ""}):
        response = http.post("/v1/load_lora_adapter", json=body)
        assert error_of(response) == {
            "message": "Both 'lora_name' and 'lora_path' must be provided.",
            "type": "InvalidUserInput",
            "param": None,
            "code": 400,
        }
    duplicate = load(http, "startup", adapters["alpha"])
    assert error_of(duplicate) == {
        "message": "The lora adapter 'startup' has already been loaded. If you want to load the adapter in "
        "place, set 'load_inplace' to True.",
        "type": "InvalidUserInput",
        "param": None,
        "code": 400,
    }
    assert error_of(unload(http, "")) == {
        "message": "'lora_name' needs to be provided to unload a LoRA adapter.",
        "type": "InvalidUserInput",
        "param": None,
        "code": 400,
    }
    assert error_of(unload(http, "never-loaded")) == {
        "message": "The lora adapter 'never-loaded' cannot be found.",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }
    missing_field = http.post("/v1/load_lora_adapter", json={"lora_name": "x"})
    assert missing_field.status_code == 400 and "lora_path" in error_of(missing_field)["message"]
    not_json = http.post(
        "/v1/load_lora_adapter", content=b"lora_name=x", headers={"Content-Type": "text/plain"}
    )
    assert (not_json.status_code, not_json.json()) == (
        415,
        {"detail": "Unsupported Media Type: Only 'application/json' is allowed"},
    )


# Serving adapters -----------------------------------------------------------------------------------


def test_each_request_gets_its_adapter_applied_as_peft_applies_it(
    http: httpx.Client, adapters: dict[str, Path], reference: Any
) -> None:
    for name in ("alpha", "beta"):
        assert load(http, name, adapters[name]).status_code == 200
    answers = {model: answer_of(chat(http, model)) for model in (BASE, "alpha", "beta", "startup")}
    assert answers[BASE] == reference(None)
    assert answers["alpha"] == reference(adapters["alpha"])
    assert answers["beta"] == reference(adapters["beta"])
    assert answers["startup"] == reference(adapters["startup"])
    assert len(set(answers.values())) == 4, answers  # every adapter changes what the model says
    response = chat(http, "alpha").json()
    assert response["model"] == "alpha" and response["object"] == "chat.completion"
    assert response["usage"]["completion_tokens"] <= MAX_TOKENS and response["usage"]["prompt_tokens"] > 0


def test_more_adapters_than_memory_slots_all_keep_answering(
    http: httpx.Client, adapters: dict[str, Path]
) -> None:
    # --max-loras 1: every switch evicts the adapter in memory and reloads the next one from its path.
    for name in ("alpha", "beta", "gamma"):
        if name not in model_ids(http):
            assert load(http, name, adapters[name]).status_code == 200
    first = {name: answer_of(chat(http, name)) for name in ("alpha", "beta", "gamma")}
    again = {name: answer_of(chat(http, name)) for name in ("gamma", "alpha", "beta")}
    assert first == again
    assert len(set(first.values())) == 3
    # Requests arriving together take turns on the model, each with its own adapter.
    names = ["alpha", "beta", "gamma", BASE, "alpha", "gamma"]
    with ThreadPoolExecutor(len(names)) as pool:
        together = list(pool.map(lambda name: answer_of(chat(http, name)), names))
    assert together == [first.get(name) or answer_of(chat(http, BASE)) for name in names]


def test_load_inplace_replaces_the_weights_and_keeps_the_place(
    http: httpx.Client, adapters: dict[str, Path], reference: Any
) -> None:
    assert load(http, "swap", adapters["alpha"]).status_code == 200
    position = model_ids(http).index("swap")
    assert answer_of(chat(http, "swap")) == reference(adapters["alpha"])
    response = load(http, "swap", adapters["gamma"], load_inplace=True)
    assert (response.status_code, response.text) == (200, "Success: LoRA adapter 'swap' added successfully.")
    assert answer_of(chat(http, "swap")) == reference(adapters["gamma"])
    cards = http.get("/v1/models").json()["data"]
    assert cards[position]["id"] == "swap" and cards[position]["root"] == str(adapters["gamma"])
    # A refused in-place load leaves the adapter as it was.
    assert load(http, "swap", adapters["rank128"], load_inplace=True).status_code == 400
    assert answer_of(chat(http, "swap")) == reference(adapters["gamma"])


# OpenAI API -----------------------------------------------------------------------------------------


def test_the_openai_sdk_streams_what_it_gets_at_once(sdk: openai.OpenAI) -> None:
    assert [model.id for model in sdk.models.list()][0] == BASE
    messages: Any = [{"role": "user", "content": QUESTION}]
    for model in (BASE, "startup"):
        whole = sdk.chat.completions.create(model=model, messages=messages, max_tokens=MAX_TOKENS)
        chunks = list(
            sdk.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=MAX_TOKENS,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        assert text == whole.choices[0].message.content and text
        assert len([chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]) > 1
        finals = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
        assert finals[-1] == whole.choices[0].finish_reason and all(reason is None for reason in finals[:-1])
        assert chunks[-1].usage is not None and whole.usage is not None
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
        assert {chunk.model for chunk in chunks} == {model}

    whole_text = sdk.completions.create(model=BASE, prompt="The cat", max_tokens=MAX_TOKENS)
    streamed = "".join(
        chunk.choices[0].text
        for chunk in sdk.completions.create(model=BASE, prompt="The cat", max_tokens=MAX_TOKENS, stream=True)
    )
    assert streamed == whole_text.choices[0].text and whole_text.object == "text_completion"


def test_sampling_options_are_honoured(http: httpx.Client, sdk: openai.OpenAI) -> None:
    long = sdk.completions.create(model=BASE, prompt="The", max_tokens=5, stop=None)
    assert long.usage is not None and long.usage.completion_tokens <= 5
    unbounded = answer_of(chat(http, BASE, max_tokens=None, max_completion_tokens=3))
    assert len(unbounded) > 0
    assert chat(http, BASE, max_tokens=3).json()["usage"]["completion_tokens"] <= 3

    # A stop string ends the answer before it, whether streamed or not.
    full = answer_of(chat(http, BASE, max_tokens=20))
    stop = full.split()[1]
    cut = chat(http, BASE, max_tokens=20, stop=[stop]).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["stop_reason"] == stop
    assert cut["message"]["content"] == full[: full.index(stop)]
    streamed = sdk.chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": QUESTION}], max_tokens=20, stop=[stop], stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed) == cut["message"]["content"]

    # Sampling with a seed repeats; greedy is the default.
    sampled = [
        answer_of(chat(http, BASE, temperature=1.0, top_p=0.9, seed=7, max_tokens=12)) for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    assert answer_of(chat(http, BASE)) == answer_of(chat(http, BASE, temperature=0))


def test_request_errors_of_the_completion_routes(http: httpx.Client) -> None:
    assert error_of(chat(http, "no-such-model")) == {
        "message": "The model `no-such-model` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }
    many = chat(http, BASE, n=2)
    assert many.status_code == 400 and error_of(many)["type"] == "BadRequestError"
    too_long = chat(http, BASE, max_tokens=5000)
    assert too_long.status_code == 400
    assert error_of(too_long)["message"].startswith("This model's maximum context length is 1024 tokens.")
    bad_value = chat(http, BASE, temperature=-1)
    assert bad_value.status_code == 400 and "temperature" in error_of(bad_value)["message"]


# Other configurations -------------------------------------------------------------------------------


def test_tailor_serve_without_runtime_updating_hides_the_routes_and_stops_cleanly(servers: Servers) -> None:
    plain = servers.plain
    for route in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        response = httpx.post(f"{plain.url}{route}", json={"lora_name": "x", "lora_path": "/x"})
        assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
    response = httpx.post(
        f"{plain.url}/v1/chat/completions",
        json={"model": "fixed", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        timeout=60,
    )
    assert response.status_code == 200 and response.json()["model"] == "fixed"
    assert plain.stop() == 0, plain.log()  # SIGTERM is a clean stop


def test_a_startup_adapter_that_fails_to_load_stops_the_start(
    adapters: dict[str, Path], tmp_path: Path
) -> None:
    expected = r"exited with 1:\n.*cannot load LoRA module broken: vLLM does not yet support DoRA\."
    with pytest.raises(RuntimeError, match=expected):
        start_server("--model", str(TINY), "--lora-modules", f"broken={adapters['dora']}", log_dir=tmp_path)


PROBE = """
import contextlib, io, sys
from gpu_runner.cli import main
from tailor.cli import main as tailor
out = io.StringIO()
with contextlib.redirect_stdout(out):
    codes = (main(["serve", "--help"]), tailor(["serve", "--help"]))
heavy = [m for m in ("torch", "transformers", "peft", "fastapi", "uvicorn", "django") if m in sys.modules]
print(codes, heavy, "--max-lora-rank" in out.getvalue())
"""


def test_the_command_line_stays_light_until_a_server_starts() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60, env=serve_env()
    )
    assert result.stdout.strip() == "(0, 0) [] True", result.stdout + result.stderr
