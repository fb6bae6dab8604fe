"""The GPU node's base model cache: each model revision downloaded once, then reused by every job.

Layout: `TAILOR_HOME/cache/models/<name>/<revision>/` (a name such as `org/model` becomes `org--model`,
as in the Hugging Face cache). A revision is immutable, so a folder that exists is complete: it is filled
under a temporary name, every file checked against the sha256 the object store recorded at upload, and
renamed into place only then. Two workers on one node downloading the same revision race harmlessly:
the first rename wins and the other discards its copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from gpu_runner.storage import ObjectStore
from workers.gpu.artifacts import download_prefix

logger = logging.getLogger(__name__)

CACHE_MANIFEST = ".tailor-cache.json"
TEMP_PREFIX = ".tmp-"
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _folder_name(value: str, what: str) -> str:
    """`value` as one path segment: hub-style `org/name` becomes `org--name`; anything that could climb out
    of the cache (`..`, absolute paths, odd characters) is refused."""
    segment = value.replace("/", "--")
    if not _SAFE_SEGMENT.match(segment):
        raise ValueError(
            f"base model {what} {value!r} cannot name a cache folder "
            "(letters, digits, '.', '_', '-' and '/' only)"
        )
    return segment


class ModelCache:
    """Base model directories under `root`, keyed by name and revision."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, name: str, revision: str) -> Path:
        """Where `name` at `revision` lives once cached."""
        return self.root / _folder_name(name, "name") / _folder_name(revision, "revision")

    def fetch(self, store: ObjectStore, *, name: str, revision: str, prefix: str) -> Path:
        """The local directory of the model stored under `prefix`, downloading it unless cached.

        Raises `FileNotFoundError` when the prefix holds nothing and `workers.gpu.artifacts.DigestMismatch`
        when a downloaded file does not match its recorded digest.
        """
        target = self.path_for(name, revision)
        if (target / CACHE_MANIFEST).is_file():
            logger.info("base model %s@%s: cached at %s", name, revision, target)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.parent / f"{TEMP_PREFIX}{target.name}-{os.getpid()}-{secrets.token_hex(4)}"
        started = time.monotonic()
        try:
            digests = download_prefix(store, prefix, temporary)
            manifest = {
                "name": name,
                "revision": revision,
                "prefix": prefix,
                "files": digests,
                "digest": hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest(),
            }
            (temporary / CACHE_MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            try:
                os.rename(temporary, target)
            except OSError:
                if not (target / CACHE_MANIFEST).is_file():
                    raise
                logger.info("base model %s@%s: another worker cached it first", name, revision)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        logger.info(
            "base model %s@%s: downloaded %d files from %s in %.1f s",
            name,
            revision,
            len(digests),
            prefix,
            time.monotonic() - started,
        )
        return target

    def remove_stale_temporaries(self, older_than_seconds: float = 24 * 3600) -> None:
        """Delete half-downloaded folders left by a killed worker (old enough that no live download owns them)."""
        if not self.root.is_dir():
            return
        cutoff = time.time() - older_than_seconds
        for model in self.root.iterdir():
            if not model.is_dir():
                continue
            for entry in model.iterdir():
                try:
                    stale = entry.name.startswith(TEMP_PREFIX) and entry.stat().st_mtime < cutoff
                except OSError:  # removed meanwhile by the worker that owned it
                    continue
                if stale:
                    shutil.rmtree(entry, ignore_errors=True)
