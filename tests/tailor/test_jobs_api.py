"""The fine-tuning jobs and models API through DRF's test client: OpenAI's object shapes, 400s that name
the offending parameter, cursor paging, metadata filters, the wire names of internal states, and team
isolation on every endpoint. (tests/e2e drives the same endpoints with the openai SDK.)"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient
from tailor.files.models import File
from tailor.tuning import protocol
from tailor.tuning.models import FineTuningJob
from tailor.tuning.scheduler import schedule_jobs
from tailor.tuning.services import (
    job_report_checkpoint,
    job_report_events,
    job_report_finished,
    job_report_started,
)

from tests.tailor.jobs_factories import BaseModelFactory, dataset_file, fresh, runner_event, store_adapter

pytestmark = pytest.mark.django_db

JOB_FIELDS = {
    "id",
    "object",
    "created_at",
    "model",
    "organization_id",
    "status",
    "training_file",
    "validation_file",
    "hyperparameters",
    "method",
    "result_files",
    "seed",
    "error",
    "fine_tuned_model",
    "finished_at",
    "trained_tokens",
    "estimated_finish",
    "metadata",
    "integrations",
    "user_provided_suffix",
}


@pytest.fixture
def base():
    return BaseModelFactory(name="tailor-tiny")


def create(client: APIClient, base, training: File, **body):
    return client.post(
        "/v1/fine_tuning/jobs",
        {"model": base.name, "training_file": training.public_id, **body},
        format="json",
    )


def error_of(response) -> tuple[int, str | None, str]:
    body = response.json()["error"]
    return response.status_code, body["param"], body["message"]


def test_create_returns_the_job_object_the_sdk_reads(api_client, team, base) -> None:
    training, validation = dataset_file(team, examples=200), dataset_file(team)
    response = create(
        api_client,
        base,
        training,
        validation_file=validation.public_id,
        suffix="support-bot",
        seed=42,
        metadata={"project": "alpha"},
        integrations=[{"type": "wandb", "wandb": {"project": "tailor"}}],
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "lora_r": 8, "quantization": "nf4"}},
        },
    )
    assert response.status_code == 200, response.content
    job = response.json()
    assert set(job) == JOB_FIELDS
    assert job["object"] == "fine_tuning.job" and job["id"].startswith("ftjob-")
    assert (job["model"], job["organization_id"], job["status"]) == ("tailor-tiny", team.slug, "queued")
    assert (job["training_file"], job["validation_file"]) == (training.public_id, validation.public_id)
    assert job["seed"] == 42 and job["metadata"] == {"project": "alpha"}
    assert job["integrations"] == [{"type": "wandb", "wandb": {"project": "tailor"}}]
    assert job["result_files"] == [] and job["error"] is None and job["fine_tuned_model"] is None
    # Resolved from the file's report: no "auto" left once the job is queued.
    assert job["hyperparameters"] == {"n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 1.0}
    shown = job["method"]["supervised"]["hyperparameters"]
    assert job["method"]["type"] == "supervised"
    assert (shown["lora_r"], shown["lora_alpha"], shown["quantization"]) == (8, 16, "nf4")
    # compute_dtype alone waits for the GPU the runner lands on (its model_loaded event says).
    assert [k for k, v in shown.items() if v == "auto"] == ["compute_dtype"] and "beta" not in shown


def test_a_job_waiting_for_its_file_echoes_what_was_asked(api_client, team, base) -> None:
    training = dataset_file(team, status=File.Status.UPLOADED, data_format="preference")
    response = create(
        api_client, base, training, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}}
    )
    job = response.json()
    assert job["status"] == "validating_files"
    assert job["hyperparameters"] == {
        "n_epochs": "auto",
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
    }
    assert job["method"] == {
        "type": "dpo",
        "dpo": {
            "hyperparameters": {
                "n_epochs": "auto",
                "batch_size": "auto",
                "learning_rate_multiplier": "auto",
                "beta": 0.2,
            }
        },
    }


def test_bad_requests_name_the_parameter(api_client, team, other_team, base) -> None:
    chat = dataset_file(team)
    cases = [
        ({"lora_r": 8}, "lora_r"),
        ({"suffix": "a:b"}, "suffix"),
        ({"suffix": "x" * 65}, "suffix"),
        ({"seed": -1}, "seed"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"integrations": [{"type": "wandb", "wandb": {}}]}, "integrations[0][wandb][project]"),
        ({"model": "gpt-4o-mini"}, "model"),
        ({"training_file": dataset_file(other_team).public_id}, "training_file"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}},
            "method.supervised.hyperparameters.n_epochs",
        ),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"quantization": "fp4"}}}},
            "method.supervised.hyperparameters.quantization",
        ),
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"packing": True}}}}, "training_file"),
        ({"method": "supervised"}, "method"),
    ]
    for overrides, param in cases:
        body = {"model": base.name, "training_file": chat.public_id, **overrides}
        response = api_client.post("/v1/fine_tuning/jobs", body, format="json")
        status, got, message = error_of(response)
        assert (status, got) == (400, param), (overrides, message)
    assert not FineTuningJob.objects.exists()


def test_missing_required_fields(api_client) -> None:
    response = api_client.post("/v1/fine_tuning/jobs", {}, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "missing_required_parameter"


def test_a_base_model_too_large_for_every_gpu_class_is_refused_on_model(api_client, team) -> None:
    huge = BaseModelFactory(
        name="huge",
        parameters=400_000_000_000,
        architecture={
            "hidden_size": 16384,
            "num_layers": 126,
            "vocab_size": 128256,
            "intermediate_size": 53248,
            "kv_hidden_size": 1024,
            "tie_word_embeddings": False,
        },
    )
    status, param, message = error_of(create(api_client, huge, dataset_file(team)))
    assert (status, param) == (400, "model")
    assert "GiB" in message and "default" in message


def test_list_pages_newest_first_and_filters_by_metadata(api_client, team, base) -> None:
    ids = []
    for i in range(5):
        body = {"metadata": {"batch": "even" if i % 2 == 0 else "odd"}} if i < 4 else {}
        ids.append(create(api_client, base, dataset_file(team), **body).json()["id"])
    page = api_client.get("/v1/fine_tuning/jobs", {"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = api_client.get("/v1/fine_tuning/jobs", {"limit": 10, "after": page["data"][-1]["id"]}).json()
    assert [j["id"] for j in rest["data"]] == ids[::-1][2:] and rest["has_more"] is False
    even = api_client.get("/v1/fine_tuning/jobs?metadata[batch]=even").json()
    assert [j["id"] for j in even["data"]] == [ids[2], ids[0]]
    none = api_client.get("/v1/fine_tuning/jobs?metadata=null").json()
    assert [j["id"] for j in none["data"]] == [ids[4]]
    assert api_client.get("/v1/fine_tuning/jobs?metadata[batch]=missing").json()["data"] == []


def test_events_newest_first_with_paging(api_client, team, base) -> None:
    job_id = create(api_client, base, dataset_file(team)).json()["id"]
    schedule_jobs()
    job_report_started(job_id=job_id, attempt=1, worker="gpu")
    job_report_events(
        job_id=job_id,
        attempt=1,
        events=[
            runner_event(
                i, "metrics", step=i + 1, total_steps=3, train_loss=3.0 - i, train_mean_token_accuracy=0.5
            )
            for i in range(3)
        ],
    )
    events = api_client.get(f"/v1/fine_tuning/jobs/{job_id}/events", {"limit": 2}).json()
    assert events["object"] == "list" and events["has_more"] is True
    newest = events["data"][0]
    assert set(newest) == {"id", "object", "created_at", "level", "message", "type", "data"}
    assert newest["object"] == "fine_tuning.job.event" and newest["id"].startswith("ftevent-")
    assert (newest["type"], newest["data"]["step"], newest["data"]["train_loss"]) == ("metrics", 3, 1.0)
    everything = []
    after = None
    while True:
        query = {"limit": 2, **({"after": after} if after else {})}
        page = api_client.get(f"/v1/fine_tuning/jobs/{job_id}/events", query).json()
        everything += page["data"]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    messages = [e["message"] for e in everything]
    assert (
        messages[-1] == f"Created fine-tuning job: {job_id}"
        and messages[0] == "Step 3/3: training loss=1.0000"
    )
    assert len(messages) == len(set(e["id"] for e in everything)) == 6


def test_checkpoints_results_and_the_finished_job(api_client, team, base) -> None:
    job_id = create(api_client, base, dataset_file(team), suffix="bot").json()["id"]
    schedule_jobs()
    job_report_started(job_id=job_id, attempt=1, worker="gpu")
    job = FineTuningJob.objects.get(public_id=job_id)
    root = protocol.job_output_prefix(job)
    for step in (1, 2):
        job_report_checkpoint(
            job_id=job_id,
            attempt=1,
            step=step,
            prefix=f"{root}/checkpoints/step-{step}",
            metrics={"train_loss": 2.0 / step, "train_mean_token_accuracy": 0.5},
        )
    job_report_finished(job_id=job_id, attempt=1, outcome="succeeded", result=store_adapter(job))

    checkpoints = api_client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()
    assert [c["step_number"] for c in checkpoints["data"]] == [2, 1]
    newest = checkpoints["data"][0]
    name = f"ft:tailor-tiny:{team.slug}:bot:{job_id[-8:]}"
    assert newest["id"].startswith("ftckpt-") and newest["object"] == "fine_tuning.job.checkpoint"
    assert (
        newest["fine_tuning_job_id"] == job_id
        and newest["fine_tuned_model_checkpoint"] == f"{name}:ckpt-step-2"
    )
    assert newest["metrics"] == {"step": 2, "train_loss": 1.0, "train_mean_token_accuracy": 0.5}

    finished = api_client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert finished["status"] == "succeeded" and finished["fine_tuned_model"] == name
    assert (
        finished["finished_at"]
        and finished["trained_tokens"] == 4321
        and finished["estimated_finish"] is None
    )
    [results] = finished["result_files"]
    assert api_client.get(f"/v1/files/{results}").json()["purpose"] == "fine-tune-results"
    csv = b"".join(api_client.get(f"/v1/files/{results}/content").streaming_content)
    assert csv.startswith(b"step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n")

    models = api_client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [(m["id"], m["owned_by"]) for m in models["data"]] == [
        ("tailor-tiny", "tailor"),
        (name, team.slug),
    ]
    assert api_client.get(f"/v1/models/{name}").json()["id"] == name


def test_cancel_pause_resume_show_openai_states(api_client, team, base) -> None:
    queued = create(api_client, base, dataset_file(team)).json()["id"]
    assert api_client.post(f"/v1/fine_tuning/jobs/{queued}/cancel").json()["status"] == "cancelled"

    running = create(api_client, base, dataset_file(team)).json()["id"]
    schedule_jobs()
    job_report_started(job_id=running, attempt=1, worker="gpu")
    paused = api_client.post(f"/v1/fine_tuning/jobs/{running}/pause").json()
    assert (
        paused["status"] == "paused"
        and fresh(FineTuningJob.objects.get(public_id=running)).status == "pausing"
    )
    response = api_client.post(f"/v1/fine_tuning/jobs/{running}/resume")
    assert response.json()["status"] == "queued"  # queued again as soon as its checkpoint is saved
    job_report_finished(job_id=running, attempt=1, outcome="paused", result={})
    assert api_client.get(f"/v1/fine_tuning/jobs/{running}").json()["status"] == "queued"

    cancelled = api_client.post(f"/v1/fine_tuning/jobs/{running}/cancel").json()
    status, param, message = error_of(api_client.post(f"/v1/fine_tuning/jobs/{running}/resume"))
    assert cancelled["status"] == "cancelled" and status == 400 and "only a paused job" in message


def test_every_jobs_endpoint_answers_another_team_with_404(api_client, other_client, team, base) -> None:
    theirs = create(api_client, base, dataset_file(team)).json()["id"]
    missing = "ftjob-" + "x" * 24
    paths = ["", "/events", "/checkpoints", "/cancel", "/pause", "/resume"]
    for suffix in paths:
        method = other_client.get if suffix in ("", "/events", "/checkpoints") else other_client.post
        seen, absent = (
            method(f"/v1/fine_tuning/jobs/{theirs}{suffix}"),
            method(f"/v1/fine_tuning/jobs/{missing}{suffix}"),
        )
        assert seen.status_code == absent.status_code == 404, suffix
        assert seen.json()["error"]["message"].replace(theirs, "ID") == absent.json()["error"][
            "message"
        ].replace(missing, "ID")
    assert other_client.get("/v1/fine_tuning/jobs").json()["data"] == []
    assert api_client.get(f"/v1/fine_tuning/jobs/{theirs}").json()["status"] == "queued"


def test_a_read_only_key_can_read_but_not_create(read_only_client, api_client, team, base) -> None:
    job_id = create(api_client, base, dataset_file(team)).json()["id"]
    assert read_only_client.get(f"/v1/fine_tuning/jobs/{job_id}").status_code == 200
    assert create(read_only_client, base, dataset_file(team)).status_code == 403
    assert read_only_client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 403


def test_models_lists_only_the_base_models_a_team_may_use(api_client, team, other_team) -> None:
    BaseModelFactory(name="open-base")
    private = BaseModelFactory(name="org/private", available_to_all=False)
    private.teams.set([other_team])
    assert [m["id"] for m in api_client.get("/v1/models").json()["data"]] == ["open-base"]
    assert api_client.get("/v1/models/org/private").status_code == 404
