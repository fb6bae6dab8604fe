"""A 200 MB upload through a real API server process streams to the object store: the server's peak
resident memory grows by a few chunks, not by the file, and the bytes are written once (to the store),
not also to a temporary copy."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest
from tailor.files.models import File

from tests.tailor.factories import TeamFactory, issue_key
from tests.tailor.processes import platform_env, start_api_server

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

MiB = 1024 * 1024
UPLOAD_BYTES = 200 * MiB


def peak_rss(pid: int) -> int:
    """The process's high-water mark of resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def bytes_written(pid: int) -> int:
    """Bytes the process has passed to write() so far (files and sockets alike)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc io")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak RSS from /proc")
def test_large_upload_does_not_hold_the_file_in_memory(storage_url: str, tmp_path: Path) -> None:
    secret = issue_key(TeamFactory()).secret
    server, root = start_api_server(platform_env(tmp_path, storage_url), tmp_path)
    try:
        headers = {"Authorization": f"Bearer {secret}"}
        # Warm up the server (imports, first request) so the baseline is its steady state.
        assert httpx.get(f"{root}/v1/files", headers=headers).status_code == 200
        baseline = peak_rss(server.process.pid)
        written_before = bytes_written(server.process.pid)

        source = tmp_path / "big.jsonl"
        line = b'{"text": "' + b"tailor " * 140 + b'"}\n'
        digest = hashlib.sha256()
        with source.open("wb") as out:
            written = 0
            while written < UPLOAD_BYTES:
                out.write(line)
                digest.update(line)
                written += len(line)
        with source.open("rb") as fh:
            response = httpx.post(
                f"{root}/v1/files",
                headers=headers,
                timeout=300,
                data={"purpose": "user_data"},
                files={"file": ("big.jsonl", fh)},
            )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["bytes"] == written
        growth = peak_rss(server.process.pid) - baseline
        server_writes = bytes_written(server.process.pid) - written_before
        print(
            f"server peak RSS {baseline / MiB:.0f} MiB before, +{growth / MiB:.1f} MiB while receiving "
            f"{written / MiB:.0f} MiB; it wrote {server_writes / MiB:.0f} MiB"
        )
        assert growth < 48 * MiB, (
            f"peak RSS grew by {growth / MiB:.0f} MiB for a {written / MiB:.0f} MiB upload"
        )
        # Once into the object store; a temporary copy on the way would double this.
        assert written <= server_writes < 1.2 * written
        assert File.objects.get(public_id=body["id"]).sha256 == digest.hexdigest()
        assert httpx.delete(f"{root}/v1/files/{body['id']}", headers=headers).status_code == 200
    finally:
        server.stop()
        source = tmp_path / "big.jsonl"
        if source.exists():
            os.unlink(source)
