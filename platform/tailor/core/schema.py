"""drf-spectacular extensions: how Tailor's own pieces appear in the OpenAPI document."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerFieldExtension


class ConstantFieldExtension(OpenApiSerializerFieldExtension):
    """`"object": "file"` is documented as a one-value enum."""

    target_class = "tailor.core.serializers.ConstantField"

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        return {"type": "string", "enum": [self.target.value], "readOnly": True}


class APIKeyAuthenticationExtension(OpenApiAuthenticationExtension):
    """Bearer API keys, the scheme the openai SDK uses."""

    target_class = "tailor.core.authentication.APIKeyAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "http", "scheme": "bearer", "description": "A team API key (`tlr-…`)."}
