"""`tailor demo`: run the whole platform on embedded defaults and walk through it as a user would.

It migrates the embedded database, creates a demo team, starts the API server, a control worker, beat,
a GPU worker and the development serving endpoint (`tailor serve`, registered as the embedded default
endpoint shared by every team, with auto-deploy on) as child processes, then talks to the platform only
through its public API (the official `openai` SDK), exactly as a user's script would: upload, validate,
fine-tune, watch the adapter go live, and chat with it beside the base model. With DEMO_EXIT=1 it stops
after the walkthrough; otherwise it keeps serving until Ctrl-C.
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
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types.fine_tuning import FineTuningJob

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "gpu_runner" / "data" / "sample_chat.jsonl"
# The shipped task: answer in a fixed JSON shape. 320 training examples, 40 held-out with unseen topics.
TASK_TRAIN = REPO / "gpu_runner" / "data" / "task" / "train.jsonl"
TASK_HELDOUT = REPO / "gpu_runner" / "data" / "task" / "heldout.jsonl"
DEV_ENDPOINT = "dev"
BASE_MODEL = "tailor-tiny"
TERMINAL = {"succeeded", "failed", "cancelled"}
DEMO_TEAM = "demo"
DEMO_OWNER = "demo@example.com"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - a local demo account, printed to the user


def _say(step: str) -> None:
    print(f"\n\033[1m==> {step}\033[0m", flush=True)


def run_tailor(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tailor.cli", *args], env=env, capture_output=True, text=True
    )


def _team_credentials(env: dict[str, str]) -> dict[str, str]:
    created = run_tailor("createteam", DEMO_TEAM, "--owner", DEMO_OWNER, "--password", DEMO_PASSWORD, env=env)
    if created.returncode == 0:
        return json.loads(created.stdout)
    # A second run finds the team from the first one: give it a fresh key instead.
    key = run_tailor("createkey", "--team", DEMO_TEAM, "--name", "demo", env=env)
    if key.returncode != 0:
        raise SystemExit(f"could not create the demo team or a key for it:\n{created.stderr}\n{key.stderr}")
    creds = json.loads(key.stdout)
    creds.setdefault("username", DEMO_OWNER)
    return creds


@contextmanager
def platform_processes(
    env: dict[str, str], port: int, extra: dict[str, list[str]] | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run the API server, control worker, beat and one GPU worker as child processes of this one, plus
    the commands in `extra` (name → argv), e.g. the development serving endpoint.

    Each logs to TAILOR_HOME/logs/<name>.log; all are stopped (SIGTERM, then SIGKILL) on exit.
    """
    home = Path(env["TAILOR_HOME"])
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    commands = {
        "api": [sys.executable, "-m", "tailor.cli", "runserver", f"127.0.0.1:{port}", "--noreload"],
        "control-worker": [sys.executable, "-m", "tailor.cli", "worker", "control"],
        "beat": [sys.executable, "-m", "tailor.cli", "worker", "beat"],
        "gpu-worker": [sys.executable, "-m", "tailor.cli", "worker", "gpu", "--gpu-class", "default"],
    }
    commands.update(extra or {})
    procs: list[subprocess.Popen[bytes]] = []
    log_files = []
    try:
        for name, cmd in commands.items():
            log_files.append(open(logs / f"{name}.log", "ab"))  # noqa: SIM115 - closed below
            procs.append(subprocess.Popen(cmd, env=env, stdout=log_files[-1], stderr=subprocess.STDOUT))
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
        for log in log_files:
            log.close()


def wait_for_api(
    base: str, procs: list[subprocess.Popen[bytes]], timeout: float = 60, path: str = "/healthz"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a platform process exited during start-up; see var/logs/")
        try:
            if httpx.get(f"{base}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the API did not answer on {base} within {timeout:.0f} s; see var/logs/api.log")


def _print_report(report: dict) -> None:
    stats = report.get("stats", {})
    print(f"    format: {report.get('format')}   ok: {report.get('ok')}")
    for key in (
        "example_count",
        "line_count",
        "bytes",
        "role_counts",
        "trained_tokens",
        "examples_without_trained_tokens",
        "duplicate_count",
    ):
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


def _ensure_base_model(env: dict[str, str]) -> None:
    """Build the tiny base model (cached) and register it as `tailor-tiny` unless it already is."""
    listed = run_tailor("basemodel", "list", env=env)
    if listed.returncode == 0 and any(
        json.loads(line).get("name") == BASE_MODEL for line in listed.stdout.splitlines() if line.strip()
    ):
        print(f"    {BASE_MODEL} is registered")
        return
    model_dir = Path(env["TAILOR_TINY_MODEL_DIR"])
    print(f"    building the tiny base model into {model_dir} (about a minute the first time)")
    built = subprocess.run([sys.executable, "-m", "gpu_runner", "make-tiny-model", str(model_dir)], env=env)
    if built.returncode != 0:
        raise SystemExit("building the tiny model failed")
    added = run_tailor("basemodel", "add", BASE_MODEL, "--source", str(model_dir), env=env)
    if added.returncode != 0:
        raise SystemExit(f"registering {BASE_MODEL} failed:\n{added.stderr}")
    print(f"    registered {BASE_MODEL}: {added.stdout.strip()[:160]}")


SPARK = "▁▂▃▄▅▆▇█"


def _chart(points: list[tuple[int, float]], *, width: int = 60, height: int = 10) -> str:
    """A small terminal chart of (step, loss): people would rather look at a curve than read numbers."""
    if not points:
        return "    (no metrics yet)"
    steps = [p[0] for p in points]
    values = [p[1] for p in points]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    first, last = steps[0], steps[-1]
    grid = [[" "] * width for _ in range(height)]
    for step, value in points:
        x = 0 if last == first else round((step - first) / (last - first) * (width - 1))
        y = round((value - low) / span * (height - 1))
        grid[height - 1 - y][x] = "•"
    rows = []
    for i, row in enumerate(grid):
        label = high - span * i / (height - 1)
        rows.append(f"    {label:7.3f} ┤{''.join(row)}")
    rows.append("            └" + "─" * width)
    rows.append(f"             step {first}{' ' * (width - len(str(first)) - len(str(last)) - 5)}{last}")
    return "\n".join(rows)


def _train(client: OpenAI, file_id: str, validation_id: str) -> FineTuningJob:
    """Start a QLoRA SFT job on the task through the SDK and follow it to the end."""
    job = client.fine_tuning.jobs.create(
        model=BASE_MODEL,
        training_file=file_id,
        validation_file=validation_id,
        suffix="demo",
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": 3,
                    "batch_size": 8,
                    "learning_rate_multiplier": "auto",
                    # Tailor's LoRA options travel beside OpenAI's under the same key.
                    "learning_rate": 2e-3,
                    "lora_r": 16,
                    "quantization": "nf4",
                    "max_seq_length": 512,
                    "gradient_checkpointing": False,
                }
            },
        },
        metadata={"source": "make-demo"},
    )
    print(f"    {job.id}: {job.status}")
    while job.status not in TERMINAL:
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job.id)
        events = client.fine_tuning.jobs.list_events(job.id, limit=5).data
        data = next((e.data for e in events if e.data and e.data.get("train_loss") is not None), {})
        step, total = data.get("step"), data.get("total_steps")
        if step and total:
            done = int(30 * step / total)
            bar = "█" * done + "·" * (30 - done)
            line = f"{job.status:<10} [{bar}] step {step}/{total} loss {data['train_loss']:.3f}"
            print(f"\r    {line:<70}", end="", flush=True)
        else:
            print(f"\r    {job.status:<70}", end="", flush=True)
    print(f"\r    {job.id}: {job.status}{' ' * 50}")
    return job


def _show_job(client: OpenAI, job: FineTuningJob) -> None:
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    events.reverse()  # the API pages newest first
    points = [
        (e.data["step"], e.data["train_loss"])
        for e in events
        if e.type == "metrics" and e.data and e.data.get("train_loss") is not None
    ]
    print("    training loss:")
    print(_chart(points))
    if points:
        low, high = min(v for _, v in points), max(v for _, v in points)
        spark = "".join(SPARK[round((v - low) / ((high - low) or 1) * 7)] for _, v in points)
        print(f"    {spark}  {points[0][1]:.3f} → {points[-1][1]:.3f}")
    print("    events:")
    for e in events:
        if e.type == "message":
            print(f"      [{e.level}] {e.message}")
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    for ckpt in checkpoints:
        print(f"    checkpoint {ckpt.id} at step {ckpt.step_number}: {ckpt.fine_tuned_model_checkpoint}")
    if job.error and job.error.message:
        print(f"    error: {job.error.code}: {job.error.message}")
    print(f"    hyperparameters: {job.hyperparameters}")
    print(f"    trained tokens: {job.trained_tokens}")
    print(f"    fine-tuned model: \033[1m{job.fine_tuned_model}\033[0m")
    if job.result_files:
        csv = client.files.content(job.result_files[0]).text
        print(
            f"    results file {job.result_files[0]} ({len(csv.splitlines()) - 1} rows): {csv.splitlines()[0]}"
        )


def _wait_live(root: str, key: str, model: str, timeout: float = 120) -> dict:
    """Follow the auto-deploy of `model` until its deployment is live (or failed)."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        listed = httpx.get(
            f"{root}/api/v1/deployments",
            params={"adapter": model},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        ).json()["data"]
        for deployment in listed:
            if deployment["status"] != seen:
                seen = deployment["status"]
                print(f"    {deployment['id']} on {deployment['endpoint']['name']}: {seen}")
            if deployment["status"] in ("live", "failed"):
                return deployment
        time.sleep(0.3)
    raise SystemExit(f"{model} was not deployed within {timeout:.0f} s; see var/logs/control-worker.log")


def _side_by_side(client: OpenAI, model: str) -> None:
    """Ask the base model and the fine-tuned one the same held-out questions through Tailor's own
    /v1/chat/completions, and show both answers and how often each keeps the trained JSON shape."""
    from gpu_runner.task import format_match, prompt_messages

    examples = [json.loads(line) for line in TASK_HELDOUT.read_text().splitlines() if line.strip()][:12]
    rates = {BASE_MODEL: 0, model: 0}
    for number, example in enumerate(examples):
        messages = prompt_messages(example)
        replies = {}
        for name in (BASE_MODEL, model):
            completion = client.chat.completions.create(
                model=name, messages=messages, max_tokens=48, temperature=0
            )
            replies[name] = (completion.choices[0].message.content or "").strip()
            rates[name] += format_match(replies[name])
        if number < 4:
            print(f"    Q: {messages[-1]['content']}")
            print(f"       base       │ {replies[BASE_MODEL][:90]!r}")
            print(f"       fine-tuned │ {replies[model][:90]!r}")
    n = len(examples)
    print(
        f"    answers in the trained JSON shape over {n} held-out questions: "
        f"base {rates[BASE_MODEL]}/{n}, fine-tuned {rates[model]}/{n}"
    )


def main() -> int:
    """Run the walkthrough; keep serving unless DEMO_EXIT=1."""
    from openai import OpenAI

    port = int(os.environ.get("TAILOR_PORT", "8000"))
    env = dict(os.environ)
    env.setdefault("TAILOR_HOME", str(Path("var").resolve()))
    env.setdefault("TAILOR_PUBLIC_URL", f"http://127.0.0.1:{port}/v1")
    env.setdefault("TAILOR_TINY_MODEL_DIR", str(Path(env["TAILOR_HOME"]) / "models" / BASE_MODEL))
    serve_port = port + 1
    # The embedded default endpoint: the development server, shared by every team, auto-deploy on.
    env.setdefault(
        "TAILOR_ENDPOINTS",
        json.dumps(
            [
                {
                    "name": DEV_ENDPOINT,
                    "kind": "vllm",
                    "url": f"http://127.0.0.1:{serve_port}",
                    "base_models": {BASE_MODEL: BASE_MODEL},
                    "delivery": "shared_volume",
                    "adapter_root": str(Path(env["TAILOR_HOME"]).resolve() / "adapters"),
                    "max_lora_rank": 64,
                    "auto_deploy": True,
                }
            ]
        ),
    )
    env["PYTHONUNBUFFERED"] = "1"
    root = f"http://127.0.0.1:{port}"

    _say(f"Preparing the embedded database under {env['TAILOR_HOME']}")
    migrated = run_tailor("migrate", "--noinput", env=env)
    if migrated.returncode != 0:
        print(migrated.stdout, migrated.stderr, file=sys.stderr)
        return 1
    creds = _team_credentials(env)
    print(f"    team {creds['team']!r}, API key {creds['api_key']}")
    _ensure_base_model(env)
    synced = run_tailor("endpoint", "sync", env=env)
    if synced.returncode != 0:
        print(synced.stdout, synced.stderr, file=sys.stderr)
        return 1
    print(
        f"    inference endpoint {DEV_ENDPOINT!r}: the development server on port {serve_port}, auto-deploy on"
    )

    _say("Starting the platform: API server, control worker, beat, a GPU worker and the dev serving endpoint")
    serve = [
        "serve",
        "--model",
        env["TAILOR_TINY_MODEL_DIR"],
        "--served-model-name",
        BASE_MODEL,
        "--port",
        str(serve_port),
    ]
    with platform_processes(
        env, port, extra={"dev-server": [sys.executable, "-m", "tailor.cli", *serve]}
    ) as procs:
        wait_for_api(root, procs)
        wait_for_api(f"http://127.0.0.1:{serve_port}", procs, path="/health", timeout=120)
        print(f"    API answering on {root}/v1; development endpoint on http://127.0.0.1:{serve_port}")

        client = OpenAI(base_url=f"{root}/v1", api_key=creds["api_key"], max_retries=0)

        _say(
            f"Uploading the task dataset ({TASK_TRAIN.name}: answer in a fixed JSON shape) with the openai SDK"
        )
        with TASK_HELDOUT.open("rb") as fh:
            heldout = client.files.create(file=fh, purpose="fine-tune")
        with TASK_TRAIN.open("rb") as fh:
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
        lines[6] = (
            b'{"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
        )
        bad = client.files.create(file=("broken.jsonl", b"".join(lines)), purpose="fine-tune")
        bad = client.files.wait_for_processing(bad.id, poll_interval=0.5, max_wait_seconds=120)
        print(f"    {bad.id}: status {bad.status}: {bad.status_details}")
        _print_report(
            httpx.get(
                f"{root}/api/v1/files/{bad.id}/report",
                headers={"Authorization": f"Bearer {creds['api_key']}"},
            ).json()
        )

        _say(f"Fine-tuning {BASE_MODEL} on the task with QLoRA (NF4 4-bit), through the openai SDK")
        client.files.wait_for_processing(heldout.id, poll_interval=0.5, max_wait_seconds=120)
        job = _train(client, uploaded.id, heldout.id)
        _show_job(client, job)
        if job.status != "succeeded":
            return 1

        _say("The registry deploys the adapter by itself (shared volume, load, smoke request)")
        deployment = _wait_live(root, creds["api_key"], job.fine_tuned_model or "")
        if deployment["status"] != "live":
            print(f"    deployment failed: {deployment['reason_code']}: {deployment['last_error']}")
            return 1

        _say("Chatting through Tailor's own /v1/chat/completions: base model beside the fine-tuned one")
        _side_by_side(client, job.fine_tuned_model or "")

        _say("Call the API yourself")
        print(
            "    from openai import OpenAI\n"
            f'    client = OpenAI(base_url="{root}/v1", api_key="{creds["api_key"]}")\n'
            "    print([f.id for f in client.files.list()])\n"
            "    print([j.fine_tuned_model for j in client.fine_tuning.jobs.list()])\n"
            f'    client.chat.completions.create(model="{job.fine_tuned_model}", messages=[...])\n'
            f"    dashboard: {root}/dashboard/   web admin: {root}/admin/"
            f"   (user {creds.get('username', DEMO_OWNER)}, password {DEMO_PASSWORD})"
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
