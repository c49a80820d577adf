"""PostgreSQL (docs/benchmarks-postgres.md); needs PostgreSQL (--server) and Redis (BENCH_REDIS_URL).

1. Creates a uniquely named database (dropped at the end), migrates it with Tally's
   migrations and seeds orgs of 1k, 100k and 1M loads (1k and 10k with --quick), the hot
   org and its reference org with `INSERT ... SELECT FROM generate_series`; fills
   organization_stats with the app's own recalculation, then VACUUM ANALYZE.
2. countLoadsByStatus over HTTP at 1 and 16 clients: Tally against the naive GROUP BY
   resolver (bench/servers.py), one uvicorn process each, interleaved per org and clients.
3. Mixed workload on the largest org: 90% countLoadsByStatus, 10% updateLoadStatus from
   16 closed-loop clients over two Tally processes sharing the database and a Redis broadcast.
4. The hot org (bench/hot_org.py): over HTTP and at the db layer, 1 and 16 stats shards.
5. Checks every org's stats against a recount (the hot org: off by exactly what its
   without-aggregate runs changed).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
import redis
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql

from bench import hot_org
from bench.common import app_servers as running
from bench.common import cpu, human, log, met, ms, rate, run_async, share, summarize, table, token, x
from bench.hot_org import HOT_ORG, REFERENCE_ORG
from bench.measure import (
    ALSO_OURS,
    QUICK,
    RETRY_DEADLINE,
    SET_STATUS,
    Cell,
    Pools,
    Profile,
    cells,
    count_answer,
    count_body,
    measure,
    measure_read,
    post,
    toggle_bodies,
)
from bench.seed import STATUS_SQL, TYPE_SQL, org_name
from db.aggregates import STATS_QUERY
from db.migrate import upgrade_async
from db.models import Load
from db.recalculation import drift_report, recalculate
from db.unit_of_work import Database

FULL = Profile("full", (1_000, 100_000, 1_000_000), 2.0, 8.0, 400, 20.0, 2, 4.0, 240.0)
PROFILES = {"full": FULL, "quick": QUICK}
STAMP = datetime(2026, 1, 1, tzinfo=UTC)
LOADS_SQL = f"""
    INSERT INTO loads (org_id, status, load_type, requires_manual_review, load_number, hcr, trip_number,
                       created_at, updated_at)
    SELECT $1, {{status}}, {TYPE_SQL}, false, 'L' || x, 'HCR' || (x % 997), 'T' || (x % 31), $2, $2
    FROM generate_series(1, $3::int) AS n(x)
"""
COUNT_VARIANTS = ("tally", "uncached", "naive")  # bench/servers.py: {variant}_app
VARIANT_NAMES = {"tally": "**Tally**", "uncached": "Tally, count cache off", "naive": "naive"}
MIXED_CLIENTS = 16
READS_PER_WRITE = 9
MIXED_POOL = 1000
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")


def sqlalchemy_url(server: str, name: str) -> str:
    return f"{server.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"


async def sql(dsn: str, statement: str, *args: Any) -> Any:
    """One statement on its own connection (outside any transaction); its rows."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(statement, *args)
    finally:
        await conn.close()


def service_cpu() -> float:
    """CPU seconds so far of the PostgreSQL and Redis server processes (with the backends
    PostgreSQL has reaped): their work is part of every measurement here."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if text[text.find("(") + 1 : text.rfind(")")] in ("postgres", "redis-server"):
            ticks += sum(int(v) for v in text.rsplit(")", 1)[1].split()[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


# --- the data --------------------------------------------------------------------------------


async def seed(dsn: str, url: str, orgs: dict[str, tuple[int, str]]) -> float:
    """orgs: org_id -> (loads, SQL status expression of x); returns the seconds it took."""
    started = time.perf_counter()
    await upgrade_async(url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET session_replication_role = replica")  # no per-row FK triggers while loading
        for org_id, (size, status) in orgs.items():
            await conn.execute(
                "INSERT INTO organizations (org_id, name, created_at) VALUES ($1, $2, $3)", org_id, org_id, STAMP
            )
            await conn.execute(LOADS_SQL.format(status=status), org_id, STAMP, size)
    finally:
        await conn.close()
    db = Database(url)
    quiet = logging.getLogger("tally.recalculation")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # every counter it fills in would be logged as drift
    try:
        await recalculate(db, None, "bench-seed")  # organization_stats from a recount, by the app itself
    finally:
        quiet.setLevel(level)
        await db.dispose()
    await sql(dsn, "VACUUM ANALYZE")  # statistics, and the visibility map for index-only scans
    return time.perf_counter() - started


async def open_ids(dsn: str, org_id: str, count: int) -> list[int]:
    rows = await sql(
        dsn, "SELECT id FROM loads WHERE org_id = $1 AND status = 'OPEN' ORDER BY id LIMIT $2", org_id, count
    )
    if len(rows) < count:
        raise RuntimeError(f"only {len(rows)} OPEN loads in {org_id}")
    return [row[0] for row in rows]


async def plans(dsn: str, org_id: str) -> list[dict[str, Any]]:
    """EXPLAIN ANALYZE of Tally's count statement and of the naive resolver's, for one org."""
    naive = select(Load.status, func.count()).where(Load.org_id == org_id).group_by(Load.status)
    out = []
    for what, statement in (("Tally (STATS_QUERY)", STATS_QUERY.params(org_id=org_id)), ("naive", naive)):
        text = str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
        rows = await sql(dsn, f"EXPLAIN (ANALYZE, BUFFERS) {text}")
        out.append({"what": what, "sql": " ".join(text.split()), "plan": [row[0] for row in rows]})
    return out


async def drifts(url: str, orgs: list[str]) -> dict[str, dict[str, Any]]:
    """org -> the app's drift report: stored counters vs a recount, read in one snapshot."""
    db = Database(url)
    try:
        return {org: vars(await drift_report(db, org)) for org in orgs}
    finally:
        await db.dispose()


# --- the measurements ------------------------------------------------------------------------


def count_queries(url: str, tokens: dict[str, str], expected: dict[str, str], profile: Profile) -> list[Cell]:
    """expected: org -> the exact answer (a recount) for each org of the profile's sizes."""
    out = []
    env = {"BENCH_DATABASE_URL": url}
    with running(*((f"pg-{variant}", f"{variant}_app", env) for variant in COUNT_VARIANTS)) as servers:
        for org in expected:
            for variant, server in zip(COUNT_VARIANTS, servers, strict=True):
                answer = post(server, "/graphql", tokens[org], json.loads(count_body(org))).decode()
                if answer != expected[org]:
                    raise RuntimeError(f"{variant} answers {answer} for {org}, expected {expected[org]}")
        log(f"countLoadsByStatus, {', '.join(COUNT_VARIANTS)} interleaved per org and clients")
        RETRY_DEADLINE[0] = time.monotonic() + profile.retry_until
        for size in profile.sizes:
            org = org_name(size)
            for clients in (1, 16):
                for variant, server in zip(COUNT_VARIANTS, servers, strict=True):
                    out.append(
                        measure_read(
                            server,
                            variant,
                            human(size),
                            path="/graphql",
                            token=tokens[org],
                            bodies=[count_body(org)],
                            expect=expected[org],
                            concurrency=clients,
                            profile=profile,
                        )
                    )
    return out


def mixed(
    url: str, broadcast: str, org: str, token: str, ids: list[int], profile: Profile
) -> tuple[Cell, dict[str, int]]:
    """Each write is followed by READS_PER_WRITE reads in the one sequence all clients share."""
    env = {"BENCH_DATABASE_URL": url, "BENCH_BROADCAST_URL": broadcast}
    log(f"mixed workload on {org}: {MIXED_CLIENTS} clients over two Tally processes")
    read = count_body(org)
    bodies = [body for write in toggle_bodies(SET_STATUS, ids) for body in (write, *[read] * READS_PER_WRITE)]
    with running(("mixed-a", "tally_app", env), ("mixed-b", "tally_app", env)) as servers:
        cell = measure(
            servers,
            "tally, 90% reads / 10% writes",
            org,
            path="/graphql",
            token=token,
            bodies=bodies,
            expect=None,
            concurrency=MIXED_CLIENTS,
            profile=replace(profile, duration=2 * profile.duration),
            split=True,
        )
        return cell, hot_org.broadcast_health(servers)


def mixed_kinds(cell: Cell) -> dict[str, dict[str, float]]:
    assert cell.by_body is not None
    step = READS_PER_WRITE + 1
    writes = sorted(v for i, samples in enumerate(cell.by_body) if i % step == 0 for v in samples)
    reads = sorted(v for i, samples in enumerate(cell.by_body) if i % step != 0 for v in samples)
    return {"reads": summarize(reads, cell.seconds), "writes": summarize(writes, cell.seconds)}


def measure_all(server: str, name: str, profile: Profile) -> dict[str, Any]:
    dsn, url = f"{server}/{name}", sqlalchemy_url(server, name)
    rounds = profile.mutation_rounds
    orgs = {org_name(size): (size, STATUS_SQL) for size in profile.sizes}
    orgs[HOT_ORG] = (hot_org.loads_needed(rounds), "'OPEN'")
    orgs[REFERENCE_ORG] = (1_000, STATUS_SQL)
    seconds = run_async(seed(dsn, url, orgs))
    log(f"seeded {sum(size for size, _ in orgs.values()):,} loads in {seconds:.1f} s")
    tokens = {org: token(org) for org in orgs}
    before = run_async(drifts(url, list(orgs)))
    if any(d["stored"].counts != d["actual"] for d in before.values()):
        raise RuntimeError("the seeded organization_stats differ from a recount")
    results: dict[str, Any] = {"seed_seconds": seconds, "orgs": {org: size for org, (size, _) in orgs.items()}}
    count_orgs = [org_name(size) for size in profile.sizes]
    expected = {org: count_answer(before[org]["actual"]) for org in count_orgs}
    results["cells"] = [c.json() for c in count_queries(url, tokens, expected, profile)]
    largest = count_orgs[-1]
    results["plans"] = run_async(plans(dsn, largest))
    ids = run_async(open_ids(dsn, largest, MIXED_POOL))
    mix, results["mixed_health"] = mixed(url, REDIS_URL, largest, tokens[largest], ids, profile)
    results["mixed"] = mix.json()

    hot_profile = hot_org.profile_of(profile)
    ids = run_async(open_ids(dsn, HOT_ORG, hot_org.loads_needed(rounds)))
    db_share = 2 * hot_org.LOADS_PER_WRITER * max(hot_org.WRITERS)
    db_ids = {True: ids[-db_share::2], False: ids[-db_share + 1 :: 2]}
    pools = Pools(ids[:-db_share])
    http, results["hot_health"] = hot_org.http_runs(url, REDIS_URL, tokens, pools, hot_profile)
    results["hot_http"] = [c.json() for c in http]
    results["hot_db"] = [c.json() for c in run_async(hot_org.db_layer_runs(url, db_ids, hot_profile))]
    results["hot_read"] = hot_org.shard_read_cost(url, token(None, "service", 3600), hot_profile).json()

    # Exactness: stats == recount; the hot org's differ by exactly the bypassed changes.
    without = [*pools.without_aggregate, *db_ids[False]]
    after = run_async(drifts(url, list(orgs)))
    bypassed = run_async(sql(dsn, "SELECT count(*) FROM loads WHERE status = 'ASSIGNED' AND id = ANY($1)", without))[0][0]
    checks = []
    for org, drift in after.items():
        delta = {c: drift["actual"][c] - drift["stored"].counts[c] for c in drift["actual"]}
        want = {"loads_open": -bypassed, "loads_assigned": bypassed} if org == HOT_ORG else {}
        want = {c: want.get(c, 0) for c in delta}
        note = f" (the {bypassed} loads its without-aggregate runs left ASSIGNED)" if org == HOT_ORG else ""
        ok = delta == want
        text = f"{org}: stored counters {'equal' if ok else 'DIFFER FROM'} the recount{note if ok else ''}"
        checks.append([ok, text if ok or org != HOT_ORG else f"{org}: recount - stored = {delta}, expected {want}"])
        log(f"  {checks[-1][1]}")
    results["checks"] = checks
    results["ok"] = all(ok for ok, _ in checks)
    return results


def environment(server: str) -> dict[str, str]:
    settings = "SELECT version(), current_setting('shared_buffers'), current_setting('synchronous_commit'), current_setting('fsync'), current_setting('max_connections')"
    version, buffers, sync_commit, fsync, connections = run_async(sql(f"{server}/postgres", settings))[0]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        redis_version = client.info("server")["redis_version"]
    finally:
        client.close()
    return {
        "Drivers": ", ".join(f"{name} {metadata.version(name)}" for name in ("asyncpg", "redis", "broadcaster")),
        "PostgreSQL": f"{version.split(' on ')[0]} at {server}: shared_buffers {buffers}, synchronous_commit {sync_commit}, fsync {fsync}, max_connections {connections}",
        "Redis": f"{redis_version} at {REDIS_URL}",
    }


def run(profile: Profile, server: str) -> dict[str, Any]:
    """In a uniquely named database, dropped at the end."""
    ALSO_OURS.append(service_cpu)
    name = f"tally_bench_{os.getpid()}_{int(time.time())}"
    run_async(sql(f"{server}/postgres", f'CREATE DATABASE "{name}"'))
    log(f"PostgreSQL benchmark ({profile.name}) in database {name}")
    try:
        results = measure_all(server, name, profile)
    finally:
        run_async(sql(f"{server}/postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        ALSO_OURS.remove(service_cpu)
    return {**results, "profile": profile.__dict__, "machine": environment(server)}


def fields(data: dict[str, Any]) -> dict[str, Any]:
    profile = Profile(**{**data["profile"], "sizes": tuple(data["profile"]["sizes"])})
    reads, http, db = cells(data["cells"]), cells(data["hot_http"]), cells(data["hot_db"])
    by_key = {(c.variant, c.label, c.concurrency): c for c in reads}
    labels = [human(size) for size in profile.sizes]
    small, large = labels[0], labels[-1]

    def get(variant: str, label: str, clients: int) -> dict[str, float]:
        return by_key[(variant, label, clients)].stats

    targets = [
        [f"Hot org, {hot_org.JUDGED_AT} writers {layer}, {shards}: with aggregates >= {hot_org.TARGET}x the throughput without",
         f"{rate(pair.with_['rps'])} vs {rate(pair.without['rps'])} changes/s: **{x(pair.ratio)}**", met(pair.ratio >= hot_org.TARGET)]
        for layer, group in (("over HTTP", http), ("at the db layer (stricter, secondary)", db))
        for shards, pair in hot_org.judged(group).items()
    ]  # fmt: skip
    t, n, t_small = get("tally", large, 1), get("naive", large, 1), get("tally", small, 1)
    targets.append([
        f"countLoadsByStatus at least 20x faster than the naive GROUP BY at {large} loads",
        f"p50 naive {ms(n['p50'])} ms vs Tally {ms(t['p50'])} ms at 1 client: **{x(n['p50'] / t['p50'])}** (16 clients, req/s: "
        f"{x(get('tally', large, 16)['rps'] / get('naive', large, 16)['rps'])}; count cache off, p50: {x(n['p50'] / get('uncached', large, 1)['p50'])})",
        met(n["p50"] / t["p50"] >= 20),
    ])  # fmt: skip
    targets.append([
        f"Tally's count latency at {large} within 1.2x of its latency at {small}",
        f"p50 {ms(t['p50'])} vs {ms(t_small['p50'])} ms at 1 client: **{x(t['p50'] / t_small['p50'])}** (16 clients: {x(get('tally', large, 16)['p50'] / get('tally', small, 16)['p50'])})",
        met(t["p50"] / t_small["p50"] <= 1.2),
    ])  # fmt: skip
    targets.append([
        "At least 1,000 count requests/s at 16 clients on one worker",
        "Tally req/s: " + ", ".join(f"{label}: **{rate(get('tally', label, 16)['rps'])}**" for label in labels),
        met(min(get("tally", label, 16)["rps"] for label in labels) >= 1000),
    ])
    rows = []
    for label in labels:
        for clients in (1, 16):
            tally = get("tally", label, clients)
            for variant in COUNT_VARIANTS:
                c = by_key[(variant, label, clients)]
                vs = ["baseline"] * 2 if variant == "tally" else [x(c.stats["p50"] / tally["p50"]), x(c.stats["rps"] / tally["rps"])]
                rows.append([label, str(clients), VARIANT_NAMES[variant], ms(c.stats["p50"]), ms(c.stats["p99"]), rate(c.stats["rps"]), *vs,
                             cpu(c.server_cpu_us_per_request), cpu(c.also_cpu_us_per_request), share(c.foreign_cpu)])  # fmt: skip
    header = ["org", "clients", "variant", "p50 ms", "p99 ms", "req/s", "p50 / Tally's", "req/s / Tally's", "server CPU/req", "PostgreSQL CPU/req", "other processes"]
    mix = Cell(**data["mixed"])
    kinds = mixed_kinds(mix)
    shares = [c.foreign_cpu for c in [*reads, *http, *db] if c.foreign_cpu is not None]
    read = Cell(**data["hot_read"]) if data.get("hot_read") else None
    return {
        "profile": profile.name,
        "foreign": f"Processes other than the benchmark's own (its servers, load generator, PostgreSQL and Redis) used {sum(shares) / len(shares):.0%} of the machine's CPU on average during the measurements (max {max(shares):.0%}); the tables give the share per measurement." if shares else "",
        "targets": table(["target", "measured (this run)", "met?"], targets),
        "checks": "; ".join(("" if ok else "**FAILED**: ") + text for ok, text in data["checks"]),
        **hot_org.fields(http, db, read, data.get("hot_health", {}), hot_org.profile_of(profile)),
        "duration": f"{profile.duration:g}",
        "warmup": f"{profile.warmup:g}",
        "min_samples": profile.min_samples,
        "max_duration": f"{profile.max_duration:g}",
        "counts": table(header, rows),
        "large": large,
        "plans": "\n".join(f"Plan of {p['what']} at {large} (`EXPLAIN (ANALYZE, BUFFERS)`, once, after the measurements):\n\n```\n{p['sql']}\n" + "\n".join(p["plan"]) + "\n```\n" for p in data["plans"]),
        "mixed_clients": MIXED_CLIENTS,
        "mixed_pool": MIXED_POOL,
        "reads_per_write": READS_PER_WRITE,
        "mixed_org": mix.label,
        "mixed_seconds": f"{mix.seconds:.0f}",
        "mixed_cpu": cpu(mix.server_cpu_us_per_request),
        "mixed_foreign": share(mix.foreign_cpu),
        "mixed": table(["kind", "per second", "p50 ms", "p99 ms", "samples"], [[kind, rate(s["rps"]), ms(s["p50"]), ms(s["p99"]), f"{s['n']:,.0f}"] for kind, s in kinds.items()]),
        "mixed_exact": "yes" if any(ok and text.startswith(f"{mix.label}:") for ok, text in data["checks"]) else "**NO**",
        "seeded": f"{sum(data['orgs'].values()):,} loads in {data['seed_seconds']:.0f} s: orgs " + ", ".join(f"{org} ({size:,})" for org, size in data["orgs"].items()),
    }
