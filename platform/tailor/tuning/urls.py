"""Routes of the fine-tuning and models APIs, without trailing slashes: the openai SDK sends none."""

from __future__ import annotations

from django.urls import path

from tailor.tuning.views import (
    JobCancelView,
    JobCheckpointListView,
    JobDetailView,
    JobEventListView,
    JobListCreateView,
    JobPauseView,
    JobResumeView,
    ModelDetailView,
    ModelListView,
)

openai_urlpatterns = [
    path("fine_tuning/jobs", JobListCreateView.as_view(), name="fine-tuning-jobs"),
    path("fine_tuning/jobs/<str:fine_tuning_job_id>", JobDetailView.as_view(), name="fine-tuning-job"),
    path(
        "fine_tuning/jobs/<str:fine_tuning_job_id>/cancel",
        JobCancelView.as_view(),
        name="fine-tuning-job-cancel",
    ),
    path(
        "fine_tuning/jobs/<str:fine_tuning_job_id>/pause",
        JobPauseView.as_view(),
        name="fine-tuning-job-pause",
    ),
    path(
        "fine_tuning/jobs/<str:fine_tuning_job_id>/resume",
        JobResumeView.as_view(),
        name="fine-tuning-job-resume",
    ),
    path(
        "fine_tuning/jobs/<str:fine_tuning_job_id>/events",
        JobEventListView.as_view(),
        name="fine-tuning-job-events",
    ),
    path(
        "fine_tuning/jobs/<str:fine_tuning_job_id>/checkpoints",
        JobCheckpointListView.as_view(),
        name="fine-tuning-job-checkpoints",
    ),
    path("models", ModelListView.as_view(), name="models"),
    # Model ids hold slashes and colons (`org/base`, `ft:base:team::abc`).
    path("models/<path:model>", ModelDetailView.as_view(), name="model"),
]
