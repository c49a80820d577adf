"""PostgreSQL (docs/benchmarks-postgres.md); needs PostgreSQL (--server) and Redis (BENCH_REDIS_URL).

In a uniquely named database (dropped at the end), migrated by Tally and seeded with
`generate_series` (organization_stats by the app's own recalculation, then VACUUM ANALYZE):
countLoadsByStatus at 1 and 16 clients, Tally against the naive GROUP BY (bench/servers.py),
interleaved per org and clients; a 90/10 read/write mix from 16 clients over two Tally processes
sharing a Redis broadcast; the hot org: status changes of one org from 1..64 writers with and
without the aggregate, for 1 and 16 stats shards, over HTTP (two processes) and at the db layer;
and every org's stats against a recount (the hot org's off by exactly what the without-aggregate
runs changed).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
import redis
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql

from bench.common import TICK, app_servers, human, log, run_async, summarize, token
from bench.measure import (
    ALSO_OURS,
    QUICK,
    VARIANTS,
    Cell,
    Pools,
    Profile,
    alternating,
    count_answer,
    count_body,
    db_writers,
    log_cell,
    measure,
    pooled,
    post,
    toggle_bodies,
)
from bench.seed import STATUS_SQL, TYPE_SQL, org_name
from bench.servers import write_without_aggregate
from db.aggregates import STATS_QUERY
from db.migrate import upgrade_async
from db.models import Load
from db.recalculation import drift_report, recalculate
from db.unit_of_work import Database
from tests.scrape import live_figures, scrape

PROFILES = {"full": Profile("full", (1_000, 100_000, 1_000_000), 2.0, 8.0, 400, 20.0, 2, 4.0, 240.0), "quick": QUICK}
LOADS_SQL = f"""INSERT INTO loads (org_id, status, load_type, requires_manual_review, load_number, hcr, trip_number, created_at, updated_at)
    SELECT $1, {{status}}, {TYPE_SQL}, false, 'L' || x, 'HCR' || (x % 997), 'T' || (x % 31), $2, $2 FROM generate_series(1, $3::int) AS n(x)"""
NAMES = {"tally": "**Tally**", "uncached": "Tally, count cache off", "naive": "naive"}  # bench/servers.py: {variant}_app
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
C = {
    "mixed_clients": 16, "reads_per_write": 9, "mixed_pool": 1000, "hot_org": "org_hot", "reference_org": "org_hot_ref",
    "writers": (1, 8, 32, 64), "shards": (1, 16), "judged_at": 32, "target": 0.7, "http_pool": 1000, "loads_per_writer": 4,
}
HOT, REFERENCE, WRITERS, SHARDS = C["hot_org"], C["reference_org"], C["writers"], C["shards"]
VERDICTS = {
    "saturated": "The two cores (servers, PostgreSQL, Redis, load generator) are saturated at this concurrency, so throughput follows CPU per change: what the aggregate costs here is CPU, not idle waiting",
    "waiting": "Throughput falls further than CPU per change explains: the rest is idle waiting (for the stats row's lock, or for commits to be flushed)",
    "absorbed": "Throughput falls less than CPU per change would predict: the baseline did not saturate the cores (its changes wait too, e.g. for commits to be flushed), so idle time absorbed part of the aggregate's extra CPU",
}


async def sql(dsn: str, statement: str, *args: Any) -> Any:
    """One statement on its own connection (outside any transaction); its rows."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(statement, *args)
    finally:
        await conn.close()


def service_cpu() -> float:
    """CPU seconds so far of the PostgreSQL and Redis server processes (with the backends PostgreSQL has reaped)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if text[text.find("(") + 1 : text.rfind(")")] in ("postgres", "redis-server"):
            ticks += sum(int(v) for v in text.rsplit(")", 1)[1].split()[11:15])
    return ticks / TICK


async def seed(dsn: str, url: str, orgs: dict[str, tuple[int, str]]) -> float:
    """orgs: org_id -> (loads, SQL status expression of x); the seconds it took."""
    started = time.perf_counter()
    await upgrade_async(url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET session_replication_role = replica")  # no per-row FK triggers while loading
        stamp = datetime(2026, 1, 1, tzinfo=UTC)
        for org_id, (size, status) in orgs.items():
            await conn.execute("INSERT INTO organizations (org_id, name, created_at) VALUES ($1, $2, $3)", org_id, org_id, stamp)
            await conn.execute(LOADS_SQL.format(status=status), org_id, stamp, size)
    finally:
        await conn.close()
    db = Database(url)
    logging.getLogger("tally.recalculation").setLevel(logging.ERROR)  # every counter it fills in would be logged as drift
    try:
        await recalculate(db, None, "bench-seed")
    finally:
        logging.getLogger("tally.recalculation").setLevel(logging.NOTSET)
        await db.dispose()
    await sql(dsn, "VACUUM ANALYZE")  # statistics, and the visibility map for index-only scans
    return time.perf_counter() - started


async def open_ids(dsn: str, org_id: str, count: int) -> list[int]:
    rows = await sql(dsn, "SELECT id FROM loads WHERE org_id = $1 AND status = 'OPEN' ORDER BY id LIMIT $2", org_id, count)
    if len(rows) < count:
        raise RuntimeError(f"only {len(rows)} OPEN loads in {org_id}")
    return [row[0] for row in rows]


async def plans(dsn: str, org_id: str) -> list[dict[str, Any]]:
    """EXPLAIN ANALYZE of Tally's count statement and of the naive resolver's, for one org."""
    naive = select(Load.status, func.count()).where(Load.org_id == org_id).group_by(Load.status)
    out = []
    for what, statement in (("Tally (STATS_QUERY)", STATS_QUERY.params(org_id=org_id)), ("naive", naive)):
        text = str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
        out.append({"what": what, "sql": " ".join(text.split()), "plan": [row[0] for row in await sql(dsn, f"EXPLAIN (ANALYZE, BUFFERS) {text}")]})
    return out


async def drifts(url: str, orgs: list[str]) -> dict[str, dict[str, Any]]:
    """org -> the app's drift report: stored counters vs a recount, read in one snapshot."""
    db = Database(url)
    try:
        return {org: vars(await drift_report(db, org)) for org in orgs}
    finally:
        await db.dispose()


def shards(n: int) -> str:
    return f"{n} shard{'s' if n > 1 else ''}"


async def hot_db_layer(url: str, ids: dict[bool, list[int]], profile: Profile) -> list[Cell]:
    """Per shard count, writer count and variant: writers as tasks in this process, each toggling its own loads."""
    state: dict[int, str] = {}
    cells = []
    for n in SHARDS:
        log(f"hot org at the db layer, {shards(n)} (in process)")
        db = Database(url, pool_size=max(WRITERS), stats_shards=n)  # no after-commit hooks: no publishing
        try:
            for writers, aggregate in alternating(profile.mutation_rounds, WRITERS):
                write = db.write if aggregate else partial(write_without_aggregate, db)
                cell = await db_writers(write, ids[aggregate][: writers * C["loads_per_writer"]], state, HOT, writers, profile)
                cell.variant, cell.label = VARIANTS[aggregate], shards(n)
                cells.append(cell)
                log_cell(f"db layer {cell.variant} {cell.label} w={writers}", cell)
        finally:
            await db.dispose()
    return cells


def run(profile: Profile, server: str) -> dict[str, Any]:
    name = f"tally_bench_{os.getpid()}_{int(time.time())}"
    dsn, url = f"{server}/{name}", f"{server.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
    run_async(sql(f"{server}/postgres", f'CREATE DATABASE "{name}"'))
    log(f"PostgreSQL benchmark ({profile.name}) in database {name}")
    ALSO_OURS.append(service_cpu)
    try:
        rounds = profile.mutation_rounds
        hot_needed = len(SHARDS) * len(WRITERS) * 2 * rounds * C["http_pool"] + 2 * max(WRITERS) * C["loads_per_writer"]
        orgs = {org_name(size): (size, STATUS_SQL) for size in profile.sizes} | {HOT: (hot_needed, "'OPEN'"), REFERENCE: (1_000, STATUS_SQL)}
        seconds = run_async(seed(dsn, url, orgs))
        log(f"seeded {sum(size for size, _ in orgs.values()):,} loads in {seconds:.1f} s")
        tokens = {org: token(org) for org in orgs}
        before = run_async(drifts(url, list(orgs)))
        if any(d["stored"].counts != d["actual"] for d in before.values()):
            raise RuntimeError("the seeded organization_stats differ from a recount")
        counted = [org_name(size) for size in profile.sizes]
        expected = {org: count_answer(before[org]["actual"]) for org in counted}
        reads = []
        with app_servers(*((f"pg-{v}", f"{v}_app", {"BENCH_DATABASE_URL": url}) for v in NAMES)) as up:
            for org in counted:
                for variant, srv in zip(NAMES, up, strict=True):
                    if (answer := post(f"{srv}/graphql", count_body(org), tokens[org])) != expected[org]:
                        raise RuntimeError(f"{variant} answers {answer} for {org}, expected {expected[org]}")
            log(f"countLoadsByStatus, {', '.join(NAMES)} interleaved per org and clients")
            retry_until = time.monotonic() + profile.retry_until
            for size, org in zip(profile.sizes, counted, strict=True):
                for clients in (1, 16):
                    for variant, srv in zip(NAMES, up, strict=True):
                        reads.append(measure(srv, variant, human(size), token=tokens[org], bodies=[count_body(org)], expect=expected[org],
                                             concurrency=clients, profile=profile, retry_until=retry_until))
        largest = counted[-1]
        explained = run_async(plans(dsn, largest))
        ids = run_async(open_ids(dsn, largest, C["mixed_pool"]))
        bodies = [body for write in toggle_bodies(True, ids) for body in (write, *[count_body(largest)] * C["reads_per_write"])]
        env = {"BENCH_DATABASE_URL": url, "BENCH_BROADCAST_URL": REDIS_URL}
        log(f"mixed workload on {largest}: {C['mixed_clients']} clients over two Tally processes")
        with app_servers(("mixed-a", "tally_app", env), ("mixed-b", "tally_app", env)) as up:
            mixed = measure(up, "tally, 90% reads / 10% writes", largest, token=tokens[largest], bodies=bodies, concurrency=C["mixed_clients"],
                            profile=replace(profile, duration=2 * profile.duration), split=True)

        hot_profile = replace(profile, warmup=min(profile.warmup, 1.0), duration=min(profile.duration, 5.0))
        ids = run_async(open_ids(dsn, HOT, hot_needed))
        db_share = 2 * C["loads_per_writer"] * max(WRITERS)
        db_ids, pools = {True: ids[-db_share::2], False: ids[-db_share + 1 :: 2]}, Pools(ids[:-db_share])
        http, health = [], []
        for n in SHARDS:
            env = {"BENCH_DATABASE_URL": url, "BENCH_BROADCAST_URL": REDIS_URL, "BENCH_STATS_SHARDS": str(n)}
            log(f"hot org over HTTP, {shards(n)}: two processes, {'/'.join(map(str, WRITERS))} writers")
            with app_servers((f"hot{n}-a", "naive_app", env), (f"hot{n}-b", "naive_app", env)) as up:
                for writers, aggregate in alternating(rounds, WRITERS):
                    http.append(measure(up, VARIANTS[aggregate], shards(n), token=tokens[HOT], concurrency=writers, profile=hot_profile,
                                        bodies=toggle_bodies(aggregate, pools.take(aggregate=aggregate, size=C["http_pool"]))))
                figures = [live_figures(scrape(s)) for s in up]
                health.append({"shards": shards(n), **{k: sum(f[k] for f in figures) for k in ("published", "publish_failures", "reconnects")}})
        db = run_async(hot_db_layer(url, db_ids, hot_profile))
        with app_servers(("hot-read", "tally_app", {"BENCH_DATABASE_URL": url})) as (tally,):
            read = measure(tally, "tally, orgs interleaved", "sharded vs one row", token=token(None, "service", 3600), concurrency=1,
                           bodies=[count_body(HOT), count_body(REFERENCE)], profile=hot_profile, split=True)

        without = [*pools.without_aggregate, *db_ids[False]]
        bypassed = run_async(sql(dsn, "SELECT count(*) FROM loads WHERE status = 'ASSIGNED' AND id = ANY($1)", without))[0][0]
        checks = []
        for org, drift in run_async(drifts(url, list(orgs))).items():
            delta = {c: drift["actual"][c] - drift["stored"].counts[c] for c in drift["actual"]}
            allowed = bypassed if org == HOT else 0
            want = {c: {"loads_open": -allowed, "loads_assigned": allowed}.get(c, 0) for c in delta}
            checks.append({"org": org, "ok": delta == want, "bypassed": allowed, "delta": {c: v for c, v in delta.items() if v}})
            log(f"  {checks[-1]}")
    finally:
        ALSO_OURS.remove(service_cpu)
        run_async(sql(f"{server}/postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    data = report(profile, reads, http, db, mixed, read, hot_profile)
    return {**data, "plans": explained, "health": health, "checks": checks, "ok": all(c["ok"] for c in checks), "seeded": {"orgs": {o: s for o, (s, _) in orgs.items()}, "seconds": seconds},
            "cells": [c.json() for c in [*reads, *http, *db, mixed, read]], "machine": environment(server)}


def environment(server: str) -> dict[str, str]:
    settings = "SELECT version(), current_setting('shared_buffers'), current_setting('synchronous_commit'), current_setting('fsync'), current_setting('max_connections')"
    version, buffers, sync_commit, fsync, connections = run_async(sql(f"{server}/postgres", settings))[0]
    with redis.Redis.from_url(REDIS_URL) as client:
        redis_version = client.info("server")["redis_version"]
    return {
        "Drivers": ", ".join(f"{name} {metadata.version(name)}" for name in ("asyncpg", "redis", "broadcaster")),
        "PostgreSQL": f"{version.split(' on ')[0]} at {server}: shared_buffers {buffers}, synchronous_commit {sync_commit}, fsync {fsync}, max_connections {connections}",
        "Redis": f"{redis_version} at {REDIS_URL}",
    }


def pairs(cells: list[Cell]) -> list[dict[str, Any]]:
    """Per (shards, writers): both variants pooled over their rounds."""
    out = []
    for label in map(shards, SHARDS):
        for writers in WRITERS:
            w, wo = ([c for c in cells if (c.variant, c.label, c.concurrency) == (name, label, writers)] for name in VARIANTS.values())
            if w and wo:
                a, b = pooled(w), pooled(wo)
                out.append({"shards": label, "writers": writers, "with": a, "without": b, "foreign": max((f for f in (a["foreign"], b["foreign"]) if f is not None), default=None)})
    return out


def report(profile: Profile, reads: list[Cell], http: list[Cell], db: list[Cell], mixed: Cell, read: Cell, hot_profile: Profile) -> dict[str, Any]:
    labels = [human(size) for size in profile.sizes]
    small, large = labels[0], labels[-1]
    cell = {(c.variant, c.label, c.concurrency): c for c in reads}

    def s(variant: str, label: str, clients: int) -> dict[str, Any]:
        c = cell[(variant, label, clients)]
        return {**c.stats, "org": label, "clients": clients, "name": NAMES[variant], "cpu": c.server_cpu, "db_cpu": c.also_cpu, "foreign": c.foreign}

    hot = {"http": pairs(http), "db": pairs(db)}
    judged = [{**p, "layer": layer} for layer, key in (("over HTTP", "http"), ("at the db layer (stricter, secondary)", "db")) for p in hot[key] if p["writers"] == C["judged_at"]]
    p = judged[0]
    total = {k: p[k]["server_cpu"] + p[k]["db_cpu"] for k in ("with", "without")}
    ratio, cpu_ratio = p["with"]["rps"] / p["without"]["rps"], total["without"] / total["with"]
    verdict = "saturated" if abs(ratio / cpu_ratio - 1) <= 0.15 else "waiting" if ratio < cpu_ratio else "absorbed"
    step = C["reads_per_write"] + 1
    kinds = {kind: sorted(v for i, samples in enumerate(mixed.by_body or []) if (i % step == 0) == (kind == "writes") for v in samples) for kind in ("reads", "writes")}
    hot_read, ref_read = read.split()
    foreign = [c.foreign for c in [*reads, *http, *db] if c.foreign is not None]
    return {
        "profile": profile.__dict__, "hot_profile": hot_profile.__dict__, "c": C, "small": small, "large": large,
        "foreign": {"mean": statistics.fmean(foreign) if foreign else None, "max": max(foreign, default=None)},
        "judged": judged,
        "at": {v: {f"{size}{'16' if n == 16 else ''}": s(v, label, n) for size, label in (("small", small), ("large", large)) for n in (1, 16)} for v in NAMES},
        "slowest": min((s("tally", label, 16) for label in labels), key=lambda r: r["rps"]),
        "counts": [{**s(v, label, n), "tally": None if v == "tally" else s("tally", label, n)} for label in labels for n in (1, 16) for v in NAMES],
        "hot": hot,
        "why": {**p, "total_with": total["with"], "total_without": total["without"], "verdict": VERDICTS[verdict]},
        "read": {"hot": hot_read, "ref": ref_read},
        "mixed": {"org": mixed.label, "seconds": mixed.seconds, "cpu": mixed.server_cpu, "foreign": mixed.foreign,
                  "kinds": [{"kind": kind, **summarize(samples, mixed.seconds)} for kind, samples in kinds.items()]},
    }
