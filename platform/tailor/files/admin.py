"""Web admin for files: browse a team's uploads and their validation reports. Files arrive through the
API, so the admin reads them (every member of the team) and deletes them (owners and admins), nothing
else."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from tailor.files.models import File
from tailor.files.services import file_delete
from tailor.teams.admin import TeamScopedAdmin
from tailor.web.access import ALL_ROLES


@admin.register(File)
class FileAdmin(TeamScopedAdmin):
    reader_roles = ALL_ROLES
    list_display = ["public_id", "team", "filename", "purpose", "bytes", "status", "format", "created_at"]
    list_filter = ["status", "purpose", "format"]
    search_fields = ["public_id", "filename", "sha256", "team__slug"]
    fields = [
        "public_id",
        "team",
        "filename",
        "purpose",
        "content_type",
        "bytes",
        "sha256",
        "storage_key",
        "status",
        "status_details",
        "format",
        "report",
        "created_at",
        "validated_at",
        "expires_at",
        "deleted_at",
    ]
    readonly_fields = fields

    @admin.display(description="Validation report")
    def report(self, obj: File) -> str:
        if not obj.validation_report:
            return "-"
        return format_html("<pre>{}</pre>", json.dumps(obj.validation_report, indent=2))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: File) -> None:
        # Same as the API: the row stays as `deleted`, the bytes leave the object store.
        file_delete(file=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[File]) -> None:
        for file in queryset:
            file_delete(file=file)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        # Nothing cascades from a soft delete.
        return [str(obj) for obj in objs], {}, set(), []
