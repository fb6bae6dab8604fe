"""Web admin for base models, fine-tuning jobs and adapters.

Base models are registered with `tailor basemodel add` and managed by superusers. Every member of a team
reads its jobs and adapters (jobs arrive through the API); owners and admins cancel, pause and resume
jobs, deploy and undeploy adapter versions and point aliases at them, through the same services as the
API. Only a superuser changes a job's scheduling priority.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join

from tailor.registry.models import Deployment, InferenceEndpoint
from tailor.registry.services import alias_set, deployment_create, deployment_undeploy
from tailor.teams.admin import ObjectAction, TeamScopedAdmin
from tailor.tuning.models import Adapter, BaseModel, Checkpoint, FineTuningJob, JobEvent
from tailor.tuning.services import job_cancel, job_pause, job_resume
from tailor.web.access import ALL_ROLES

RECENT_EVENTS = 30


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    list_display = ["name", "revision", "parameters", "available_to_all", "enabled", "created_at"]
    list_filter = ["enabled", "available_to_all"]
    search_fields = ["name", "revision"]
    filter_horizontal = ["teams"]
    readonly_fields = [
        "name",
        "revision",
        "source_uri",
        "prefix",
        "architecture",
        "parameters",
        "created_at",
        "updated_at",
    ]
    fields = [
        *readonly_fields[:6],
        "chat_template",
        "available_to_all",
        "teams",
        "enabled",
        "created_at",
        "updated_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # `tailor basemodel add` uploads the files and reads their shape


class CheckpointInline(admin.TabularInline):
    model = Checkpoint
    fields = ["public_id", "step_number", "prefix", "attempt", "created_at"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return True  # shown only inside the job's page, which is scoped to the job's team


Status = FineTuningJob.Status
CANCELLABLE = set(Status.values) - {*FineTuningJob.TERMINAL, Status.CANCELLING}
PAUSABLE = {Status.QUEUED, Status.RUNNING}
RESUMABLE = {Status.PAUSED, Status.PAUSING}


def _job_now(job: FineTuningJob) -> str:
    return f"Job {job.public_id} is {job.status}."


JOB_ACTIONS = (
    ObjectAction(
        "cancel",
        "Cancel job",
        lambda r, job: _job_now(job_cancel(job=job)),
        lambda j: j.status in CANCELLABLE,
    ),
    ObjectAction(
        "pause", "Pause job", lambda r, job: _job_now(job_pause(job=job)), lambda j: j.status in PAUSABLE
    ),
    ObjectAction(
        "resume", "Resume job", lambda r, job: _job_now(job_resume(job=job)), lambda j: j.status in RESUMABLE
    ),
)


@admin.register(FineTuningJob)
class FineTuningJobAdmin(TeamScopedAdmin):
    reader_roles = ALL_ROLES
    object_actions = JOB_ACTIONS
    actions = ["cancel_jobs", "pause_jobs", "resume_jobs"]
    list_display = [
        "public_id",
        "team",
        "base_model",
        "method",
        "status",
        "priority",
        "attempt",
        "created_at",
    ]
    list_filter = ["status", "method", "gpu_class"]
    search_fields = ["public_id", "team__slug", "fine_tuned_model"]
    inlines = [CheckpointInline]
    fields = [
        "public_id",
        "team",
        "base_model",
        "method",
        "status",
        "priority",
        "error",
        "fine_tuned_model",
        "training_file",
        "validation_file",
        "suffix",
        "seed",
        "metadata",
        "spec",
        "resolved_hyperparameters",
        "gpu_class",
        "memory",
        "attempt",
        "lost_attempts",
        "lease_owner",
        "lease_expires_at",
        "heartbeat_at",
        "step",
        "total_steps",
        "trained_tokens",
        "gpu_seconds",
        "queued_at",
        "created_at",
        "finished_at",
        "recent_events",
    ]

    @admin.display(description="Recent events (newest first)")
    def recent_events(self, obj: FineTuningJob) -> str:
        # The newest few only: a long run logs thousands of metrics events.
        rows = JobEvent.objects.filter(job=obj).order_by("-id")[:RECENT_EVENTS]
        return format_html_join(
            "\n",
            "<div>{} <b>{}</b> {}</div>",
            ((e.created_at.strftime("%Y-%m-%d %H:%M:%S"), e.level, e.message) for e in rows),
        )

    @admin.display(description="Memory estimate")
    def memory(self, obj: FineTuningJob) -> str:
        return format_html(
            "<pre>{}</pre>", obj.memory_estimate.get("explain") or json.dumps(obj.memory_estimate)
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        editable = {"priority"} if request.user.is_superuser else set()
        return [name for name in self.fields if name not in editable]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Nothing on the page is a team's to edit (the priority is the operator's); their operations
        # are the cancel / pause / resume buttons and actions.
        return request.user.is_superuser and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A job's record stays for its team; cancel it instead. Operators may still remove one.
        return request.user.is_superuser and super().has_delete_permission(request, obj)

    @admin.action(description="Cancel selected jobs", permissions=["manage"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[FineTuningJob]) -> None:
        self.run_for_each(
            request, queryset, lambda job: job_cancel(job=job), done="Cancelled {count} job{s}."
        )

    @admin.action(description="Pause selected jobs", permissions=["manage"])
    def pause_jobs(self, request: HttpRequest, queryset: QuerySet[FineTuningJob]) -> None:
        self.run_for_each(request, queryset, lambda job: job_pause(job=job), done="Paused {count} job{s}.")

    @admin.action(description="Resume selected jobs", permissions=["manage"])
    def resume_jobs(self, request: HttpRequest, queryset: QuerySet[FineTuningJob]) -> None:
        self.run_for_each(request, queryset, lambda job: job_resume(job=job), done="Resumed {count} job{s}.")


class DeploymentInline(admin.TabularInline):
    model = Deployment
    fields = ["public_id", "endpoint", "served_name", "status", "reason_code", "last_error", "live_at"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return True  # shown only inside the adapter's page, which is scoped to the adapter's team

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EndpointChoiceForm(forms.Form):
    """Which endpoint to deploy to (or undeploy from)."""

    endpoint = forms.ModelChoiceField(queryset=InferenceEndpoint.objects.none())

    def __init__(self, *args: Any, endpoints: QuerySet[InferenceEndpoint], required: bool = True, **kw: Any):
        super().__init__(*args, **kw)
        field = self.fields["endpoint"]
        field.queryset = endpoints
        field.required = required
        if not required:
            field.empty_label = "every endpoint"


class AliasForm(forms.Form):
    name = forms.SlugField(
        max_length=60,
        help_text="e.g. production: clients call `<family>@production`; moving it is the rollback.",
    )


@admin.register(Adapter)
class AdapterAdmin(TeamScopedAdmin):
    reader_roles = ALL_ROLES
    list_display = ["name", "version", "team", "base_model", "rank", "alpha", "live_on", "created_at"]
    list_filter = [("deleted_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "family", "team__slug"]
    inlines = [DeploymentInline]
    actions = ["deploy", "undeploy", "point_alias"]
    readonly_fields = [
        "name",
        "family",
        "version",
        "aliases_display",
        "team",
        "job",
        "base_model",
        "prefix",
        "rank",
        "alpha",
        "target_modules",
        "use_dora",
        "use_rslora",
        "files",
        "metrics",
        "trained_tokens",
        "created_at",
        "deleted_at",
    ]

    @admin.display(description="Live on")
    def live_on(self, obj: Adapter) -> str:
        names = [d.endpoint.name for d in obj.deployments.all() if d.status == Deployment.Status.LIVE]
        return ", ".join(names) or "-"

    @admin.display(description="Aliases")
    def aliases_display(self, obj: Adapter) -> str:
        return ", ".join(alias.model_id for alias in obj.aliases.all()) or "-"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Adapter]:
        return super().get_queryset(request).prefetch_related("deployments__endpoint", "aliases")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # an adapter version is immutable; its operations are the actions

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _endpoints(self, request: HttpRequest) -> QuerySet[InferenceEndpoint]:
        rows = InferenceEndpoint.objects.filter(enabled=True)
        if self._scoped(request):
            rows = rows.filter(Q(team__in=self.managed_team_ids(request)) | Q(team__isnull=True))
        return rows.order_by("name")

    @admin.action(description="Deploy to an endpoint…", permissions=["manage"])
    def deploy(self, request: HttpRequest, queryset: QuerySet[Adapter]) -> TemplateResponse | None:
        def apply(data: dict[str, Any]) -> None:
            endpoint = data["endpoint"]
            self.run_for_each(
                request,
                queryset,
                lambda adapter: deployment_create(team=adapter.team, adapter=adapter, endpoint=endpoint),
                done=f"Deploying {{count}} adapter version{{s}} to {endpoint.name}.",
            )

        return self.action_with_form(
            request,
            queryset,
            form_class=EndpointChoiceForm,
            form_kwargs={"endpoints": self._endpoints(request)},
            title="Deploy to an endpoint",
            apply=apply,
        )

    @admin.action(description="Undeploy from an endpoint…", permissions=["manage"])
    def undeploy(self, request: HttpRequest, queryset: QuerySet[Adapter]) -> TemplateResponse | None:
        def apply(data: dict[str, Any]) -> None:
            rows = Deployment.objects.filter(
                adapter__in=self.managed_rows(request, queryset), status__in=Deployment.ACTIVE
            )
            if data.get("endpoint") is not None:
                rows = rows.filter(endpoint=data["endpoint"])
            count = 0
            for deployment in rows:
                deployment_undeploy(deployment=deployment)
                count += 1
            self.message_user(
                request, f"Undeploying {count} deployment{'s' if count != 1 else ''}.", messages.SUCCESS
            )

        return self.action_with_form(
            request,
            queryset,
            form_class=EndpointChoiceForm,
            form_kwargs={"endpoints": self._endpoints(request), "required": False},
            title="Undeploy from an endpoint",
            apply=apply,
        )

    @admin.action(description="Point an alias at this version…", permissions=["manage"])
    def point_alias(self, request: HttpRequest, queryset: QuerySet[Adapter]) -> TemplateResponse | None:
        if queryset.count() != 1:
            self.message_user(
                request, "Select exactly one adapter version to point an alias at.", messages.ERROR
            )
            return None

        def apply(data: dict[str, Any]) -> None:
            self.run_for_each(
                request,
                queryset,
                lambda adapter: alias_set(team=adapter.team, name=data["name"], adapter=adapter),
                done=f"Alias {data['name']} now points at the selected version.",
            )

        return self.action_with_form(
            request, queryset, form_class=AliasForm, title="Point an alias at this version", apply=apply
        )
