"""GraphQL over HTTP as the spec and its audit suite say, and no input that reaches a 5xx.

The audit is the `graphql-http` package's own `serverAudits` (Node), run against a real
server: every one of them must pass, warnings included. Malformed bodies are sent to a
real server with the count cache on (the default) and off: each is a 400 with a coded
GraphQL error, on a connection that stays open, with nothing in the log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.responses import GRAPHQL_RESPONSE, JSON, media_type_for
from tests.helpers import leaks_in, token
from tests.server import ServerUrl, running_server

AUDIT = Path(__file__).parent / "graphql_http_audit"
COUNT_QUERY = '{ organizationStats(orgId: "org_a") { version } }'

pytestmark = pytest.mark.slow  # each test talks to a real server


@pytest.fixture(scope="module", params=["count cache on", "count cache off"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerUrl]:
    entries = "1024" if request.param == "count cache on" else "0"
    database = tmp_path_factory.mktemp("http") / "tally.db"
    env = {"TALLY_DATABASE_URL": f"sqlite+aiosqlite:///{database}", "TALLY_COUNT_CACHE_ENTRIES": entries}
    with running_server(env) as base:
        yield base


def require_node() -> str:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        if os.environ.get("CI"):
            pytest.fail("node and npm are required in CI")
        pytest.skip("node and npm are not installed")
    return npm


def test_every_graphql_http_audit_passes(server: ServerUrl) -> None:
    npm = require_node()
    if not (AUDIT / "node_modules" / "graphql-http").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=AUDIT, check=True, capture_output=True)
    env = {**os.environ, "TALLY_TOKEN": token("org_a")}
    run = subprocess.run(
        ["node", "audit.mjs", f"{server}/graphql"], cwd=AUDIT, env=env, capture_output=True, text=True, timeout=120
    )
    outcome = json.loads(run.stdout)
    assert outcome["failed"] == [], outcome["failed"]
    assert outcome["total"] == outcome["passed"] == 61


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (None, JSON),
        ("", JSON),
        ("*/*", JSON),
        ("application/json", JSON),
        (GRAPHQL_RESPONSE, GRAPHQL_RESPONSE),
        (f"{GRAPHQL_RESPONSE}, application/json;q=0.9", GRAPHQL_RESPONSE),
        (f"application/json, {GRAPHQL_RESPONSE};q=0.5", JSON),
        (f"{GRAPHQL_RESPONSE};q=0, application/json", JSON),
        (f"{GRAPHQL_RESPONSE}, */*", GRAPHQL_RESPONSE),
        (f"{GRAPHQL_RESPONSE};q=nonsense", JSON),
    ],
)
def test_the_media_type_follows_accept(accept: str | None, media_type: str) -> None:
    assert media_type_for(accept) == media_type


def post(client: httpx.Client, body: bytes, accept: str = "application/json") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token('org_a')}", "Content-Type": "application/json", "Accept": accept}
    return client.post("/graphql", content=body, headers=headers)


def test_request_errors_under_each_media_type(server: ServerUrl) -> None:
    with httpx.Client(base_url=server) as client:
        for body in (b'{"query": "{"}', b'{"query": "{ nonsense }"}', b'{"query": "query($n: Int!) { __typename }"}'):
            legacy = post(client, body)
            assert (legacy.status_code, legacy.headers["content-type"]) == (200, "application/json")
            assert legacy.json()["data"] is None
            modern = post(client, body, accept=GRAPHQL_RESPONSE)
            assert (modern.status_code, modern.headers["content-type"]) == (400, f"{GRAPHQL_RESPONSE}; charset=utf-8")
            assert "data" not in modern.json()
            assert modern.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        denied = post(client, b'{"query": "{ organizationStats(orgId: \\"org_b\\") { version } }"}', GRAPHQL_RESPONSE)
        assert denied.status_code == 200 and denied.json()["data"] is None, "a field error is not a request error"
        counted = post(client, json.dumps({"query": COUNT_QUERY}).encode(), accept=GRAPHQL_RESPONSE)
        assert counted.status_code == 200 and counted.headers["content-type"].startswith(GRAPHQL_RESPONSE)
        again = post(client, json.dumps({"query": COUNT_QUERY}).encode(), accept=GRAPHQL_RESPONSE)
        assert again.headers["content-type"] == counted.headers["content-type"] and again.content == counted.content


def test_a_mutation_over_get_is_405_with_allow_post(server: ServerUrl) -> None:
    query = 'mutation { createLoad(input: {orgId: "org_a"}) { id } }'
    response = httpx.get(
        f"{server}/graphql", params={"query": query}, headers={"Authorization": f"Bearer {token('org_a')}"}
    )
    assert (response.status_code, response.headers["allow"]) == (405, "POST")
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    counts = httpx.get(
        f"{server}/graphql",
        params={"query": '{ countLoadsByStatus(orgId: "org_a") { total } }'},
        headers={"Authorization": f"Bearer {token('org_a')}"},
    )
    assert counts.json() == {"data": {"countLoadsByStatus": {"total": 0}}}


VALID = json.dumps({"query": COUNT_QUERY}).encode()
MALFORMED = {
    "nested lists": b"[" * 1000,
    "nested objects": b'{"a":' * 1000,
    "nested variables": b'{"query": "{ __typename }", "variables": {"v": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
    "invalid utf-8": b'{"query": "\xff\xfe"}',
    "null": b"null",
    "a string": b'"query"',
    "a number": b"42",
    "a huge integer": b'{"query": "{ __typename }", "variables": {"n": ' + b"9" * 5000 + b"}}",
    "a body that ends early": VALID[: len(VALID) // 2],
    "an empty body": b"",
}


def assert_refused_cleanly(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, response.text
    errors = response.json()["errors"]
    assert errors and all(error["extensions"]["code"] == "BAD_USER_INPUT" for error in errors), errors
    assert response.headers.get("connection") != "close"
    assert not leaks_in(response.text)


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_body_is_a_coded_400_and_the_connection_stays(server: ServerUrl, name: str) -> None:
    with httpx.Client(base_url=server) as client:
        assert_refused_cleanly(post(client, MALFORMED[name]))
        assert post(client, VALID).status_code == 200, "the same connection still serves"
    log = server.log_path.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log


def nested(depth: int, opener: bytes) -> bytes:
    closer = {b"[": b"]", b'{"k":': b"}"}[opener]
    return opener * depth + b"1" + closer * depth


BODIES = st.one_of(
    st.builds(nested, st.integers(1, 6000), st.sampled_from([b"[", b'{"k":'])),
    st.builds(
        lambda n: b'{"query": "{ __typename }", "variables": {"v": ' + n + b"}}",
        st.sampled_from([b"9" * 4301, b"-" + b"9" * 10000, b"1e400", b"-1e400", b"1" * 300 + b".5"]),
    ),
    st.binary(max_size=200),
    st.builds(lambda cut: VALID[:cut], st.integers(0, len(VALID) - 1)),
    st.builds(
        lambda value: json.dumps(value).encode(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
            ),
            max_leaves=12,
        ),
    ),
)


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=BODIES)
def test_fuzzed_bodies_never_reach_a_5xx_or_internal(server: ServerUrl, body: bytes) -> None:
    with httpx.Client(base_url=server) as client:
        response = post(client, body)
    assert response.status_code < 500, (body[:200], response.text)
    assert "INTERNAL" not in response.text and not leaks_in(response.text), (body[:200], response.text)
    if response.status_code >= 400:
        assert_refused_cleanly(response)
