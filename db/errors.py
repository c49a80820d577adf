"""Domain errors. Each carries one of domain.md's error codes; api/extensions.py puts it on the GraphQL error."""

from __future__ import annotations

from collections.abc import Iterable


class TallyError(Exception):
    code = "INTERNAL"

    def __init__(self, message: str, *, ids: Iterable[object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.ids = [str(i) for i in ids] if ids is not None else None


class Unauthenticated(TallyError):
    code = "UNAUTHENTICATED"


class Forbidden(TallyError):
    code = "FORBIDDEN"


class NotFound(TallyError):
    code = "NOT_FOUND"


class BadInput(TallyError):
    code = "BAD_USER_INPUT"


class InvalidTransition(TallyError):
    code = "INVALID_TRANSITION"


class Conflict(TallyError):
    code = "CONFLICT"
