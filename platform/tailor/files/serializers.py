"""Wire shapes of the Files API: OpenAI's FileObject, list and delete objects, and request parameters."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from tailor.core.serializers import ConstantField, UnixTimestampField
from tailor.files.models import File
from tailor.files.selectors import MAX_LIST_LIMIT


class FileObjectSerializer(serializers.Serializer):
    """OpenAI's `FileObject`."""

    id = serializers.CharField(source="public_id", read_only=True)
    object = ConstantField("file")
    bytes = serializers.IntegerField(read_only=True)
    created_at = UnixTimestampField()
    expires_at = UnixTimestampField(allow_null=True)
    filename = serializers.CharField(read_only=True)
    purpose = serializers.ChoiceField(choices=File.Purpose.choices, read_only=True)
    status = serializers.ChoiceField(choices=File.Status.choices, read_only=True)
    status_details = serializers.CharField(read_only=True, allow_null=True)


class FileListSerializer(serializers.Serializer):
    """OpenAI's cursor page of files."""

    object = ConstantField("list")
    data = FileObjectSerializer(many=True)
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class FileDeletedSerializer(serializers.Serializer):
    """OpenAI's `FileDeleted`."""

    id = serializers.CharField()
    object = ConstantField("file")
    deleted = serializers.BooleanField()


class FileListParamsSerializer(serializers.Serializer):
    """Query parameters of `GET /v1/files`."""

    after = serializers.CharField(required=False, help_text="Id of the last file of the previous page.")
    limit = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_LIST_LIMIT, default=MAX_LIST_LIMIT
    )
    order = serializers.ChoiceField(
        choices=["asc", "desc"], required=False, default="desc", help_text="By creation time."
    )
    purpose = serializers.CharField(required=False)


class ExpiresAfterSerializer(serializers.Serializer):
    """`expires_after[anchor]=created_at`, `expires_after[seconds]` between one hour and 30 days."""

    anchor = serializers.ChoiceField(choices=["created_at"])
    seconds = serializers.IntegerField(min_value=3600, max_value=2_592_000)


class FileCreateParamsSerializer(serializers.Serializer):
    """The form fields of `POST /v1/files` besides the file itself."""

    purpose = serializers.ChoiceField(choices=[str(p) for p in File.UPLOAD_PURPOSES])
    expires_after = ExpiresAfterSerializer(required=False)

    @classmethod
    def from_form(cls, form: Any) -> FileCreateParamsSerializer:
        """Read the multipart fields, folding the bracketed `expires_after[...]` keys into a nested object."""
        data: dict[str, Any] = {}
        if "purpose" in form:
            data["purpose"] = form.get("purpose")
        expires = {
            key[len("expires_after[") : -1]: form.get(key)
            for key in form
            if key.startswith("expires_after[") and key.endswith("]")
        }
        if expires:
            data["expires_after"] = expires
        return cls(data=data)


class FileUploadFormSerializer(serializers.Serializer):
    """Documentation of the multipart body (the view streams it instead of deserialising it)."""

    file = serializers.FileField(help_text="The file; JSONL for purpose fine-tune.")
    purpose = serializers.ChoiceField(choices=[str(p) for p in File.UPLOAD_PURPOSES])


class FileReportSerializer(serializers.Serializer):
    """The validation report of a file (Tailor's native API)."""

    id = serializers.CharField(source="public_id")
    object = ConstantField("file.validation_report")
    status = serializers.ChoiceField(choices=File.Status.choices)
    status_details = serializers.CharField(allow_null=True)
    validated_at = UnixTimestampField(allow_null=True)
    ok = serializers.BooleanField(allow_null=True)
    format = serializers.CharField(allow_null=True)
    error_count = serializers.IntegerField(allow_null=True)
    errors = serializers.ListField(
        child=serializers.DictField(),
        allow_null=True,
        help_text="The first 100 issues: line, path, code, message.",
    )
    errors_truncated = serializers.BooleanField(allow_null=True)
    stats = serializers.DictField(allow_null=True)

    def to_representation(self, instance: File) -> dict[str, Any]:
        report = instance.validation_report or {}
        data = {
            "id": instance.public_id,
            "object": "file.validation_report",
            "status": instance.status,
            "status_details": instance.status_details,
            "validated_at": int(instance.validated_at.timestamp()) if instance.validated_at else None,
        }
        for key in ("ok", "format", "error_count", "errors", "errors_truncated", "stats"):
            data[key] = report.get(key)
        return data
