"""Errors raised by every object store backend, so callers handle one family whatever the URL scheme."""

from __future__ import annotations


class StorageError(Exception):
    """An object store operation failed (unreachable endpoint, missing bucket, refused request, …)."""


class ObjectNotFound(StorageError):
    """No object exists at the key (a "folder" holding other objects is not an object)."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


class ObjectTooLarge(StorageError):
    """An upload went past its `max_bytes` limit; nothing of it was kept."""

    def __init__(self, message: str, *, key: str, max_bytes: int) -> None:
        super().__init__(message)
        self.key = key
        self.max_bytes = max_bytes


class InvalidKey(StorageError, ValueError):
    """A key or prefix is malformed or would escape the store's root."""
