"""Deploy latency: from a job's `succeeded` to its adapter `live` on an endpoint, and the gateway's cost.

With warm processes (API server, control worker, beat, one GPU worker and the development serving
endpoint `tailor serve`, registered as a shared endpoint with auto-deploy for every team), it runs N
small QLoRA SFT jobs one after another through the openai SDK. For each, the registry deploys the
adapter by itself: gate, files written atomically under the shared volume after their digests are
checked, vLLM's `/v1/load_lora_adapter`, a smoke chat request. Measured: the job's `finished_at` to the
deployment's `live_at` (both written by the control plane, one clock).

Beside it, in the same run, the floor for each adapter: copying its bytes once from the object store to
the server's adapter folder, and one load call. Target: p95 at most 2x the floor's p95.

Then the gateway: the same chat request (greedy, 8 tokens) sent R times straight to the endpoint and R
times through Tailor's `/v1/chat/completions` (team key, routing, model rewriting), streamed and not;
added latency = through the gateway - direct, at p50 and p95.

Runs against the PostgreSQL and Redis named by DATABASE_URL / CELERY_BROKER_URL (default: the local
test services on 127.0.0.1), in a scratch TAILOR_HOME. Prints tables, then one JSON object as the last
line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "platform"), str(REPO)]

from bench.dispatch_latency import percentile, prepare_platform, small_training_file  # noqa: E402

POLL = 0.05


def api(root: str, key: str, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(
        method, f"{root}/api/v1{path}", headers={"Authorization": f"Bearer {key}"}, timeout=60, **kwargs
    )
    response.raise_for_status()
    return response.json()


def _precise_to_live(job_id: str, deployment_id: str) -> float:
    from tailor.registry.models import Deployment
    from tailor.tuning.models import FineTuningJob

    finished = FineTuningJob.objects.get(public_id=job_id).finished_at
    live = Deployment.objects.get(public_id=deployment_id).live_at
    assert finished is not None and live is not None
    return (live - finished).total_seconds()


def run_jobs(client: Any, root: str, key: str, file_id: str, jobs: int) -> list[dict[str, Any]]:
    """Run `jobs` jobs one after another; return each one's adapter name, deployment and timings."""
    results = []
    for number in range(jobs):
        job = client.fine_tuning.jobs.create(
            model="tailor-tiny",
            training_file=file_id,
            suffix=f"bench{number}",
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}},
            },
        )
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in (
            "succeeded",
            "failed",
            "cancelled",
        ):
            time.sleep(POLL)
        if job.status != "succeeded":
            raise SystemExit(f"{job.id} ended {job.status}: {job.error}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            listed = api(root, key, "GET", "/deployments", params={"adapter": job.fine_tuned_model})["data"]
            done = [d for d in listed if d["status"] in ("live", "failed")]
            if done:
                break
            time.sleep(POLL)
        else:
            raise SystemExit(f"{job.fine_tuned_model} was not deployed within 120 s")
        deployment = done[0]
        if deployment["status"] != "live":
            raise SystemExit(f"deployment failed: {deployment['last_error']}")
        # The API shows whole seconds (OpenAI's unix times); the rows hold microseconds.
        seconds = _precise_to_live(job.id, deployment["id"])
        print(f"    {job.fine_tuned_model}: live {seconds:.2f} s after succeeded", flush=True)
        results.append({"model": job.fine_tuned_model, "to_live": seconds})
    return results


def measure_floor(adapters: list[str], server: str, served_root: Path) -> list[float]:
    """Per adapter: copy its files once from the object store into the server's folder, one load call."""
    from tailor.core.objectstore import object_store
    from tailor.tuning.models import Adapter

    store = object_store()
    floor = []
    with httpx.Client(timeout=60) as http:
        for number, name in enumerate(adapters):
            adapter = Adapter.objects.get(name=name)
            target = served_root / f"floor-{number}"
            start = time.monotonic()
            target.mkdir()
            for file in adapter.files:
                if file == "metrics.csv":
                    continue
                with store.open(f"{adapter.prefix}/{file}") as source, open(target / file, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
            loaded = http.post(
                f"{server}/v1/load_lora_adapter",
                json={"lora_name": f"floor-{number}", "lora_path": str(target)},
            )
            floor.append(time.monotonic() - start)
            if loaded.status_code != 200:
                raise SystemExit(f"floor load failed: {loaded.status_code} {loaded.text}")
            http.post(f"{server}/v1/unload_lora_adapter", json={"lora_name": f"floor-{number}"})
    return floor


def chat_latencies(url: str, key: str | None, model: str, requests: int, *, stream: bool) -> list[float]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": stream,
    }
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    latencies = []
    with httpx.Client(timeout=60, headers=headers) as http:
        for _ in range(requests + 2):
            start = time.monotonic()
            if stream:
                with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                    response.raise_for_status()
                    for _line in response.iter_lines():
                        pass
            else:
                http.post(f"{url}/v1/chat/completions", json=body).raise_for_status()
            latencies.append(time.monotonic() - start)
    return latencies[2:]  # the first two warm connections and caches


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", type=int, default=20)
    parser.add_argument("--requests", type=int, default=40, help="chat requests per gateway measurement")
    parser.add_argument("--port", type=int, default=int(os.environ.get("TAILOR_PORT", "8766")))
    args = parser.parse_args()

    from openai import OpenAI
    from tailor.demo import platform_processes, wait_for_api

    work = Path(tempfile.mkdtemp(prefix="tailor-deploy-"))
    serve_port = args.port + 1
    adapters_dir = work / "served-adapters"
    adapters_dir.mkdir()
    env = dict(os.environ)
    env.update(
        {
            "TAILOR_HOME": str(work / "home"),
            "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tailor_bench"),
            "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/2"),
            "TAILOR_CONTROL_QUEUE": f"control-bench-{uuid.uuid4().hex[:8]}",
            "TAILOR_PUBLIC_URL": f"http://127.0.0.1:{args.port}/v1",
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "TAILOR_ENDPOINTS": json.dumps(
                [
                    {
                        "name": "dev",
                        "kind": "vllm",
                        "url": f"http://127.0.0.1:{serve_port}",
                        "base_models": {"tailor-tiny": "tailor-tiny"},
                        "delivery": "shared_volume",
                        "adapter_root": str(adapters_dir),
                        "max_lora_rank": 64,
                        "auto_deploy": True,
                    }
                ]
            ),
        }
    )
    os.environ.update(
        {k: env[k] for k in ("TAILOR_HOME", "DATABASE_URL", "CELERY_BROKER_URL", "TAILOR_ENDPOINTS")}
    )
    model_dir = Path(env.get("TAILOR_TINY_MODEL_DIR", REPO / "var" / "models" / "tailor-tiny"))
    creds = prepare_platform(env, model_dir, ("endpoint", "sync"))
    data = small_training_file(work / "train.jsonl")
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tailor.settings")
    django.setup()  # the bench reads exact timestamps from the rows (after migrate made the tables)
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root, server = f"http://127.0.0.1:{args.port}", f"http://127.0.0.1:{serve_port}"
    serve = [
        "serve",
        "--model",
        str(model_dir),
        "--served-model-name",
        "tailor-tiny",
        "--port",
        str(serve_port),
    ]
    # The gateway is measured behind gunicorn, as production runs it (Django's runserver answers small
    # bodies in two writes, which costs a delayed-ACK stall on keep-alive connections).
    production = f"http://127.0.0.1:{args.port + 2}"
    gunicorn = [
        sys.executable,
        "-m",
        "gunicorn",
        "tailor.wsgi:application",
        "--bind",
        f"127.0.0.1:{args.port + 2}",
        "--workers",
        "2",
        "--threads",
        "8",
        "--env",
        "DJANGO_SETTINGS_MODULE=tailor.settings",
    ]
    extra = {"dev-server": [sys.executable, "-m", "tailor.cli", *serve], "api-gunicorn": gunicorn}
    with platform_processes(env, args.port, extra=extra) as procs:
        wait_for_api(root, procs)
        wait_for_api(production, procs)
        wait_for_api(server, procs, timeout=120, path="/health")
        client = OpenAI(base_url=f"{root}/v1", api_key=creds["api_key"], max_retries=0)
        uploaded = client.files.create(file=data.open("rb"), purpose="fine-tune")
        client.files.wait_for_processing(uploaded.id, poll_interval=0.2)

        print("==> warm-up job (every process and the model cache warm, as promised)", flush=True)
        run_jobs(client, root, creds["api_key"], uploaded.id, 1)
        print(f"==> {args.adapters} jobs: succeeded -> live", flush=True)
        deployed = run_jobs(client, root, creds["api_key"], uploaded.id, args.adapters)
        print("==> floor: copy the adapter's bytes once + one load call, per adapter", flush=True)
        floor = measure_floor([d["model"] for d in deployed], server, adapters_dir)

        model = deployed[-1]["model"]
        print(f"==> gateway: {args.requests} chat requests each, direct vs through Tailor", flush=True)
        served_name = model  # vLLM-kind endpoints know an adapter by its model name
        gateway = {
            "direct": chat_latencies(server, None, served_name, args.requests, stream=False),
            "gateway": chat_latencies(production, creds["api_key"], model, args.requests, stream=False),
            "direct streamed": chat_latencies(server, None, served_name, args.requests, stream=True),
            "gateway streamed": chat_latencies(
                production, creds["api_key"], model, args.requests, stream=True
            ),
        }

    to_live = [d["to_live"] for d in deployed]
    print(f"\n{'measure':36s} {'p50 s':>8s} {'p95 s':>8s} {'n':>4s}")
    for name, values in {"succeeded -> live (registry)": to_live, "copy once + load (floor)": floor}.items():
        print(f"{name:36s} {percentile(values, 50):8.3f} {percentile(values, 95):8.3f} {len(values):4d}")
    for name, values in gateway.items():
        print(
            f"{'chat ' + name:36s} {percentile(values, 50):8.3f} {percentile(values, 95):8.3f} {len(values):4d}"
        )
    added = {
        kind: {
            "p50_ms": round(
                (percentile(gateway[f"gateway{kind}"], 50) - percentile(gateway[f"direct{kind}"], 50)) * 1000,
                1,
            ),
            "p95_ms": round(
                (percentile(gateway[f"gateway{kind}"], 95) - percentile(gateway[f"direct{kind}"], 95)) * 1000,
                1,
            ),
        }
        for kind in ("", " streamed")
    }
    ratio = percentile(to_live, 95) / percentile(floor, 95)
    print(f"registry p95 / floor p95: {ratio:.2f} (target: <= 2.00)")
    print(f"gateway added latency: {added['']} (not streamed), {added[' streamed']} (streamed)")
    print(
        json.dumps(
            {
                "name": "deploy_latency",
                "value": round(percentile(to_live, 95), 3),
                "unit": "s",
                "baseline": round(percentile(floor, 95), 3),
                "ratio": round(ratio, 3),
                "to_live_s": {
                    "p50": round(percentile(to_live, 50), 3),
                    "p95": round(percentile(to_live, 95), 3),
                },
                "floor_s": {"p50": round(percentile(floor, 50), 3), "p95": round(percentile(floor, 95), 3)},
                "gateway_added_ms": {"non_streamed": added[""], "streamed": added[" streamed"]},
                "adapters": args.adapters,
                "requests": args.requests,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
