"""Serializer fields shared by the OpenAI-compatible endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers


@extend_schema_field(OpenApiTypes.INT)
class UnixTimestampField(serializers.Field):
    """A datetime on the wire as integer Unix seconds, as the OpenAI API writes every timestamp."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("read_only", True)
        super().__init__(**kwargs)

    def to_representation(self, value: datetime) -> int:
        return int(value.timestamp())


class ConstantField(serializers.Field):
    """A fixed string such as `"object": "file"`; documented as a one-value enum (see tailor.core.schema)."""

    def __init__(self, value: str, **kwargs: Any) -> None:
        self.value = value
        kwargs.setdefault("read_only", True)
        kwargs["source"] = "*"
        super().__init__(**kwargs)

    def to_representation(self, instance: Any) -> str:
        return self.value
