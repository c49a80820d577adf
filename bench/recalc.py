"""Recalculation benchmark: `uv run python -m bench.recalc` (results: docs/benchmarks-recalc.md).

On SQLite (WAL), orgs of 10k, 100k and 1M loads are seeded in bulk by
`bench.seed.seed` (sqlite3, one transaction, organization_stats shard 0 written
from a recount). For each org, in one process and one `Database` (as the
scheduler runs in a server):

- a writer loop toggles one of the org's loads OPEN <-> ASSIGNED through
  `Database.write(set_load_status)` (each write also upserts the org's stats
  row), WRITER_PAUSE between writes, timing every write;
- windows of WINDOW seconds alternate: baseline (writer alone), then
  recalculation (writer + `db.recalculation.recalculate(db, [org], "bench")`
  run back to back for the window, at least MIN_RECALCS times), ROUNDS times.
  Before each recalculation window the stored row is given a known drift (+7
  open loads, by sqlite3 outside the windows) so the first recalculation of the
  window writes a correction.

Writer latency "during recalculation" counts the writes that started while a
recalculation was running; "without" counts the writes of the baseline
windows of the same org, in the same run.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bench.machine import describe
from bench.seed import human, open_loads, org_name, seed
from db.loads import set_load_status
from db.recalculation import recalculate
from db.unit_of_work import Database

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks-recalc.md"
SIZES = (10_000, 100_000, 1_000_000)
MAX_SEED_SECONDS_FOR_1M = 60.0
WINDOW = 4.0  # seconds per baseline / recalculation window
ROUNDS = 4  # baseline + recalculation windows per org
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
    org_id: str
    load_id: str
    status: str = "OPEN"
    samples: list[tuple[float, float]] = field(default_factory=list)  # (start, seconds)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self.stop.is_set():
            target = "ASSIGNED" if self.status == "OPEN" else "OPEN"
            started = time.perf_counter()
            await self.db.write(partial(set_load_status, load_id=self.load_id, status=target, scope=self.org_id))
            self.samples.append((started, time.perf_counter() - started))
            self.status = target
            await asyncio.sleep(WRITER_PAUSE)


@dataclass
class OrgResult:
    size: int
    baseline_ms: list[float]
    during_ms: list[float]
    recalc_ms: list[float]
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


async def bench_org(db: Database, path: Path, size: int) -> OrgResult:
    org_id = org_name(size)
    writer = Writer(db, org_id, str(open_loads(path, org_id, 1)[0]))
    recalcs: list[tuple[float, float]] = []  # (start, end)
    recalc_ms: list[float] = []
    corrections = 0
    baseline_windows: list[tuple[float, float]] = []
    task = asyncio.create_task(writer.run())
    try:
        await asyncio.sleep(0.5)  # warm-up, not counted
        for _ in range(ROUNDS):
            start = time.perf_counter()
            await asyncio.sleep(WINDOW)
            baseline_windows.append((start, time.perf_counter()))
            await asyncio.to_thread(add_drift, path, org_id)
            window_end = time.perf_counter() + WINDOW
            done = 0
            while done < MIN_RECALCS or time.perf_counter() < window_end:
                started = time.perf_counter()
                results = await recalculate(db, [org_id], "bench")
                ended = time.perf_counter()
                recalcs.append((started, ended))
                recalc_ms.append((ended - started) * 1000)
                corrections += sum(len(r.corrected) for r in results)
                done += 1
    finally:
        writer.stop.set()
        await task

    def inside(at: float, spans: list[tuple[float, float]]) -> bool:
        return any(a <= at < b for a, b in spans)

    baseline = [s * 1000 for at, s in writer.samples if inside(at, baseline_windows)]
    during = [s * 1000 for at, s in writer.samples if inside(at, recalcs)]
    return OrgResult(size, baseline, during, recalc_ms, corrections, ROUNDS, stored_matches_recount(path, org_id))


def render(
    results: list[OrgResult], machine: dict[str, str], load_end: str, seeded: str, skipped: str, seconds: float
) -> str:
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
        "The machine is shared with other agents' test runs (see the load averages): absolute figures are "
        "noisy; every ratio is against a baseline measured in the same run, seconds apart, with the same "
        "writer on the same org.",
        "",
        "## Method",
        "",
        f"- Database: one SQLite file (WAL, Tally's migrations), seeded by `bench.seed.seed` in bulk "
        f"(sqlite3, one transaction, indexes rebuilt afterwards, `organization_stats` shard 0 written from a "
        f"recount) with one org per size, loads only (the invoice recount finds none). {seeded}",
        "- One process, one `Database` (pool of 10, `BEGIN IMMEDIATE` writers), one asyncio loop: the same "
        "arrangement as the scheduler inside a server.",
        f"- Writer: `Database.write(set_load_status)` toggling one of the org's loads OPEN <-> ASSIGNED "
        f"(lock read, update, stats upsert, commit), {WRITER_PAUSE * 1000:.0f} ms pause between writes; every "
        f"write timed with `time.perf_counter()`.",
        f"- Per org, {ROUNDS} rounds of: a {WINDOW:.0f} s baseline window (writer alone), then a recalculation "
        f'window: `db.recalculation.recalculate(db, [org], "bench")` back to back for {WINDOW:.0f} s (at least '
        f"{MIN_RECALCS} runs) with the writer still running. Each call is the real path: a run row, the "
        f"snapshot read (stored row + recount of loads and invoices), the single-row correction, the "
        f"finishing write.",
        f"- Before each recalculation window the stored row gets a known drift (`loads_open + {DRIFT}`, by "
        f"sqlite3, outside the timed windows), so the first recalculation of each window writes a correction "
        f"(and the later ones find none); afterwards the stored counters must equal a recount.",
        '- "With recalculation" = writes that **started** while a recalculation was running; '
        '"without" = writes of the baseline windows. Percentiles are nearest-rank.',
        "",
        "## Results",
        "",
        "| org (loads) | recalculation ms p50 / max (runs) | writer p50 ms without / with (ratio) "
        "| writer p99 ms without / with (ratio) | writer max ms without / with (ratio) "
        "| writes without / with | corrections (expected) | exact after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b50, d50 = pct(r.baseline_ms, 50), pct(r.during_ms, 50)
        b99, d99 = pct(r.baseline_ms, 99), pct(r.during_ms, 99)
        bmax, dmax = max(r.baseline_ms), max(r.during_ms)
        lines.append(
            f"| {human(r.size)} | {pct(r.recalc_ms, 50):.1f} / {max(r.recalc_ms):.1f} ({len(r.recalc_ms)}) "
            f"| {b50:.2f} / {d50:.2f} ({d50 / b50:.2f}x) | {b99:.2f} / {d99:.2f} ({d99 / b99:.2f}x) "
            f"| {bmax:.2f} / {dmax:.2f} ({dmax / bmax:.2f}x) | {len(r.baseline_ms)} / {len(r.during_ms)} "
            f"| {r.corrections} ({r.expected_corrections}) | {'yes' if r.exact_after else 'NO'} |"
        )
    if skipped:
        lines += ["", skipped]
    lines += [
        "",
        "Recalculation time grows with the org's loads (a full recount through the `(org_id, status, id)` and "
        "`(org_id, load_type, id)` indexes) relative to the 10k org: "
        + ", ".join(
            f"{human(r.size)}: {pct(r.recalc_ms, 50) / pct(results[0].recalc_ms, 50):.1f}x" for r in results[1:]
        )
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
            f"| writer p99 during recalculation within 1.5x of without, {human(r.size)} org "
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
        seeded = await asyncio.to_thread(seed, path, list(SIZES))  # migrations run their own loop
        sizes = list(SIZES)
        skipped = ""
        if seeded.seconds > MAX_SEED_SECONDS_FOR_1M:
            sizes.remove(1_000_000)
            skipped = f"The 1M org was not measured: seeding took {seeded.seconds:.0f} s (> 60 s)."
        seeded_text = (
            f"Seeding {sum(seeded.orgs.values()):,} loads ({', '.join(human(s) for s in SIZES)} plus bench.seed's "
            f"20k mutation org) took {seeded.seconds:.1f} s; file {seeded.file_bytes / 2**20:.0f} MiB."
        )
        print(seeded_text, flush=True)
        db = Database(seeded.url, pool_size=10)
        results: list[OrgResult] = []
        try:
            for size in sizes:
                print(f"org of {human(size)} loads ...", flush=True)
                result = await bench_org(db, path, size)
                results.append(result)
                print(
                    f"  recalc p50 {pct(result.recalc_ms, 50):.1f} ms; writer p99 without "
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
