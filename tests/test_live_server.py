"""Through a real uvicorn on loopback, as the README's quick start does it."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.databases import Databases
from tests.server import ROOT, running_server

pytestmark = pytest.mark.slow


def cli_token(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "main.py", "token", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def test_serve_migrates_and_answers_a_token_holder(databases: Databases) -> None:
    env = {**os.environ, "TALLY_DATABASE_URL": databases.empty(), "TALLY_QUERY_STATS": "1"}
    token = cli_token(env, "--org", "org_live", "--role", "admin")
    with running_server(env) as base:
        headers = {"Authorization": f"Bearer {token}"}
        create = httpx.post(
            f"{base}/graphql",
            json={"query": 'mutation { createLoad(input: {orgId: "org_live", status: ASSIGNED}) { id status } }'},
            headers=headers,
        ).json()
        assert create["data"]["createLoad"]["status"] == "ASSIGNED"
        counts = httpx.post(
            f"{base}/graphql",
            json={"query": 'query { countLoadsByStatus(orgId: "org_live") { open assigned total } }'},
            headers=headers,
        ).json()
        assert counts["data"]["countLoadsByStatus"] == {"open": 0, "assigned": 1, "total": 1}
        assert counts["extensions"]["queryStats"]["statements"] == 1
        refused = httpx.post(
            f"{base}/graphql", json={"query": 'query { countLoadsByStatus(orgId: "org_live") { total } }'}
        ).json()
        assert refused["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        ide = httpx.get(f"{base}/graphql", headers={"Accept": "text/html"})
        assert ide.status_code == 200 and "graphiql" in ide.text.lower()
