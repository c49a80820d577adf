"""Plain helpers shared by tests: GraphQL calls, tokens, recounts."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select

from db.aggregates import (
    COUNTERS,
    INVOICE_STATUS_COUNTERS,
    LOAD_STATUS_COUNTERS,
    LOAD_TYPE_COUNTERS,
)
from db.models import Invoice, Load
from db.queries import get_stats
from db.unit_of_work import Database
from main import DEV_SECRET
from schema.auth import TokenVerifier

VERIFIER = TokenVerifier(DEV_SECRET)


def token(org: str | None = "org_a", role: str = "admin", ttl: int = 3600) -> str:
    return VERIFIER.issue(org_id=org, role=role, subject="test", ttl_seconds=ttl)


class Api:
    """A GraphQL client bound to one token."""

    def __init__(self, client: httpx.AsyncClient, bearer: str | None) -> None:
        self.client = client
        self.bearer = bearer

    def as_(self, bearer: str | None) -> Api:
        return Api(self.client, bearer)

    async def raw(self, query: str, **variables: Any) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.bearer}"} if self.bearer else {}
        response = await self.client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()

    async def ok(self, query: str, **variables: Any) -> dict[str, Any]:
        body = await self.raw(query, **variables)
        assert not body.get("errors"), body["errors"]
        return body["data"]

    async def error(self, query: str, **variables: Any) -> dict[str, Any]:
        """The first error of a call that must fail."""
        body = await self.raw(query, **variables)
        assert body.get("errors"), f"expected an error, got {body}"
        return body["errors"][0]


async def recount(db: Database, org_id: str) -> dict[str, int]:
    """Every counter, counted from the source rows."""

    async def work(session: Any) -> dict[str, int]:
        counts = dict.fromkeys(COUNTERS, 0)
        for column, mapping in ((Load.status, LOAD_STATUS_COUNTERS), (Load.load_type, LOAD_TYPE_COUNTERS), (Invoice.status, INVOICE_STATUS_COUNTERS)):
            model = column.class_
            rows = await session.execute(select(column, func.count()).where(model.org_id == org_id).group_by(column))
            for value, n in rows:
                counts[mapping[value]] = n
        return counts

    return await db.read(work)


async def stored(db: Database, org_id: str) -> tuple[dict[str, int], int]:
    snapshot = await db.read(lambda s: get_stats(s, org_id))
    return snapshot.counts, snapshot.version


async def assert_exact(db: Database, org_id: str) -> None:
    counts, _ = await stored(db, org_id)
    assert counts == await recount(db, org_id)
