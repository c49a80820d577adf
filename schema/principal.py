"""Who is calling: the verified claims of a bearer token, and what they may touch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from db.errors import Forbidden
from db.rules import check_text

ROLES = ("member", "admin", "service")


@dataclass(frozen=True)
class Principal:
    subject: str
    role: str
    org_id: str | None
    expires_at: float = math.inf

    @property
    def is_service(self) -> bool:
        return self.role == "service"

    @property
    def scope(self) -> str | None:
        """The only org this principal may touch; None means any (service tokens)."""
        return None if self.is_service else self.org_id

    def authorize_org(self, org_id: str) -> None:
        """The one decision whether this caller may read or act on an org (FORBIDDEN if not)."""
        check_text(org_id, "orgId")  # no org id holds NUL, bad Unicode or 200+ characters
        if not self.is_service and org_id != self.org_id:
            raise Forbidden(f"Not allowed to act on organization {org_id}")
