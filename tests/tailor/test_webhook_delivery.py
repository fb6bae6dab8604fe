"""Webhook delivery: refused destinations, real signed POSTs to a receiver on 127.0.0.1 that verifies
them with the openai SDK, failures reported with their reason, and the retry schedule."""

from __future__ import annotations

import contextlib
import datetime
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tailor.webhooks.delivery import (
    MAX_DELIVERY_ATTEMPTS,
    RETRY_DELAYS_SECONDS,
    UnsafeWebhookDestination,
    WebhookDestinationError,
    backoff_schedule,
    build_event,
    check_destination,
    deliver,
    new_message_id,
)
from tailor.webhooks.signing import generate_secret

SDK = openai.OpenAI(api_key="x")


# Destination checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, address, reason",
    [
        ("http://127.0.0.1/hook", "127.0.0.1", "loopback"),
        ("http://[::1]:8080/hook", "::1", "loopback"),
        ("https://localhost/hook", "127.0.0.1", "loopback"),
        ("http://10.1.2.3/hook", "10.1.2.3", "private"),
        ("http://192.168.0.10:8000/", "192.168.0.10", "private"),
        ("http://[fd00::1]/", "fd00::1", "private"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "link-local"),
        ("http://[fe80::1]/", "fe80::1", "link-local"),
        ("http://0.0.0.0:5432/", "0.0.0.0", "unspecified"),
        ("http://224.0.0.251/", "224.0.0.251", "multicast"),
        ("http://240.0.0.1/", "240.0.0.1", "reserved"),
        ("http://100.64.0.1/", "100.64.0.1", "non-public"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1", "loopback"),
        ("http://[2002:a00:1::]/", "2002:a00:1::", "private"),  # 6to4 around 10.0.0.1
    ],
)
def test_private_destinations_are_refused_naming_the_address(url, address, reason):
    with pytest.raises(UnsafeWebhookDestination) as refused:
        check_destination(url, allow_private=False)
    message = str(refused.value)
    assert address in message and f"a {reason} address" in message and url in message
    assert check_destination(url, allow_private=True).addresses  # the operator setting lets them through


def test_hostname_is_reported_with_the_address_it_resolves_to():
    with pytest.raises(
        UnsafeWebhookDestination, match=r"localhost resolves to 127\.0\.0\.1, which is a loopback"
    ):
        check_destination("http://localhost:8000/hook", allow_private=False)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://8.8.8.8/"])
def test_only_http_and_https_are_allowed_even_for_private_setups(url):
    for allow_private in (False, True):
        with pytest.raises(UnsafeWebhookDestination, match="must use http or https"):
            check_destination(url, allow_private=allow_private)


def test_public_addresses_pass():
    destination = check_destination("https://8.8.8.8/hook", allow_private=False)
    assert [str(a) for a in destination.addresses] == ["8.8.8.8"]
    assert destination.port == 443
    assert check_destination("http://[2606:4700::1111]:8080/", allow_private=False).port == 8080


@pytest.fixture
def fake_dns(monkeypatch) -> dict[str, list[list[str]]]:
    """Answers for chosen host names, one list of addresses per lookup; other names resolve normally."""
    answers: dict[str, list[list[str]]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in answers:
            addresses = answers[host].pop(0) if len(answers[host]) > 1 else answers[host][0]
            return [
                (
                    socket.AF_INET6 if ":" in a else socket.AF_INET,
                    socket.SOCK_STREAM,
                    6,
                    "",
                    (a, port) if ":" not in a else (a, port, 0, 0),
                )
                for a in addresses
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def test_every_record_of_a_host_is_checked(fake_dns):
    fake_dns["mixed.example"] = [["93.184.215.14", "10.0.0.7"]]
    with pytest.raises(UnsafeWebhookDestination, match=r"mixed\.example resolves to 10\.0\.0\.7"):
        check_destination("https://mixed.example/hook", allow_private=False)
    fake_dns["public.example"] = [["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]]
    assert len(check_destination("https://public.example/hook", allow_private=False).addresses) == 2


def test_unresolvable_host_is_a_destination_error_not_an_unsafe_one():
    with pytest.raises(
        WebhookDestinationError, match="cannot resolve the webhook host 'no-such-host.invalid'"
    ) as e:
        check_destination("https://no-such-host.invalid/hook", allow_private=False)
    assert not isinstance(e.value, UnsafeWebhookDestination)


# Real deliveries ---------------------------------------------------------------------------------------


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records each request and answers with `status` and `body`."""

    port: int
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@contextlib.contextmanager
def serve(tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    state: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            state.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            time.sleep(state.delay)
            self.send_response(state.status)
            for name, value in state.headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    state = Receiver(port=server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve() as state:
        yield state


def self_signed(tmp_path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A certificate for `name`: the server's TLS context and a client context that trusts it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    return server, ssl.create_default_context(cafile=str(cert_file))


def send(url: str, secret: str, **overrides):
    payload = build_event(event_type="fine_tuning.job.succeeded", data={"id": "ftjob-abc123"})
    arguments = {
        "url": url,
        "secret": secret,
        "event_type": "fine_tuning.job.succeeded",
        "payload": payload,
        "msg_id": new_message_id(),
        "allow_private": True,
        "timeout": 5,
        **overrides,
    }
    return payload, arguments["msg_id"], deliver(**arguments)


def test_delivery_is_verified_by_the_openai_sdk_on_the_receiving_side(receiver):
    secret = generate_secret()
    payload, msg_id, result = send(receiver.url(), secret)
    assert result.ok and result.status_code == 200 and result.error is None
    assert 0 <= result.duration_ms < 5000
    [(headers, body)] = receiver.requests
    event = SDK.webhooks.unwrap(body, headers, secret=secret)
    assert event.type == "fine_tuning.job.succeeded" and event.data.id == "ftjob-abc123"
    assert event.id == payload["id"]
    assert headers["webhook-id"] == msg_id
    assert headers["content-type"] == "application/json"
    assert headers["host"] == f"127.0.0.1:{receiver.port}"


def test_a_retry_keeps_the_message_id_and_signs_a_fresh_timestamp(receiver):
    secret = generate_secret()
    payload, msg_id, _ = send(receiver.url(), secret)
    send(receiver.url(), secret, payload=payload, msg_id=msg_id)
    (first, body1), (second, body2) = receiver.requests
    assert first["webhook-id"] == second["webhook-id"] == msg_id and body1 == body2
    for headers in (first, second):
        SDK.webhooks.verify_signature(body2, headers, secret=secret)


def test_delivery_connects_to_the_address_it_checked(receiver, fake_dns):
    # The name resolves to 127.0.0.1 when checked, then to an unroutable address (DNS rebinding): the
    # delivery still goes to the checked address, with the registered name in the Host header.
    fake_dns["hooks.example"] = [["127.0.0.1"], ["203.0.113.9"]]
    secret = generate_secret()
    _, _, result = send(receiver.url(host="hooks.example"), secret)
    assert result.ok, result.error
    [(headers, body)] = receiver.requests
    assert headers["host"] == f"hooks.example:{receiver.port}"
    SDK.webhooks.verify_signature(body, headers, secret=secret)


def test_https_delivery_to_the_checked_address_verifies_the_certificate_name(tmp_path, fake_dns):
    # Connecting to the checked IP must still present the registered name (SNI) and verify the
    # certificate against it: the receiver's certificate names hooks.example only.
    server_tls, trust = self_signed(tmp_path, "hooks.example")
    fake_dns["hooks.example"] = [["127.0.0.1"]]
    fake_dns["other.example"] = [["127.0.0.1"]]
    secret = generate_secret()
    with serve(server_tls) as receiver:
        _, _, result = send(f"https://hooks.example:{receiver.port}/hook", secret, ssl_context=trust)
        assert result.ok, result.error
        [(headers, body)] = receiver.requests
        assert headers["host"] == f"hooks.example:{receiver.port}"
        SDK.webhooks.verify_signature(body, headers, secret=secret)

        _, _, wrong_name = send(f"https://other.example:{receiver.port}/hook", secret, ssl_context=trust)
        assert not wrong_name.ok and "CERTIFICATE_VERIFY_FAILED" in wrong_name.error
        _, _, untrusted = send(f"https://hooks.example:{receiver.port}/hook", secret)
        assert not untrusted.ok and "CERTIFICATE_VERIFY_FAILED" in untrusted.error
        assert len(receiver.requests) == 1


def test_refused_destination_sends_nothing_and_is_not_retryable(receiver):
    _, _, result = send(receiver.url(), generate_secret(), allow_private=False)
    assert not result.ok and result.status_code is None and not result.retryable
    assert "127.0.0.1 is a loopback address" in result.error
    assert receiver.requests == []


def test_non_2xx_answer_is_a_failure_with_status_and_body(receiver):
    receiver.status, receiver.body = 503, b"maintenance until 10:00" + b"x" * 5000
    _, _, result = send(receiver.url(), generate_secret())
    assert not result.ok and result.retryable
    assert result.status_code == 503
    assert result.error.startswith("HTTP 503 Service Unavailable: maintenance until 10:00")
    assert len(result.error) < 300


def test_redirects_are_not_followed(receiver):
    receiver.status, receiver.headers = 302, {"location": receiver.url("/elsewhere")}
    _, _, result = send(receiver.url(), generate_secret())
    assert not result.ok and result.status_code == 302
    assert "redirect to" in result.error and "/elsewhere" in result.error and "not followed" in result.error
    assert len(receiver.requests) == 1


def test_connection_refused_is_a_failure():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _, _, result = send(f"http://127.0.0.1:{port}/hook", generate_secret())
    assert not result.ok and result.status_code is None and result.retryable
    assert f"cannot connect to 127.0.0.1 port {port}" in result.error


def test_slow_receiver_times_out(receiver):
    receiver.delay = 1.5
    _, _, result = send(receiver.url(), generate_secret(), timeout=0.3)
    assert not result.ok and result.status_code is None
    assert "no answer from 127.0.0.1" in result.error and "0.3 s" in result.error


def test_unresolvable_host_is_a_retryable_failure():
    _, _, result = send("https://no-such-host.invalid/hook", generate_secret())
    assert not result.ok and result.retryable and "cannot resolve" in result.error


def test_payload_must_match_the_event_type():
    payload = build_event(event_type="fine_tuning.job.failed", data={"id": "ftjob-1"})
    with pytest.raises(ValueError, match="does not match event_type"):
        deliver(
            url="http://127.0.0.1:9/",
            secret=generate_secret(),
            event_type="fine_tuning.job.succeeded",
            payload=payload,
            msg_id="msg_1",
            allow_private=True,
        )


# Retry schedule ----------------------------------------------------------------------------------------


def test_backoff_grows_with_jitter_and_ends():
    rng = random.Random(7)
    delays = [backoff_schedule(n, rng=rng) for n in range(1, MAX_DELIVERY_ATTEMPTS)]
    assert delays == sorted(delays)
    for delay, base in zip(delays, RETRY_DELAYS_SECONDS, strict=True):
        assert 0.8 * base <= delay <= 1.2 * base
    assert delays[0] < 10 and delays[-1] > 3 * 3600
    assert backoff_schedule(MAX_DELIVERY_ATTEMPTS) is None
    spread = {round(backoff_schedule(3), 3) for _ in range(20)}
    assert len(spread) > 1  # failures that happened together do not retry together
    with pytest.raises(ValueError, match="start at 1"):
        backoff_schedule(0)
