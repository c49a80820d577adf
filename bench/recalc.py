"""Recalculation benchmark: `uv run python -m bench.recalc` (results: docs/benchmarks-recalc.md).

On SQLite (WAL), orgs of 10k, 100k and 1M loads are seeded in bulk by
`bench.seed.seed` (sqlite3, one transaction, organization_stats shard 0 written
from a recount): COPIES of each size, so that a run over all orgs of one size
recounts 1M loads. For each size, in one process and one `Database` (as the
scheduler runs in a server), two cases:

- "run over all orgs": `db.recalculation.recalculate(db, orgs, "bench")` over
  every org of the size, what `recalculateAllOrgStats` and the scheduler do;
- "one org": `recalculate(db, [org], "bench")`, what `recalculateOrgStats` does.

For each case:

- a writer loop toggles loads of the recalculated orgs (one per org, in turn)
  OPEN <-> ASSIGNED through `Database.write(set_load_status)` (each write also
  upserts the org's stats row), WRITER_PAUSE between writes, timing every write;
- windows of WINDOW seconds alternate: baseline (writer alone), then
  recalculation (writer + recalculations back to back for the window, at least
  MIN_RECALCS of them), ROUNDS times. Before each recalculation window one org's
  stored row is given a known drift (+7 open loads, by sqlite3 outside the
  windows) so the first recalculation of the window writes a correction.

Writer latency "during recalculation" counts the writes that started while a
recalculation was running; "without" counts the writes of the baseline
windows of the same case, in the same run.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bench.machine import describe
from bench.seed import human, open_loads, org_names, seed
from db.loads import set_load_status
from db.recalculation import recalculate
from db.unit_of_work import Database

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks-recalc.md"
SIZES = (10_000, 100_000, 1_000_000)
COPIES = {10_000: 100, 100_000: 10, 1_000_000: 1}  # a run over one size's orgs recounts 1M loads
MAX_SEED_SECONDS = 90.0  # a slower machine drops the 1M size
WINDOW = 1.0  # seconds per baseline / recalculation window: short, so both sides see the same machine
ROUNDS = 32  # baseline + recalculation windows per case (~4,000 writes a side: p99 is the 40th slowest)
MIN_RECALCS = 2  # per recalculation window, even when it outlasts WINDOW
WRITER_PAUSE = 0.005  # seconds between the writer's writes
DRIFT = 7
ANALYSIS = "\n## Analysis"  # a hand-written section of the doc that a re-run keeps


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


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

    @property
    def per_org_ms(self) -> float:
        return pct(self.recalc_ms, 50) / self.orgs

    @property
    def case(self) -> str:
        return "one org" if self.orgs == 1 else f"run over {self.orgs} orgs"


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


async def bench_case(db: Database, path: Path, size: int, orgs: list[str]) -> CaseResult:
    writer = Writer(db, [(org_id, str(open_loads(path, org_id, 1)[0])) for org_id in orgs])
    recalcs: list[tuple[float, float]] = []  # (start, end)
    recalc_ms: list[float] = []
    corrections = 0
    baseline_windows: list[tuple[float, float]] = []
    task = asyncio.create_task(writer.run())
    try:
        await asyncio.sleep(0.5)  # warm-up, not counted
        for round_ in range(ROUNDS):
            start = time.perf_counter()
            await asyncio.sleep(WINDOW)
            baseline_windows.append((start, time.perf_counter()))
            await asyncio.to_thread(add_drift, path, orgs[round_ * 7 % len(orgs)])
            window_end = time.perf_counter() + WINDOW
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
    return CaseResult(size, len(orgs), baseline, during, recalc_ms, corrections, ROUNDS, exact)


def render(
    results: list[CaseResult], machine: dict[str, str], load_end: str, seeded: str, skipped: str, seconds: float
) -> str:
    copies = ", ".join(f"{COPIES[size]} of {human(size)}" for size in SIZES)
    lines = [
        "# Recalculation benchmark",
        "",
        f"`uv run python -m bench.recalc` (bench/recalc.py) wrote this file; whole run {seconds:.0f} s.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in machine.items()],
        f"| Load average at end | {load_end} |",
        "",
        "Absolute figures move with the machine's load (see the load averages); every ratio is against a "
        "baseline measured in the same run, seconds apart, with the same writer on the same orgs.",
        "",
        "## Method",
        "",
        f"- Database: one SQLite file (WAL, Tally's migrations), seeded by `bench.seed.seed` in bulk "
        f"(sqlite3, one transaction, indexes rebuilt afterwards, `organization_stats` shard 0 written from a "
        f"recount) with orgs of each size ({copies}: the orgs of one size hold 1M loads together), loads "
        f"only (the invoice recount finds none). {seeded}",
        "- One process, one `Database` (pool of 10, `BEGIN IMMEDIATE` writers), one asyncio loop: the same "
        "arrangement as the scheduler inside a server.",
        "- Two cases per size, each the real path (`db.recalculation.recalculate`: recount, corrections, "
        "run row, `lastRecalculatedAt`):",
        '  - **run over all orgs**: `recalculate(db, orgs, "bench")` over every org of the size, as '
        "`recalculateAllOrgStats` and the scheduled job do. Orgs found exact are recorded in one write per "
        "batch, a drifted org in its own correction;",
        '  - **one org**: `recalculate(db, [org], "bench")`, as `recalculateOrgStats` does: one write '
        "transaction per call (the 1m size has one org, so it has this case only).",
        f"- Writer: `Database.write(set_load_status)` toggling a load OPEN <-> ASSIGNED in each recalculated "
        f"org in turn (lock read, update, stats upsert, commit), {WRITER_PAUSE * 1000:.0f} ms pause between "
        f"writes; every write timed with `time.perf_counter()`.",
        f"- Per case, {ROUNDS} rounds of: a {WINDOW:.0f} s baseline window (writer alone), then a "
        f"recalculation window: recalculations back to back for {WINDOW:.0f} s (at least {MIN_RECALCS}) "
        "with the writer still running.",
        f"- Before each recalculation window one org's stored row gets a known drift (`loads_open + {DRIFT}`, "
        f"by sqlite3, outside the timed windows), so the first recalculation of each window writes a "
        f"correction (and the later ones find none); afterwards every org's counters must equal a recount.",
        '- "With recalculation" = writes that **started** while a recalculation was running; '
        '"without" = writes of the baseline windows. Percentiles are nearest-rank.',
        "",
        "## Results",
        "",
        "| org (loads) | case | recalculation ms per org p50 (per call p50 / max, calls) "
        "| writer p50 ms without / with (ratio) | writer p99 ms without / with (ratio) "
        "| writer max ms without / with (ratio) | writes without / with | corrections (expected) | exact after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b50, d50 = pct(r.baseline_ms, 50), pct(r.during_ms, 50)
        b99, d99 = pct(r.baseline_ms, 99), pct(r.during_ms, 99)
        bmax, dmax = max(r.baseline_ms), max(r.during_ms)
        lines.append(
            f"| {human(r.size)} | {r.case} | {r.per_org_ms:.1f} ({pct(r.recalc_ms, 50):.1f} / "
            f"{max(r.recalc_ms):.1f}, {len(r.recalc_ms)}) "
            f"| {b50:.2f} / {d50:.2f} ({d50 / b50:.2f}x) | {b99:.2f} / {d99:.2f} ({d99 / b99:.2f}x) "
            f"| {bmax:.2f} / {dmax:.2f} ({dmax / bmax:.2f}x) | {len(r.baseline_ms)} / {len(r.during_ms)} "
            f"| {r.corrections} ({r.expected_corrections}) | {'yes' if r.exact_after else 'NO'} |"
        )
    if skipped:
        lines += ["", skipped]
    one_org = [r for r in results if r.orgs == 1]
    lines += [
        "",
        "Recalculation time of one org grows with its loads (a full recount through the `(org_id, status, id)` "
        "and `(org_id, load_type, id)` indexes) relative to the 10k org: "
        + ", ".join(f"{human(r.size)}: {r.per_org_ms / one_org[0].per_org_ms:.1f}x" for r in one_org[1:])
        + ".",
        "",
        "## Targets",
        "",
        "| target | measured | met? |",
        "|---|---|---|",
    ]
    for r in results:
        ratio = pct(r.during_ms, 99) / pct(r.baseline_ms, 99)
        lines.append(
            f"| writer p99 during recalculation within 1.5x of without, {human(r.size)}, {r.case} "
            f"| {ratio:.2f}x ({pct(r.baseline_ms, 99):.2f} -> {pct(r.during_ms, 99):.2f} ms) "
            f"| {'met' if ratio <= 1.5 else 'not met'} |"
        )
    lines.append("")
    return "\n".join(lines)


async def main_async() -> None:
    started = time.perf_counter()
    machine = describe(ROOT)
    with tempfile.TemporaryDirectory(prefix="tally-bench-recalc-") as tmp:
        path = Path(tmp) / "recalc.db"
        print("seeding ...", flush=True)
        seeded = await asyncio.to_thread(seed, path, list(SIZES), COPIES)  # migrations run their own loop
        sizes = list(SIZES)
        skipped = ""
        if seeded.seconds > MAX_SEED_SECONDS:
            sizes.remove(1_000_000)
            skipped = f"The 1M org was not measured: seeding took {seeded.seconds:.0f} s (> {MAX_SEED_SECONDS:.0f} s)."
        seeded_text = (
            f"Seeding {sum(seeded.orgs.values()):,} loads (those orgs plus bench.seed's 20k mutation org) took "
            f"{seeded.seconds:.1f} s; file {seeded.file_bytes / 2**20:.0f} MiB."
        )
        print(seeded_text, flush=True)
        db = Database(seeded.url, pool_size=10)
        results: list[CaseResult] = []
        try:
            for size in sizes:
                orgs = org_names(size, COPIES[size])
                for case in [orgs, orgs[:1]] if len(orgs) > 1 else [orgs]:
                    print(f"{human(size)}: recalculating {len(case)} org(s) ...", flush=True)
                    result = await bench_case(db, path, size, case)
                    results.append(result)
                    print(
                        f"  recalc per org p50 {result.per_org_ms:.2f} ms; writer p99 without "
                        f"{pct(result.baseline_ms, 99):.2f} ms, with {pct(result.during_ms, 99):.2f} ms",
                        flush=True,
                    )
        finally:
            await db.dispose()
    seconds = time.perf_counter() - started
    machine["SQLite"] = f"{machine['SQLite']} (WAL, synchronous=NORMAL, busy_timeout 30 s)"
    machine["Redis"] = "not used"
    text = render(results, machine, loadavg(), seeded_text, skipped, seconds)
    kept = DOC.read_text().partition(ANALYSIS) if DOC.exists() else ("", "", "")
    DOC.write_text(text + (kept[1] + kept[2] if kept[1] else ""))
    print(f"wrote {DOC} in {seconds:.0f} s")


def main() -> None:
    asyncio.run(main_async())


if __name__ == "__main__":
    main()
