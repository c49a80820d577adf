"""Bearer JWTs (WorkOS AuthKit claims) and the permission classes built on them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
from strawberry.permission import BasePermission

from db.errors import Forbidden, Unauthenticated

if TYPE_CHECKING:
    from schema.context import Info

ROLES = ("member", "admin", "service")


@dataclass(frozen=True)
class Principal:
    subject: str
    role: str
    org_id: str | None

    @property
    def is_service(self) -> bool:
        return self.role == "service"

    @property
    def scope(self) -> str | None:
        """The only org this principal may touch; None means any (service tokens)."""
        return None if self.is_service else self.org_id

    def authorize_org(self, org_id: str) -> None:
        if not self.is_service and org_id != self.org_id:
            raise Forbidden(f"Not allowed to act on organization {org_id}")


class TokenVerifier:
    def __init__(self, secret: str, issuer: str | None = None) -> None:
        self.secret = secret
        self.issuer = issuer

    def verify(self, token: str) -> Principal:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                issuer=self.issuer,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError as error:
            raise Unauthenticated("Token expired") from error
        except jwt.PyJWTError as error:
            raise Unauthenticated("Invalid token") from error
        role, org_id = claims.get("role"), claims.get("org_id")
        if role not in ROLES or (role != "service" and not isinstance(org_id, str)):
            raise Unauthenticated("Token lacks a valid role and org_id")
        return Principal(subject=str(claims["sub"]), role=role, org_id=org_id)

    def from_header(self, value: str | None) -> Principal:
        if not value:
            raise Unauthenticated("Missing Authorization: Bearer <token>")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("Authorization must be 'Bearer <token>'")
        return self.verify(token.strip())

    def issue(self, *, org_id: str | None, role: str, subject: str, ttl_seconds: int) -> str:
        claims: dict[str, Any] = {"sub": subject, "role": role, "exp": int(time.time()) + ttl_seconds}
        if org_id:
            claims["org_id"] = org_id
        if self.issuer:
            claims["iss"] = self.issuer
        return jwt.encode(claims, self.secret, algorithm="HS256")


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
