"""Key scopes: `read` lets a key call safe methods, `write` everything else."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from tailor.teams.models import APIKey


class HasKeyScope(BasePermission):
    """Authenticated by an API key whose scopes cover the request's method."""

    message = "This API key does not have the scope needed for this request."
    code = "insufficient_permissions"

    def has_permission(self, request: Request, view: Any) -> bool:
        key = request.auth
        if not isinstance(key, APIKey):
            return False
        needed = APIKey.Scope.READ if request.method in SAFE_METHODS else APIKey.Scope.WRITE
        if needed in key.scopes:
            return True
        self.message = f"This API key lacks the `{needed}` scope needed for {request.method} requests."
        return False
