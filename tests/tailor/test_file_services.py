"""Validation of uploaded files (the control task's body) and deletion, against the real object store."""

from __future__ import annotations

import io
import json

import pytest
from tailor.core.objectstore import object_store
from tailor.files.models import File, new_file_id
from tailor.files.selectors import file_storage_key
from tailor.files.services import file_create, file_delete, file_fail_validation, file_validate
from tailor.teams.models import Team

pytestmark = pytest.mark.django_db


def chat_line(i: int) -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
    )


def stored_file(team: Team, data: bytes, *, purpose: str = "fine-tune") -> File:
    file_id = new_file_id()
    stored = object_store().put(file_storage_key(team=team, file_id=file_id), io.BytesIO(data))
    return file_create(team=team, file_id=file_id, purpose=purpose, filename="train.jsonl", stored=stored)


def test_valid_chat_file_becomes_processed_with_its_report(team: Team) -> None:
    file = stored_file(team, "\n".join(chat_line(i) for i in range(12)).encode())
    result = file_validate(file_id=file.public_id)
    assert result.status == "processed"
    assert result.format == "chat"
    assert result.validation_report["ok"] is True
    assert result.validation_report["stats"]["example_count"] == 12
    assert "12 examples" in result.status_details
    assert result.validated_at is not None


def test_malformed_file_becomes_error_with_line_numbers(team: Team) -> None:
    lines = [chat_line(i) for i in range(12)]
    lines[3] = '{"messages": [{"role": "user", "content": "hi"}'  # truncated JSON on line 4
    lines[7] = json.dumps(
        {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}
    )
    file = stored_file(team, "\n".join(lines).encode())
    result = file_validate(file_id=file.public_id)
    assert result.status == "error"
    errors = result.validation_report["errors"]
    assert {(e["line"], e["code"]) for e in errors} >= {(4, "invalid_json"), (8, "unrecognized_role")}
    assert next(e for e in errors if e["line"] == 8)["path"] == "messages[0].role"
    assert "line 4" in result.status_details


def test_redelivery_does_not_validate_twice(team: Team) -> None:
    file = stored_file(team, "\n".join(chat_line(i) for i in range(12)).encode())
    first = file_validate(file_id=file.public_id)
    again = file_validate(file_id=file.public_id)
    assert again.validated_at == first.validated_at
    assert again.status == "processed"


def test_a_deleted_file_is_not_validated(team: Team, django_capture_on_commit_callbacks) -> None:
    file = stored_file(team, b"not json\n")
    with django_capture_on_commit_callbacks(execute=True):
        file_delete(file=file)
    assert file_validate(file_id=file.public_id).status == "deleted"
    assert file_validate(file_id="file-neverexisted") is None


def test_missing_bytes_end_in_error_not_a_crash(team: Team) -> None:
    file = stored_file(team, b"{}\n")
    object_store().delete(file.storage_key)
    result = file_validate(file_id=file.public_id)
    assert result.status == "error"
    assert "missing" in result.status_details


def test_timeout_marks_only_unfinished_files(team: Team) -> None:
    pending = stored_file(team, b"{}\n")
    done = stored_file(team, "\n".join(chat_line(i) for i in range(12)).encode())
    file_validate(file_id=done.public_id)
    file_fail_validation(file_id=pending.public_id, details="took too long")
    file_fail_validation(file_id=done.public_id, details="took too long")
    pending.refresh_from_db()
    done.refresh_from_db()
    assert (pending.status, pending.status_details) == ("error", "took too long")
    assert done.status == "processed"


def test_delete_is_idempotent_and_removes_the_bytes_after_commit(
    team: Team, django_capture_on_commit_callbacks
) -> None:
    file = stored_file(team, b"data")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        file_delete(file=file)
    # Bytes go only once the deletion is committed.
    assert object_store().exists(file.storage_key)
    for callback in callbacks:
        callback()
    assert not object_store().exists(file.storage_key)
    with django_capture_on_commit_callbacks() as callbacks:
        assert file_delete(file=file).status == "deleted"
    assert callbacks == []
