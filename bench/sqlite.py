"""Count queries and the status change's cost on SQLite (docs/benchmarks.md, whose Method section tells how)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, bindparam, text
from sqlalchemy.ext.asyncio import create_async_engine

from bench import common
from bench.common import POOL, RESULTS, VARIANTS, WARM_POOL, audit, log, org_name, run_async, token
from db.aggregates import LOAD_STATUS_COUNTERS, LOAD_TYPE_COUNTERS
from db.migrate import upgrade_async

PROFILES = {"full": common.FULL, "quick": common.QUICK}
NAMES = ("floor", "tally", "uncached", "naive")  # bench/servers.py's *_app
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
STAMP = datetime(2026, 1, 1, tzinfo=UTC)
ORGANIZATION = "INSERT INTO organizations (org_id, name, created_at) VALUES (:org, :org, :stamp)"
LOADS = (  # {status}: an SQL expression of x, the load's number within its org
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < :size) "
    f"INSERT INTO loads ({LOAD_COLUMNS}) SELECT :org, {{status}}, {LOAD_VALUES}, :stamp, :stamp FROM n"
)
INDEXES = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'loads' AND sql IS NOT NULL"
BEFORE = {  # the bulk load's transaction, per dialect; PostgreSQL: no per-row foreign-key triggers
    "sqlite": ["PRAGMA journal_mode=WAL", "PRAGMA synchronous=OFF", "PRAGMA cache_size=-262144", "BEGIN"],
    "postgresql": ["BEGIN", "SET session_replication_role = replica"],
}
AFTER = {  # PostgreSQL's VACUUM: the visibility map for index-only scans
    "sqlite": ["COMMIT", "ANALYZE", "PRAGMA wal_checkpoint(TRUNCATE)"],
    "postgresql": ["COMMIT", "VACUUM ANALYZE"],
}
MUTATION_ORG = "org_mut"  # 20k loads, whose status changes are measured


def stats_from_recount(stamp: str) -> str:
    """The INSERT of every org's organization_stats row from a recount of its loads (`stamp`: the timestamps)."""
    counters = {f"status = '{v}'": c for v, c in LOAD_STATUS_COUNTERS.items()}
    counters |= {f"load_type = '{v}'": c for v, c in LOAD_TYPE_COUNTERS.items()}
    recounts = ", ".join(f"(SELECT count(*) FROM loads l WHERE l.org_id = o.org_id AND l.{c})" for c in counters)
    columns = f"org_id, {', '.join(counters.values())}, version, updated_at, last_recalculated_at"
    return f"INSERT INTO organization_stats ({columns}) SELECT o.org_id, {recounts}, 1, {stamp}, {stamp} FROM organizations o"


async def seed(url: str, orgs: dict[str, int], all_open: tuple[str, ...] = ()) -> float:
    """Migrates the new database at `url` (SQLite or PostgreSQL) and fills it in one transaction: these orgs
    (org_id -> loads, statuses as STATUS_SQL or, for the orgs `all_open`, OPEN) and their organization_stats
    from a recount; the seconds it took. SQLite rebuilds the loads' indexes after the bulk insert (much faster
    than maintaining them row by row)."""
    started, engine = time.perf_counter(), create_async_engine(url, isolation_level="AUTOCOMMIT")
    dialect, stamp = engine.dialect.name, bindparam("stamp", STAMP, DateTime(timezone=True))
    await upgrade_async(url)
    async with engine.connect() as conn:
        for statement in BEFORE[dialect]:
            await conn.exec_driver_sql(statement)
        indexes = (await conn.exec_driver_sql(INDEXES)).all() if dialect == "sqlite" else []
        for name, _ in indexes:
            await conn.exec_driver_sql(f"DROP INDEX {name}")
        for org_id, size in orgs.items():
            status = "'OPEN'" if org_id in all_open else STATUS_SQL
            await conn.execute(text(ORGANIZATION).bindparams(stamp), {"org": org_id})
            await conn.execute(text(LOADS.format(status=status)).bindparams(stamp), {"org": org_id, "size": size})
        for _, sql in indexes:
            await conn.exec_driver_sql(sql)
        await conn.execute(text(stats_from_recount(":stamp")).bindparams(stamp))
        for statement in AFTER[dialect]:
            await conn.exec_driver_sql(statement)
    await engine.dispose()
    return time.perf_counter() - started


def run(profile: common.Profile) -> dict[str, Any]:
    path, orgs = RESULTS / f"bench-{profile.name}.db", [org_name(size) for size in profile.sizes]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    sizes = dict(zip(orgs, profile.sizes, strict=True)) | {MUTATION_ORG: 20_000}
    url = f"sqlite+aiosqlite:///{path}"
    seeded = {"orgs": sizes, "seconds": run_async(seed(url, sizes)), "mb": path.stat().st_size / 1e6}
    log(f"seeded {sum(sizes.values()):,} loads in {seeded['seconds']:.1f} s ({seeded['mb']:.0f} MB)")
    tokens = {org: token(org) for org in [*orgs, MUTATION_ORG]}
    checks = run_async(audit(url, orgs, []))
    expected = {check["org"]: common.count_answer(check["actual"]) for check in checks}
    floor_bodies = RESULTS / f"floor-{profile.name}.json"
    floor_bodies.write_text(json.dumps({f"/floor/{org}": expected[org] for org in orgs}))
    env = {"BENCH_DATABASE_URL": url, "BENCH_FLOOR_BODIES": str(floor_bodies)}
    needed = (2 * POOL + WARM_POOL) * 2 * profile.mutation_rounds  # over HTTP (with warm-ups), then the db layer
    pools = common.Pools(run_async(common.first_ids(url, MUTATION_ORG, needed)))
    with common.app_servers(*((variant, f"{variant}_app", env) for variant in NAMES)) as up:
        servers = dict(zip(NAMES, up, strict=True))
        reads = common.count_reads(servers, tokens, expected, profile)
        log("countLoadsByStatus on Tally, the orgs side by side (one service token, one wrk process per org)")
        side = [common.side_by_side(servers["tally"], orgs, n, profile, expected).row() for n in (1, 16)]
        log("status change over HTTP, one client (rounds alternate which variant goes first)")
        http = common.status_changes([servers["naive"]], (1,), pools, profile, tokens[MUTATION_ORG], "over HTTP")
    log("status change at the db layer, in process (servers stopped)")
    db = run_async(common.db_layer(url, "db layer", profile, (1,), lambda a, _: pools.take(a), {}, MUTATION_ORG))
    changed = [c for c in [*http, *db] if c.variant == VARIANTS[True]]
    answered, sent = sum(c.answered for c in changed), sum(c.sent or c.answered for c in changed)
    (exact,) = run_async(audit(url, [MUTATION_ORG], pools.without_aggregate, MUTATION_ORG))
    exact.update(
        changes=answered, abandoned=sent - answered, ok=exact["ok"] and answered <= exact["version"] - 1 <= sent
    )
    return {
        "reads": [c.row() for c in reads], "side": side, "http": common.pairs(http)[0], "db": common.pairs(db)[0],
        "plans": run_async(common.plans(url, orgs[-1])), "foreign": common.disturbance([*reads, *http, *db]),
        "profile": profile.__dict__, "ok": exact["ok"], "exact": exact, "seeded": seeded,
    }  # fmt: skip
