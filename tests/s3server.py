"""A real S3 protocol server for tests: moto's standalone server on a free loopback port.

The object store and everything built on it are tested over HTTP against this server, the same
wire protocol MinIO, R2 and AWS S3 speak, rather than against an in-process mock of boto3.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

# Credentials moto accepts; any value works, but boto3 refuses to sign without some.
TEST_CREDENTIALS = {
    "aws_access_key_id": "tailor-test",
    "aws_secret_access_key": "tailor-test-secret",
    "region_name": "us-east-1",
}

STARTUP_TIMEOUT_S = 30.0
START_ATTEMPTS = 3


class S3ServerError(RuntimeError):
    """moto_server did not start or did not answer."""


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _moto_server_executable() -> Path:
    # Next to the interpreter running the tests, so the virtual environment's copy is used.
    candidate = Path(sys.executable).parent / "moto_server"
    if not candidate.exists():
        raise S3ServerError(f"moto_server not found at {candidate}; install the dev extra (moto[server])")
    return candidate


def _wait_until_answering(process: subprocess.Popen[bytes], endpoint: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    # trust_env=False: an HTTP(S)_PROXY in the environment must not capture loopback traffic.
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise S3ServerError(
                    f"moto_server exited with status {process.returncode}: {log_path.read_text(errors='replace')[-2000:]}"
                )
            try:
                client.get(f"{endpoint}/moto-api/")
                return
            except httpx.TransportError:
                time.sleep(0.1)
    raise S3ServerError(f"moto_server did not answer at {endpoint} within {STARTUP_TIMEOUT_S:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def running_s3_server() -> Iterator[str]:
    """Start moto_server on 127.0.0.1 and yield its endpoint URL; stop that process on exit.

    A port picked free can be taken by another process before the server binds it, so a failed
    start is retried on a fresh port.
    """
    executable = _moto_server_executable()
    with tempfile.TemporaryDirectory(prefix="tailor-moto-") as log_dir:
        last_error: S3ServerError | None = None
        for attempt in range(START_ATTEMPTS):
            port = _free_loopback_port()
            endpoint = f"http://127.0.0.1:{port}"
            log_path = Path(log_dir) / f"moto-{attempt}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [str(executable), "-H", "127.0.0.1", "-p", str(port)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            try:
                _wait_until_answering(process, endpoint, log_path)
            except S3ServerError as error:
                _stop(process)
                last_error = error
                continue
            try:
                yield endpoint
            finally:
                _stop(process)
            return
        assert last_error is not None
        raise last_error
