"""Web admin for base models, fine-tuning jobs and adapters.

Base models are registered with `tailor basemodel add` and managed by superusers. Jobs and adapters are
shown to the staff of their team (read-only, jobs arrive through the API); a superuser may change a
job's scheduling priority.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from tailor.teams.admin import TeamScopedAdmin
from tailor.tuning.models import Adapter, BaseModel, Checkpoint, FineTuningJob, JobEvent

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


@admin.register(FineTuningJob)
class FineTuningJobAdmin(TeamScopedAdmin):
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


@admin.register(Adapter)
class AdapterAdmin(TeamScopedAdmin):
    list_display = ["name", "team", "base_model", "rank", "alpha", "created_at"]
    search_fields = ["name", "team__slug"]
    readonly_fields = [
        "name",
        "version",
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
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
