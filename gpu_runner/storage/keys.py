"""Object keys: the one place that decides which keys are valid and how they join.

Keys are POSIX-style relative paths ("teams/7/files/file-abc.jsonl"). Every key and prefix
passes through here before it reaches a backend, so no key can climb out of its store's root:
a team's view (`store.child("teams/7")`) can never reach another team's objects, and a key
taken from a bucket listing can never write outside the directory `get_dir` fills.
"""

from __future__ import annotations

import posixpath

from gpu_runner.storage.errors import InvalidKey

# Local stores write in-flight uploads beside their target under this name; keys may not use it,
# so a half-written upload can never be mistaken for (or collide with) an object.
PARTIAL_UPLOAD_MARKER = ".tailor-partial-"

# The common file-name limit of Linux and macOS file systems; S3 allows longer segments, but a key
# must stay valid in every backend so a store can move between them.
MAX_SEGMENT_BYTES = 255


def check_key(key: str, *, what: str = "key") -> str:
    """Return `key` unchanged if it is a valid relative object key, else raise `InvalidKey`.

    Refused: empty keys, absolute keys, backslashes, NUL and other control characters, empty
    segments ("a//b", trailing "/"), "." and ".." segments, segments over 255 bytes, and the
    reserved in-flight upload marker.
    """
    if not isinstance(key, str):
        raise InvalidKey(f"{what} must be a string, got {type(key).__name__}")
    if not key:
        raise InvalidKey(f"{what} is empty")
    if key.startswith("/"):
        raise InvalidKey(f"{what} {key!r} is absolute; keys are relative to the store's root")
    if "\\" in key:
        raise InvalidKey(f"{what} {key!r} contains a backslash; use '/' to separate segments")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in key):
        raise InvalidKey(f"{what} {key!r} contains a control character")
    for segment in key.split("/"):
        if segment == "":
            raise InvalidKey(f"{what} {key!r} has an empty segment")
        if segment in (".", ".."):
            raise InvalidKey(f"{what} {key!r} contains a {segment!r} segment")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidKey(f"{what} {key!r} has a segment longer than {MAX_SEGMENT_BYTES} bytes")
        if segment.startswith(PARTIAL_UPLOAD_MARKER):
            raise InvalidKey(f"{what} {key!r} uses the reserved name prefix {PARTIAL_UPLOAD_MARKER!r}")
    return key


def check_prefix(prefix: str) -> str:
    """Return a folder prefix without its trailing "/"; "" (the whole store) is allowed.

    A prefix names a folder, never a string prefix: "runs/1" covers "runs/1/…" but not "runs/10/…".
    """
    if prefix == "":
        return ""
    if isinstance(prefix, str) and prefix.endswith("/") and not prefix.endswith("//"):
        prefix = prefix[:-1]
    return check_key(prefix, what="prefix")


def join_key(*parts: str) -> str:
    """Join checked key parts with "/", skipping empty ones (the root prefix is "")."""
    return posixpath.join(*[part for part in parts if part]) if any(parts) else ""


def relative_key(key: str, prefix: str) -> str:
    """The part of `key` below folder `prefix` ("" means the root)."""
    return key[len(prefix) + 1 :] if prefix else key
