"""Command line of the development serving endpoint: `python -m gpu_runner serve` and `tailor serve`.

The options are vLLM's names for the same things, so a command line moves between the two servers.
Only argparse is imported here; the model stack loads when the server starts.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from gpu_runner.serve.adapters import ALLOWED_MAX_LORA_RANKS

API_KEY_ENV = "TAILOR_SERVE_API_KEY"


def _lora_module(value: str) -> tuple[str, str]:
    """`name=path`, or vLLM's JSON form `{"name": …, "path": …}`."""
    if value.lstrip().startswith("{"):
        try:
            spec = json.loads(value)
            return str(spec["name"]), str(spec["path"])
        except (ValueError, KeyError, TypeError) as exc:
            raise argparse.ArgumentTypeError(f"invalid LoRA module JSON {value!r}: {exc}") from exc
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"invalid LoRA module {value!r}: expected name=path")
    return name, path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's options, on `parser`."""
    parser.add_argument("--model", required=True, help="base model directory (transformers format)")
    parser.add_argument(
        "--served-model-name",
        default=None,
        metavar="NAME",
        help="the base model's name in the API (default: the --model value, as vLLM)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one")
    parser.add_argument(
        "--max-loras",
        type=int,
        default=4,
        help="adapters kept in memory, least recently used dropped first; more may be registered and "
        "reload from their path on demand, like vLLM's --max-cpu-loras (default: 4)",
    )
    parser.add_argument(
        "--max-lora-rank",
        type=int,
        default=64,
        choices=ALLOWED_MAX_LORA_RANKS,
        help="largest adapter rank accepted (default: 64)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV) or None,
        help=f"require 'Authorization: Bearer KEY' on every /v1 request (default: ${API_KEY_ENV})",
    )
    parser.add_argument(
        "--allow-runtime-lora-updating",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve /v1/load_lora_adapter and /v1/unload_lora_adapter, as vLLM with "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (default: on)",
    )
    parser.add_argument(
        "--lora-modules",
        nargs="+",
        type=_lora_module,
        default=[],
        metavar="NAME=PATH",
        help='adapters to load at startup (name=path or JSON {"name": …, "path": …}); any failure stops the start',
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="(default: info)"
    )


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace, *, prog: str = "python -m gpu_runner serve") -> int:
    """Load the model and the startup adapters, then serve until SIGTERM or SIGINT; returns the exit code:
    0 after a signal, 1 when the model or an adapter fails to load or the address is taken, 2 for bad
    options."""
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        print(f"{prog}: {model_dir} is not a model directory (no config.json)", file=sys.stderr)
        return 2
    if args.max_loras < 1:
        print(f"{prog}: --max-loras must be at least 1", file=sys.stderr)
        return 2
    served_model_name = args.served_model_name or args.model

    from gpu_runner.serve.adapters import AdapterNotFoundError, InvalidAdapterError, check_adapter

    # What can be checked without the model is checked first, so a wrong adapter fails in a second.
    for name, path in args.lora_modules:
        try:
            check_adapter(
                lora_name=name, lora_path=path, max_lora_rank=args.max_lora_rank, linear_layers=None
            )
        except (AdapterNotFoundError, InvalidAdapterError) as exc:
            print(f"{prog}: cannot load LoRA module {name}: {exc}", file=sys.stderr)
            return 1

    import uvicorn

    from gpu_runner.serve.app import create_app
    from gpu_runner.serve.engine import ServingEngine

    try:
        engine = ServingEngine(
            model_dir=model_dir, max_loras=args.max_loras, max_lora_rank=args.max_lora_rank
        )
    except Exception as exc:  # any loading failure ends the start with one clear line
        print(f"{prog}: cannot load the model from {model_dir}: {exc}", file=sys.stderr)
        return 1
    for name, path in args.lora_modules:
        try:
            engine.load_adapter(name=name, path=path)
        except (AdapterNotFoundError, InvalidAdapterError) as exc:
            print(f"{prog}: cannot load LoRA module {name}: {exc}", file=sys.stderr)
            return 1

    app = create_app(
        engine,
        served_model_name=served_model_name,
        model_path=args.model,
        api_key=args.api_key,
        allow_runtime_lora_updating=args.allow_runtime_lora_updating,
    )
    if args.allow_runtime_lora_updating:
        logging.getLogger(__name__).warning(
            "LoRA dynamic loading & unloading is enabled in the API server. "
            "This should ONLY be used for local development!"
        )
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(f"{prog}: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    # uvicorn writes its access log to stdout; stdout carries only the ready line, so scripts can read it.
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_level=args.log_level, log_config=log_config, timeout_graceful_shutdown=5, lifespan="off"
        )
    )

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            print(f"serving {served_model_name} on http://{url_host}:{port}", flush=True)
        await task

    # uvicorn re-raises the signal that stopped it once it has shut down; with these handlers in place
    # that re-raise does nothing, so a stop by SIGTERM or SIGINT exits 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        asyncio.run(serve())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return 0


def main(argv: list[str] | None = None, *, prog: str = "python -m gpu_runner serve") -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Development serving endpoint: one base model, many LoRA adapters, vLLM's API. "
        "For production, serve with vLLM.",
    )
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return run(args, prog=prog)
