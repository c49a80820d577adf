"""Recalculation beside a writer (docs/benchmarks-recalc.md).

On SQLite (WAL), orgs of each size are seeded in bulk by `bench.seed.seed` (copies of
each size, so that a run over all orgs of one size recounts as many loads as the largest
org). For each size, in one process and one `Database` (as the scheduler runs in a
server), two cases: "run over all orgs" (`recalculate(db, orgs, "bench")`, what
`recalculateAllOrgStats` and the scheduler do) and "one org" (`recalculate(db, [org])`,
what `recalculateOrgStats` does). Meanwhile a writer toggles loads of those orgs through
`Database.write(set_load_status)`, timing every write. Windows alternate: baseline (writer
alone), then recalculations back to back (at least MIN_RECALCS); before each recalculation
window one org's stored row is given a known drift, so the first recalculation corrects it.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import sqlite3
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import human, log, percentile, table
from bench.seed import open_loads, org_names, seed
from db.loads import set_load_status
from db.recalculation import recalculate
from db.unit_of_work import Database

MIN_RECALCS = 2  # per recalculation window, even when it outlasts the window
WRITER_PAUSE = 0.005  # seconds between the writer's writes
DRIFT = 7


@dataclass(frozen=True)
class Profile:
    copies: dict[int, int]  # loads per org -> orgs of that size (together as many loads as the largest)
    max_seed_seconds: float  # a slower machine drops the largest size
    window: float  # seconds per baseline / recalculation window: short, so both sides see the same machine
    rounds: int  # baseline + recalculation windows per case


PROFILES = {
    "full": Profile({10_000: 100, 100_000: 10, 1_000_000: 1}, 90.0, 1.0, 32),
    "quick": Profile({1_000: 10, 10_000: 1}, 90.0, 0.3, 2),
}


@dataclass
class Writer:
    db: Database
    loads: list[tuple[str, str]]  # (org_id, load_id), written in turn
    status: dict[str, str] = field(default_factory=dict)
    samples: list[tuple[float, float]] = field(default_factory=list)  # (start, seconds)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        turn = 0
        while not self.stop.is_set():
            org_id, load_id = self.loads[turn % len(self.loads)]
            turn += 1
            target = "ASSIGNED" if self.status.get(load_id, "OPEN") == "OPEN" else "OPEN"
            started = time.perf_counter()
            await self.db.write(partial(set_load_status, load_id=load_id, status=target, scope=org_id))
            self.samples.append((started, time.perf_counter() - started))
            self.status[load_id] = target
            await asyncio.sleep(WRITER_PAUSE)


@dataclass
class CaseResult:
    size: int
    orgs: int
    baseline_ms: list[float]
    during_ms: list[float]
    recalc_ms: list[float]  # per call of recalculate (a run over `orgs` orgs)
    corrections: int
    expected_corrections: int
    exact_after: bool


def add_drift(path: Path, org_id: str) -> None:
    conn = sqlite3.connect(path, timeout=30)
    try:
        with conn:
            conn.execute(
                "UPDATE organization_stats SET loads_open = loads_open + ? WHERE org_id = ? AND shard = 0",
                (DRIFT, org_id),
            )
    finally:
        conn.close()


def stored_matches_recount(path: Path, org_id: str) -> bool:
    conn = sqlite3.connect(path)
    try:
        stored = conn.execute(
            "SELECT sum(loads_open), sum(loads_assigned), sum(loads_completed), sum(loads_canceled) "
            "FROM organization_stats WHERE org_id = ?",
            (org_id,),
        ).fetchone()
        counted = dict(conn.execute("SELECT status, count(*) FROM loads WHERE org_id = ? GROUP BY status", (org_id,)))
    finally:
        conn.close()
    return tuple(stored) == tuple(counted.get(s, 0) for s in ("OPEN", "ASSIGNED", "COMPLETED", "CANCELED"))


async def bench_case(db: Database, path: Path, size: int, orgs: list[str], profile: Profile) -> CaseResult:
    writer = Writer(db, [(org_id, str(open_loads(path, org_id, 1)[0])) for org_id in orgs])
    recalcs: list[tuple[float, float]] = []  # (start, end)
    recalc_ms: list[float] = []
    corrections = 0
    baseline_windows: list[tuple[float, float]] = []
    task = asyncio.create_task(writer.run())
    try:
        await asyncio.sleep(0.5)  # warm-up, not counted
        for round_ in range(profile.rounds):
            start = time.perf_counter()
            await asyncio.sleep(profile.window)
            baseline_windows.append((start, time.perf_counter()))
            await asyncio.to_thread(add_drift, path, orgs[round_ * 7 % len(orgs)])
            window_end = time.perf_counter() + profile.window
            done = 0
            while done < MIN_RECALCS or time.perf_counter() < window_end:
                started = time.perf_counter()
                results = await recalculate(db, orgs, "bench")
                ended = time.perf_counter()
                recalcs.append((started, ended))
                recalc_ms.append((ended - started) * 1000)
                corrections += sum(len(r.corrected) for r in results)
                done += 1
    finally:
        writer.stop.set()
        await task

    def inside(at: float, spans: list[tuple[float, float]]) -> bool:
        """Spans are in time order and do not overlap: look at the last one starting by `at`."""
        i = bisect.bisect_right(spans, (at, math.inf)) - 1
        return i >= 0 and spans[i][0] <= at < spans[i][1]

    baseline = [s * 1000 for at, s in writer.samples if inside(at, baseline_windows)]
    during = [s * 1000 for at, s in writer.samples if inside(at, recalcs)]
    exact = all(stored_matches_recount(path, org_id) for org_id in orgs)
    return CaseResult(size, len(orgs), baseline, during, recalc_ms, corrections, profile.rounds, exact)


def run(profile: Profile) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tally-bench-recalc-") as tmp:
        path = Path(tmp) / "recalc.db"
        log("seeding ...")
        sizes = list(profile.copies)
        seeded = seed(path, sizes, profile.copies)
        skipped = ""
        if seeded.seconds > profile.max_seed_seconds:
            skipped = f"The {human(sizes.pop())} org was not measured: seeding took {seeded.seconds:.0f} s (> {profile.max_seed_seconds:.0f} s)."
        results = asyncio.run(measure(path, seeded.url, sizes, profile))
    return {
        "profile": {**asdict(profile), "copies": list(profile.copies.items())},
        "cases": [asdict(r) for r in results],
        "seeded": {"loads": sum(seeded.orgs.values()), "seconds": seeded.seconds, "mib": seeded.file_bytes / 2**20},
        "skipped": skipped,
        "ok": all(r.exact_after for r in results),
        "machine": {"SQLite": f"{sqlite3.sqlite_version} (WAL, synchronous=NORMAL, busy_timeout 30 s)", "Redis": "not used"},
    }


async def measure(path: Path, url: str, sizes: list[int], profile: Profile) -> list[CaseResult]:
    db = Database(url, pool_size=10)
    results: list[CaseResult] = []
    try:
        for size in sizes:
            orgs = org_names(size, profile.copies[size])
            for case in [orgs, orgs[:1]] if len(orgs) > 1 else [orgs]:
                log(f"{human(size)}: recalculating {len(case)} org(s) ...")
                results.append(await bench_case(db, path, size, case, profile))
                r = results[-1]
                log(f"  writer p99 without {percentile(r.baseline_ms, 99):.2f} ms, with {percentile(r.during_ms, 99):.2f} ms")
    finally:
        await db.dispose()
    return results


def fields(data: dict[str, Any]) -> dict[str, Any]:
    profile = Profile(**{**data["profile"], "copies": dict(data["profile"]["copies"])})
    rows, targets = [], []
    per_org = []
    for r in data["cases"]:
        case = "one org" if r["orgs"] == 1 else f"run over {r['orgs']} orgs"
        p = {k: (percentile(r[k], 50), percentile(r[k], 99), max(r[k], default=math.nan)) for k in ("baseline_ms", "during_ms", "recalc_ms")}
        (b50, b99, bmax), (d50, d99, dmax) = p["baseline_ms"], p["during_ms"]
        per_org_ms = p["recalc_ms"][0] / r["orgs"]
        if r["orgs"] == 1:
            per_org.append((r["size"], per_org_ms))
        rows.append([
            human(r["size"]), case, f"{per_org_ms:.1f} ({p['recalc_ms'][0]:.1f} / {p['recalc_ms'][2]:.1f}, {len(r['recalc_ms'])})",
            f"{b50:.2f} / {d50:.2f} ({d50 / b50:.2f}x)", f"{b99:.2f} / {d99:.2f} ({d99 / b99:.2f}x)", f"{bmax:.2f} / {dmax:.2f} ({dmax / bmax:.2f}x)",
            f"{len(r['baseline_ms'])} / {len(r['during_ms'])}", f"{r['corrections']} ({r['expected_corrections']})", "yes" if r["exact_after"] else "NO",
        ])  # fmt: skip
        targets.append([f"writer p99 during recalculation within 1.5x of without, {human(r['size'])}, {case}", f"{d99 / b99:.2f}x ({b99:.2f} -> {d99:.2f} ms)", "met" if d99 / b99 <= 1.5 else "not met"])
    header = ["org (loads)", "case", "recalculation ms per org p50 (per call p50 / max, calls)", "writer p50 ms without / with (ratio)"]
    header += ["writer p99 ms without / with (ratio)", "writer max ms without / with (ratio)", "writes without / with", "corrections (expected)", "exact after"]
    seeded = data["seeded"]
    return {
        "copies": ", ".join(f"{n} of {human(size)}" for size, n in profile.copies.items()),
        "seeded": f"Seeding {seeded['loads']:,} loads (those orgs plus bench.seed's 20k mutation org) took {seeded['seconds']:.1f} s; file {seeded['mib']:.0f} MiB.",
        "pause_ms": f"{WRITER_PAUSE * 1000:.0f}",
        "rounds": profile.rounds,
        "window": f"{profile.window:g}",
        "min_recalcs": MIN_RECALCS,
        "drift": DRIFT,
        "results": table(header, rows) + (f"\n\n{data['skipped']}" if data["skipped"] else ""),
        "growth": ", ".join(f"{human(size)}: {ms / per_org[0][1]:.1f}x" for size, ms in per_org[1:]) or "n/a",
        "smallest": human(per_org[0][0]) if per_org else "n/a",
        "targets": table(["target", "measured", "met?"], targets),
    }
