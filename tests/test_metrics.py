"""/metrics through real servers: each figure moves with what was done; two processes' figures add up."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import token
from tests.live import subscription, wait_live_subscribers
from tests.scrape import Samples, key, parsed, scrape_async
from tests.server import running_server

pytestmark = pytest.mark.slow  # real servers

ORG = "org_metrics"
ADMIN = token(ORG, "admin")
COUNT = f'query Tiles {{ countLoadsByStatus(orgId: "{ORG}") {{ open total }} }}'
BOTH = f'{{ countLoadsByStatus(orgId: "{ORG}") {{ total }} organizationStats(orgId: "{ORG}") {{ version }} }}'
CREATE = f'mutation {{ createLoad(input: {{orgId: "{ORG}", status: OPEN}}) {{ id }} }}'
RECALCULATE = f'mutation {{ recalculateOrgStats(orgId: "{ORG}") {{ corrected {{ counter }} }} }}'


def requests(type_: str, field: str, outcome: str) -> str:
    return key("tally_graphql_requests_total", field=field, outcome=outcome, type=type_)


def env_on(database: Path) -> dict[str, str]:
    return {
        "TALLY_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "TALLY_RECALC_INTERVAL_SECONDS": "0",
        "TALLY_COUNT_CACHE_ENTRIES": "1024",  # its hits are among the figures under test
    }


def post(base: str, query: str, bearer: str | None = ADMIN) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    response = httpx.post(f"{base}/graphql", json={"query": query}, headers=headers, timeout=10)
    return dict(response.json())


async def post_async(base: str, query: str, bearer: str | None = ADMIN) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{base}/graphql", json={"query": query}, headers=headers)
    return dict(response.json())


async def code_of(base: str, query: str, bearer: str | None = ADMIN) -> str:
    """ "ok", or the code of the answer's first error."""
    errors = (await post_async(base, query, bearer)).get("errors")
    return str(errors[0]["extensions"]["code"]) if errors else "ok"


def moved(before: Samples, after: Samples) -> dict[str, float]:
    """The samples that changed, by how much (`*_created` timestamps left out)."""
    return {
        name: after[name] - before.get(name, 0)
        for name in after
        if after[name] != before.get(name, 0) and "_created" not in name
    }


async def test_each_figure_moves_with_what_was_done(tmp_path: Path) -> None:
    with running_server(env_on(tmp_path / "tally.db")) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(f"{base}/healthz")).json() == {"status": "ok"}

        start = await scrape_async(base)
        assert start['tally_live_fan_out{kind="sqlite-follow"}'] == 1
        assert start["tally_write_retries_total"] == 0

        assert await code_of(base, CREATE) == "ok"
        assert await code_of(base, COUNT) == "ok"  # a miss: GraphQL runs
        assert await code_of(base, COUNT) == "ok"  # the same row: a hit, no GraphQL
        assert await code_of(base, BOTH) == "ok"
        assert await code_of(base, COUNT, bearer=None) == "UNAUTHENTICATED"
        assert await code_of(base, "{ nothingLikeThis }") == "BAD_USER_INPUT"
        assert await code_of(base, "{ countLoadsByStatus(") == "BAD_USER_INPUT"
        after_http = await scrape_async(base)
        assert moved(start, after_http) == {
            requests("mutation", "createLoad", "ok"): 1,
            requests("query", "countLoadsByStatus", "ok"): 1,
            requests("query", "(several)", "ok"): 1,
            requests("query", "countLoadsByStatus", "UNAUTHENTICATED"): 1,
            requests("query", "(none)", "BAD_USER_INPUT"): 1,
            requests("unknown", "(none)", "BAD_USER_INPUT"): 1,
            "tally_count_cache_hits_total": 1,
            "tally_count_cache_misses_total": 2,  # COUNT and BOTH (a caller without a token is no candidate)
        }  # no tally_live_publishes_total: nobody listened to the create

        async with subscription(base, ADMIN, ORG) as sub:
            assert (await sub.next())["version"] == 1
            assert await wait_live_subscribers(base, 1) == 1
            live = await scrape_async(base)
            assert live["tally_live_subscribers"] == 1 and live["tally_live_channels"] == 1
            assert live[requests("subscription", "organizationStatsChanged", "ok")] == 1

            with sqlite3.connect(tmp_path / "tally.db") as connection:
                connection.execute(f"UPDATE organization_stats SET loads_open = loads_open + 2 WHERE org_id = '{ORG}'")
            recalculated = await post_async(base, RECALCULATE)
            assert recalculated["data"]["recalculateOrgStats"]["corrected"] == [{"counter": "loads_open"}]
            assert (await sub.next())["version"] == 2
        assert await wait_live_subscribers(base, 0) == 0
        end = await scrape_async(base)
        assert end[key("tally_recalculation_runs_total", outcome="ok")] == 1
        assert end[key("tally_recalculation_runs_total", outcome="error")] == 0
        assert end["tally_recalculation_corrections_total"] == 1
        assert end[requests("mutation", "recalculateOrgStats", "ok")] == 1
        assert end["tally_live_subscribers"] == 0 and end["tally_live_publishes_total"] == 1


def test_two_processes_figures_add_up(tmp_path: Path) -> None:
    env = env_on(tmp_path / "tally.db")
    with running_server(env) as first, running_server(env) as second:
        for base, creates in ((first, 2), (second, 3)):
            for _ in range(creates):
                assert "errors" not in post(base, CREATE)
        pages = [httpx.get(f"{base}/metrics", timeout=10).text for base in (first, second)]

    families = [{(f.name, f.type) for f in _families(page)} for page in pages]
    assert families[0] == families[1]  # the same names, one exposition per process
    samples = [parsed(page) for page in pages]
    created = requests("mutation", "createLoad", "ok")
    assert samples[0][created] + samples[1][created] == 5
    assert sum(s["tally_live_publishes_total"] for s in samples) == 0  # nobody listened
    labels = {name for page in pages for f in _families(page) for s in f.samples for name in s.labels}
    assert labels <= {"type", "field", "outcome", "kind"}  # nothing names the process


def _families(page: str) -> list[Any]:
    return list(text_string_to_metric_families(page))
