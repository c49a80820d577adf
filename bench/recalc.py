"""Recalculation beside a writer (docs/benchmarks-recalc.md, whose Method section tells how)."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import tempfile
import time
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import database, first_ids, human, log, org_name, run_async, summarize
from bench.sqlite import seed
from db.loads import set_load_status
from db.recalculation import drift_report, recalculate
from db.unit_of_work import Database

MIN_RECALCS = 2  # per recalculation window, even when it outlasts the window
WRITER_PAUSE = 0.005  # seconds between the writer's writes
DRIFT = 7  # added to one org's loads_open before each recalculation window
MAX_SEED_SECONDS = 90.0  # beyond, the largest size is not measured
# copies: loads per org -> orgs of that size; window: seconds per baseline / recalculation window; rounds of both
PROFILES = {
    "full": {"copies": {10_000: 100, 100_000: 10, 1_000_000: 1}, "window": 1.0, "rounds": 32},
    "quick": {"copies": {1_000: 10, 10_000: 1}, "window": 0.3, "rounds": 2},
}


def add_drift(path: Path, org_id: str) -> None:
    with closing(sqlite3.connect(path, timeout=30)) as conn, conn:
        drift = "UPDATE organization_stats SET loads_open = loads_open + ? WHERE org_id = ? AND shard = 0"
        conn.execute(drift, (DRIFT, org_id))


async def case(db: Database, path: Path, size: int, orgs: list[str], profile: dict[str, Any]) -> dict[str, Any]:
    loads = [(org_id, str((await first_ids(db.url, org_id, 1))[0])) for org_id in orgs]
    writes: dict[str, list[float]] = {"without": [], "with": []}  # ms of the writes that started in each phase
    recalcs: list[float] = []  # ms of each recalculation
    phase, stop = "", False  # phase: "without" in a baseline window, "with" while a recalculation runs

    async def writer() -> None:
        for turn in itertools.count():
            if stop:
                return
            org_id, load_id = loads[turn % len(loads)]
            status = "ASSIGNED" if turn // len(loads) % 2 == 0 else "OPEN"
            started, side = time.perf_counter(), phase
            await db.write_row(partial(set_load_status, load_id=load_id, status=status, scope=org_id))
            writes.get(side, []).append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(WRITER_PAUSE)

    task = asyncio.create_task(writer())
    corrections = 0
    try:
        await asyncio.sleep(0.5)  # warm-up, not counted
        for round_ in range(profile["rounds"]):
            phase = "without"
            await asyncio.sleep(profile["window"])
            phase = ""
            await asyncio.to_thread(add_drift, path, orgs[round_ * 7 % len(orgs)])
            window_end, done = time.perf_counter() + profile["window"], 0
            while done < MIN_RECALCS or time.perf_counter() < window_end:
                started, phase = time.perf_counter(), "with"
                results = await recalculate(db, orgs, "bench")
                phase = ""
                recalcs.append((time.perf_counter() - started) * 1000)
                corrections += sum(len(r.corrected) for r in results)
                done += 1
    finally:
        stop = True
        await task

    without, during, recalc = summarize(writes["without"]), summarize(writes["with"]), summarize(recalcs)
    exact = not any([(await drift_report(db, org_id)).delta for org_id in orgs])
    log(f"  writer p99 without {without['p99']:.2f} ms, with {during['p99']:.2f} ms")
    return {
        "org": human(size), "case": "one org" if len(orgs) == 1 else f"run over {len(orgs)} orgs", "orgs": len(orgs),
        "recalc": recalc, "per_org": recalc["p50"] / len(orgs), "without": without, "with": during,
        "corrections": corrections, "expected": profile["rounds"], "exact": exact,
    }  # fmt: skip


async def measure(url: str, path: Path, sizes: list[int], profile: dict[str, Any]) -> list[dict[str, Any]]:
    results = []
    async with database(url, pool_size=10) as db:
        for size in sizes:
            orgs = [org_name(size, k) for k in range(1, profile["copies"][size] + 1)]
            for chosen in [orgs, orgs[:1]] if len(orgs) > 1 else [orgs]:
                log(f"{human(size)}: recalculating {len(chosen)} org(s) ...")
                results.append(await case(db, path, size, chosen, profile))
    return results


def run(profile: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tally-bench-recalc-") as tmp:
        log("seeding ...")
        sizes = list(profile["copies"])
        orgs = {org_name(size, k): size for size, n in profile["copies"].items() for k in range(1, n + 1)}
        path, seconds = Path(tmp) / "recalc.db", run_async(seed(f"sqlite+aiosqlite:///{tmp}/recalc.db", orgs))
        largest = sizes.pop() if seconds > MAX_SEED_SECONDS else None
        cases = run_async(measure(f"sqlite+aiosqlite:///{path}", path, sizes, profile))
        seeded = {"loads": sum(orgs.values()), "seconds": seconds, "mb": path.stat().st_size / 1e6}
    return {
        "profile": profile,
        "cases": cases,
        "seeded": seeded,
        "skipped": largest,
        "ok": all(c["exact"] for c in cases),
        "machine": {
            "SQLite": f"{sqlite3.sqlite_version} (WAL, synchronous=NORMAL, busy_timeout 30 s)",
            "Redis": "not used",
        },
    }
