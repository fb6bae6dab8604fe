"""`tailor demo`: run the whole platform on embedded defaults and walk through it as a user would.

It migrates the embedded database, creates a demo team, starts the API server and a control worker
as child processes, then talks to the platform only through its public API (the official `openai`
SDK), exactly as a user's script would. With DEMO_EXIT=1 it stops after the walkthrough; otherwise it
keeps serving until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

SAMPLE = Path(__file__).resolve().parents[2] / "gpu_runner" / "data" / "sample_chat.jsonl"
DEMO_TEAM = "demo"
DEMO_OWNER = "demo@example.com"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - a local demo account, printed to the user


def _say(step: str) -> None:
    print(f"\n\033[1m==> {step}\033[0m", flush=True)


def _tailor(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tailor.cli", *args], env=env, capture_output=True, text=True
    )


def _team_credentials(env: dict[str, str]) -> dict[str, str]:
    created = _tailor("createteam", DEMO_TEAM, "--owner", DEMO_OWNER, "--password", DEMO_PASSWORD, env=env)
    if created.returncode == 0:
        return json.loads(created.stdout)
    # A second run finds the team from the first one: give it a fresh key instead.
    key = _tailor("createkey", "--team", DEMO_TEAM, "--name", "demo", env=env)
    if key.returncode != 0:
        raise SystemExit(f"could not create the demo team or a key for it:\n{created.stderr}\n{key.stderr}")
    creds = json.loads(key.stdout)
    creds.setdefault("username", DEMO_OWNER)
    return creds


@contextmanager
def _children(env: dict[str, str], port: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    home = Path(env["TAILOR_HOME"])
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    commands = {
        "api": [sys.executable, "-m", "tailor.cli", "runserver", f"127.0.0.1:{port}", "--noreload"],
        "control-worker": [sys.executable, "-m", "tailor.cli", "worker", "control"],
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, cmd in commands.items():
            log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
            print(f"    started {name} (pid {procs[-1].pid}, log {logs / (name + '.log')})")
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_for_api(base: str, procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a platform process exited during start-up; see var/logs/")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the API did not answer on {base} within {timeout:.0f} s; see var/logs/api.log")


def _print_report(report: dict) -> None:
    stats = report.get("stats", {})
    print(f"    format: {report.get('format')}   ok: {report.get('ok')}")
    for key in ("example_count", "line_count", "bytes", "role_counts", "trained_tokens",
                "examples_without_trained_tokens", "duplicate_count"):
        if key in stats:
            print(f"    {key:34s} {stats[key]}")
    tokens = stats.get("tokens") or {}
    if tokens:
        label = "tokens (estimated)" if stats.get("tokens_estimated") else "tokens"
        print(f"    {label:34s} " + ", ".join(f"{k}={v}" for k, v in tokens.items()))
    for issue in report.get("errors", [])[:5]:
        print(f"    line {issue['line']}: {issue['path']}: [{issue['code']}] {issue['message']}")
    if report.get("error_count", 0) > 5:
        print(f"    ... {report['error_count'] - 5} more errors")


def main() -> int:
    """Run the walkthrough; keep serving unless DEMO_EXIT=1."""
    from openai import OpenAI

    port = int(os.environ.get("TAILOR_PORT", "8000"))
    env = dict(os.environ)
    env.setdefault("TAILOR_HOME", str(Path("var").resolve()))
    env.setdefault("TAILOR_PUBLIC_URL", f"http://127.0.0.1:{port}/v1")
    env["PYTHONUNBUFFERED"] = "1"
    root = f"http://127.0.0.1:{port}"

    _say(f"Preparing the embedded database under {env['TAILOR_HOME']}")
    migrated = _tailor("migrate", "--noinput", env=env)
    if migrated.returncode != 0:
        print(migrated.stdout, migrated.stderr, file=sys.stderr)
        return 1
    creds = _team_credentials(env)
    print(f"    team {creds['team']!r}, API key {creds['api_key']}")

    _say("Starting the platform: API server and control worker")
    with _children(env, port) as procs:
        _wait_for_api(root, procs)
        print(f"    API answering on {root}/v1")

        client = OpenAI(base_url=f"{root}/v1", api_key=creds["api_key"], max_retries=0)

        _say(f"Uploading the bundled sample dataset ({SAMPLE.name}) with the openai SDK")
        with SAMPLE.open("rb") as fh:
            uploaded = client.files.create(file=fh, purpose="fine-tune")
        print(f"    {uploaded.id}: {uploaded.bytes} bytes, status {uploaded.status}")
        processed = client.files.wait_for_processing(uploaded.id, poll_interval=0.5, max_wait_seconds=120)
        print(f"    status after validation: {processed.status}")
        report = httpx.get(
            f"{root}/api/v1/files/{uploaded.id}/report",
            headers={"Authorization": f"Bearer {creds['api_key']}"},
        ).json()
        _print_report(report)

        _say("Uploading a malformed file: the report names each line and field")
        lines = SAMPLE.read_bytes().splitlines(keepends=True)[:12]
        lines[2] = b'{"messages": [{"role": "user", "content": "Capital of Peru?"}\n'  # truncated JSON
        lines[6] = b'{"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
        bad = client.files.create(file=("broken.jsonl", b"".join(lines)), purpose="fine-tune")
        bad = client.files.wait_for_processing(bad.id, poll_interval=0.5, max_wait_seconds=120)
        print(f"    {bad.id}: status {bad.status}: {bad.status_details}")
        _print_report(
            httpx.get(
                f"{root}/api/v1/files/{bad.id}/report",
                headers={"Authorization": f"Bearer {creds['api_key']}"},
            ).json()
        )

        _say("Call the API yourself")
        print(
            "    from openai import OpenAI\n"
            f"    client = OpenAI(base_url=\"{root}/v1\", api_key=\"{creds['api_key']}\")\n"
            "    print([f.id for f in client.files.list()])\n"
            f"    web admin: {root}/admin/  (user {creds.get('username', DEMO_OWNER)}, password {DEMO_PASSWORD})"
        )
        if os.environ.get("DEMO_EXIT") == "1":
            _say("DEMO_EXIT=1: stopping the platform")
            return 0
        _say(f"Serving on {root} until Ctrl-C")
        try:
            while all(p.poll() is None for p in procs):
                time.sleep(1)
        except KeyboardInterrupt:
            print("\n    stopping")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
