"""The count cache (edge/count_cache.py): reused bytes, never a stale or foreign answer."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from db.engine import StatementCounter, statement_counter
from db.unit_of_work import Database
from edge.count_cache import CountCache, count_query_shape
from settings import Settings
from tests.helpers import Api, create_load, recount, token

COUNT_LOADS = "query($o: ID!) { countLoadsByStatus(orgId: $o) { open assigned completed canceled total } }"
SET_STATUS = "mutation($id: ID!, $s: LoadStatus!) { updateLoadStatus(id: $id, status: $s) { status } }"


@pytest.fixture
def settings(database_url: str) -> Settings:
    """The service's defaults: count cache on (whatever the environment says), no per-response statement counts."""
    return Settings(database_url=database_url, recalc_interval_seconds=0, count_cache_entries=1024)


@pytest.fixture
def cache(app_client: tuple[httpx.AsyncClient, Database]) -> CountCache:
    transport = app_client[0]._transport
    assert isinstance(transport, httpx.ASGITransport)
    count_cache = transport.app.state.count_cache  # type: ignore[attr-defined]
    assert count_cache is not None
    return count_cache


async def counts(api: Api, org: str = "org_a") -> dict[str, Any]:
    return (await api.ok(COUNT_LOADS, o=org))["countLoadsByStatus"]


async def test_a_repeated_count_query_is_reused_until_the_row_changes(
    api: Api, db: Database, cache: CountCache
) -> None:
    load = await create_load(api)
    first = await counts(api)
    assert first["open"] == 1
    assert (await counts(api)) == first
    assert (cache.hits, cache.misses) == (1, 1)

    await api.ok(SET_STATUS, id=load["id"], s="ASSIGNED")
    after = await counts(api)
    assert (after["open"], after["assigned"]) == (0, 1)
    assert (cache.hits, cache.misses) == (1, 2)
    assert (await counts(api)) == after
    assert cache.hits == 2


async def test_a_row_changed_behind_the_apps_back_is_seen_at_once(api: Api, db: Database, cache: CountCache) -> None:
    """Drift written by raw SQL changes no version: the whole row is compared, not the version."""
    await create_load(api)
    assert (await counts(api))["open"] == 1
    async with db.engine.begin() as connection:
        await connection.execute(text("UPDATE organization_stats SET loads_open = 7 WHERE org_id = 'org_a'"))
    assert (await counts(api))["open"] == 7
    assert cache.misses == 2
    assert (await recount(db, "org_a"))["loads_open"] == 1


async def test_a_cached_answer_never_reaches_a_caller_who_may_not_read_it(api: Api, cache: CountCache) -> None:
    await create_load(api)
    await counts(api)
    await counts(api)
    assert cache.hits == 1
    refusals = {
        "foreign admin": (token("org_b", "admin"), "FORBIDDEN"),
        "expired token": (token("org_a", "admin", ttl=-10), "UNAUTHENTICATED"),
        "no token": (None, "UNAUTHENTICATED"),
        "bad signature": (token("org_a", "admin")[:-4] + "AAAA", "UNAUTHENTICATED"),
    }
    for who, (bearer, code) in refusals.items():
        error = await api.as_(bearer).error(COUNT_LOADS, o="org_a")
        assert error["extensions"]["code"] == code, who
    assert cache.hits == 1
    # Members and service tokens may read it, and get the same answer.
    for bearer in (token("org_a", "member"), token(None, "service")):
        assert (await counts(api.as_(bearer)))["open"] == 1


async def test_a_decided_request_is_refused_once_its_token_expires(api: Api, cache: CountCache) -> None:
    """The cache remembers which org a (token, body) may read only while that token is valid."""
    await create_load(api)
    short = api.as_(token("org_a", "admin", ttl=2))
    for expected_hits in (0, 1):
        assert (await counts(short))["open"] == 1
        assert cache.hits == expected_hits
    await asyncio.sleep(3)
    assert (await short.error(COUNT_LOADS, o="org_a"))["extensions"]["code"] == "UNAUTHENTICATED"
    assert cache.hits == 1


async def test_each_count_query_runs_exactly_one_statement_hit_or_miss(api: Api, cache: CountCache) -> None:
    await create_load(api)
    for expected_hits in (0, 1, 2):
        counter = StatementCounter()
        reset = statement_counter.set(counter)
        try:
            await counts(api)
        finally:
            statement_counter.reset(reset)
        assert counter.statements == 1
        assert cache.hits == expected_hits


async def test_only_count_only_queries_of_one_org_take_the_cache(api: Api, cache: CountCache) -> None:
    load = await create_load(api)
    await create_load(api.as_(token("org_b", "admin")), org="org_b")
    others = [
        ("query($o: ID!) { countLoadsByStatus(orgId: $o) { open } loads(orgId: $o) { nodes { id } } }", {"o": "org_a"}),
        ('{ a: countLoadsByStatus(orgId: "org_a") { open } b: countLoadsByStatus(orgId: "org_b") { open } }', {}),
        ("query($o: ID!) { ...F } fragment F on Query { countLoadsByStatus(orgId: $o) { open } }", {"o": "org_a"}),
        ("query($o: ID!) { load(id: $o) { status } }", {"o": load["id"]}),
    ]
    for query, variables in others:
        await api.as_(token(None, "service")).ok(query, **variables)
        await api.as_(token(None, "service")).ok(query, **variables)
    await api.ok(SET_STATUS, id=load["id"], s="ASSIGNED")
    assert (cache.hits, cache.misses) == (0, 0)


def test_shapes() -> None:
    shape = count_query_shape('query Q { organizationStats(orgId: "o1") { version } }')
    assert shape is not None and shape.org_id({}) == "o1" and shape.operation_name == "Q"
    shape = count_query_shape(
        "query($o: ID!) { a: countLoadsByStatus(orgId: $o) { open } b: countInvoicesByStatus(orgId: $o) { paid } }"
    )
    assert shape is not None and shape.org_id({"o": "x"}) == "x" and shape.org_id({"o": 1}) is None
    for query in (
        'mutation { promoteSpotLoads(orgId: "o") { promotedLoads } }',
        "subscription($o: ID!) { organizationStatsChanged(orgId: $o) { version } }",
        "query($o: ID!) @x { countLoadsByStatus(orgId: $o) { open } }",
        "query($o: ID!, $p: Boolean!) { countLoadsByStatus(orgId: $o) @include(if: $p) { open } }",
        "query { countLoadsByStatus { open } }",
        "{ countLoadsByStatus(orgId: 5) { open } }",
        "{ __typename }",
        'query A { countLoadsByStatus(orgId: "o") { open } } query B { countLoadsByStatus(orgId: "o") { open } }',
        "not graphql",
    ):
        assert count_query_shape(query) is None, query
