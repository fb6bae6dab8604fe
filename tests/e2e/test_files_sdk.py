"""The Files API end to end through the official openai SDK, against a live server and a real control
worker process: what a user's script does, unchanged but for `base_url`."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai import OpenAI

from tests.tailor.factories import TeamFactory, issue_key
from tests.tailor.processes import PlatformProcess

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def chat_jsonl(n: int = 12, tag: str = "") -> bytes:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"question {tag}{i}"},
                {"role": "assistant", "content": f"answer {tag}{i}"},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def sdk(live_server, secret: str) -> OpenAI:
    return OpenAI(base_url=f"{live_server.url}/v1", api_key=secret, max_retries=0)


def test_upload_list_retrieve_download_delete(live_server, control_worker: PlatformProcess) -> None:
    client = sdk(live_server, issue_key(TeamFactory()).secret)
    contents = {}
    for i in range(5):
        data = chat_jsonl(tag=f"{i}-")
        created = client.files.create(file=(f"part-{i}.jsonl", data), purpose="fine-tune")
        assert created.status == "uploaded" and created.bytes == len(data) and created.object == "file"
        contents[created.id] = data
    ids = list(contents)

    for file_id in ids:
        done = client.files.wait_for_processing(file_id, poll_interval=0.2, max_wait_seconds=60)
        assert done.status == "processed", (done.status_details, control_worker.log()[-2000:])
        assert "12 examples" in done.status_details

    # The SDK pages by itself with after=<last id>: limit=2 over 5 files is three requests.
    assert [f.id for f in client.files.list(limit=2, order="asc")] == ids
    assert [f.id for f in client.files.list(limit=2)] == ids[::-1]
    first_page = client.files.list(limit=2)
    assert len(first_page.data) == 2 and first_page.has_more is True and first_page.has_next_page()
    assert [f.id for f in client.files.list(purpose="batch")] == []

    retrieved = client.files.retrieve(ids[2])
    assert (retrieved.filename, retrieved.purpose, retrieved.bytes) == (
        "part-2.jsonl",
        "fine-tune",
        len(contents[ids[2]]),
    )
    assert client.files.content(ids[2]).content == contents[ids[2]]

    deleted = client.files.delete(ids[2])
    assert (deleted.id, deleted.deleted, deleted.object) == (ids[2], True, "file")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(ids[2])
    assert ids[2] not in [f.id for f in client.files.list()]


def test_malformed_file_ends_in_error_with_line_numbers(live_server, control_worker: PlatformProcess) -> None:
    secret = issue_key(TeamFactory()).secret
    client = sdk(live_server, secret)
    lines = chat_jsonl(12).decode().splitlines()
    lines[4] = "{this is not json"
    lines[9] = json.dumps({"messages": [{"role": "user", "content": "only a question"}]})
    bad = client.files.create(file=("broken.jsonl", "\n".join(lines).encode()), purpose="fine-tune")
    done = client.files.wait_for_processing(bad.id, poll_interval=0.2, max_wait_seconds=60)
    assert done.status == "error"
    assert "line 5" in done.status_details
    report = httpx.get(
        f"{live_server.url}/api/v1/files/{bad.id}/report", headers={"Authorization": f"Bearer {secret}"}
    ).json()
    assert report["ok"] is False and report["format"] == "chat"
    found = {(issue["line"], issue["code"]) for issue in report["errors"]}
    assert (5, "invalid_json") in found and (10, "example_missing_assistant_message") in found


def test_a_second_team_sees_none_of_the_first_teams_files(
    live_server, control_worker: PlatformProcess
) -> None:
    owner = sdk(live_server, issue_key(TeamFactory()).secret)
    stranger_secret = issue_key(TeamFactory()).secret
    stranger = sdk(live_server, stranger_secret)
    theirs = owner.files.create(file=("private.jsonl", chat_jsonl()), purpose="fine-tune").id
    missing = "file-" + "x" * 24

    assert list(stranger.files.list()) == []
    for call in (stranger.files.retrieve, stranger.files.content, stranger.files.delete):
        with pytest.raises(openai.NotFoundError) as seen:
            call(theirs)
        with pytest.raises(openai.NotFoundError) as absent:
            call(missing)
        assert seen.value.message.replace(theirs, "ID") == absent.value.message.replace(missing, "ID")
    report = httpx.get(
        f"{live_server.url}/api/v1/files/{theirs}/report",
        headers={"Authorization": f"Bearer {stranger_secret}"},
    )
    assert report.status_code == 404
    # Still there for its owner.
    assert owner.files.retrieve(theirs).id == theirs


def test_sdk_errors_for_bad_keys_and_oversized_uploads(live_server, settings) -> None:
    with pytest.raises(openai.AuthenticationError) as wrong:
        sdk(live_server, "tlr-" + "0" * 40).files.list()
    assert wrong.value.code == "invalid_api_key"
    settings.TAILOR_MAX_UPLOAD_BYTES = 10_000
    client = sdk(live_server, issue_key(TeamFactory()).secret)
    with pytest.raises(openai.APIStatusError) as too_big:
        client.files.create(file=("big.jsonl", b"x" * 20_000), purpose="fine-tune")
    assert too_big.value.status_code == 413 and too_big.value.code == "file_too_large"
    assert list(client.files.list()) == []
