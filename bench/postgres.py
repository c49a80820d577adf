"""PostgreSQL benchmark: `uv run python -m bench.postgres [--quick] [--only counts|hot]`.

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
   without-aggregate runs changed), then writes docs/benchmarks-postgres.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
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

from bench import hot_org, report
from bench.hot_org import HOT_ORG, REFERENCE_ORG
from bench.machine import describe
from bench.report import cpu, ms, rate, table, x
from bench.run import (
    ALSO_OURS,
    QUICK,
    RESULTS,
    RETRY_DEADLINE,
    ROOT,
    SET_STATUS,
    Cell,
    Pools,
    Profile,
    cell_json,
    count_answer,
    count_body,
    log,
    measure,
    measure_read,
    post,
    run_async,
    running,
    server_flags,
    toggle_bodies,
    wait_for_quiet,
)
from bench.seed import STATUS_SQL, TYPE_SQL, org_name
from db.aggregates import STATS_QUERY
from db.migrate import upgrade_async
from db.models import Load
from db.recalculation import drift_report, recalculate
from db.unit_of_work import Database
from edge.tokens import TokenVerifier
from settings import DEV_SECRET

DOC = ROOT / "docs" / "benchmarks-postgres.md"
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
MIXED_CLIENTS = 16
READS_PER_WRITE = 9
MIXED_POOL = 1000


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
    cells = []
    env = {"BENCH_DATABASE_URL": url}
    with running(*((f"pg-{variant}", f"{variant}_app", env) for variant in COUNT_VARIANTS)) as servers:
        for org in expected:
            for server in servers:
                answer = post(server, "/graphql", tokens[org], json.loads(count_body(org))).decode()
                if answer != expected[org]:
                    raise RuntimeError(f"{server.name} answers {answer} for {org}, expected {expected[org]}")
        log(f"countLoadsByStatus, {', '.join(COUNT_VARIANTS)} interleaved per org and clients")
        RETRY_DEADLINE[0] = time.monotonic() + profile.retry_until
        for size in profile.sizes:
            org = org_name(size)
            for clients in (1, 16):
                for variant, server in zip(COUNT_VARIANTS, servers, strict=True):
                    cells.append(
                        measure_read(
                            server,
                            variant,
                            report.human(size),
                            path="/graphql",
                            token=tokens[org],
                            bodies=[count_body(org)],
                            expect=expected[org],
                            concurrency=clients,
                            profile=profile,
                        )
                    )
    return cells


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
    return {"reads": report.summarize(reads, cell.seconds), "writes": report.summarize(writes, cell.seconds)}


def measure_everything(server: str, name: str, profile: Profile, only: str | None) -> dict[str, Any]:
    dsn, url = f"{server}/{name}", sqlalchemy_url(server, name)
    broadcast = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
    rounds = profile.mutation_rounds
    sizes = profile.sizes if only != "hot" else ()
    orgs = {org_name(size): (size, STATUS_SQL) for size in sizes}
    if only != "counts":
        orgs[HOT_ORG] = (hot_org.loads_needed(rounds), "'OPEN'")
        orgs[REFERENCE_ORG] = (1_000, STATUS_SQL)
    seconds = run_async(seed(dsn, url, orgs))
    log(f"seeded {sum(size for size, _ in orgs.values()):,} loads in {seconds:.1f} s")
    verifier = TokenVerifier(DEV_SECRET)
    tokens = {org: verifier.issue(org_id=org, role="admin", subject="bench", ttl_seconds=7200) for org in orgs}
    before = run_async(drifts(url, list(orgs)))
    if any(d["stored"].counts != d["actual"] for d in before.values()):
        raise RuntimeError("the seeded organization_stats differ from a recount")
    results: dict[str, Any] = {"seed_seconds": seconds, "orgs": {org: size for org, (size, _) in orgs.items()}}
    without: list[int] = []
    if sizes:
        count_orgs = [org_name(size) for size in sizes]
        expected = {org: count_answer(before[org]["actual"]) for org in count_orgs}
        results["cells"] = [cell_json(c) for c in count_queries(url, tokens, expected, profile)]
        results["plans"] = run_async(plans(dsn, count_orgs[-1]))
        largest = count_orgs[-1]
        ids = run_async(open_ids(dsn, largest, MIXED_POOL))
        mix, results["mixed_health"] = mixed(url, broadcast, largest, tokens[largest], ids, profile)
        results["mixed"] = cell_json(mix)
    if only != "counts":
        hot_profile = hot_org.profile_of(profile)
        ids = run_async(open_ids(dsn, HOT_ORG, hot_org.loads_needed(rounds)))
        db_ids = {True: ids[-2 * hot_org.LOADS_PER_WRITER * max(hot_org.WRITERS) :: 2]}
        db_ids[False] = ids[-2 * hot_org.LOADS_PER_WRITER * max(hot_org.WRITERS) + 1 :: 2]
        pools = Pools(ids[: -2 * hot_org.LOADS_PER_WRITER * max(hot_org.WRITERS)])
        http, results["hot_health"] = hot_org.http_runs(url, broadcast, tokens, pools, hot_profile)
        results["hot_http"] = [cell_json(c) for c in http]
        results["hot_db"] = [cell_json(c) for c in run_async(hot_org.db_layer_runs(url, db_ids, hot_profile))]
        service = verifier.issue(org_id=None, role="service", subject="bench", ttl_seconds=3600)
        results["hot_read"] = cell_json(hot_org.shard_read_cost(url, service, hot_profile))
        without = [*pools.without_aggregate, *db_ids[False]]
    # Exactness: stats == recount; the hot org's differ by exactly the bypassed changes.
    after = run_async(drifts(url, list(orgs)))
    bypassed = run_async(sql(dsn, "SELECT count(*) FROM loads WHERE status = 'ASSIGNED' AND id = ANY($1)", without))
    bypassed = bypassed[0][0]
    checks = []
    for org, drift in after.items():
        delta = {c: drift["actual"][c] - drift["stored"].counts[c] for c in drift["actual"]}
        want = {"loads_open": -bypassed, "loads_assigned": bypassed} if org == HOT_ORG else {}
        want = {c: want.get(c, 0) for c in delta}
        note = f" (the {bypassed} loads its without-aggregate runs left ASSIGNED)" if org == HOT_ORG else ""
        ok = delta == want
        checks.append(
            [ok, f"{org}: stored counters {'equal' if ok else 'DIFFER FROM'} the recount{note if ok else ''}"]
            if ok or org != HOT_ORG
            else [ok, f"{org}: recount - stored = {delta}, expected {want}"]
        )
        log(f"  {checks[-1][1]}")
    results["checks"] = checks
    return results


# --- the report ------------------------------------------------------------------------------


def environment(server: str) -> dict[str, str]:
    rows = run_async(
        sql(
            f"{server}/postgres",
            "SELECT version(), current_setting('shared_buffers'), current_setting('synchronous_commit'), "
            "current_setting('fsync'), current_setting('max_connections')",
        )
    )
    version, buffers, sync_commit, fsync, connections = rows[0]
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
    client = redis.Redis.from_url(redis_url)
    try:
        redis_version = client.info("server")["redis_version"]
    finally:
        client.close()
    drivers = ", ".join(f"{name} {metadata.version(name)}" for name in ("asyncpg", "redis", "broadcaster"))
    return {
        "Drivers": drivers,
        "PostgreSQL": f"{version.split(' on ')[0]} at {server}: shared_buffers {buffers}, synchronous_commit "
        f"{sync_commit}, fsync {fsync}, max_connections {connections}",
        "Redis": f"{redis_version} at {redis_url}",
    }


def render(run: dict[str, Any]) -> str:
    profile = PROFILES[run["profile"]]
    res = run["results"]

    def cells(key: str) -> list[Cell]:
        return [Cell(**data) for data in res.get(key, [])]

    reads = cells("cells")
    by_key = {(c.variant, c.label, c.concurrency): c for c in reads}
    labels = [report.human(size) for size in profile.sizes]
    http, db = cells("hot_http"), cells("hot_db")
    out: list[str] = [
        "# Benchmarks on PostgreSQL\n",
        "Run from the repository root, with PostgreSQL and Redis running (`--server`, default "
        "`postgresql://postgres@127.0.0.1:5432`; `BENCH_REDIS_URL`, default `redis://127.0.0.1:6379`). "
        "It creates its own uniquely named database and drops it at the end.\n",
        "```sh",
        "uv run python -m bench.postgres          # everything (this file): count queries, mixed workload, hot org",
        "uv run python -m bench.postgres --quick  # smoke run: bench/results/postgres-quick.md",
        "uv run python -m bench.hot_org           # the hot-org part alone (= bench.postgres --only hot):",
        "                                         #   bench/results/postgres-hot-full.md",
        "uv run python -m bench.postgres --report-only bench/results/last-postgres-full.json  # re-render",
        "```\n",
        f"Generated by `bench/postgres.py` ({run['profile']} profile) in {run['elapsed'] / 60:.1f} min; every "
        "figure comes from that one run and every ratio is against a baseline measured in the same run on "
        "the same data. Do not edit by hand: re-run the command.\n",
        "## Machine\n",
        table(["", ""], [[k, v] for k, v in run["machine"].items()]),
        "",
    ]
    everything = [*reads, *http, *db]
    shares = [c.foreign_cpu for c in everything if c.foreign_cpu is not None]
    if shares:
        out.append(
            f"Processes other than the benchmark's own (its servers, load generator, PostgreSQL and Redis) "
            f"used {sum(shares) / len(shares):.0%} of the machine's CPU on average during the measurements "
            f"(max {max(shares):.0%}); the tables give the share per measurement.\n"
        )

    # --- targets -------------------------------------------------------------------------------
    targets: list[list[str]] = []

    def target(text: str, measured: str, met: bool) -> None:
        targets.append([text, measured, "met" if met else "**NOT MET**"])

    for layer, cells_ in (("over HTTP", http), ("at the db layer (stricter, secondary)", db)):
        for shards, pair in hot_org.judged(cells_).items():
            target(
                f"Hot org, {hot_org.JUDGED_AT} writers {layer}, {shards}: with aggregates >= "
                f"{hot_org.TARGET}x the throughput without",
                f"{rate(pair.with_['rps'])} vs {rate(pair.without['rps'])} changes/s: **{x(pair.ratio)}**",
                pair.ratio >= hot_org.TARGET,
            )
    large, small = labels[-1], labels[0]
    if reads:

        def get(variant: str, label: str, clients: int) -> dict[str, float]:
            return by_key[(variant, label, clients)].stats

        t, n = get("tally", large, 1), get("naive", large, 1)
        target(
            f"countLoadsByStatus at least 20x faster than the naive GROUP BY at {large} loads",
            f"p50 naive {ms(n['p50'])} ms vs Tally {ms(t['p50'])} ms at 1 client: **{x(n['p50'] / t['p50'])}** "
            f"(16 clients, req/s: {x(get('tally', large, 16)['rps'] / get('naive', large, 16)['rps'])}; "
            f"count cache off, p50: {x(n['p50'] / get('uncached', large, 1)['p50'])})",
            n["p50"] / t["p50"] >= 20,
        )
        flat = t["p50"] / get("tally", small, 1)["p50"]
        target(
            f"Tally's count latency at {large} within 1.2x of its latency at {small}",
            f"p50 {ms(t['p50'])} vs {ms(get('tally', small, 1)['p50'])} ms at 1 client: **{x(flat)}** "
            f"(16 clients: {x(get('tally', large, 16)['p50'] / get('tally', small, 16)['p50'])})",
            flat <= 1.2,
        )
        lowest = min(get("tally", label, 16)["rps"] for label in labels)
        target(
            "At least 1,000 count requests/s at 16 clients on one worker",
            "Tally req/s: " + ", ".join(f"{label}: **{rate(get('tally', label, 16)['rps'])}**" for label in labels),
            lowest >= 1000,
        )
    if targets:
        out += ["## Targets\n", table(["target", "measured (this run)", "met?"], targets), ""]
    checks = res["checks"]
    out.append(
        "Correctness checks of this run: every response of every measurement was HTTP 200 without errors "
        "(the count measurements also compared every body with a recount, byte for byte); after the run "
        "(the app's drift report: stored row and recount in one snapshot): "
        + "; ".join(("" if ok else "**FAILED**: ") + text for ok, text in checks)
        + ".\n"
    )

    # --- hot org -------------------------------------------------------------------------------
    if http or db:
        read = Cell(**res["hot_read"]) if res.get("hot_read") else None
        out += hot_org.render(http, db, read, res.get("hot_health", {}), hot_org.profile_of(profile))

    # --- count queries -------------------------------------------------------------------------
    if reads:
        out += [
            "## countLoadsByStatus through the GraphQL HTTP endpoint\n",
            "Three servers, one uvicorn worker each, same database (bench/servers.py): **Tally** (`tally_app`, "
            "the app as it is: one read of the org's stats row per request, the response bytes reused from its "
            "count cache while that row is unchanged), **Tally, count cache off** (`uncached_app`: GraphQL "
            "executes every request) and **naive** (`naive_app`: the same app, no count cache, whose resolver "
            "counts the loads with `SELECT status, count(*) ... GROUP BY status`; plans below). For each org "
            f"and client count the three run back to back; window {profile.duration:g} s after "
            f"{profile.warmup:g} s of warm-up (extended to {profile.min_samples} samples, at most "
            f"{profile.max_duration:g} s); a measurement disturbed by other processes (10% of the CPUs or more) "
            "is repeated, within a time budget, and the least disturbed attempt kept. Server CPU is the "
            "uvicorn process's, PostgreSQL CPU that of the PostgreSQL (and Redis) server processes, per request.\n",
        ]
        rows = []
        for label in labels:
            for clients in (1, 16):
                tally = by_key[("tally", label, clients)].stats
                for variant in COUNT_VARIANTS:
                    cell = by_key[(variant, label, clients)]
                    s = cell.stats
                    rows.append(
                        [
                            label,
                            str(clients),
                            report.VARIANT_NAMES[variant],
                            ms(s["p50"]),
                            ms(s["p99"]),
                            rate(s["rps"]),
                            "baseline" if variant == "tally" else x(s["p50"] / tally["p50"]),
                            "baseline" if variant == "tally" else x(s["rps"] / tally["rps"]),
                            cpu(cell.server_cpu_us_per_request),
                            cpu(cell.also_cpu_us_per_request),
                            "n/a" if cell.foreign_cpu is None else f"{cell.foreign_cpu:.0%}",
                        ]
                    )
        header = ["org", "clients", "variant", "p50 ms", "p99 ms", "req/s", "p50 / Tally's", "req/s / Tally's"]
        out += [table([*header, "server CPU/req", "PostgreSQL CPU/req", "other processes"], rows), ""]

    for plan in res.get("plans", []):
        out += [
            f"Plan of {plan['what']} at {large} (`EXPLAIN (ANALYZE, BUFFERS)`, once, after the measurements):\n",
            "```",
            plan["sql"],
            *plan["plan"],
            "```\n",
        ]

    if res.get("mixed"):
        cell = Cell(**res["mixed"])
        kinds = mixed_kinds(cell)
        out += [
            "## Mixed workload: 90% count queries, 10% status changes, two processes\n",
            f"{MIXED_CLIENTS} closed-loop clients spread over two Tally processes (one worker each) sharing the "
            f"database and the Redis broadcast; one sequence of requests shared by all clients, each "
            f"`updateLoadStatus` (OPEN <-> ASSIGNED over {MIXED_POOL} loads) followed by {READS_PER_WRITE} "
            f"`countLoadsByStatus` of the same org ({cell.label}); window {cell.seconds:.0f} s. Server CPU per "
            f"request (both processes, both kinds): {cpu(cell.server_cpu_us_per_request)}; other processes: "
            f"{'n/a' if cell.foreign_cpu is None else f'{cell.foreign_cpu:.0%}'} of the CPUs.\n",
            table(
                ["kind", "per second", "p50 ms", "p99 ms", "samples"],
                [[kind, rate(s["rps"]), ms(s["p50"]), ms(s["p99"]), f"{s['n']:,.0f}"] for kind, s in kinds.items()],
            ),
            "",
            f"After the run, {cell.label}'s stats row equals COUNT(*) of its loads: "
            + ("yes" if any(ok and text.startswith(f"{cell.label}:") for ok, text in checks) else "**NO**")
            + " (checks above).\n",
        ]

    out += [
        "## Method\n",
        f"- Seeding: {sum(res['orgs'].values()):,} loads in {res['seed_seconds']:.0f} s: orgs "
        + ", ".join(f"{org} ({size:,})" for org, size in res["orgs"].items())
        + "; `INSERT ... SELECT FROM generate_series` (40% OPEN, 30% ASSIGNED, 20% COMPLETED, 10% CANCELED; "
        "the hot org all OPEN), organization_stats filled by `db.recalculation.recalculate` (the app's "
        "recount), then VACUUM ANALYZE.",
        f"- Servers: `uvicorn bench.servers:<app> --factory {run['server_flags']}`, recalculation scheduler off; "
        "the load generator (bench/loadgen.py) is one separate process with keep-alive connections.",
        "- The machine has 2 cores shared by the servers, the load generator, PostgreSQL and Redis: "
        "absolute rates are those of this small box; the ratios are the point. PostgreSQL and Redis CPU is "
        "read from /proc for every `postgres` and `redis-server` process (backends it has reaped included), "
        "so other sessions on the same server would count too.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.postgres", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: sizes 1k and 10k, short windows")
    parser.add_argument("--only", choices=("counts", "hot"), help="only the count queries (+ mixed), or the hot org")
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432", help="PostgreSQL, no database")
    parser.add_argument("--out", type=Path, help="report path (default: this file for a full run of everything)")
    parser.add_argument("--wait-quiet", type=float, help="seconds to wait for the CPUs to quiet down (60; quick 0)")
    parser.add_argument("--report-only", type=Path, metavar="JSON", help="re-render a saved run, measure nothing")
    args = parser.parse_args(argv)
    if args.report_only:
        run = json.loads(args.report_only.read_text())
        out = args.out or ROOT / run["out"]  # relative to the checkout, unless it was elsewhere
        out.write_text(render(run))
        log(f"wrote {out} from {args.report_only}")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop the servers, drop the database
    profile = QUICK if args.quick else FULL
    suffix = f"{args.only}-{profile.name}" if args.only else profile.name
    out = args.out or (DOC if suffix == "full" else RESULTS / f"postgres-{suffix}.md")
    started = time.monotonic()
    machine = {**describe(ROOT), **environment(args.server)}
    wait = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 60.0)
    busy = wait_for_quiet(wait)
    machine["CPU used by other processes at start"] = "unknown" if busy is None else f"{busy:.0%} of both cores"
    ALSO_OURS.append(service_cpu)
    name = f"tally_bench_{os.getpid()}_{int(time.time())}"
    run_async(sql(f"{args.server}/postgres", f'CREATE DATABASE "{name}"'))
    log(f"PostgreSQL benchmark ({profile.name}) in database {name}")
    try:
        results = measure_everything(args.server, name, profile, args.only)
    finally:
        run_async(sql(f"{args.server}/postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    machine["Load average at end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    loop, http = server_flags()
    run = {
        "profile": profile.name,
        "machine": machine,
        "results": results,
        "server_flags": f"--workers 1 --loop {loop} --http {http} --no-access-log --log-level warning",
        "elapsed": time.monotonic() - started,
        "out": str(out.resolve().relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out.resolve()),
    }
    raw = RESULTS / f"last-postgres-{suffix}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(run, default=str))
    out.write_text(render(run))
    log(f"wrote {out} in {run['elapsed']:.0f} s (raw results: {raw})")
    return 0 if all(ok for ok, _ in results["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
