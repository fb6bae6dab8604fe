"""Wire shapes of the registry's native API (`/api/v1/adapters`, `aliases`, `endpoints`, `deployments`,
`deploy_policies`).

Two rules hold in every shape here. An endpoint's credential is write-only: responses say only
`has_credential`. And a shared endpoint's address (base URL, adapter folders) never reaches a team:
vLLM and Ollama have no per-adapter access control, so a team that could call a shared server directly
could call other teams' adapters; server messages that quote the address are redacted the same way.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tailor.core.serializers import ConstantField, UnixTimestampField
from tailor.registry.models import Deployment, InferenceEndpoint
from tailor.tuning.models import Adapter

MAX_LIST_LIMIT = 100


def redact_address(text: str, endpoint: InferenceEndpoint) -> str:
    """`text` with a shared endpoint's base URL replaced by its name; a team's own endpoint is unchanged."""
    if not text or not endpoint.shared or not endpoint.base_url:
        return text
    return text.replace(endpoint.base_url, f"<endpoint {endpoint.name}>")


# Shared pieces -------------------------------------------------------------------------------------------


class InferenceEndpointRefSerializer(serializers.Serializer):
    """An endpoint as other objects name it."""

    id = serializers.CharField(source="public_id")
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=InferenceEndpoint.Kind.choices)


class FileDigestSerializer(serializers.Serializer):
    sha256 = serializers.CharField()
    bytes = serializers.IntegerField()


class AdapterDeploymentSerializer(serializers.Serializer):
    """Where an adapter version is (or was about to be) served."""

    id = serializers.CharField(source="public_id")
    endpoint = InferenceEndpointRefSerializer()
    status = serializers.ChoiceField(choices=Deployment.Status.choices)


class ListParamsSerializer(serializers.Serializer):
    after = serializers.CharField(required=False, help_text="Id of the last item of the previous page.")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_LIST_LIMIT, default=20)


# Adapters ------------------------------------------------------------------------------------------------


class AdapterListParamsSerializer(ListParamsSerializer):
    family = serializers.CharField(required=False, help_text="Only the versions of this family.")
    include_deleted = serializers.BooleanField(required=False, default=False)


class AdapterGetParamsSerializer(serializers.Serializer):
    include_deleted = serializers.BooleanField(required=False, default=False)


class AdapterSerializer(serializers.Serializer):
    """One adapter version: what it is, where it came from, and where it is served."""

    id = serializers.CharField(source="name", help_text="The fine_tuned_model name clients call.")
    object = ConstantField("adapter")
    family = serializers.CharField(help_text="`ft:<base>:<team>:<suffix>`; versions share it.")
    version = serializers.IntegerField()
    base_model = serializers.CharField(source="base_model.name")
    revision = serializers.SerializerMethodField(help_text="The base model's revision it was trained on.")
    job = serializers.CharField(source="job.public_id")
    created_at = UnixTimestampField()
    rank = serializers.IntegerField(allow_null=True)
    alpha = serializers.FloatField(allow_null=True)
    target_modules = serializers.ListField(child=serializers.CharField())
    formats = serializers.ListField(child=serializers.CharField())
    size_bytes = serializers.IntegerField()
    files = serializers.DictField(child=FileDigestSerializer(), help_text="File name -> sha256 and bytes.")
    metrics = serializers.DictField()
    lineage = serializers.DictField(
        help_text="Job, training/validation files with digests, base model and revision, hyperparameters."
    )
    aliases = serializers.SerializerMethodField(help_text="Model ids (`<family>@<name>`) pointing here.")
    deployments = serializers.SerializerMethodField()
    deleted_at = UnixTimestampField(allow_null=True)

    def get_revision(self, adapter: Adapter) -> str:
        trained_on = (adapter.lineage or {}).get("base_model")
        if isinstance(trained_on, dict) and trained_on.get("revision"):
            return str(trained_on["revision"])
        return adapter.base_model.revision

    def get_aliases(self, adapter: Adapter) -> list[str]:
        return sorted(alias.model_id for alias in adapter.aliases.all())

    @extend_schema_field(AdapterDeploymentSerializer(many=True))
    def get_deployments(self, adapter: Adapter) -> list[dict[str, Any]]:
        # History (undeployed rows) stays under /deployments; here: what is or should be serving it.
        current = [d for d in adapter.deployments.all() if d.status != Deployment.Status.UNDEPLOYED]
        return list(AdapterDeploymentSerializer(current, many=True).data)

    def to_representation(self, instance: Adapter) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["files"] = {
            name: {"sha256": str(entry.get("sha256", "")), "bytes": int(entry.get("bytes") or 0)}
            for name, entry in sorted((instance.files or {}).items())
            if isinstance(entry, dict)
        }
        return data


class AdapterListSerializer(serializers.Serializer):
    object = ConstantField("list")
    data = AdapterSerializer(many=True)
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class AdapterDownloadFileSerializer(serializers.Serializer):
    name = serializers.CharField()
    bytes = serializers.IntegerField()
    sha256 = serializers.CharField()
    url = serializers.CharField(
        help_text="A presigned object-store URL (no key needed) or Tailor's stream URL (send the API key)."
    )
    expires_at = serializers.IntegerField(
        allow_null=True, help_text="When a presigned URL stops working; null for Tailor's stream URL."
    )


class AdapterDownloadSerializer(serializers.Serializer):
    adapter = serializers.CharField()
    files = AdapterDownloadFileSerializer(many=True)


# Aliases -------------------------------------------------------------------------------------------------


class AliasListParamsSerializer(serializers.Serializer):
    family = serializers.CharField(required=False)


class AliasSetSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=60, help_text="e.g. production; lowercase, digits, - and _.")
    adapter = serializers.CharField(
        max_length=400, help_text="The adapter version (fine_tuned_model name) it points at."
    )


class AliasSerializer(serializers.Serializer):
    """A named pointer at one adapter version, called as `<family>@<name>`."""

    id = serializers.CharField(source="model_id")
    object = ConstantField("adapter.alias")
    name = serializers.CharField()
    family = serializers.CharField()
    adapter = serializers.CharField(source="adapter.name")
    version = serializers.IntegerField(source="adapter.version")
    updated_at = UnixTimestampField()


class AliasListSerializer(serializers.Serializer):
    object = ConstantField("list")
    data = AliasSerializer(many=True)


# Endpoints -----------------------------------------------------------------------------------------------


class InferenceEndpointCreateSerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=60, help_text="Unique among the team's endpoints.")
    kind = serializers.ChoiceField(choices=InferenceEndpoint.Kind.choices)
    base_url = serializers.CharField(max_length=500, help_text="e.g. http://vllm:8000 (no /v1).")
    credential = serializers.CharField(
        max_length=500,
        required=False,
        allow_blank=True,
        write_only=True,
        help_text="Bearer token the server expects. Write-only: never returned.",
    )
    served_models = serializers.JSONField(
        help_text="Tailor base model name -> the name the server serves it under, or a list of names "
        "served under their own name."
    )
    max_lora_rank = serializers.IntegerField(required=False, min_value=1, help_text="vLLM --max-lora-rank.")
    max_adapters = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    delivery = serializers.ChoiceField(choices=InferenceEndpoint.Delivery.choices, required=False)
    adapter_root = serializers.CharField(max_length=500, required=False, allow_blank=True)
    served_adapter_root = serializers.CharField(max_length=500, required=False, allow_blank=True)


class InferenceEndpointUpdateSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=InferenceEndpoint.Kind.choices, required=False)
    base_url = serializers.CharField(max_length=500, required=False)
    credential = serializers.CharField(
        max_length=500,
        required=False,
        allow_blank=True,
        write_only=True,
        help_text="Replaces the stored one; an empty string removes it.",
    )
    served_models = serializers.JSONField(required=False)
    max_lora_rank = serializers.IntegerField(required=False, min_value=1)
    max_adapters = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    delivery = serializers.ChoiceField(choices=InferenceEndpoint.Delivery.choices, required=False)
    adapter_root = serializers.CharField(max_length=500, required=False, allow_blank=True)
    served_adapter_root = serializers.CharField(max_length=500, required=False, allow_blank=True)
    enabled = serializers.BooleanField(required=False)


class InferenceEndpointSerializer(serializers.Serializer):
    """An inference endpoint. Shared ones (run by operators for every team) show no address."""

    id = serializers.CharField(source="public_id")
    object = ConstantField("inference_endpoint")
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=InferenceEndpoint.Kind.choices)
    shared = serializers.BooleanField(help_text="Run by operators for every team; read-only to teams.")
    base_url = serializers.CharField(allow_null=True, help_text="null for shared endpoints.")
    has_credential = serializers.SerializerMethodField()
    served_models = serializers.DictField(child=serializers.CharField())
    max_lora_rank = serializers.IntegerField()
    max_adapters = serializers.IntegerField(allow_null=True)
    delivery = serializers.ChoiceField(choices=InferenceEndpoint.Delivery.choices)
    adapter_root = serializers.CharField(allow_null=True)
    served_adapter_root = serializers.CharField(allow_null=True)
    auto_deploy_all_teams = serializers.BooleanField()
    enabled = serializers.BooleanField()
    health = serializers.ChoiceField(choices=InferenceEndpoint.Health.choices)
    health_error = serializers.CharField()
    health_checked_at = UnixTimestampField(allow_null=True)
    server_version = serializers.CharField()
    created_at = UnixTimestampField()

    def get_has_credential(self, endpoint: InferenceEndpoint) -> bool:
        return bool(endpoint.credential)

    def to_representation(self, instance: InferenceEndpoint) -> dict[str, Any]:
        data = super().to_representation(instance)
        if instance.shared:
            data.update(base_url=None, adapter_root=None, served_adapter_root=None)
            data["health_error"] = redact_address(instance.health_error, instance)
        return data


class InferenceEndpointListSerializer(serializers.Serializer):
    object = ConstantField("list")
    data = InferenceEndpointSerializer(many=True)


# Deployments ---------------------------------------------------------------------------------------------


class DeploymentListParamsSerializer(ListParamsSerializer):
    adapter = serializers.CharField(required=False, help_text="An adapter version or alias.")
    endpoint = serializers.CharField(required=False, help_text="An endpoint id or name.")
    status = serializers.ChoiceField(choices=Deployment.Status.choices, required=False)


class DeploymentCreateSerializer(serializers.Serializer):
    adapter = serializers.CharField(max_length=400, help_text="An adapter version or alias.")
    endpoint = serializers.CharField(max_length=60, help_text="An endpoint id or name.")


class DeploymentSerializer(serializers.Serializer):
    """One adapter version on one endpoint: pending → deploying → live | failed; live → undeploying →
    undeployed."""

    id = serializers.CharField(source="public_id")
    object = ConstantField("deployment")
    adapter = serializers.CharField(source="adapter.name")
    endpoint = InferenceEndpointRefSerializer()
    status = serializers.ChoiceField(choices=Deployment.Status.choices)
    served_name = serializers.CharField(help_text="The model name the endpoint knows it by.")
    reason_code = serializers.CharField()
    last_error = serializers.CharField()
    attempts = serializers.IntegerField()
    auto = serializers.BooleanField(help_text="Created by an auto-deploy policy.")
    requested_at = UnixTimestampField()
    live_at = UnixTimestampField(allow_null=True)
    finished_at = UnixTimestampField(allow_null=True)

    def to_representation(self, instance: Deployment) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["last_error"] = redact_address(instance.last_error, instance.endpoint)
        return data


class DeploymentListSerializer(serializers.Serializer):
    object = ConstantField("list")
    data = DeploymentSerializer(many=True)
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


# Auto-deploy policies ------------------------------------------------------------------------------------


class PolicyCreateSerializer(serializers.Serializer):
    endpoint = serializers.CharField(max_length=60, help_text="An endpoint id or name.")
    base_model = serializers.CharField(
        max_length=200, required=False, allow_null=True, help_text="Only adapters of this base model."
    )


class PolicySerializer(serializers.Serializer):
    """Deploy the team's new adapters to `endpoint` when their job succeeds."""

    id = serializers.CharField(source="public_id")
    object = ConstantField("deploy_policy")
    endpoint = InferenceEndpointRefSerializer()
    base_model = serializers.CharField(source="base_model.name", allow_null=True)
    enabled = serializers.BooleanField()
    created_at = UnixTimestampField()


class PolicyListSerializer(serializers.Serializer):
    object = ConstantField("list")
    data = PolicySerializer(many=True)
