"""PostgreSQL (docs/benchmarks-postgres.md, whose Method section tells how); needs PostgreSQL and Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
import redis

from bench import common
from bench.common import ALSO_OURS, Cell, Pools, Profile, app_servers, audit, log, org_name, run_async
from bench.sqlite import seed
from tests.scrape import live_figures, scrape

PROFILES = {"full": replace(common.FULL, db_ops_seconds=4.0, retry_until=240.0), "quick": common.QUICK}
NAMES = ("tally", "uncached", "naive")  # bench/servers.py's *_app
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
C = {  # the scenario's constants, also in the report
    "hot_org": "org_hot", "reference_org": "org_hot_ref", "writers": (1, 8, 32, 64), "shards": (1, 16),
    "judged_at": 32, "target": 0.7, "http_pool": 1000, "warm_pool": 256, "loads_per_writer": 4,
}  # fmt: skip
SERVICES = ("postgres", "redis-server")  # process names
HEALTH = ("published", "publish_failures", "reconnects")  # tally_live_* of /metrics, summed over the servers
HOT, REFERENCE, WRITERS, SHARDS = C["hot_org"], C["reference_org"], C["writers"], C["shards"]


async def sql(dsn: str, statement: str, *args: Any) -> Any:
    """One statement on its own connection (outside any transaction); its rows."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(statement, *args)
    finally:
        await conn.close()


def service_cpu() -> float:
    """CPU seconds so far of the PostgreSQL and Redis server processes (with the backends PostgreSQL has reaped)."""
    stats = [common.read(str(path)) for path in Path("/proc").glob("[0-9]*/stat")]
    ours = [s.rsplit(")", 1)[1].split() for s in stats if s[s.find("(") + 1 : s.rfind(")")] in SERVICES]
    return sum(int(v) for fields in ours for v in fields[11:15]) / common.TICK


def environment(server: str) -> dict[str, str]:
    settings = "shared_buffers", "synchronous_commit", "fsync", "max_connections"
    query = f"SELECT version(), {', '.join(f'current_setting({s!r})' for s in settings)}"
    version, *values = run_async(sql(f"{server}/postgres", query))[0]
    with redis.Redis.from_url(REDIS_URL) as client:
        redis_version = client.info("server")["redis_version"]
    settings_now = ", ".join(f"{s} {v}" for s, v in zip(settings, values, strict=True))
    return {
        "Drivers": ", ".join(f"{name} {metadata.version(name)}" for name in ("asyncpg", "redis", "broadcaster")),
        "PostgreSQL": f"{version.split(' on ')[0]} at {server}: {settings_now}",
        "Redis": f"{redis_version} at {REDIS_URL}",
    }


def shards(n: int) -> str:
    return f"{n} shard{'s' if n > 1 else ''}"


@contextmanager
def scratch_database(server: str, prefix: str, count_cpu: bool = True) -> Iterator[tuple[str, str]]:
    """A new database (its asyncpg DSN and SQLAlchemy URL), PostgreSQL's and Redis' CPU counted as ours unless
    `count_cpu` is false (a second database of the same run: that CPU is counted once); dropped after."""
    name, admin = f"{prefix}_{uuid.uuid4().hex[:8]}", f"{server}/postgres"
    run_async(sql(admin, f'CREATE DATABASE "{name}"'))
    if count_cpu:
        ALSO_OURS.append(service_cpu)
    try:
        yield f"{server}/{name}", f"{server.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
    finally:
        if count_cpu:
            ALSO_OURS.remove(service_cpu)
        run_async(sql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run(profile: Profile, server: str) -> dict[str, Any]:
    with scratch_database(server, "tally_bench") as (dsn, url):
        log(f"PostgreSQL benchmark ({profile.name}) in database {dsn.rsplit('/', 1)[1]}")
        return {**measure_all(profile, url), "machine": environment(server)}


def measure_all(profile: Profile, url: str) -> dict[str, Any]:
    hot_needed = len(SHARDS) * len(WRITERS) * 2 * profile.mutation_rounds * (C["http_pool"] + C["warm_pool"])
    db_share = 2 * max(WRITERS) * C["loads_per_writer"]
    orgs = {org_name(size): size for size in profile.sizes} | {HOT: hot_needed + db_share, REFERENCE: 1_000}
    seconds = run_async(seed(url, orgs, all_open=(HOT,)))
    log(f"seeded {sum(orgs.values()):,} loads in {seconds:.1f} s")
    tokens = {org: common.token(org) for org in orgs}
    before = run_async(audit(url, list(orgs), []))
    if not all(check["ok"] for check in before):
        raise RuntimeError("the seeded organization_stats differ from a recount")
    expected = {c["org"]: common.count_answer(c["actual"]) for c in before if c["org"] not in (HOT, REFERENCE)}
    with app_servers(*((f"pg-{v}", f"{v}_app", {"BENCH_DATABASE_URL": url}) for v in NAMES)) as up:
        reads = common.count_reads(dict(zip(NAMES, up, strict=True)), tokens, expected, profile)
    hot = replace(profile, warmup=min(profile.warmup, 1.0), duration=min(profile.duration, 5.0))
    ids = run_async(common.first_ids(url, HOT, hot_needed + db_share))
    pools, db_ids = Pools(ids[:hot_needed]), {True: ids[hot_needed::2], False: ids[hot_needed + 1 :: 2]}
    http, health = hot_over_http(url, pools, tokens[HOT], hot)
    db, state = [], {}

    def loads(aggregate: bool, writers: int) -> list[int]:
        return db_ids[aggregate][: writers * C["loads_per_writer"]]

    for n in SHARDS:
        log(f"hot org at the db layer, {shards(n)} (in process)")
        options = {"pool_size": max(WRITERS), "stats_shards": n}
        db += run_async(common.db_layer(url, shards(n), hot, WRITERS, loads, state, HOT, **options))
    with app_servers(("hot-read", "tally_app", {"BENCH_DATABASE_URL": url})) as (tally,):
        read = common.side_by_side(tally, [HOT, REFERENCE], 1, hot).row()
    checks = run_async(audit(url, list(orgs), [*pools.without_aggregate, *db_ids[False]], HOT))
    for c in checks:
        log(f"  {c['org']}: {'exact' if c['ok'] else 'NOT EXACT'} (bypassed {c['bypassed']}) {c['delta']}")
    return {
        "reads": [c.row() for c in reads], "foreign": common.disturbance([*reads, *http, *db]),
        "hot": {"http": common.pairs(http), "db": common.pairs(db)}, "read": read, "profile": profile.__dict__,
        "hot_profile": hot.__dict__, "c": C, "plans": run_async(common.plans(url, org_name(profile.sizes[-1]))),
        "health": health, "checks": checks, "ok": all(c["ok"] for c in checks),
        "seeded": {"orgs": orgs, "seconds": seconds},
    }  # fmt: skip


def hot_over_http(url: str, pools: Pools, bearer: str, profile: Profile) -> tuple[list[Cell], list[dict[str, Any]]]:
    """The hot org's status changes through two naive_app processes per shard count; their broadcast health."""
    cells, health = [], []
    for n in SHARDS:
        log(f"hot org over HTTP, {shards(n)}: two processes, {'/'.join(map(str, WRITERS))} writers")
        env = {"BENCH_DATABASE_URL": url, "BENCH_BROADCAST_URL": REDIS_URL, "BENCH_STATS_SHARDS": str(n)}
        with app_servers(*((f"hot{n}-{x}", "naive_app", env) for x in "ab")) as up:  # two processes
            sizes = (C["http_pool"], C["warm_pool"])
            cells += common.status_changes(up, WRITERS, pools, profile, bearer, shards(n), sizes)
            live = [live_figures(scrape(server)) for server in up]
        health.append({"label": shards(n), **{k: sum(f[k] for f in live) for k in HEALTH}})
    return cells, health
