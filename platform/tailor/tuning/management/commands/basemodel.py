"""`tailor basemodel add NAME --source PATH_OR_URI [--teams SLUG ...]` and `tailor basemodel list`.

`add` registers a base model that teams may fine-tune. A local directory (config.json, safetensors
weights, tokenizer) is uploaded to the object store under `models/<NAME>/<revision>/`; a location
already in the object store (a key prefix such as `models/x/abc`, or a URI under TAILOR_STORAGE_URL)
is registered where it is. The revision is the first 12 hex digits of the sha256 of the weights (all
`*.safetensors` files, in name order); the shape comes from config.json
(`gpu_runner.memory.architecture_from_hf_config`), the parameter count from the safetensors headers,
the chat template from tokenizer_config.json or chat_template.jinja. Pickled weights (`*.bin`) are
refused. Adding a model again with the same weights changes nothing; new weights make a new revision.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
import struct
from argparse import ArgumentParser
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from gpu_runner.memory import architecture_from_hf_config
from tailor.core.objectstore import object_store
from tailor.teams.models import Team
from tailor.tuning.models import BaseModel

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
# A safetensors header is JSON of at most 100 MB (the format's own limit).
MAX_HEADER_BYTES = 100 * 1024 * 1024
HASH_CHUNK = 1024 * 1024


def safetensors_parameters(stream: IO[bytes]) -> int:
    """Count the elements of every tensor from a safetensors file's header, without reading the data
    (and without torch): 8 bytes of little-endian header length, then the JSON header."""
    head = stream.read(8)
    if len(head) != 8:
        raise ValueError("the file is too short to be safetensors")
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER_BYTES:
        raise ValueError(f"the safetensors header claims {length} bytes, more than the format allows")
    header = json.loads(stream.read(length))
    return sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")


class ModelSource:
    """Read access to a model directory, local or in the object store."""

    def __init__(self, names: list[str], opener: Callable[[str], IO[bytes]], describe: str) -> None:
        self.names = sorted(names)
        self.open = opener
        self.describe = describe

    def read_json(self, name: str) -> dict[str, Any] | None:
        if name not in self.names:
            return None
        with self.open(name) as stream:
            try:
                data = json.loads(stream.read())
            except ValueError as exc:
                raise CommandError(f"{self.describe}/{name} is not valid JSON: {exc}") from None
        return data if isinstance(data, dict) else None

    def read_text(self, name: str) -> str | None:
        if name not in self.names:
            return None
        with self.open(name) as stream:
            return stream.read().decode("utf-8")

    @property
    def weights(self) -> list[str]:
        return [n for n in self.names if n.endswith(".safetensors") and "/" not in n]


def _local_source(path: Path) -> ModelSource:
    files = [p.relative_to(path).as_posix() for p in sorted(path.rglob("*")) if p.is_file()]
    return ModelSource(files, lambda name: (path / name).open("rb"), str(path))


def _store_prefix(source: str) -> str:
    """The key prefix inside TAILOR_STORAGE_URL that `source` names."""
    root = settings.TAILOR_STORAGE_URL.rstrip("/")
    if "://" in source:
        if not source.startswith(root + "/"):
            raise CommandError(
                f"{source} is not inside the object store ({root}); pass a local directory to upload it, "
                "or a key prefix such as models/NAME/REVISION."
            )
        return source[len(root) + 1 :].strip("/")
    return source.strip("/")


def _store_source(prefix: str) -> ModelSource:
    store = object_store()
    names = [info.key[len(prefix) + 1 :] for info in store.list(prefix)]
    return ModelSource(names, lambda name: store.open(posixpath.join(prefix, name)), prefix)


def _no_open(name: str) -> IO[bytes]:
    raise FileNotFoundError(name)


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(HASH_CHUNK):
        yield chunk


class Command(BaseCommand):
    help = "Register base models that teams may fine-tune (add), or show them (list)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="upload and register a model directory")
        add.add_argument("name", help="what clients pass as `model`, e.g. tailor-tiny or org/Model-1B")
        add.add_argument(
            "--source",
            required=True,
            help="a local model directory, or a prefix / URI already in the object store",
        )
        add.add_argument(
            "--teams", nargs="+", metavar="SLUG", help="only these teams may use it (default: every team)"
        )
        sub.add_parser("list", help="print the registered base models as JSON lines")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "list":
            for base in BaseModel.objects.prefetch_related("teams").order_by("name"):
                self.stdout.write(json.dumps(_describe(base)))
            return
        base = self.add(options["name"], options["source"], options["teams"])
        self.stdout.write(json.dumps(_describe(base)))

    def add(self, name: str, source: str, team_slugs: list[str] | None) -> BaseModel:
        """Register `name` from `source`, uploading a local directory; returns the row."""
        if not NAME_PATTERN.match(name) or ".." in name:
            raise CommandError(
                f"Invalid model name {name!r}: use letters, digits, '.', '_', '-' and '/' (no ':', which "
                "separates the parts of fine-tuned model names)."
            )
        teams = _teams(team_slugs)
        local = Path(source).expanduser()
        upload_from: Path | None = None
        if local.is_dir():
            model, upload_from = _local_source(local), local
        elif local.exists():
            raise CommandError(f"{source} is not a directory; pass the model's directory.")
        else:
            prefix = _store_prefix(source.removeprefix("hf:"))
            model = (
                _store_source(prefix) if not source.startswith("hf:") else ModelSource([], _no_open, source)
            )
            if not model.names:
                if source.startswith("hf:") or source.count("/") == 1:
                    hub_id = source.removeprefix("hf:")
                    raise CommandError(
                        f"{source} is neither a local directory nor in the object store; if it is a hub id, "
                        "note that GPU workers read base models from the object store only: download it first "
                        f"(`huggingface-cli download {hub_id} --local-dir DIR`) and run "
                        f"`tailor basemodel add {name} --source DIR`."
                    )
                raise CommandError(f"{source} is neither a local directory nor a prefix in the object store.")
        config = model.read_json("config.json")
        if config is None:
            raise CommandError(
                f"{model.describe} holds no config.json (expected a transformers model directory)."
            )
        if not model.weights:
            pickled = [n for n in model.names if n.endswith(".bin")]
            hint = " (pickled *.bin weights are refused; convert them to safetensors)" if pickled else ""
            raise CommandError(f"{model.describe} holds no *.safetensors weights{hint}.")
        try:
            architecture = architecture_from_hf_config(config)
        except ValueError as exc:
            raise CommandError(f"{model.describe}/config.json: {exc}") from None
        digest = hashlib.sha256()
        parameters = 0
        for weights in model.weights:
            with model.open(weights) as stream:
                try:
                    parameters += safetensors_parameters(stream)
                except (ValueError, KeyError, TypeError) as exc:
                    raise CommandError(
                        f"{model.describe}/{weights} is not a readable safetensors file: {exc}"
                    ) from None
            with model.open(weights) as stream:
                for chunk in _chunks(stream):
                    digest.update(chunk)
        revision = digest.hexdigest()[:12]
        tokenizer_config = model.read_json("tokenizer_config.json") or {}
        template = tokenizer_config.get("chat_template")
        if not isinstance(template, str):
            template = model.read_text("chat_template.jinja") or ""

        if upload_from is not None:
            prefix = posixpath.join("models", name, revision)
            stored = {info.key[len(prefix) + 1 :]: info.size for info in object_store().list(prefix)}
            local_sizes = {
                p.relative_to(upload_from).as_posix(): p.stat().st_size
                for p in upload_from.rglob("*")
                if p.is_file()
            }
            # Uploaded before (same weights, so the same prefix) and complete: nothing to send again.
            if any(stored.get(name) != size for name, size in local_sizes.items()):
                self.stderr.write(f"uploading {upload_from} to {prefix}/ …")
                object_store().put_dir(upload_from, prefix)
        source_uri = str(upload_from.resolve()) if upload_from is not None else source
        with transaction.atomic():
            base, _ = BaseModel.objects.update_or_create(
                name=name,
                defaults={
                    "revision": revision,
                    "source_uri": source_uri,
                    "prefix": prefix,
                    "architecture": architecture,
                    "parameters": parameters,
                    "chat_template": template,
                    "available_to_all": teams is None,
                    "enabled": True,
                },
            )
            base.teams.set(teams or [])
        return base


def _teams(slugs: list[str] | None) -> list[Team] | None:
    if not slugs:
        return None
    found = {team.slug: team for team in Team.objects.filter(slug__in=slugs)}
    missing = [slug for slug in slugs if slug not in found]
    if missing:
        raise CommandError(f"No team with slug {', '.join(map(repr, missing))}.")
    return [found[slug] for slug in slugs]


def _describe(base: BaseModel) -> dict[str, Any]:
    return {
        "name": base.name,
        "revision": base.revision,
        "prefix": base.prefix,
        "parameters": base.parameters,
        "architecture": base.architecture,
        "teams": None if base.available_to_all else sorted(t.slug for t in base.teams.all()),
        "chat_template": bool(base.chat_template),
    }
