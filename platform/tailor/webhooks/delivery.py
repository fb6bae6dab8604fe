"""Sending one webhook event to one URL: the event's shape, the check that the URL is a public address,
the signed POST itself and the retry schedule. Django-free; the models, the delivery log and the task
that retries call these functions.

Event payloads have the shape of the openai SDK's webhook event types
(`types/webhooks/fine_tuning_job_*_webhook_event.py`)::

    {"id": "evt_…", "object": "event", "type": "fine_tuning.job.succeeded",
     "created_at": 1735689600, "data": {"id": "ftjob-…"}}

Server-side request forgery: a team chooses the URL, so a delivery could otherwise reach the metadata
service (169.254.169.254), the database or Redis. `check_destination` resolves the host and refuses it
when any of its addresses is loopback, private, link-local, multicast, reserved, unspecified or
otherwise not globally routable (the IPv4 address inside IPv4-mapped, 6to4 and Teredo IPv6 addresses is checked too).
`deliver` then connects to the address it checked, sending the hostname in `Host` and TLS SNI (the
certificate is still verified against the hostname), so a DNS answer that changes between check and
connect cannot redirect it. It never follows redirects, and it ignores the proxy and SSL_CERT_FILE
environment variables (a proxy would resolve the name again); `ssl_context` trusts a private CA.
"""

from __future__ import annotations

import ipaddress
import json
import random
import socket
import ssl
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from .signing import sign

EVENT_TYPES = ("fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled")
USER_AGENT = "Tailor-Webhooks/1"
# How much of a refusing receiver's response body is kept for the delivery log.
ERROR_BODY_CHARS = 200

# Delays before retry 1, 2, … after a failed attempt, in seconds: 5 s, 30 s, 2 min, 10 min, 1 h, 4 h
# (about 5 h 13 min in all, so a receiver down for a deploy or an afternoon still gets the event).
# Each is spread by ±20 % so that deliveries that failed together do not retry together.
RETRY_DELAYS_SECONDS = (5, 30, 120, 600, 3600, 14_400)
RETRY_JITTER = 0.2
MAX_DELIVERY_ATTEMPTS = 1 + len(RETRY_DELAYS_SECONDS)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookDestinationError(ValueError):
    """A webhook URL that cannot be delivered to (malformed, or its host does not resolve)."""


class UnsafeWebhookDestination(WebhookDestinationError):
    """A webhook URL whose scheme or address Tailor refuses to deliver to."""


@dataclass(frozen=True)
class ResolvedDestination:
    """A checked webhook URL and the addresses its host resolved to, in resolver order."""

    url: httpx.URL
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one delivery attempt. `status_code` is None when no response came back;
    `retryable` is False when retrying cannot help (the destination is refused)."""

    status_code: int | None
    ok: bool
    error: str | None
    duration_ms: int
    retryable: bool = True


def new_event_id() -> str:
    """An event id in OpenAI's style, `evt_` + 32 hex digits."""
    return f"evt_{uuid.uuid4().hex}"


def new_message_id() -> str:
    """A Standard Webhooks message id, `msg_` + 32 hex digits; keep it for every retry of one event."""
    return f"msg_{uuid.uuid4().hex}"


def build_event(
    *, event_type: str, data: Mapping[str, Any], event_id: str | None = None, created_at: int | None = None
) -> dict[str, Any]:
    """An event payload as the openai SDK's webhook types define it (`data` is `{"id": <job id>}` for
    fine-tuning events). Build it once and store it, so every retry sends the same body."""
    if not event_type:
        raise ValueError("event_type must not be empty")
    return {
        "id": event_id or new_event_id(),
        "object": "event",
        "type": event_type,
        "created_at": int(time.time()) if created_at is None else int(created_at),
        "data": dict(data),
    }


def event_body(payload: Mapping[str, Any]) -> bytes:
    """The bytes that are signed and sent: compact UTF-8 JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]  # the client's address
    return None


def unsafe_address_reason(address: IPAddress) -> str | None:
    """Why `address` is not a public destination ("loopback", "private", …), or None when it is."""
    inner = _embedded_ipv4(address)
    if inner is not None:
        reason = unsafe_address_reason(inner)
        if reason is not None:
            return reason
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:  # before is_private, which also covers 240.0.0.0/4
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "non-public"
    return None


def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    try:
        return (ipaddress.ip_address(host),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookDestinationError(f"cannot resolve the webhook host {host!r}: {exc}") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        # IPv6 link-local answers carry a scope ("fe80::1%eth0"); the address is what is judged.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise WebhookDestinationError(f"the webhook host {host!r} has no addresses")
    return tuple(addresses)


def check_destination(url: str, *, allow_private: bool) -> ResolvedDestination:
    """Refuse a webhook URL that is not http(s), or whose host resolves (any of its A/AAAA records) to a
    loopback, private, link-local, multicast, reserved or unspecified address, unless `allow_private`
    (an operator setting for development and tests).

    Returns the checked destination, whose addresses `deliver` connects to. Raises
    UnsafeWebhookDestination naming the address and why, or WebhookDestinationError when the URL is
    malformed or the host does not resolve.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise WebhookDestinationError(f"webhook URL {url!r} is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise UnsafeWebhookDestination(
            f"webhook URL {url!r} must use http or https, not {parsed.scheme or 'no scheme'!r}"
        )
    if not parsed.raw_host:
        raise WebhookDestinationError(f"webhook URL {url!r} has no host")
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = _resolve(host, port)
    if not allow_private:
        for address in addresses:
            reason = unsafe_address_reason(address)
            if reason is not None:
                shown = host if host == str(address) else f"{host} resolves to {address}, which"
                raise UnsafeWebhookDestination(
                    f"webhook URL {url!r} is not allowed: {shown} is a {reason} address; webhooks are "
                    "delivered to public addresses only unless the operator allows private destinations"
                )
    return ResolvedDestination(url=parsed, host=host, port=port, addresses=addresses)


@dataclass(frozen=True)
class _Answer:
    status_code: int
    reason: str
    location: str | None
    text: str


def _post(
    client: httpx.Client,
    destination: ResolvedDestination,
    address: IPAddress,
    headers: dict[str, str],
    body: bytes,
) -> _Answer:
    url = destination.url.copy_with(host=str(address))
    extensions = {"sni_hostname": destination.host} if destination.url.scheme == "https" else {}
    # The Host header keeps the name (and any explicit port) the team registered.
    headers = {**headers, "Host": destination.url.netloc.decode("ascii")}
    with client.stream("POST", url, headers=headers, content=body, extensions=extensions) as response:
        # Only the start of the answer is read, for the delivery log: a receiver cannot make us download much.
        kept = b""
        for chunk in response.iter_bytes():
            kept += chunk
            if len(kept) >= 4 * ERROR_BODY_CHARS:
                break
    return _Answer(
        status_code=response.status_code,
        reason=response.reason_phrase,
        location=response.headers.get("location"),
        text=kept.decode("utf-8", "replace")[:ERROR_BODY_CHARS].strip(),
    )


def deliver(
    *,
    url: str,
    secret: str | Sequence[str],
    event_type: str,
    payload: Mapping[str, Any],
    msg_id: str,
    allow_private: bool,
    timeout: float = 10,
    ssl_context: ssl.SSLContext | None = None,
) -> DeliveryResult:
    """POST one signed event (`payload` as `build_event` made it, whose `type` must be `event_type`) to
    `url`, signed with `secret` (or each of several during a rotation). Never raises for the receiver's behaviour: a 2xx answer is `ok`; anything else — another
    status (redirects are not followed), a refused or timed-out connection, a host that does not resolve
    or a refused destination — comes back with `ok=False` and the reason in `error`.

    HTTPS certificates are verified against certifi's CAs, or `ssl_context`'s for receivers behind a
    private CA (proxy and SSL_CERT_FILE variables are ignored, see the module docstring).
    """
    if payload.get("type") != event_type:
        raise ValueError(f"payload type {payload.get('type')!r} does not match event_type {event_type!r}")
    started = time.perf_counter()

    def result(status: int | None, error: str | None, *, retryable: bool = True) -> DeliveryResult:
        return DeliveryResult(
            status_code=status,
            ok=error is None,
            error=error,
            duration_ms=round((time.perf_counter() - started) * 1000),
            retryable=retryable,
        )

    try:
        destination = check_destination(url, allow_private=allow_private)
    except UnsafeWebhookDestination as exc:
        return result(None, str(exc), retryable=False)
    except WebhookDestinationError as exc:
        return result(None, str(exc))

    body = event_body(payload)
    headers = {
        **sign(secret=secret, msg_id=msg_id, timestamp=int(time.time()), body=body),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
    errors: list[str] = []
    with httpx.Client(
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        verify=ssl_context if ssl_context is not None else True,
    ) as client:
        for address in destination.addresses:
            try:
                answer = _post(client, destination, address, headers, body)
            except httpx.ConnectError as exc:
                # Try the host's next address (an unreachable IPv6 beside a working IPv4).
                errors.append(
                    f"cannot connect to {address} port {destination.port}: {str(exc) or type(exc).__name__}"
                )
                continue
            except httpx.TimeoutException as exc:
                return result(
                    None,
                    f"no answer from {address} port {destination.port} within {timeout:g} s "
                    f"({type(exc).__name__})",
                )
            except httpx.HTTPError as exc:
                return result(
                    None, f"delivery to {address} port {destination.port} failed: {type(exc).__name__}: {exc}"
                )
            if 200 <= answer.status_code < 300:
                return result(answer.status_code, None)
            if 300 <= answer.status_code < 400 and answer.location:
                return result(
                    answer.status_code,
                    f"HTTP {answer.status_code}: redirect to {answer.location!r} "
                    "not followed; register the final URL",
                )
            return result(
                answer.status_code,
                f"HTTP {answer.status_code} {answer.reason}" + (f": {answer.text}" if answer.text else ""),
            )
    return result(None, "; ".join(errors))


def backoff_schedule(attempt: int, *, rng: random.Random | None = None) -> float | None:
    """Seconds to wait after failed attempt number `attempt` (1 for the first delivery) before the next
    one, from RETRY_DELAYS_SECONDS with ±20 % jitter; None once MAX_DELIVERY_ATTEMPTS have failed."""
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    if attempt > len(RETRY_DELAYS_SECONDS):
        return None
    base = RETRY_DELAYS_SECONDS[attempt - 1]
    spread = (rng or random).uniform(-RETRY_JITTER, RETRY_JITTER)
    return base * (1 + spread)
