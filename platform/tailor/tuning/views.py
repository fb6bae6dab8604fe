"""The OpenAI-compatible fine-tuning API (`client.fine_tuning.jobs.*`, `client.models.*`), thin views:
parse input, call one service or selector, serialize the result."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tailor.core.authentication import request_team
from tailor.core.errors import InvalidRequest
from tailor.tuning.selectors import job_checkpoints, job_events, job_get, job_list, team_model, team_models
from tailor.tuning.serializers import (
    CheckpointListParamsSerializer,
    CheckpointListSerializer,
    CheckpointSerializer,
    EventListParamsSerializer,
    FineTuningJobListSerializer,
    FineTuningJobSerializer,
    JobCreateSerializer,
    JobEventListSerializer,
    JobEventSerializer,
    JobListParamsSerializer,
    ModelListSerializer,
    ModelSerializer,
)
from tailor.tuning.services import job_cancel, job_create, job_pause, job_resume

JOB_ID = OpenApiParameter("fine_tuning_job_id", OpenApiTypes.STR, OpenApiParameter.PATH)


def _metadata_filter(query: Any) -> tuple[dict[str, str], bool]:
    """`metadata[key]=value` pairs (the SDK's deep-object form) and whether `metadata=null` was sent."""
    pairs: dict[str, str] = {}
    for key in query:
        if key.startswith("metadata[") and key.endswith("]"):
            pairs[key[len("metadata[") : -1]] = query.get(key)
    is_null = query.get("metadata") == "null"
    if is_null and pairs:
        raise InvalidRequest(
            "Send either metadata=null or metadata[key]=value filters, not both.", param="metadata"
        )
    return pairs, is_null


class JobListCreateView(APIView):
    parser_classes = [JSONParser]

    @extend_schema(
        operation_id="fine_tuning_jobs_list",
        summary="List fine-tuning jobs",
        parameters=[
            JobListParamsSerializer,
            OpenApiParameter(
                "metadata",
                OpenApiTypes.OBJECT,
                OpenApiParameter.QUERY,
                style="deepObject",
                explode=True,
                description="`metadata[key]=value` keeps jobs whose metadata has that pair; `metadata=null` "
                "jobs without metadata.",
            ),
        ],
        responses=FineTuningJobListSerializer,
    )
    def get(self, request: Request) -> Response:
        params = JobListParamsSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        pairs, is_null = _metadata_filter(request.query_params)
        page = job_list(
            team=request_team(request), **params.validated_data, metadata=pairs, metadata_is_null=is_null
        )
        data = FineTuningJobSerializer(page.items, many=True).data
        return Response(page.as_payload(list(data)))

    @extend_schema(
        operation_id="fine_tuning_jobs_create",
        summary="Create a fine-tuning job",
        request=JobCreateSerializer,
        responses=FineTuningJobSerializer,
    )
    def post(self, request: Request) -> Response:
        params = JobCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        job = job_create(team=request_team(request), **params.validated_data)
        return Response(FineTuningJobSerializer(job).data)


class JobDetailView(APIView):
    @extend_schema(
        operation_id="fine_tuning_jobs_retrieve",
        summary="Retrieve a fine-tuning job",
        parameters=[JOB_ID],
        responses=FineTuningJobSerializer,
    )
    def get(self, request: Request, fine_tuning_job_id: str) -> Response:
        return Response(
            FineTuningJobSerializer(job_get(team=request_team(request), job_id=fine_tuning_job_id)).data
        )


class _JobActionView(APIView):
    """POST with no body that applies one service to the job."""

    def act(self, request: Request, fine_tuning_job_id: str, service: Any) -> Response:
        job = service(job=job_get(team=request_team(request), job_id=fine_tuning_job_id))
        return Response(
            FineTuningJobSerializer(job_get(team=request_team(request), job_id=job.public_id)).data
        )


class JobCancelView(_JobActionView):
    @extend_schema(
        operation_id="fine_tuning_jobs_cancel",
        summary="Cancel a fine-tuning job",
        parameters=[JOB_ID],
        request=None,
        responses=FineTuningJobSerializer,
    )
    def post(self, request: Request, fine_tuning_job_id: str) -> Response:
        return self.act(request, fine_tuning_job_id, job_cancel)


class JobPauseView(_JobActionView):
    @extend_schema(
        operation_id="fine_tuning_jobs_pause",
        summary="Pause a fine-tuning job (it checkpoints and stops)",
        parameters=[JOB_ID],
        request=None,
        responses=FineTuningJobSerializer,
    )
    def post(self, request: Request, fine_tuning_job_id: str) -> Response:
        return self.act(request, fine_tuning_job_id, job_pause)


class JobResumeView(_JobActionView):
    @extend_schema(
        operation_id="fine_tuning_jobs_resume",
        summary="Resume a paused fine-tuning job from its newest checkpoint",
        parameters=[JOB_ID],
        request=None,
        responses=FineTuningJobSerializer,
    )
    def post(self, request: Request, fine_tuning_job_id: str) -> Response:
        return self.act(request, fine_tuning_job_id, job_resume)


class JobEventListView(APIView):
    @extend_schema(
        operation_id="fine_tuning_jobs_list_events",
        summary="A job's events, newest first",
        parameters=[JOB_ID, EventListParamsSerializer],
        responses=JobEventListSerializer,
    )
    def get(self, request: Request, fine_tuning_job_id: str) -> Response:
        params = EventListParamsSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        job = job_get(team=request_team(request), job_id=fine_tuning_job_id)
        page = job_events(job=job, **params.validated_data)
        return Response(page.as_payload(list(JobEventSerializer(page.items, many=True).data)))


class JobCheckpointListView(APIView):
    @extend_schema(
        operation_id="fine_tuning_jobs_checkpoints_list",
        summary="A job's checkpoints, newest first",
        parameters=[JOB_ID, CheckpointListParamsSerializer],
        responses=CheckpointListSerializer,
    )
    def get(self, request: Request, fine_tuning_job_id: str) -> Response:
        params = CheckpointListParamsSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        job = job_get(team=request_team(request), job_id=fine_tuning_job_id)
        page = job_checkpoints(job=job, **params.validated_data)
        for checkpoint in page.items:
            checkpoint.job = job
        return Response(page.as_payload(list(CheckpointSerializer(page.items, many=True).data)))


class ModelListView(APIView):
    @extend_schema(
        operation_id="models_list",
        summary="Base models the team may fine-tune, and its fine-tuned models",
        responses=ModelListSerializer,
    )
    def get(self, request: Request) -> Response:
        entries = team_models(team=request_team(request))
        return Response({"object": "list", "data": ModelSerializer(entries, many=True).data})


class ModelDetailView(APIView):
    @extend_schema(
        operation_id="models_retrieve",
        summary="Retrieve a model",
        parameters=[OpenApiParameter("model", OpenApiTypes.STR, OpenApiParameter.PATH)],
        responses=ModelSerializer,
    )
    def get(self, request: Request, model: str) -> Response:
        return Response(ModelSerializer(team_model(team=request_team(request), model_id=model)).data)
