"""Web admin for the adapter registry: inference endpoints, auto-deploy policies, deployments and aliases.

A team's owners and admins register and change their endpoints and auto-deploy policies, through the
registry's services (the same checks as everywhere: URL, served models, vLLM's rank values); an
endpoint's credential is write-only, never shown back. Shared endpoints (no team) are an operator's: teams
see them and deploy to them, only a superuser changes them, and only a superuser sets the folders of
shared-volume delivery (paths on the platform's own disk). Every member reads the team's deployments and
aliases; owners and admins undeploy, and move an alias to another version (the rollback). Deploying a
version is an action on the adapter (`tailor.tuning.admin`).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.html import format_html

from tailor.registry.models import AdapterAlias, AutoDeployPolicy, Deployment, InferenceEndpoint
from tailor.registry.services import (
    alias_delete,
    alias_set,
    deployment_undeploy,
    endpoint_check_health,
    endpoint_create,
    endpoint_delete,
    endpoint_update,
    policy_create,
    policy_delete,
)
from tailor.teams.admin import ObjectAction, TeamScopedAdmin, check_with_service
from tailor.tuning.models import Adapter
from tailor.web.access import ALL_ROLES

# Settings a team may set on its own endpoint; the shared-volume folders and auto-deploy for every team
# are the operator's.
TEAM_ENDPOINT_FIELDS = [
    "team",
    "name",
    "kind",
    "base_url",
    "credential",
    "served_models",
    "max_lora_rank",
    "max_adapters",
    "delivery",
    "enabled",
]
OPERATOR_ENDPOINT_FIELDS = ["adapter_root", "served_adapter_root", "auto_deploy_all_teams"]
# Fixed once the endpoint exists: its name is its agent's queue (`endpoint.<name>`).
FIXED_ENDPOINT_FIELDS = ["team", "name", "kind"]
STATUS_FIELDS = [
    "public_id",
    "credential_set",
    "health",
    "health_error",
    "health_checked_at",
    "server_version",
]


class EndpointForm(forms.ModelForm):
    """An endpoint's settings, saved through `endpoint_create` / `endpoint_update`."""

    credential = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Bearer token the server expects. Write-only: never shown; leave empty to keep the current one.",
    )
    # vLLM and Ollama inside a cluster speak plain HTTP; a URL typed without a scheme means that.
    base_url = forms.URLField(
        max_length=500, assume_scheme="http", help_text="e.g. http://vllm:8000 (no /v1)."
    )
    served_models = forms.JSONField(
        required=False,
        initial=dict,
        help_text='Tailor base model name → the name the server serves it under, e.g. {"tailor-tiny": "tiny"}.',
    )

    class Meta:
        model = InferenceEndpoint
        fields = [*TEAM_ENDPOINT_FIELDS, *OPERATOR_ENDPOINT_FIELDS]

    def service_fields(self) -> dict[str, Any]:
        """What the services take: the form's settings, the credential only when one was typed."""
        data = {name: self.cleaned_data[name] for name in self.fields if name in self.cleaned_data}
        data["served_models"] = data.get("served_models") or {}
        if not data.get("credential"):
            data.pop("credential", None)
        for fixed in FIXED_ENDPOINT_FIELDS:
            if self.instance.pk is not None:
                data.pop(fixed, None)
        return data

    def save_through_services(self) -> InferenceEndpoint:
        fields = self.service_fields()
        if self.instance.pk is None:
            return endpoint_create(
                team=fields.pop("team", None),
                name=fields.pop("name"),
                kind=fields.pop("kind"),
                base_url=fields.pop("base_url"),
                **fields,
            )
        return endpoint_update(endpoint=InferenceEndpoint.objects.get(pk=self.instance.pk), **fields)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if not self.errors:
            check_with_service(self, self.save_through_services)
        return cleaned


def _check_health(request: HttpRequest, endpoint: InferenceEndpoint) -> str:
    endpoint = endpoint_check_health(endpoint=endpoint)
    if endpoint.health == InferenceEndpoint.Health.HEALTHY:
        return f"{endpoint.name} is healthy{f' (version {endpoint.server_version})' if endpoint.server_version else ''}."
    return f"{endpoint.name} is {endpoint.health}: {endpoint.health_error}"


@admin.register(InferenceEndpoint)
class InferenceEndpointAdmin(TeamScopedAdmin):
    form = EndpointForm
    list_display = ["name", "team_display", "kind", "base_url", "delivery", "health", "enabled", "live"]
    list_filter = ["kind", "health", "enabled"]
    search_fields = ["name", "base_url", "team__slug", "public_id"]
    actions = ["check_health"]
    object_actions = (ObjectAction("health", "Check health", _check_health),)

    @admin.display(description="Team", ordering="team__slug")
    def team_display(self, obj: InferenceEndpoint) -> str:
        return obj.team.slug if obj.team_id else "shared"

    @admin.display(description="Live adapters")
    def live(self, obj: InferenceEndpoint) -> int:
        return obj.deployments.filter(status=Deployment.Status.LIVE).count()

    @admin.display(description="Credential")
    def credential_set(self, obj: InferenceEndpoint) -> str:
        return "set (write-only)" if obj.credential else "none"

    # Shared endpoints: every team's owners and admins see them, only superusers change them.
    def get_queryset(self, request: HttpRequest) -> QuerySet[InferenceEndpoint]:
        queryset = admin.ModelAdmin.get_queryset(self, request)
        if self._scoped(request):
            queryset = queryset.filter(Q(team__in=self.readable_team_ids(request)) | Q(team__isnull=True))
        return queryset

    def can_read(self, request: HttpRequest, obj: Model | None = None) -> bool:
        if obj is not None and obj.team_id is None:
            return bool(self.readable_team_ids(request))
        return super().can_read(request, obj)

    def can_manage(self, request: HttpRequest, obj: Model | None = None) -> bool:
        if obj is not None and obj.team_id is None:
            return False
        return super().can_manage(request, obj)

    def get_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        editable = (
            TEAM_ENDPOINT_FIELDS
            if self._scoped(request)
            else [*TEAM_ENDPOINT_FIELDS, *OPERATOR_ENDPOINT_FIELDS]
        )
        shown = [*editable]
        if self._scoped(request) and obj is not None:
            shown.extend(OPERATOR_ENDPOINT_FIELDS)
        return shown + (STATUS_FIELDS if obj is not None else [])

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        fixed = FIXED_ENDPOINT_FIELDS if obj is not None else []
        operator = OPERATOR_ENDPOINT_FIELDS if self._scoped(request) else []
        return [*fixed, *operator, *STATUS_FIELDS]

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "team" and self._scoped(request):
            kwargs["required"] = True
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "delivery" and self._scoped(request) and field is not None:
            field.initial = InferenceEndpoint.Delivery.AGENT
            field.help_text = (
                "agent: the endpoint agent beside the server loads adapters (vLLM); http: Ollama. "
                "shared_volume needs folders on the platform's disk, which an operator sets up."
            )
        return field

    def save_model(self, request: HttpRequest, obj: InferenceEndpoint, form: Any, change: bool) -> None:
        saved = form.save_through_services()
        for field in saved._meta.concrete_fields:
            setattr(obj, field.attname, getattr(saved, field.attname))
        obj._state.adding = False

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        # What endpoint_delete does: policies and finished deployments go with it; active ones block it.
        deleted, protected = [], []
        for endpoint in objs:
            deleted.append(str(endpoint))
            deleted.extend(f"auto-deploy policy {p.public_id}" for p in endpoint.policies.all())
            protected.extend(endpoint.deployments.filter(status__in=Deployment.ACTIVE))
        return deleted, {}, set(), protected

    def delete_model(self, request: HttpRequest, obj: InferenceEndpoint) -> None:
        endpoint_delete(endpoint=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[InferenceEndpoint]) -> None:
        for endpoint in queryset:
            endpoint_delete(endpoint=endpoint)

    @admin.action(description="Check health of selected endpoints", permissions=["manage"])
    def check_health(self, request: HttpRequest, queryset: QuerySet[InferenceEndpoint]) -> None:
        for endpoint in self.managed_rows(request, queryset):
            checked = endpoint_check_health(endpoint=endpoint)
            level = (
                messages.SUCCESS if checked.health == InferenceEndpoint.Health.HEALTHY else messages.WARNING
            )
            self.message_user(
                request, f"{checked.name}: {checked.health} {checked.health_error}".strip(), level
            )


class PolicyForm(forms.ModelForm):
    class Meta:
        model = AutoDeployPolicy
        fields = ["team", "endpoint", "base_model", "enabled"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.instance.pk is None and not self.errors:
            check_with_service(
                self,
                lambda: policy_create(
                    team=cleaned["team"], endpoint=cleaned["endpoint"], base_model=cleaned.get("base_model")
                ),
            )
        return cleaned


@admin.register(AutoDeployPolicy)
class AutoDeployPolicyAdmin(TeamScopedAdmin):
    form = PolicyForm
    list_display = ["public_id", "team", "endpoint", "base_model", "enabled", "created_at"]
    list_filter = ["enabled"]
    search_fields = ["public_id", "team__slug", "endpoint__name"]

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        return ["team", "endpoint", "base_model", "created_at"] if obj is not None else []

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "endpoint" and self._scoped(request):
            kwargs["queryset"] = InferenceEndpoint.objects.filter(
                Q(team__in=self.managed_team_ids(request)) | Q(team__isnull=True)
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: AutoDeployPolicy, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        saved = policy_create(team=obj.team, endpoint=obj.endpoint, base_model=obj.base_model)
        obj.pk, obj.public_id, obj.created_at, obj.enabled = (
            saved.pk,
            saved.public_id,
            saved.created_at,
            saved.enabled,
        )
        obj._state.adding = False

    def delete_model(self, request: HttpRequest, obj: AutoDeployPolicy) -> None:
        policy_delete(policy=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[AutoDeployPolicy]) -> None:
        for policy in queryset:
            policy_delete(policy=policy)


def _undeploy(request: HttpRequest, deployment: Deployment) -> str:
    deployment = deployment_undeploy(deployment=deployment)
    return f"Deployment {deployment.public_id} is {deployment.status}."


@admin.register(Deployment)
class DeploymentAdmin(TeamScopedAdmin):
    reader_roles = ALL_ROLES
    list_display = [
        "public_id",
        "adapter",
        "endpoint",
        "status",
        "served_name",
        "auto",
        "requested_at",
        "live_at",
    ]
    list_filter = ["status", "auto"]
    search_fields = ["public_id", "served_name", "adapter__name", "endpoint__name"]
    fields = [
        "public_id",
        "team",
        "adapter",
        "endpoint",
        "status",
        "served_name",
        "adapter_path",
        "reason_code",
        "last_error",
        "attempts",
        "next_attempt_at",
        "auto",
        "requested_at",
        "started_at",
        "live_at",
        "finished_at",
    ]
    readonly_fields = fields
    actions = ["undeploy"]
    object_actions = (
        ObjectAction(
            "undeploy",
            "Undeploy",
            _undeploy,
            shown=lambda d: (
                d.status
                in (
                    Deployment.Status.PENDING,
                    Deployment.Status.DEPLOYING,
                    Deployment.Status.LIVE,
                    Deployment.Status.FAILED,
                )
            ),
        ),
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # deploy from the adapter's page or the API

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the row is the record of what ran where; undeploy instead

    @admin.action(description="Undeploy selected deployments", permissions=["manage"])
    def undeploy(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        self.run_for_each(
            request,
            queryset.exclude(status=Deployment.Status.UNDEPLOYED),
            lambda deployment: deployment_undeploy(deployment=deployment),
            done="Undeploying {count} deployment{s}.",
        )


class VersionForm(forms.Form):
    """The adapter version an alias should point at."""

    version = forms.ModelChoiceField(
        queryset=Adapter.objects.none(), help_text="A version of the alias's family."
    )

    def __init__(self, *args: Any, alias: AdapterAlias, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["version"].queryset = Adapter.objects.filter(
            team_id=alias.team_id, family=alias.family, deleted_at__isnull=True
        ).order_by("-version")
        self.fields["version"].label_from_instance = lambda adapter: f"v{adapter.version}: {adapter.name}"
        self.fields["version"].initial = alias.adapter_id


@admin.register(AdapterAlias)
class AdapterAliasAdmin(TeamScopedAdmin):
    reader_roles = ALL_ROLES
    list_display = ["model_id", "team", "version", "adapter", "updated_at"]
    search_fields = ["family", "name", "adapter__name", "team__slug"]
    fields = ["team", "family", "name", "adapter", "created_at", "updated_at"]
    readonly_fields = fields
    actions = ["move"]

    @admin.display(description="Version")
    def version(self, obj: AdapterAlias) -> str:
        return format_html("v{}", obj.adapter.version)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # point an alias from the adapter version's actions

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: AdapterAlias) -> None:
        alias_delete(alias=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[AdapterAlias]) -> None:
        for alias in queryset:
            alias_delete(alias=alias)

    @admin.action(description="Move alias to another version…", permissions=["manage"])
    def move(self, request: HttpRequest, queryset: QuerySet[AdapterAlias]) -> TemplateResponse | None:
        aliases = list(self.managed_rows(request, queryset))
        if len(aliases) != 1 or queryset.count() != 1:
            self.message_user(
                request, "Select exactly one alias (of a team you manage) to move.", messages.ERROR
            )
            return None
        alias = aliases[0]

        def apply(data: dict[str, Any]) -> None:
            self.run_for_each(
                request,
                queryset,
                lambda row: alias_set(team=row.team, name=row.name, adapter=data["version"]),
                done=f"{alias.model_id} now points at v{data['version'].version}.",
            )

        return self.action_with_form(
            request,
            queryset,
            form_class=VersionForm,
            form_kwargs={"alias": alias},
            title=f"Move {alias.model_id}",
            apply=apply,
        )
