"""A real `tailor worker control` process validates uploads published after commit, once, over Redis
(or whatever broker the session uses) and over the embedded filesystem broker."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.db import transaction
from tailor.core.objectstore import object_store
from tailor.files.models import File, new_file_id
from tailor.files.selectors import file_storage_key
from tailor.files.services import file_create

from tests.tailor.factories import FileFactory, TeamFactory
from tests.tailor.processes import PlatformProcess, platform_env, start_control_worker, wait_for
from workers.app import VALIDATE_FILE_TASK, create_app

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def chat_jsonl(n: int = 12) -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(n)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def upload(data: bytes) -> File:
    """What the upload view does: bytes into the store, then the row, committed (which publishes the task)."""
    team = TeamFactory()
    file_id = new_file_id()
    stored = object_store().put(file_storage_key(team=team, file_id=file_id), io.BytesIO(data))
    with transaction.atomic():
        return file_create(team=team, file_id=file_id, purpose="fine-tune", filename="t.jsonl", stored=stored)


def settled(file_id: str) -> File | None:
    file = File.objects.get(public_id=file_id)
    return file if file.status != File.Status.UPLOADED else None


def test_worker_validates_a_committed_upload(control_worker: PlatformProcess) -> None:
    good = upload(chat_jsonl())
    bad = upload(b'{"messages": [}\n' + chat_jsonl())
    done = wait_for(lambda: settled(good.public_id), timeout=60, message=f"validation of {good.public_id}")
    assert done.status == "processed" and done.format == "chat", control_worker.log()[-3000:]
    failed = wait_for(lambda: settled(bad.public_id), timeout=60, message=f"validation of {bad.public_id}")
    assert failed.status == "error"
    assert failed.validation_report["errors"][0]["line"] == 1
    assert failed.validation_report["errors"][0]["code"] == "invalid_json"


def test_a_redelivered_message_changes_nothing(control_worker: PlatformProcess) -> None:
    file = upload(chat_jsonl())
    first = wait_for(lambda: settled(file.public_id), timeout=60, message="first validation")
    from workers.app import app

    duplicate = app.send_task(VALIDATE_FILE_TASK, args=[file.public_id])
    wait_for(
        lambda: f"[{duplicate.id}] succeeded" in control_worker.log(),
        timeout=60,
        message="the duplicate delivery to be handled",
    )
    again = File.objects.get(pk=file.pk)
    assert (again.status, again.validated_at) == (first.status, first.validated_at)


def test_embedded_filesystem_broker_carries_tasks_between_processes(storage_url: str, tmp_path: Path) -> None:
    """With no CELERY_BROKER_URL, a task published by one process reaches a worker in another."""
    home = tmp_path / "embedded-home"
    env = platform_env(home, storage_url, TAILOR_HOME=str(home))
    env.pop("CELERY_BROKER_URL", None)
    worker = start_control_worker(env, tmp_path, name="filesystem-worker")
    try:
        assert "filesystem://" in worker.log()
        team = TeamFactory()
        file_id = new_file_id()
        stored = object_store().put(file_storage_key(team=team, file_id=file_id), io.BytesIO(chat_jsonl()))
        # The row alone (no on-commit publish through the session's broker); the message goes only
        # through the filesystem broker under `home`.
        FileFactory(
            team=team, public_id=file_id, storage_key=stored.key, bytes=stored.size, sha256=stored.sha256
        )
        create_app({"TAILOR_HOME": str(home)}).send_task(VALIDATE_FILE_TASK, args=[file_id])
        done = wait_for(lambda: settled(file_id), timeout=60, message="validation over the filesystem broker")
        assert done.status == "processed", worker.log()[-3000:]
    finally:
        worker.stop()
