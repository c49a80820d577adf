"""Where a Tally read spends its time, step by step, in a fresh process: `python -m bench.breakdown SPEC`.

Prints JSON: per step (the rows of docs/benchmarks.md's table) the median wall µs, the CPU µs per call
and the calls into aiosqlite's thread; and the SQLite query plans of Tally's read and the naive one's.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing, contextmanager
from typing import Any

from bench.common import ROOT, child_env, run_async, self_cpu
from bench.measure import count_body

NAIVE_SQL = "SELECT status, count(*) FROM loads WHERE org_id = ? GROUP BY status"  # what naive_app runs
STATS_ROW = "SELECT * FROM organization_stats WHERE org_id = ?"


def in_subprocess(path: str, url: str, org_id: str, token: str, calls: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.breakdown", json.dumps([path, url, org_id, token, calls])]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=child_env(), timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"the in-process breakdown failed:\n{done.stderr}")
    return json.loads(done.stdout)


@contextmanager
def counting_round_trips() -> Iterator[dict[str, int]]:
    """Counts calls from the event loop into aiosqlite's worker threads (its private
    `Connection._execute`, one per driver call; pinned by tests/test_private_apis.py)."""
    import aiosqlite.core

    counter, original = {"n": 0}, aiosqlite.core.Connection._execute

    async def counting(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        counter["n"] += 1
        return await original(self, fn, *args, **kwargs)

    aiosqlite.core.Connection._execute = counting  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        aiosqlite.core.Connection._execute = original  # type: ignore[method-assign]


async def call_asgi(app: Any, body: bytes, token: str) -> bytes:
    """One POST /graphql straight into an ASGI app (no server, no socket); the response body."""
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
    headers += [(b"authorization", f"Bearer {token}".encode()), (b"content-length", str(len(body)).encode())]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/graphql", "raw_path": b"/graphql", "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80), "state": {},
    }  # fmt: skip
    messages, chunks = [{"type": "http.request", "body": body, "more_body": False}], []

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return b"".join(chunks)


def query_plan(path: str, what: str, statement: str, parameters: Any) -> dict[str, Any]:
    with closing(sqlite3.connect(path)) as conn:
        plan = [row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + statement, parameters)]
    return {"what": what, "sql": " ".join(statement.split()), "plan": plan}


async def breakdown(path: str, url: str, org_id: str, token: str, calls: int) -> dict[str, Any]:
    import aiosqlite
    from sqlalchemy import event

    from bench.seed import database
    from bench.servers import tally_app, uncached_app
    from db.queries import get_stats
    from edge.tokens import TokenVerifier
    from settings import DEV_SECRET

    steps: dict[str, dict[str, Any]] = {}

    async def timed(key: str, step: Callable[[], Awaitable[Any]]) -> None:
        for _ in range(calls // 10):
            await step()
        with counting_round_trips() as trips:
            await step()
        samples, cpu_before = [], self_cpu()
        for _ in range(calls):
            started = time.perf_counter_ns()
            await step()
            samples.append(time.perf_counter_ns() - started)
        cpu = (self_cpu() - cpu_before) * 1e6 / calls
        steps[key] = {"us": sorted(samples)[calls // 2] / 1000, "trips": trips["n"], "cpu_us": cpu}

    with closing(sqlite3.connect(path)) as plain:

        async def direct() -> None:
            plain.execute(STATS_ROW, (org_id,)).fetchone()

        await timed("sqlite3", direct)
    async with aiosqlite.connect(path) as conn:

        async def raw() -> None:
            async with conn.execute(STATS_ROW, (org_id,)) as cursor:
                await cursor.fetchone()

        await timed("aiosqlite", raw)
    verifier = TokenVerifier(DEV_SECRET)
    await timed("jwt", lambda: verifier._verify_signature(token))
    await timed("jwt-cached", lambda: verifier.verify(token))
    captured: list[tuple[str, Any]] = []
    async with database(url) as db:
        await timed("read-session", lambda: db.read(lambda s: get_stats(s, org_id)))
        await timed("read", lambda: db.read_stats(org_id))

        def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT"):
                captured.append((statement, parameters))

        event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
        await db.read(lambda s: get_stats(s, org_id))
        event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
    plans = [query_plan(path, "Tally's countLoadsByStatus read (`get_stats`)", *select) for select in captured]
    plans.append(query_plan(path, "the naive resolver", NAIVE_SQL, (org_id,)))

    os.environ["BENCH_DATABASE_URL"] = url
    app, uncached = tally_app(), uncached_app()
    body = count_body(org_id).encode()
    for server in (app, uncached):
        answer = json.loads(await call_asgi(server, body, token))
        if "errors" in answer or answer.get("data", {}).get("countLoadsByStatus") is None:
            raise RuntimeError(f"in-process Tally app failed: {answer}")
    try:
        await timed("app", lambda: call_asgi(app, body, token))
        await timed("app-uncached", lambda: call_asgi(uncached, body, token))
        for concurrency in (1, 16):
            done, stop = [0], time.perf_counter() + (0.5 if calls < 500 else 3.0)

            async def caller(done: list[int] = done, stop: float = stop) -> None:
                while time.perf_counter() < stop:
                    await call_asgi(app, body, token)
                    done[0] += 1

            started = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(concurrency)))
            steps[f"rate{concurrency}"] = {"us": done[0] / (time.perf_counter() - started)}  # requests/s
    finally:
        await app.state.db.dispose()
        await uncached.state.db.dispose()
    return {"step": steps, "plans": plans}


if __name__ == "__main__":
    print(json.dumps(run_async(breakdown(*json.loads(sys.argv[1])))))
