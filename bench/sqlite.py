"""Count queries and the status change's cost on SQLite (docs/benchmarks.md, whose Method section tells how)."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common
from bench.common import POOL, RESULTS, VARIANTS, WARM_POOL, audit, log, org_name, run_async, token
from db.aggregates import LOAD_STATUS_COUNTERS, LOAD_TYPE_COUNTERS
from db.migrate import upgrade

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
    needed = (2 * POOL + WARM_POOL) * 2 * profile.mutation_rounds  # over HTTP (with warm-ups), then the db layer
    pools = common.Pools(run_async(common.first_ids(seeded.url, MUTATION_ORG, needed)))
    with common.app_servers(*((variant, f"{variant}_app", env) for variant in NAMES)) as up:
        servers = dict(zip(NAMES, up, strict=True))
        reads = common.count_reads(servers, tokens, expected, profile)
        log("countLoadsByStatus on Tally, the orgs side by side (one service token, one wrk process per org)")
        side = [common.side_by_side(servers["tally"], orgs, n, profile, expected).row() for n in (1, 16)]
        log("status change over HTTP, one client (rounds alternate which variant goes first)")
        http = common.status_changes([servers["naive"]], (1,), pools, profile, tokens[MUTATION_ORG], "over HTTP")
    log("status change at the db layer, in process (servers stopped)")
    db = run_async(common.db_layer(seeded.url, "db layer", profile, (1,), lambda a, _: pools.take(a), {}, MUTATION_ORG))
    changed = [c for c in [*http, *db] if c.variant == VARIANTS[True]]
    answered, sent = sum(c.answered for c in changed), sum(c.sent or c.answered for c in changed)
    (exact,) = run_async(audit(seeded.url, [MUTATION_ORG], pools.without_aggregate, MUTATION_ORG))
    exact.update(
        changes=answered, abandoned=sent - answered, ok=exact["ok"] and answered <= exact["version"] - 1 <= sent
    )
    return {
        "reads": [c.row() for c in reads], "side": side, "http": common.pairs(http)[0], "db": common.pairs(db)[0],
        "plans": run_async(common.plans(seeded.url, orgs[-1])), "foreign": common.disturbance([*reads, *http, *db]),
        "profile": profile.__dict__, "ok": exact["ok"], "exact": exact,
        "seeded": {"orgs": seeded.orgs, "seconds": seeded.seconds, "mb": seeded.file_bytes / 1e6},
    }  # fmt: skip
