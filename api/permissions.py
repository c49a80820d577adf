"""Who may call a field: permission classes over the caller's Principal."""

from __future__ import annotations

from typing import Any

from strawberry.permission import BasePermission

from db.errors import Forbidden
from schema.context import Info


def _org_argument(kwargs: dict[str, Any]) -> str | None:
    if "org_id" in kwargs:
        return str(kwargs["org_id"])
    payload = kwargs.get("input")
    return str(payload.org_id) if payload is not None and hasattr(payload, "org_id") else None


class Authenticated(BasePermission):
    """A valid token; when the field names an org, one the token may act on."""

    def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        principal = info.context.principal
        org_id = _org_argument(kwargs)
        if org_id is not None:
            principal.authorize_org(org_id)
        return True


class AdminOnly(Authenticated):
    def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        if info.context.principal.role not in ("admin", "service"):
            raise Forbidden("Requires the admin role")
        return super().has_permission(source, info, **kwargs)


class ServiceOnly(Authenticated):
    def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        if not info.context.principal.is_service:
            raise Forbidden("Requires a service token")
        return True
