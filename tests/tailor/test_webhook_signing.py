"""Webhook signatures: what Tailor signs, the openai SDK's verifier accepts, and nothing else."""

from __future__ import annotations

import base64
import time

import openai
import pytest
from openai.types.webhooks import FineTuningJobFailedWebhookEvent, FineTuningJobSucceededWebhookEvent
from tailor.webhooks.delivery import build_event, event_body, new_message_id
from tailor.webhooks.signing import generate_secret, sign, signature

SDK = openai.OpenAI(api_key="x")


def signed_event(secret, event_type="fine_tuning.job.succeeded", *, timestamp=None):
    payload = build_event(event_type=event_type, data={"id": "ftjob-abc123"})
    body = event_body(payload)
    headers = sign(secret=secret, msg_id=new_message_id(), timestamp=timestamp or int(time.time()), body=body)
    return payload, body, headers


def test_generated_secret_is_whsec_and_32_random_bytes():
    secrets = {generate_secret() for _ in range(20)}
    assert len(secrets) == 20
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret[6:], validate=True)) == 32


def test_standard_webhooks_known_answer():
    # The test vector of the Standard Webhooks reference libraries.
    assert (
        signature(
            secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
            timestamp=1614265330,
            body=b'{"test": 2432232314}',
        )
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


@pytest.mark.parametrize(
    "event_type, model",
    [
        ("fine_tuning.job.succeeded", FineTuningJobSucceededWebhookEvent),
        ("fine_tuning.job.failed", FineTuningJobFailedWebhookEvent),
    ],
)
def test_openai_sdk_unwraps_what_tailor_signs(event_type, model):
    secret = generate_secret()
    payload, body, headers = signed_event(secret, event_type)
    for received in (body, body.decode()):
        event = SDK.webhooks.unwrap(received, headers, secret=secret)
        assert isinstance(event, model)
        assert event.id == payload["id"] and event.id.startswith("evt_")
        assert event.type == event_type and event.object == "event"
        assert event.data.id == "ftjob-abc123"
        assert event.created_at == payload["created_at"]


def test_sdk_rejects_a_tampered_body_or_another_secret():
    secret = generate_secret()
    _, body, headers = signed_event(secret)
    tampered = body.replace(b"ftjob-abc123", b"ftjob-abc124")
    with pytest.raises(openai.InvalidWebhookSignatureError):
        SDK.webhooks.unwrap(tampered, headers, secret=secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        SDK.webhooks.unwrap(body, headers, secret=generate_secret())
    with pytest.raises(openai.InvalidWebhookSignatureError):
        SDK.webhooks.unwrap(body, {**headers, "webhook-id": "msg_other"}, secret=secret)


@pytest.mark.parametrize("age, message", [(301 + 60, "too old"), (-(301 + 60), "too new")])
def test_sdk_rejects_a_timestamp_outside_its_tolerance(age, message):
    secret = generate_secret()
    _, body, headers = signed_event(secret, timestamp=int(time.time()) - age)
    with pytest.raises(openai.InvalidWebhookSignatureError, match=message):
        SDK.webhooks.unwrap(body, headers, secret=secret)


def test_rotation_signs_with_every_secret_and_either_verifies():
    old, new = generate_secret(), generate_secret()
    _, body, headers = signed_event([old, new])
    assert len(headers["webhook-signature"].split()) == 2
    SDK.webhooks.verify_signature(body, headers, secret=old)
    SDK.webhooks.verify_signature(body, headers, secret=new)


def test_non_ascii_payload_verifies():
    secret = generate_secret()
    body = event_body(
        build_event(event_type="fine_tuning.job.failed", data={"id": "ftjob-é", "note": "日本"})
    )
    headers = sign(secret=secret, msg_id="msg_1", timestamp=int(time.time()), body=body)
    assert SDK.webhooks.unwrap(body, headers, secret=secret).data.id == "ftjob-é"


@pytest.mark.parametrize(
    "secret, message",
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsec_not base64!", "followed by base64"),
        ("whsec_", "must not be empty"),
    ],
)
def test_malformed_secrets_are_refused(secret, message):
    with pytest.raises(ValueError, match=message):
        sign(secret=secret, msg_id="msg_1", timestamp=1, body=b"{}")


@pytest.mark.parametrize("msg_id", ["", "msg.1", "msg 1", "msg\n1"])
def test_ambiguous_message_ids_are_refused(msg_id):
    with pytest.raises(ValueError, match="message id"):
        sign(secret=generate_secret(), msg_id=msg_id, timestamp=1, body=b"{}")
