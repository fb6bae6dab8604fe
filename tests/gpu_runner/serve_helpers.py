"""Helpers for the development serving endpoint's tests: start the real server as a subprocess on a free
loopback port, and make PEFT LoRA adapters on the tiny model without training (random non-zero B
matrices, so an adapter really changes what the model says)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(os.environ.get("TAILOR_TINY_MODEL_DIR", ROOT / "var" / "models" / "tailor-tiny"))
READY_PREFIX = "serving "


@dataclass
class ServeProcess:
    """A running `gpu_runner serve` process and where its output goes."""

    process: subprocess.Popen[bytes]
    url: str
    stdout_path: Path
    stderr_path: Path

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, then wait; kills it if it does not stop in time. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def serve_env() -> dict[str, str]:
    """The environment of a server process: this one's, with the repository importable and no hub access."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "platform"), str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    return env


def serve_command(*args: str, launcher: str = "gpu_runner") -> list[str]:
    """The command line of the server: `python -m gpu_runner serve …`, or the `tailor serve …` script."""
    if launcher == "tailor":
        script = Path(sys.executable).with_name("tailor")
        prefix = [str(script)] if script.exists() else [sys.executable, "-m", "tailor.cli"]
        return [*prefix, "serve", *args]
    return [sys.executable, "-m", "gpu_runner", "serve", *args]


def launch_server(*args: str, log_dir: Path, launcher: str = "gpu_runner") -> ServeProcess:
    """Start the server with `args` on a free port of 127.0.0.1; `wait_ready` waits until it serves."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = log_dir / "serve.out", log_dir / "serve.err"
    env = serve_env()
    command = serve_command("--host", "127.0.0.1", "--port", "0", *args, launcher=launcher)
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(command, cwd=ROOT, stdout=stdout, stderr=stderr, env=env)
    return ServeProcess(process, "", stdout_path, stderr_path)


def wait_ready(server: ServeProcess, timeout: float = 180) -> ServeProcess:
    """Wait for the server's ready line and note its URL; raises with its log if it exits or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.stdout_path.read_text(errors="replace").splitlines():
            if line.startswith(READY_PREFIX) and " on " in line:
                server.url = line.rsplit(" on ", 1)[1].strip()
                return server
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}:\n{server.log()}")
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"the server did not become ready in {timeout:.0f}s:\n{server.log()}")


def start_server(
    *args: str, log_dir: Path, launcher: str = "gpu_runner", timeout: float = 180
) -> ServeProcess:
    """Start the server and wait until it serves."""
    return wait_ready(launch_server(*args, log_dir=log_dir, launcher=launcher), timeout)


def make_adapter(
    directory: Path,
    *,
    seed: int,
    base_dir: Path = TINY,
    r: int = 8,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    scale: float = 0.2,
    base_config: dict[str, Any] | None = None,
    **lora_options: Any,
) -> Path:
    """Save a LoRA adapter for the tiny model (or for a random model of `base_config`) in `directory`,
    its B matrices random with standard deviation `scale` instead of peft's zeros."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    base: Any
    if base_config is not None:
        base = LlamaForCausalLM(LlamaConfig(**base_config))
    else:
        base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(target_modules), **lora_options)
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    # Only the LoRA matrices, as training writes them (peft would add full embedding weights otherwise).
    model.save_pretrained(str(directory), save_embedding_layers=False)
    return directory


def edit_adapter_config(directory: Path, *, remove: tuple[str, ...] = (), **changes: Any) -> Path:
    """Change fields of an adapter's `adapter_config.json` (to make it one the server must refuse)."""
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text())
    for key in remove:
        config.pop(key, None)
    config.update(changes)
    path.write_text(json.dumps(config))
    return directory
