"""Fine-tuning jobs: GPU classes, leases and retries, and webhook delivery.

- `TAILOR_GPU_CLASSES`: the kinds of GPU the fleet has, `name:memory_gib:queue[:gpus_per_node]` entries
  separated by commas (`gpu_runner.memory.parse_gpu_classes`); each class is a Celery queue that the
  GPU workers of that class consume. Default: one 24 GiB class on queue `gpu.default`.
- `TAILOR_GPU_CLASS_SLOTS`: how many jobs each class runs at once (`name:count`, comma-separated); the
  scheduler keeps further jobs `queued` in the database instead of piling them into the broker. A class
  not listed has no limit.
- `TAILOR_DISPATCH_TIMEOUT` (s): how long a dispatched job may wait for a worker to report before the
  reconciler dispatches it again; `TAILOR_LEASE_SECONDS` (s): how long a heartbeat keeps a job's lease;
  `TAILOR_HEARTBEAT_SECONDS` (s): how often workers heartbeat; `TAILOR_MAX_ATTEMPTS`: dispatches per job
  before it fails with `worker_lost`.
- `TAILOR_WEBHOOK_ALLOW_PRIVATE`: deliver webhooks to loopback, private and link-local addresses too
  (development and tests only; off by default, see `tailor.webhooks.delivery`).
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from gpu_runner.memory import parse_gpu_classes
from tailor.settings.env import env

TAILOR_GPU_CLASSES = env.str("TAILOR_GPU_CLASSES", default="default:24:gpu.default")
try:
    _classes = parse_gpu_classes(TAILOR_GPU_CLASSES)
except ValueError as exc:
    raise ImproperlyConfigured(f"TAILOR_GPU_CLASSES: {exc}") from None
if not _classes:
    raise ImproperlyConfigured("TAILOR_GPU_CLASSES lists no GPU class; e.g. default:24:gpu.default")


def _parse_slots(text: str) -> dict[str, int]:
    slots: dict[str, int] = {}
    known = {gpu_class.name for gpu_class in _classes}
    for raw in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = raw.partition(":")
        if name not in known:
            raise ImproperlyConfigured(
                f"TAILOR_GPU_CLASS_SLOTS: {raw!r} names no class of TAILOR_GPU_CLASSES ({', '.join(sorted(known))})"
            )
        if not count.isdigit() or int(count) < 1:
            raise ImproperlyConfigured(
                f"TAILOR_GPU_CLASS_SLOTS: {raw!r} must read name:count with count >= 1"
            )
        slots[name] = int(count)
    return slots


TAILOR_GPU_CLASS_SLOTS = _parse_slots(env.str("TAILOR_GPU_CLASS_SLOTS", default=""))

TAILOR_DISPATCH_TIMEOUT = env.int("TAILOR_DISPATCH_TIMEOUT", default=600)
TAILOR_LEASE_SECONDS = env.int("TAILOR_LEASE_SECONDS", default=60)
TAILOR_HEARTBEAT_SECONDS = env.int("TAILOR_HEARTBEAT_SECONDS", default=5)
TAILOR_MAX_ATTEMPTS = env.int("TAILOR_MAX_ATTEMPTS", default=3)
# A dispatch committed this long ago without its message confirmed sent is sent again.
TAILOR_DISPATCH_RESEND_SECONDS = env.int("TAILOR_DISPATCH_RESEND_SECONDS", default=30)
# Uploaded bytes with no File row (the API died mid-request) are removed after this long.
TAILOR_ORPHAN_UPLOAD_SECONDS = env.int("TAILOR_ORPHAN_UPLOAD_SECONDS", default=6 * 3600)

for _name, _value in {
    "TAILOR_DISPATCH_TIMEOUT": TAILOR_DISPATCH_TIMEOUT,
    "TAILOR_LEASE_SECONDS": TAILOR_LEASE_SECONDS,
    "TAILOR_HEARTBEAT_SECONDS": TAILOR_HEARTBEAT_SECONDS,
    "TAILOR_MAX_ATTEMPTS": TAILOR_MAX_ATTEMPTS,
}.items():
    if _value < 1:
        raise ImproperlyConfigured(f"{_name} must be a positive integer, got {_value}")
if TAILOR_LEASE_SECONDS <= TAILOR_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        f"TAILOR_LEASE_SECONDS ({TAILOR_LEASE_SECONDS}) must be longer than TAILOR_HEARTBEAT_SECONDS "
        f"({TAILOR_HEARTBEAT_SECONDS}), or every job would lose its lease between two heartbeats"
    )

TAILOR_WEBHOOK_ALLOW_PRIVATE = env.bool("TAILOR_WEBHOOK_ALLOW_PRIVATE", default=False)

__all__ = [
    "TAILOR_GPU_CLASSES",
    "TAILOR_GPU_CLASS_SLOTS",
    "TAILOR_DISPATCH_TIMEOUT",
    "TAILOR_LEASE_SECONDS",
    "TAILOR_HEARTBEAT_SECONDS",
    "TAILOR_MAX_ATTEMPTS",
    "TAILOR_DISPATCH_RESEND_SECONDS",
    "TAILOR_ORPHAN_UPLOAD_SECONDS",
    "TAILOR_WEBHOOK_ALLOW_PRIVATE",
]
