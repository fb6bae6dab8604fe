"""Wire shapes of the fine-tuning API: OpenAI's `fine_tuning.job`, `fine_tuning.job.event`,
`fine_tuning.job.checkpoint` and `model` objects, and the request parameters.

Internal states without an OpenAI name are shown as what the client asked for: `cancelling` as
`cancelled` (the runner is stopping; `finished_at` follows when it has), `pausing` as `paused` (or
`queued` once a resume was asked for meanwhile).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tailor.core.serializers import ConstantField, UnixTimestampField
from tailor.tuning.models import Checkpoint, FineTuningJob, JobEvent
from tailor.tuning.selectors import MAX_LIST_LIMIT, ModelEntry
from tailor.tuning.services import fine_tuned_model_name
from tailor.tuning.specs import OPENAI_HYPERPARAMETERS, hyperparameters_shown

Status = FineTuningJob.Status
SUFFIX_PATTERN = re.compile(r"^[A-Za-z0-9._-]*$")
MAX_METADATA_PAIRS = 16


def _unix(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def wire_status(job: FineTuningJob) -> str:
    """The status a client sees (see the module docstring)."""
    if job.status == Status.CANCELLING:
        return Status.CANCELLED
    if job.status == Status.PAUSING:
        return Status.QUEUED if job.resume_requested else Status.PAUSED
    return job.status


# Requests -------------------------------------------------------------------------------------------


class WandbIntegrationSerializer(serializers.Serializer):
    project = serializers.CharField(max_length=200)
    entity = serializers.CharField(max_length=200, required=False, allow_null=True)
    name = serializers.CharField(max_length=200, required=False, allow_null=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=64), required=False, max_length=50)


class IntegrationSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["wandb"])
    wandb = WandbIntegrationSerializer()


class JobCreateSerializer(serializers.Serializer):
    """The JSON body of `POST /v1/fine_tuning/jobs`."""

    model = serializers.CharField(max_length=200, help_text="A base model of `GET /v1/models`.")
    training_file = serializers.CharField(max_length=64)
    validation_file = serializers.CharField(max_length=64, required=False, allow_null=True, allow_blank=True)
    method = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text='`{"type": "supervised" | "dpo", "<type>": {"hyperparameters": {…}}}`. Hyperparameters '
        'take OpenAI\'s names (`n_epochs`, `batch_size`, `learning_rate_multiplier`, `beta`, each may be "auto") '
        "and gpu_runner's LoRA options (`lora_r`, `lora_alpha`, `quantization`, `max_seq_length`, …).",
    )
    hyperparameters = serializers.JSONField(
        required=False, allow_null=True, help_text="Deprecated: use method.<type>.hyperparameters."
    )
    suffix = serializers.CharField(max_length=64, required=False, allow_null=True, allow_blank=True)
    seed = serializers.IntegerField(min_value=0, max_value=2**32 - 1, required=False, allow_null=True)
    metadata = serializers.DictField(
        child=serializers.CharField(max_length=512, allow_blank=True), required=False, allow_null=True
    )
    integrations = serializers.ListField(child=IntegrationSerializer(), required=False, allow_null=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {
                    unknown[
                        0
                    ]: f"Unknown parameter. Tailor's LoRA options go in method.<type>.hyperparameters, "
                    f'e.g. {{"method": {{"type": "supervised", "supervised": {{"hyperparameters": '
                    f'{{"{unknown[0]}": …}}}}}}}}.'
                },
                code="unknown_parameter",
            )
        return attrs

    def validate_suffix(self, value: str | None) -> str | None:
        if value and not SUFFIX_PATTERN.match(value):
            raise serializers.ValidationError(
                "may hold letters, digits, '.', '_' and '-' only (it becomes part of the model name)."
            )
        return value

    def validate_metadata(self, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_PAIRS:
            raise serializers.ValidationError(
                f"at most {MAX_METADATA_PAIRS} key-value pairs, got {len(value)}."
            )
        long = [key for key in value if len(key) > 64]
        if long:
            raise serializers.ValidationError(f"keys are at most 64 characters; {long[0][:70]!r} is longer.")
        return value


class JobListParamsSerializer(serializers.Serializer):
    """Query parameters of `GET /v1/fine_tuning/jobs` (besides `metadata[key]=value` filters)."""

    after = serializers.CharField(required=False, help_text="Id of the last job of the previous page.")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_LIST_LIMIT, default=20)


class EventListParamsSerializer(serializers.Serializer):
    after = serializers.CharField(required=False, help_text="Id of the last event of the previous page.")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_LIST_LIMIT, default=20)


class CheckpointListParamsSerializer(serializers.Serializer):
    after = serializers.CharField(required=False, help_text="Id of the last checkpoint of the previous page.")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_LIST_LIMIT, default=10)


# Responses ------------------------------------------------------------------------------------------


class JobErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    param = serializers.CharField(allow_null=True)


class OpenAIHyperparametersSerializer(serializers.Serializer):
    batch_size = serializers.JSONField(help_text='An integer, or "auto" until resolved.')
    learning_rate_multiplier = serializers.JSONField()
    n_epochs = serializers.JSONField()


@extend_schema_field(OpenApiTypes.OBJECT)
class MethodField(serializers.DictField):
    """`{"type": …, "<type>": {"hyperparameters": {…every hyperparameter, resolved where known…}}}`."""


class FineTuningJobSerializer(serializers.Serializer):
    """OpenAI's `fine_tuning.job`."""

    id = serializers.CharField()
    object = ConstantField("fine_tuning.job")
    created_at = UnixTimestampField()
    model = serializers.CharField()
    organization_id = serializers.CharField(help_text="The team's slug.")
    status = serializers.ChoiceField(
        choices=["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]
    )
    training_file = serializers.CharField()
    validation_file = serializers.CharField(allow_null=True)
    hyperparameters = OpenAIHyperparametersSerializer()
    method = MethodField()
    result_files = serializers.ListField(child=serializers.CharField())
    seed = serializers.IntegerField()
    error = JobErrorSerializer(allow_null=True)
    fine_tuned_model = serializers.CharField(allow_null=True)
    finished_at = serializers.IntegerField(allow_null=True)
    trained_tokens = serializers.IntegerField(allow_null=True)
    estimated_finish = serializers.IntegerField(allow_null=True)
    metadata = serializers.DictField(child=serializers.CharField(), allow_null=True)
    integrations = serializers.ListField(child=IntegrationSerializer(), allow_null=True)
    user_provided_suffix = serializers.CharField(allow_null=True)

    def to_representation(self, job: FineTuningJob) -> dict[str, Any]:
        shown = hyperparameters_shown(job)
        return {
            "id": job.public_id,
            "object": "fine_tuning.job",
            "created_at": _unix(job.created_at),
            "model": job.base_model.name,
            "organization_id": job.team.slug,
            "status": wire_status(job),
            "training_file": job.training_file.public_id,
            "validation_file": job.validation_file.public_id if job.validation_file_id else None,
            "hyperparameters": {name: shown.get(name, "auto") for name in OPENAI_HYPERPARAMETERS},
            "method": {"type": job.method, job.method: {"hyperparameters": shown}},
            "result_files": [job.result_file.public_id] if job.result_file_id else [],
            "seed": job.seed,
            "error": job.error or None,
            "fine_tuned_model": job.fine_tuned_model,
            "finished_at": _unix(job.finished_at),
            "trained_tokens": job.trained_tokens,
            "estimated_finish": _unix(job.estimated_finish) if job.status in FineTuningJob.ON_GPU else None,
            "metadata": job.metadata,
            "integrations": job.integrations,
            "user_provided_suffix": job.suffix or None,
        }


class FineTuningJobListSerializer(serializers.Serializer):
    object = ConstantField("list")
    data = FineTuningJobSerializer(many=True)
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class JobEventSerializer(serializers.Serializer):
    """OpenAI's `fine_tuning.job.event`."""

    id = serializers.CharField(source="public_id")
    object = ConstantField("fine_tuning.job.event")
    created_at = UnixTimestampField()
    level = serializers.ChoiceField(choices=JobEvent.Level.choices)
    message = serializers.CharField()
    type = serializers.ChoiceField(choices=JobEvent.Type.choices)
    data = serializers.JSONField(allow_null=True)


class JobEventListSerializer(serializers.Serializer):
    object = ConstantField("list")
    data = JobEventSerializer(many=True)
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class CheckpointMetricsSerializer(serializers.Serializer):
    step = serializers.FloatField()
    train_loss = serializers.FloatField(required=False)
    train_mean_token_accuracy = serializers.FloatField(required=False)
    valid_loss = serializers.FloatField(required=False)
    valid_mean_token_accuracy = serializers.FloatField(required=False)
    full_valid_loss = serializers.FloatField(required=False)
    full_valid_mean_token_accuracy = serializers.FloatField(required=False)


class CheckpointSerializer(serializers.Serializer):
    """OpenAI's `fine_tuning.job.checkpoint`."""

    id = serializers.CharField()
    object = ConstantField("fine_tuning.job.checkpoint")
    created_at = UnixTimestampField()
    fine_tuned_model_checkpoint = serializers.CharField()
    fine_tuning_job_id = serializers.CharField()
    metrics = CheckpointMetricsSerializer()
    step_number = serializers.IntegerField()

    def to_representation(self, checkpoint: Checkpoint) -> dict[str, Any]:
        job = checkpoint.job
        return {
            "id": checkpoint.public_id,
            "object": "fine_tuning.job.checkpoint",
            "created_at": _unix(checkpoint.created_at),
            "fine_tuned_model_checkpoint": f"{fine_tuned_model_name(job)}:ckpt-step-{checkpoint.step_number}",
            "fine_tuning_job_id": job.public_id,
            "metrics": checkpoint.metrics or {"step": checkpoint.step_number},
            "step_number": checkpoint.step_number,
        }


class CheckpointListSerializer(serializers.Serializer):
    object = ConstantField("list")
    data = CheckpointSerializer(many=True)
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class ModelSerializer(serializers.Serializer):
    """OpenAI's `model`."""

    id = serializers.CharField()
    object = ConstantField("model")
    created = UnixTimestampField()
    owned_by = serializers.CharField()

    def to_representation(self, entry: ModelEntry) -> dict[str, Any]:
        return {
            "id": entry.id,
            "object": "model",
            "created": _unix(entry.created),
            "owned_by": entry.owned_by,
        }


class ModelListSerializer(serializers.Serializer):
    object = ConstantField("list")
    data = ModelSerializer(many=True)
