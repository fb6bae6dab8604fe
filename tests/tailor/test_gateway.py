"""The inference gateway over real HTTP: the live Django server in front of an OpenAI-compatible upstream
on loopback, driven by the official openai SDK. Routing itself is `route_for_model`; here: what a client
sees (its own model names, streams that arrive as they are produced, errors in OpenAI's envelope) and
what the endpoint sees (the served name, the endpoint's credential, never the client's key), and that a
team reaches only its own adapters."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from tailor.registry.models import AdapterAlias, Deployment, InferenceEndpoint
from tailor.teams.models import Team
from tailor.tuning.models import Adapter, BaseModel

from tests.tailor.adapter_factories import stored_adapter
from tests.tailor.factories import TeamFactory, issue_key
from tests.tailor.jobs_factories import BaseModelFactory
from tests.tailor.processes import free_port

pytestmark = pytest.mark.django_db(transaction=True)

STREAM_PAUSE = 0.3  # seconds between the upstream's chunks


class Upstream:
    """A small OpenAI-compatible server: chat and completions, streamed chunk by chunk, errors on demand."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_with: tuple[int, dict[str, Any]] | None = None
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                upstream.requests.append(
                    {"path": self.path, "body": body, "authorization": self.headers.get("Authorization")}
                )
                if upstream.fail_with is not None:
                    status, error = upstream.fail_with
                    self._json(status, error)
                    return
                text = f"reply from {body['model']}"
                if body.get("stream"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for number, word in enumerate(text.split(" ")):
                        chunk = {
                            "id": "chatcmpl-1",
                            "object": "chat.completion.chunk",
                            "created": 1,
                            "model": body["model"],
                            "choices": [
                                {
                                    "index": 0,
                                    "delta": {
                                        "role": "assistant",
                                        "content": ("" if number == 0 else " ") + word,
                                    },
                                    "finish_reason": None,
                                }
                            ],
                        }
                        self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                        time.sleep(STREAM_PAUSE)
                    self._chunk(b"data: [DONE]\n\n")
                    self._chunk(b"")
                    return
                if self.path.endswith("/chat/completions"):
                    answer = {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "created": 1,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
                    }
                else:
                    answer = {
                        "id": "cmpl-1",
                        "object": "text_completion",
                        "created": 1,
                        "model": body["model"],
                        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                    }
                self._json(200, answer)

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.stop()


@pytest.fixture
def base(db: None) -> BaseModel:
    return BaseModelFactory(name="tiny-base")


@pytest.fixture
def endpoint(upstream: Upstream, base: BaseModel) -> InferenceEndpoint:
    return InferenceEndpoint.objects.create(
        team=None,
        name="shared-vllm",
        kind=InferenceEndpoint.Kind.VLLM,
        base_url=upstream.url,
        credential="endpoint-secret",
        served_models={base.name: "served/tiny-base"},
        max_lora_rank=64,
        delivery=InferenceEndpoint.Delivery.SHARED_VOLUME,
        adapter_root="/adapters",
    )


def go_live(adapter: Adapter, endpoint: InferenceEndpoint, *, served_name: str | None = None) -> Deployment:
    return Deployment.objects.create(
        team=adapter.team,
        adapter=adapter,
        endpoint=endpoint,
        status=Deployment.Status.LIVE,
        served_name=served_name or f"served-{adapter.job.public_id}",
    )


def sdk(live_server: Any, team: Team) -> OpenAI:
    return OpenAI(base_url=f"{live_server.url}/v1", api_key=issue_key(team).secret, max_retries=0)


def test_chat_with_a_live_adapter_goes_to_its_endpoint_under_the_served_name(
    live_server: Any, upstream: Upstream, endpoint: InferenceEndpoint, base: BaseModel
) -> None:
    team = TeamFactory()
    adapter = stored_adapter(team, base)
    go_live(adapter, endpoint, served_name="lora-7")
    client = sdk(live_server, team)

    reply = client.chat.completions.with_raw_response.create(
        model=adapter.name, messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0
    )
    completion = reply.parse()
    assert completion.model == adapter.name
    assert completion.choices[0].message.content == "reply from lora-7"
    assert reply.headers["X-Tailor-Endpoint"] == "shared-vllm"
    [sent] = upstream.requests
    assert sent["path"] == "/v1/chat/completions" and sent["body"]["model"] == "lora-7"
    assert sent["body"]["max_tokens"] == 5 and sent["body"]["temperature"] == 0
    assert sent["authorization"] == "Bearer endpoint-secret", (
        "the endpoint's credential, never the client's key"
    )


def test_completions_and_base_models_are_routed_too(
    live_server: Any, upstream: Upstream, endpoint: InferenceEndpoint, base: BaseModel
) -> None:
    client = sdk(live_server, TeamFactory())
    completion = client.completions.create(model=base.name, prompt="Once", max_tokens=3)
    assert completion.model == base.name and completion.choices[0].text == "reply from served/tiny-base"
    assert upstream.requests[0]["path"] == "/v1/completions"


def test_an_alias_routes_to_the_version_it_points_at(
    live_server: Any, upstream: Upstream, endpoint: InferenceEndpoint, base: BaseModel
) -> None:
    team = TeamFactory()
    first, second = stored_adapter(team, base), stored_adapter(team, base)
    go_live(first, endpoint, served_name="v1")
    go_live(second, endpoint, served_name="v2")
    alias = AdapterAlias.objects.create(team=team, family=first.family, name="production", adapter=second)
    client = sdk(live_server, team)
    ask = {"model": alias.model_id, "messages": [{"role": "user", "content": "hi"}]}

    assert client.chat.completions.create(**ask).choices[0].message.content == "reply from v2"
    alias.adapter = first
    alias.save()
    answer = client.chat.completions.create(**ask)
    assert answer.choices[0].message.content == "reply from v1" and answer.model == alias.model_id


def test_a_stream_is_relayed_as_it_arrives_with_the_clients_model_name(
    live_server: Any, upstream: Upstream, endpoint: InferenceEndpoint, base: BaseModel
) -> None:
    team = TeamFactory()
    adapter = stored_adapter(team, base)
    go_live(adapter, endpoint, served_name="lora-s")
    client = sdk(live_server, team)

    started = time.monotonic()
    arrivals, chunks = [], []
    for chunk in client.chat.completions.create(
        model=adapter.name, messages=[{"role": "user", "content": "hi"}], stream=True
    ):
        arrivals.append(time.monotonic() - started)
        chunks.append(chunk)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "reply from lora-s"
    assert all(c.model == adapter.name for c in chunks)
    # Three chunks 0.3 s apart upstream: the first reached the client long before the last was sent.
    assert len(arrivals) == 3 and arrivals[-1] - arrivals[0] >= 2 * STREAM_PAUSE * 0.8, arrivals


def test_another_teams_adapter_is_unknown_exactly_like_a_missing_one(
    live_server: Any, upstream: Upstream, endpoint: InferenceEndpoint, base: BaseModel
) -> None:
    owner = TeamFactory()
    adapter = stored_adapter(owner, base)
    go_live(adapter, endpoint)
    stranger = sdk(live_server, TeamFactory())
    messages = [{"role": "user", "content": "hi"}]

    with pytest.raises(openai.NotFoundError) as theirs:
        stranger.chat.completions.create(model=adapter.name, messages=messages)
    with pytest.raises(openai.NotFoundError) as missing:
        stranger.chat.completions.create(model=adapter.name + "x", messages=messages)
    assert theirs.value.body["code"] == missing.value.body["code"] == "model_not_found"
    assert theirs.value.body["message"].replace(adapter.name, "?") == missing.value.body["message"].replace(
        adapter.name + "x", "?"
    )
    assert upstream.requests == []


def test_deleted_and_undeployed_adapters_are_not_served(
    live_server: Any, upstream: Upstream, endpoint: InferenceEndpoint, base: BaseModel
) -> None:
    team = TeamFactory()
    client = sdk(live_server, team)
    messages = [{"role": "user", "content": "hi"}]
    waiting = stored_adapter(team, base)
    with pytest.raises(openai.NotFoundError) as not_deployed:
        client.chat.completions.create(model=waiting.name, messages=messages)
    assert not_deployed.value.body["code"] == "model_not_available"
    assert "not deployed" in not_deployed.value.body["message"]

    deleted = stored_adapter(team, base)
    go_live(deleted, endpoint)
    Adapter.objects.filter(pk=deleted.pk).update(deleted_at="2026-01-01T00:00:00Z")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=deleted.name, messages=messages)
    assert upstream.requests == []


def test_upstream_errors_pass_through_and_an_unreachable_endpoint_is_a_502(
    live_server: Any, upstream: Upstream, endpoint: InferenceEndpoint, base: BaseModel
) -> None:
    team = TeamFactory()
    adapter = stored_adapter(team, base)
    go_live(adapter, endpoint)
    client = sdk(live_server, team)
    messages = [{"role": "user", "content": "hi"}]

    upstream.fail_with = (
        500,
        {"error": {"message": "engine died", "type": "InternalServerError", "code": 500}},
    )
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model=adapter.name, messages=messages)
    assert failed.value.status_code == 500 and "engine died" in str(failed.value.body)

    InferenceEndpoint.objects.filter(pk=endpoint.pk).update(base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(openai.APIStatusError) as down:
        client.chat.completions.create(model=adapter.name, messages=messages)
    assert down.value.status_code == 502
    assert "shared-vllm" in down.value.body["message"] and "127.0.0.1" not in down.value.body["message"]


def test_bad_requests_get_openai_errors(live_server: Any, endpoint: InferenceEndpoint) -> None:
    key = issue_key(TeamFactory()).secret
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    url = f"{live_server.url}/v1/chat/completions"

    not_json = httpx.post(url, content=b"{nope", headers=headers)
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
    no_model = httpx.post(url, json={"messages": []}, headers=headers)
    assert no_model.status_code == 400 and no_model.json()["error"]["param"] == "model"
    no_key = httpx.post(url, json={"model": "x", "messages": []})
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "missing_api_key"


def test_a_read_only_key_may_call_models_since_inference_stores_nothing(
    live_server: Any, upstream: Upstream, endpoint: InferenceEndpoint, base: BaseModel
) -> None:
    team = TeamFactory()
    adapter = stored_adapter(team, base)
    go_live(adapter, endpoint, served_name="lora-r")
    reader = OpenAI(
        base_url=f"{live_server.url}/v1", api_key=issue_key(team, scopes=["read"]).secret, max_retries=0
    )
    answer = reader.chat.completions.create(model=adapter.name, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "reply from lora-r"
    with pytest.raises(openai.PermissionDeniedError):
        reader.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
