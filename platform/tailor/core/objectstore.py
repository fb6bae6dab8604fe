"""The control plane's handle on the object store named by `TAILOR_STORAGE_URL`."""

from __future__ import annotations

import functools

from django.conf import settings

from gpu_runner.storage import ObjectStore, open_store


@functools.lru_cache(maxsize=8)
def _store_for(url: str) -> ObjectStore:
    return open_store(url)


def object_store() -> ObjectStore:
    """The configured store; one instance per URL, so connections and clients are reused."""
    return _store_for(settings.TAILOR_STORAGE_URL)
