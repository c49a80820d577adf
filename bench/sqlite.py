"""Count queries and the status change's cost on SQLite (docs/benchmarks.md, whose Method section tells how)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.dialects import sqlite as sqlite_dialect

from bench import common
from bench.common import POOL, RESULTS, VARIANTS, WARM_POOL, Cell, audit, log, org_name, run_async, self_cpu, token
from db.aggregates import LOAD_STATUS_COUNTERS, LOAD_TYPE_COUNTERS
from db.migrate import upgrade

PROFILES = {"full": common.FULL, "quick": common.QUICK}
NAMES = {"floor": "floor", "tally": "**Tally**", "uncached": "Tally, count cache off", "naive": "naive"}
REFERENCE = "Tally app (reference)"
STATS_ROW = "SELECT * FROM organization_stats WHERE org_id = ?"
# Status of load number x (1-based) within its org: 40% OPEN, 30% ASSIGNED, 20% COMPLETED, 10% CANCELED;
# then the other columns (load_type: 50% CONTRACT, 30% SPOT, 20% UNMAPPED).
STATUS_SQL = (
    "CASE WHEN x % 10 < 4 THEN 'OPEN' WHEN x % 10 < 7 THEN 'ASSIGNED' "
    "WHEN x % 10 < 9 THEN 'COMPLETED' ELSE 'CANCELED' END"
)
TYPE_SQL = "CASE WHEN (x / 10) % 10 < 5 THEN 'CONTRACT' WHEN (x / 10) % 10 < 8 THEN 'SPOT' ELSE 'UNMAPPED' END"
LOAD_COLUMNS = (
    "org_id, status, load_type, requires_manual_review, load_number, hcr, trip_number, created_at, updated_at"
)
LOAD_VALUES = f"{TYPE_SQL}, false, 'L' || x, 'HCR' || (x % 997), 'T' || (x % 31)"
STAMP = "2026-01-01 00:00:00.000000"
MUTATION_ORG = "org_mut"
MUTATION_ORG_LOADS = 20_000


@dataclass(frozen=True)
class Seeded:
    path: Path
    url: str
    orgs: dict[str, int]  # org_id -> number of loads
    seconds: float
    file_bytes: int


def stats_from_recount(stamp: str) -> str:
    """The INSERT of every org's organization_stats row from a recount of its loads (`stamp`: the timestamps)."""
    counters = {f"status = '{v}'": c for v, c in LOAD_STATUS_COUNTERS.items()}
    counters |= {f"load_type = '{v}'": c for v, c in LOAD_TYPE_COUNTERS.items()}
    recounts = ", ".join(f"(SELECT count(*) FROM loads l WHERE l.org_id = o.org_id AND l.{c})" for c in counters)
    columns = f"org_id, {', '.join(counters.values())}, version, updated_at, last_recalculated_at"
    return f"INSERT INTO organization_stats ({columns}) SELECT o.org_id, {recounts}, 1, {stamp}, {stamp} FROM organizations o"


def seed(path: Path, copies: dict[int, int]) -> Seeded:
    """A fresh database at `path` holding `copies[size]` orgs of each size, plus the mutation org."""
    started = time.perf_counter()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url)
    orgs = {org_name(size, k): size for size, n in copies.items() for k in range(1, n + 1)}
    orgs[MUTATION_ORG] = MUTATION_ORG_LOADS
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for pragma in ("journal_mode=WAL", "synchronous=OFF", "cache_size=-262144"):
            conn.execute(f"PRAGMA {pragma}")
        conn.execute("BEGIN")
        # Indexes are rebuilt after the bulk insert (much faster than maintaining them row by row).
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='loads' AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        conn.executemany(
            "INSERT INTO organizations (org_id, name, created_at) VALUES (?, ?, ?)",
            [(org_id, f"Bench {org_id}", STAMP) for org_id in orgs],
        )
        conn.executemany(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) "
            f"INSERT INTO loads ({LOAD_COLUMNS}) SELECT ?, {STATUS_SQL}, {LOAD_VALUES}, ?, ? FROM n",
            [(size, org_id, STAMP, STAMP) for org_id, size in orgs.items()],
        )
        for _, sql in indexes:
            conn.execute(sql)
        conn.execute("DELETE FROM organization_stats")
        conn.execute(stats_from_recount("?1"), (STAMP,))
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return Seeded(path, url, orgs, time.perf_counter() - started, path.stat().st_size)


def run(profile: common.Profile) -> dict[str, Any]:
    seeded = seed(RESULTS / f"bench-{profile.name}.db", dict.fromkeys(profile.sizes, 1))
    log(f"seeded {sum(seeded.orgs.values()):,} loads in {seeded.seconds:.1f} s ({seeded.file_bytes / 1e6:.0f} MB)")
    orgs = [org_name(size) for size in profile.sizes]
    tokens = {org: token(org) for org in [*orgs, MUTATION_ORG]}
    checks = run_async(audit(seeded.url, orgs, []))
    expected = {check["org"]: common.count_answer(check["actual"]) for check in checks}
    floor_bodies = RESULTS / f"floor-{profile.name}.json"
    floor_bodies.write_text(json.dumps({f"/floor/{org}": expected[org] for org in orgs}))
    env = {"BENCH_DATABASE_URL": seeded.url, "BENCH_FLOOR_BODIES": str(floor_bodies)}
    needed = POOL * (4 * profile.mutation_rounds + 1) + WARM_POOL * (2 * profile.mutation_rounds + 1)
    pools = common.Pools(run_async(common.first_ids(seeded.url, MUTATION_ORG, needed)))

    def changes(server: str, variant: str, label: str, aggregate: bool) -> Cell:
        window, warm = (common.toggles([(server, 1)], aggregate, pools.take(aggregate, n)) for n in (POOL, WARM_POOL))
        return common.closed_loop(window, variant, label, profile, 1, tokens[MUTATION_ORG], warmup=warm)

    with common.app_servers(*((variant, f"{variant}_app", env) for variant in NAMES)) as up:
        servers = dict(zip(NAMES, up, strict=True))
        reads = common.count_reads(servers, tokens, expected, profile)
        log("countLoadsByStatus on Tally, the orgs side by side (one service token, one wrk process per org)")
        tally, service, interleaved = servers["tally"], token(None, "service"), []
        for n in (1, 16):
            each = max(1, n // len(orgs))
            streams = [common.Stream(tally, each, [common.count_body(o)], expected[o], k) for k, o in enumerate(orgs)]
            variant = "tally, orgs interleaved"
            interleaved.append(common.closed_loop(streams, variant, "all orgs", profile, n, service))
        log("status change over HTTP, one client (rounds alternate which variant goes first)")
        http = [
            changes(servers["naive"], VARIANTS[aggregate], f"round {i // 2 + 1}", aggregate)
            for i, (_, aggregate) in enumerate(common.alternating(profile.mutation_rounds))
        ]
        http.append(changes(servers["tally"], REFERENCE, "reference", True))

    log("status change at the db layer, in process (servers stopped)")

    def ids(aggregate: bool, _writers: int) -> list[int]:
        return pools.take(aggregate)

    db = run_async(common.db_layer(seeded.url, "db layer", profile, (1,), ids, {}, MUTATION_ORG))
    log("where a read spends its time (in process)")
    calls = 100 if profile.name == "quick" else 600
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        spent = fresh.submit(in_fresh_process, str(seeded.path), seeded.url, orgs[-1], tokens[orgs[-1]], calls).result()
    changed = [c for c in [*http, *db] if c.variant in (VARIANTS[True], REFERENCE)]
    answered, sent = sum(c.answered for c in changed), sum(c.sent or c.answered for c in changed)
    (exact,) = run_async(audit(seeded.url, [MUTATION_ORG], pools.without_aggregate, MUTATION_ORG))
    ok = exact["ok"] and answered <= exact["version"] - 1 <= sent
    exact.update(changes=answered, abandoned=sent - answered, ok=ok)
    return {
        **report(reads, interleaved, http, db),
        **spent,
        "profile": profile.__dict__,
        "ok": exact["ok"],
        "exact": exact,
        "seeded": {"orgs": seeded.orgs, "seconds": seeded.seconds, "mb": seeded.file_bytes / 1e6},
    }


def report(reads: list[Cell], interleaved: list[Cell], http: list[Cell], db: list[Cell]) -> dict[str, Any]:
    """The measurements as the template shapes them: rows, and the status changes pooled per variant."""
    orgs = list(dict.fromkeys(c.label for c in reads))
    mutations = []
    for name in (*VARIANTS.values(), REFERENCE):
        group = [c for c in http if c.variant == name]
        mutations.append({**common.pooled(group), "name": name, "run": "all"})
        if len(group) > 1:
            mutations += [{**c.row(), "name": name, "run": c.label} for c in group]
    return {
        "reads": [{**c.row(), "name": NAMES[c.variant]} for c in reads],
        "interleaved": [
            {**stats, "clients": c.concurrency, "org": org}
            for c in interleaved
            for org, stats in zip(orgs, c.split(), strict=True)
        ],
        "mutations": mutations,
        "http": common.sides(http),
        "db": common.sides(db),
        "foreign": common.disturbance([*reads, *http, *db]),
    }


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


async def breakdown(path: str, url: str, org_id: str, token: str, calls: int) -> dict[str, Any]:
    import aiosqlite

    from bench.common import database
    from bench.servers import tally_app, uncached_app
    from db.queries import get_stats
    from edge.tokens import TokenVerifier
    from settings import DEV_SECRET

    steps: dict[str, dict[str, Any]] = {}

    async def timed(key: str, step: Callable[[], Awaitable[Any]]) -> None:
        for _ in range(calls // 10):
            await step()
        with common.counting_round_trips() as trips:
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
    async with database(url) as db:
        await timed("read-session", lambda: db.read(lambda s: get_stats(s, org_id)))
        await timed("read", lambda: db.read_stats(org_id))
    labels = {"tally": "Tally's countLoadsByStatus read (`get_stats`)", "naive": "the naive resolver"}
    with closing(sqlite3.connect(path)) as conn:
        plans = [
            {"what": labels[k], "sql": sql, "plan": [r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql)]}
            for k, sql in common.count_statements(org_id, sqlite_dialect.dialect()).items()
        ]

    app, uncached = tally_app(url), uncached_app(url)
    body = common.count_body(org_id).encode()
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


def in_fresh_process(*args: Any) -> dict[str, Any]:
    """Where a Tally read spends its time, step by step (run in a fresh process)."""
    return run_async(breakdown(*args))
