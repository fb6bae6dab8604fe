"""Command line of the data plane: `python -m gpu_runner make-tiny-model [DIR]`,
`python -m gpu_runner train SPEC.json --output DIR [--events FILE] [--resume-from CKPT|auto]` and
`python -m gpu_runner serve --model DIR --served-model-name NAME [...]` (the development serving endpoint,
`gpu_runner.serve`; it exits 0 when stopped by SIGTERM/SIGINT).

Exit codes are `gpu_runner.events.ExitCode`: 0 succeeded, 1 failed, 2 invalid input, 3 stopped
(SIGTERM/SIGINT: cancel or pause, after a checkpoint), 4 out of memory.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import IO

from gpu_runner.events import EventWriter, ExitCode, NullEventWriter
from gpu_runner.serve.cli import add_arguments as add_serve_arguments

DEFAULT_TINY_MODEL_DIR = Path("var/models/tailor-tiny")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gpu_runner", description="Tailor's GPU runner.")
    commands = parser.add_subparsers(dest="command", required=True)

    tiny = commands.add_parser(
        "make-tiny-model", help="build the small local base model used by tests and demos"
    )
    tiny.add_argument(
        "directory",
        nargs="?",
        type=Path,
        default=DEFAULT_TINY_MODEL_DIR,
        help=f"where to write it (default: {DEFAULT_TINY_MODEL_DIR})",
    )
    tiny.add_argument("--seed", type=int, default=0)

    train = commands.add_parser("train", help="train an adapter from a job spec")
    train.add_argument(
        "spec", type=Path, help="job spec (JSON); relative paths in it are relative to its folder"
    )
    train.add_argument("--output", "-o", type=Path, required=True, help="adapter output directory")
    train.add_argument(
        "--events", type=Path, default=None, help="append JSON-lines events to this file (default: stdout)"
    )
    train.add_argument(
        "--resume-from",
        default=None,
        metavar="CKPT|auto",
        help='continue from a checkpoint folder, or "auto" for the newest complete one '
        "in the checkpoint directory (a fresh start when there is none)",
    )
    train.add_argument(
        "--checkpoint-dir", type=Path, default=None, help="where checkpoints go (default: OUTPUT/checkpoints)"
    )

    serve = commands.add_parser(
        "serve", help="run the development serving endpoint (vLLM's LoRA API and OpenAI's completions)"
    )
    add_serve_arguments(serve)
    return parser


def _stdout_for_events() -> IO[str]:
    """Keep the real stdout for events only: libraries that print would otherwise corrupt the stream, so
    file descriptor 1 and `sys.stdout` are pointed at stderr and events get a private copy of stdout."""
    sys.stdout.flush()
    events_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(events_fd, "w", buffering=1, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on a bad command line, which is our INVALID_INPUT too
        return int(exc.code or 0)

    if args.command == "make-tiny-model":
        from gpu_runner.tiny_model import build_tiny_model

        path = build_tiny_model(
            args.directory, seed=args.seed, progress=lambda line: print(line, file=sys.stderr)
        )
        print(path)
        return ExitCode.SUCCEEDED

    if args.command == "serve":
        from gpu_runner.serve.cli import run as serve

        return serve(args)

    from gpu_runner.train import run
    from gpu_runner.train.runner import RunOptions

    rank = int(os.environ.get("RANK", "0"))
    events: EventWriter
    if rank != 0:
        events = NullEventWriter()
    elif args.events is not None:
        events = EventWriter(args.events)
    else:
        events = EventWriter(_stdout_for_events())
    options = RunOptions(
        spec_path=args.spec,
        output_dir=args.output,
        checkpoint_dir=args.checkpoint_dir,
        resume_from=args.resume_from,
    )
    with events:
        return int(run(options, events, is_writer=rank == 0, restore_signals=False))
