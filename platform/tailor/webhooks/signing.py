"""Standard Webhooks signatures (https://www.standardwebhooks.com), as the openai SDK verifies them.

A delivery carries three headers:

- `webhook-id`: the message id, the same on every retry of one event (receivers deduplicate on it);
- `webhook-timestamp`: Unix seconds when this attempt was signed (receivers refuse it outside a
  tolerance window, 5 minutes in the openai SDK, which defeats replays);
- `webhook-signature`: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, several separated by
  spaces while a secret is being rotated; a receiver accepts any that matches.

A secret is `whsec_` followed by the base64 of 32 random bytes; the HMAC key is those bytes. The
scheme is a few lines of the standard library, so no signing package is needed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def generate_secret() -> str:
    """A new signing secret, `whsec_` + base64 of 32 random bytes. Shown to the team once."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_…` secret. Raises ValueError for anything else."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret must start with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret must be 'whsec_' followed by base64") from None
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def signature(*, secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of `"{msg_id}.{timestamp}.{body}"` under one secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def sign(*, secret: str | Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt of `body` (the exact bytes sent).

    `secret` may list several secrets (old and new during a rotation): the signature header then holds
    one signature per secret, separated by spaces.
    """
    if not msg_id or any(c in msg_id for c in ". \r\n"):
        # The id is part of the signed string and a header value: a dot or space would make it ambiguous.
        raise ValueError(f"webhook message id {msg_id!r} must be non-empty without dots, spaces or newlines")
    keys = [secret] if isinstance(secret, str) else list(secret)
    if not keys:
        raise ValueError("at least one webhook secret is needed to sign")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": " ".join(
            signature(secret=key, msg_id=msg_id, timestamp=int(timestamp), body=body) for key in keys
        ),
    }
