"""Tally benchmark driver: `uv run python -m bench [--quick] [--out PATH]`.

1. Seeds one SQLite file: one org per size (1k, 100k, 1M loads; 1k and 10k
   with --quick) plus `org_mut` for the status changes.
2. Starts three uvicorn processes (one worker each, same flags): Tally, the
   naive variant and the floor (bench/servers.py), and checks that all three
   answer countLoadsByStatus with identical bytes that match a recount.
3. Measures countLoadsByStatus at 1 and 16 closed-loop clients (bench/loadgen.py,
   a separate process), interleaving the variants per (size, clients).
4. Measures a status change (OPEN <-> ASSIGNED) with and without aggregate
   maintenance, over HTTP and at the db layer, in alternating rounds.
5. Checks the aggregate is still exact, then writes the report (bench/report.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench import report
from bench.machine import describe
from bench.seed import MUTATION_ORG, Seeded, open_loads, org_name, recount, seed, stored
from main import DEV_SECRET
from schema.auth import TokenVerifier

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

COUNT_QUERY = (
    "query CountLoads($org: ID!) { countLoadsByStatus(orgId: $org) { open assigned completed canceled total } }"
)
SET_STATUS = (
    "mutation SetStatus($id: ID!, $status: LoadStatus!) { updateLoadStatus(id: $id, status: $status) { id status } }"
)
# The bench-only mutation, aliased so that its response has the same shape and size.
SET_STATUS_WITHOUT_AGGREGATE = (
    "mutation SetStatus($id: ID!, $status: LoadStatus!) "
    "{ updateLoadStatus: updateLoadStatusWithoutAggregate(id: $id, status: $status) { id status } }"
)
POOL = 500  # loads per mutation run; each run toggles its own, so every change is a real one


@dataclass(frozen=True)
class Profile:
    name: str
    sizes: tuple[int, ...]
    warmup: float  # seconds per measurement, before the window opens
    duration: float  # seconds of the measurement window
    min_samples: int  # the window is extended (up to max_duration) until this many
    max_duration: float
    mutation_rounds: int  # rounds of (with, without), alternating which goes first
    db_ops_seconds: float  # per db-level mutation run
    retry_until: float  # seconds into the run after which disturbed reads are no longer measured again


FULL = Profile("full", (1_000, 100_000, 1_000_000), 2.0, 8.0, 400, 20.0, 2, 5.0, 360.0)
QUICK = Profile("quick", (1_000, 10_000), 0.3, 1.0, 30, 2.0, 1, 1.0, 0.0)
DISTURBED = 0.10  # a read measurement during which other processes used this share of the CPUs is redone


@dataclass
class Cell:
    """One measurement: latencies of a closed-loop run and what it cost the server."""

    variant: str
    label: str
    concurrency: int
    latencies_us: list[int]
    seconds: float
    completed_ok: int
    server_cpu_us_per_request: float | None
    client_cpu_us_per_request: float | None
    foreign_cpu: float | None = None  # share of the machine's CPU used by other processes meanwhile
    round_trips: int | None = None  # calls into aiosqlite's thread per operation (db layer only)
    attempts: int = 1
    stats: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.latencies_us.sort()
        self.stats = report.summarize(self.latencies_us, self.seconds)


def busy_seconds() -> float | None:
    """CPU time (all cores) the machine spent not idle since boot, from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy(seconds: float = 1.0) -> float | None:
    """Share of all cores busy over the next `seconds` (this process sleeps meanwhile)."""
    before = busy_seconds()
    time.sleep(seconds)
    after = busy_seconds()
    if before is None or after is None:
        return None
    return (after - before) / (seconds * (os.cpu_count() or 1))


def wait_for_quiet(max_wait: float) -> float | None:
    """Wait (up to max_wait seconds) until other processes leave the CPUs alone; the last reading."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = machine_busy(2.0)
        if busy is None or busy < 0.05 or time.monotonic() >= deadline:
            return busy
        log(f"the machine is {busy:.0%} busy with other processes; waiting for it to quiet down")
        time.sleep(3)


def foreign_share(wall: float, busy: float | None, ours: float) -> float | None:
    """Share of the machine's CPU capacity used by processes other than ours during `wall` seconds."""
    if busy is None or wall <= 0:
        return None
    return max(0.0, (busy - ours) / (wall * (os.cpu_count() or 1)))


STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def server_flags() -> tuple[str, str]:
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:
        http = "h11"
    return loop, http


class Server:
    """One uvicorn process, one worker, on a free loopback port."""

    def __init__(self, name: str, factory: str, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        loop, http = server_flags()
        self.command = [
            sys.executable, "-m", "uvicorn", f"bench.servers:{factory}", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--loop", loop, "--http", http, "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.log_path = RESULTS / f"server-{name}.log"
        self.log_file = self.log_path.open("w")
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=child_env(**env), stdout=self.log_file, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} server exited early; see {self.log_path}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} server did not become healthy; see {self.log_path}")
            time.sleep(0.1)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process (all its threads) so far."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log_file.close()


@contextmanager
def running(name: str, factory: str, env: dict[str, str]) -> Iterator[Server]:
    server = Server(name, factory, env)
    try:
        yield server
    finally:
        server.stop()


def post(server: Server, path: str, token: str | None, body: dict[str, Any]) -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(f"{server.base}{path}", json=body, headers=headers, timeout=60)
    response.raise_for_status()
    return response.content


def measure(
    server: Server,
    variant: str,
    label: str,
    *,
    path: str,
    token: str | None,
    bodies: list[str],
    expect: str | None,
    concurrency: int,
    profile: Profile,
) -> Cell:
    spec = {
        "host": "127.0.0.1",
        "port": server.port,
        "path": path,
        "headers": {"Authorization": f"Bearer {token}"} if token else {},
        "bodies": bodies,
        "expect": expect,
        "concurrency": concurrency,
        "warmup": profile.warmup,
        "duration": profile.duration,
        "min_samples": profile.min_samples,
        "max_duration": profile.max_duration,
    }
    cpu_before = server.cpu_seconds()
    busy_before, children_before, wall_before = busy_seconds(), children_cpu(), time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bench.loadgen"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
        timeout=profile.warmup + profile.max_duration + 60,
    )
    cpu_after = server.cpu_seconds()
    busy_after, children_after, wall = busy_seconds(), children_cpu(), time.monotonic() - wall_before
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr}")
    result = json.loads(done.stdout)
    if result["errors"]:
        raise RuntimeError(f"{variant} {label} c={concurrency}: {result['errors']} errors: {result['first_errors']}")
    server_cpu = None
    if cpu_before is not None and cpu_after is not None and result["completed_ok"]:
        server_cpu = (cpu_after - cpu_before) * 1e6 / result["completed_ok"]
    foreign = None
    if busy_before is not None and busy_after is not None and cpu_before is not None and cpu_after is not None:
        ours = (cpu_after - cpu_before) + (children_after - children_before)
        foreign = foreign_share(wall, busy_after - busy_before, ours)
    cell = Cell(
        variant=variant,
        label=label,
        concurrency=concurrency,
        latencies_us=result["latencies_us"],
        seconds=result["seconds"],
        completed_ok=result["completed_ok"],
        server_cpu_us_per_request=server_cpu,
        client_cpu_us_per_request=result["client_cpu_us_per_request"],
        foreign_cpu=foreign,
    )
    s = cell.stats
    log(
        f"  {variant:<24} {label:<9} c={concurrency:<2}  p50 {s['p50'] / 1000:8.3f} ms  "
        f"p99 {s['p99'] / 1000:8.3f} ms  {s['rps']:8.0f} req/s  n={s['n']:.0f}"
        + (f"  (other processes: {foreign:.0%} of the CPUs)" if foreign and foreign >= 0.05 else "")
    )
    return cell


def measure_read(*args: Any, profile: Profile, **kwargs: Any) -> Cell:
    """`measure`, redone (up to twice, within the run's retry budget) when other processes
    took a noticeable share of the CPUs meanwhile; the least disturbed attempt is kept."""
    best = measure(*args, profile=profile, **kwargs)
    attempts = 1
    while (
        best.foreign_cpu is not None
        and best.foreign_cpu >= DISTURBED
        and attempts < 3
        and time.monotonic() - STARTED < profile.retry_until
    ):
        log(f"  (disturbed: other processes used {best.foreign_cpu:.0%} of the CPUs; measuring again)")
        wait_for_quiet(15)
        cell = measure(*args, profile=profile, **kwargs)
        attempts += 1
        if cell.foreign_cpu is not None and cell.foreign_cpu < best.foreign_cpu:
            best = cell
    best.attempts = attempts
    return best


def count_body(org_id: str) -> str:
    return json.dumps({"query": COUNT_QUERY, "variables": {"org": org_id}, "operationName": "CountLoads"})


def toggle_bodies(query: str, ids: list[int]) -> list[str]:
    """OPEN -> ASSIGNED for every id, then back: with one client, each request is a real change."""
    return [
        json.dumps({"query": query, "variables": {"id": str(i), "status": status}, "operationName": "SetStatus"})
        for status in ("ASSIGNED", "OPEN")
        for i in ids
    ]


class Pools:
    """Disjoint sets of OPEN loads of the mutation org, one per mutation run."""

    def __init__(self, seeded: Seeded, runs: int) -> None:
        self.ids = open_loads(seeded.path, MUTATION_ORG, POOL * runs)  # read once, before any change
        self.taken = 0
        self.without_aggregate: list[int] = []

    def take(self, *, aggregate: bool) -> list[int]:
        ids = self.ids[self.taken : self.taken + POOL]
        self.taken += POOL
        if not aggregate:
            self.without_aggregate.extend(ids)
        return ids


# --- the db-level status change ------------------------------------------------------------


async def db_level_runs(url: str, plan: list[tuple[str, list[int]]], profile: Profile) -> list[Cell]:
    """Each (variant, pool): Database.write(set_load_status) or the same without the aggregate,
    called back to back in this process for db_ops_seconds (after a short warm-up)."""
    from bench.servers import write_without_aggregate
    from db.loads import set_load_status
    from db.unit_of_work import Database

    db = Database(url)  # no after-commit hooks: this is the aggregate alone, no publishing
    cells = []
    try:
        for variant, ids in plan:
            write: Callable[[Any], Awaitable[Any]]
            if variant == "with aggregate":
                write = db.write
            else:

                def write(work: Any) -> Awaitable[Any]:
                    return write_without_aggregate(db, work)

            latencies: list[int] = []
            busy_before, own_before, wall_before = busy_seconds(), self_cpu(), time.monotonic()
            warm_until = time.perf_counter() + min(1.0, profile.warmup)
            window_start = window_end = 0.0
            i = 0
            round_trips = -1
            while True:
                now = time.perf_counter()
                if now >= warm_until and not window_start:
                    window_start = now
                if window_start and now - window_start >= profile.db_ops_seconds:
                    window_end = now
                    break
                load_id = str(ids[i % len(ids)])
                status = "ASSIGNED" if (i // len(ids)) % 2 == 0 else "OPEN"
                i += 1
                work = partial(set_load_status, load_id=load_id, status=status, scope=MUTATION_ORG)
                if i == 3:  # a warm call (pooled connection) also counts its round trips to aiosqlite
                    with counting_round_trips() as trips:
                        await write(work)
                    round_trips = trips["n"]
                    continue
                started = time.perf_counter_ns()
                await write(work)
                if window_start:
                    latencies.append((time.perf_counter_ns() - started) // 1000)
            busy_after, own_after = busy_seconds(), self_cpu()
            foreign = None
            if busy_before is not None and busy_after is not None:
                foreign = foreign_share(
                    time.monotonic() - wall_before, busy_after - busy_before, own_after - own_before
                )
            cell = Cell(variant, "db layer", 1, latencies, window_end - window_start, i, None, None, foreign)
            cell.round_trips = round_trips
            cells.append(cell)
            s = cell.stats
            log(
                f"  db layer {variant:<24} p50 {s['p50'] / 1000:8.3f} ms  p99 {s['p99'] / 1000:8.3f} ms  n={s['n']:.0f}"
            )
    finally:
        await db.dispose()
    return cells


@contextmanager
def counting_round_trips() -> Iterator[dict[str, int]]:
    """Counts calls from the event loop into aiosqlite's worker threads (one per driver call).

    Bench-only instrumentation of aiosqlite's private `Connection._execute`; yields
    {"n": -1} (unknown) if that is missing."""
    import aiosqlite.core

    counter = {"n": 0}
    original = getattr(aiosqlite.core.Connection, "_execute", None)
    if original is None:
        counter["n"] = -1
        yield counter
        return

    async def counting(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        counter["n"] += 1
        return await original(self, fn, *args, **kwargs)

    aiosqlite.core.Connection._execute = counting  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        aiosqlite.core.Connection._execute = original  # type: ignore[method-assign]


async def read_breakdown(seeded: Seeded, org_id: str, token: str, calls: int) -> list[tuple[str, str, float, int]]:
    """Median time of each step of a Tally read, in process, each step alone, and its
    number of round trips to aiosqlite's thread."""
    import sqlite3

    import aiosqlite

    from db.broadcast import StatsHub
    from db.queries import get_stats
    from db.unit_of_work import Database
    from schema.context import Context
    from schema.root import build_schema

    async def timed(key: str, name: str, step: Callable[[], Awaitable[Any]]) -> tuple[str, str, float, int]:
        for _ in range(calls // 10):
            await step()
        with counting_round_trips() as trips:
            await step()
        samples = []
        for _ in range(calls):
            started = time.perf_counter_ns()
            await step()
            samples.append(time.perf_counter_ns() - started)
        samples.sort()
        return key, name, samples[len(samples) // 2] / 1000, trips["n"]

    select_row = "SELECT * FROM organization_stats WHERE org_id = ?"
    steps: list[tuple[str, str, float, int]] = []
    plain = sqlite3.connect(seeded.path)

    async def direct() -> None:
        plain.execute(select_row, (org_id,)).fetchone()

    steps.append(await timed("sqlite3", "sqlite3, same thread: SELECT the aggregate row", direct))
    plain.close()
    async with aiosqlite.connect(seeded.path) as conn:

        async def raw() -> None:
            async with conn.execute(select_row, (org_id,)) as cursor:
                await cursor.fetchone()

        steps.append(await timed("aiosqlite", "aiosqlite: the same SELECT via its worker thread (no SQLAlchemy)", raw))
    verifier = TokenVerifier(DEV_SECRET)

    async def verify() -> None:
        verifier.verify(token)

    steps.append(await timed("jwt", "JWT verification (`TokenVerifier.verify`)", verify))
    db = Database(seeded.url)
    try:
        steps.append(
            await timed(
                "read",
                "`Database.read(get_stats)`: session, BEGIN, SELECT, ROLLBACK, StatsSnapshot",
                lambda: db.read(lambda s: get_stats(s, org_id)),
            )
        )
        schema = build_schema()
        hub = StatsHub("memory://", lambda org: db.read(lambda s: get_stats(s, org)))
        variables = {"org": org_id}

        async def execute() -> None:
            context = Context(db=db, verifier=verifier, hub=hub, authorization=f"Bearer {token}")
            result = await schema.execute(COUNT_QUERY, variable_values=variables, context_value=context)
            assert result.errors is None, result.errors

        steps.append(await timed("execute", "`schema.execute(countLoadsByStatus)`: JWT + read + GraphQL", execute))
    finally:
        await db.dispose()
    return steps


def run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# --- the run ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: sizes 1k and 10k, short windows (<1 min)")
    parser.add_argument(
        "--out", type=Path, help="report path (default docs/benchmarks.md; quick: bench/results/quick.md)"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        help="seconds to wait at start for other processes to stop using the CPUs (default 120; quick 0)",
    )
    parser.add_argument("--data-dir", type=Path, default=RESULTS, help="where the SQLite file is created")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    out: Path = args.out or (RESULTS / "quick.md" if args.quick else ROOT / "docs" / "benchmarks.md")
    started = time.monotonic()
    machine = describe(ROOT)
    wait = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 120.0)
    busy = wait_for_quiet(wait)
    machine["CPU used by other processes at start"] = "unknown" if busy is None else f"{busy:.0%}"
    log(f"Tally benchmark ({profile.name}) on {machine['CPU']}, {machine['Cores (logical)']}")

    args.data_dir.mkdir(parents=True, exist_ok=True)
    seeded = seed(args.data_dir / f"bench-{profile.name}.db", list(profile.sizes))
    log(f"seeded {sum(seeded.orgs.values()):,} loads in {seeded.seconds:.1f} s ({seeded.file_bytes / 1e6:.0f} MB)")
    orgs = [org_name(size) for size in profile.sizes]
    labels = {org_name(size): report.human(size) for size in profile.sizes}
    verifier = TokenVerifier(DEV_SECRET)
    tokens = {
        org: verifier.issue(org_id=org, role="admin", subject="bench", ttl_seconds=3600)
        for org in [*orgs, MUTATION_ORG]
    }
    env = {"BENCH_DATABASE_URL": seeded.url}
    cells: list[Cell] = []
    mutation_cells: list[Cell] = []
    pools = Pools(seeded, runs=4 * profile.mutation_rounds + 1)
    with_total = 0  # committed changes that went through the aggregate (each bumps version by 1)

    with ExitStack() as stack:
        tally = stack.enter_context(running("tally", "tally_app", env))
        naive = stack.enter_context(running("naive", "naive_app", env))
        # The expected answers, from Tally, checked against a recount and against the naive variant.
        expected: dict[str, str] = {}
        for org in orgs:
            body = json.loads(count_body(org))
            answer = post(tally, "/graphql", tokens[org], body)
            counts = json.loads(answer)["data"]["countLoadsByStatus"]
            truth = recount(seeded.path, org)
            want = {k: truth[f"loads_{k}"] for k in ("open", "assigned", "completed", "canceled")}
            if {k: counts[k] for k in want} != want or counts["total"] != sum(want.values()):
                raise RuntimeError(f"Tally's counts for {org} are wrong: {counts} != {want}")
            if post(naive, "/graphql", tokens[org], body) != answer:
                raise RuntimeError(f"naive and Tally answers differ for {org}")
            expected[org] = answer.decode()
        floor_bodies = args.data_dir / f"floor-{profile.name}.json"
        floor_bodies.write_text(json.dumps({f"/floor/{org}": expected[org] for org in orgs}))
        floor = stack.enter_context(running("floor", "floor_app", {"BENCH_FLOOR_BODIES": str(floor_bodies)}))
        for org in orgs:
            if post(floor, f"/floor/{org}", None, {}) != expected[org].encode():
                raise RuntimeError("the floor does not answer Tally's bytes")

        log("countLoadsByStatus (variants interleaved per size and concurrency)")
        for org in orgs:
            for concurrency in (1, 16):
                for variant, server, path, token in (
                    ("floor", floor, f"/floor/{org}", None),
                    ("tally", tally, "/graphql", tokens[org]),
                    ("naive", naive, "/graphql", tokens[org]),
                ):
                    cells.append(
                        measure_read(
                            server,
                            variant,
                            labels[org],
                            path=path,
                            token=token,
                            bodies=[count_body(org)],
                            expect=expected[org],
                            concurrency=concurrency,
                            profile=profile,
                        )
                    )

        log("status change over HTTP, one client (rounds alternate which variant goes first)")
        mutation_token = tokens[MUTATION_ORG]
        for round_ in range(profile.mutation_rounds):
            order = [True, False] if round_ % 2 == 0 else [False, True]
            for aggregate in order:
                query = SET_STATUS if aggregate else SET_STATUS_WITHOUT_AGGREGATE
                variant = "with aggregate" if aggregate else "without aggregate"
                cell = measure(
                    naive,
                    variant,
                    f"round {round_ + 1}",
                    path="/graphql",
                    token=mutation_token,
                    bodies=toggle_bodies(query, pools.take(aggregate=aggregate)),
                    expect=None,
                    concurrency=1,
                    profile=profile,
                )
                mutation_cells.append(cell)
                with_total += cell.completed_ok if aggregate else 0
        cell = measure(
            tally,
            "Tally app (reference)",
            "reference",
            path="/graphql",
            token=mutation_token,
            bodies=toggle_bodies(SET_STATUS, pools.take(aggregate=True)),
            expect=None,
            concurrency=1,
            profile=profile,
        )
        mutation_cells.append(cell)
        with_total += cell.completed_ok

    log("status change at the db layer, in process (servers stopped)")
    plan = []
    for round_ in range(profile.mutation_rounds):
        order = [True, False] if round_ % 2 == 0 else [False, True]
        for aggregate in order:
            plan.append(("with aggregate" if aggregate else "without aggregate", pools.take(aggregate=aggregate)))
    db_cells: list[Cell] = run_async(db_level_runs(seeded.url, plan, profile))
    with_total += sum(c.completed_ok for c in db_cells if c.variant == "with aggregate")

    log("where a read spends its time (in process)")
    breakdown: list[tuple[str, float]] = run_async(
        read_breakdown(seeded, orgs[-1], tokens[orgs[-1]], calls=500 if args.quick else 3000)
    )
    for _key, name, value, trips in breakdown:
        log(f"  {value:8.0f} µs  {trips:3d} calls into aiosqlite  {name}")

    # The aggregate must still be exact: the recount, corrected for the loads that the
    # without-aggregate runs left ASSIGNED (those deliberately bypassed the counters).
    counts, version = stored(seeded.path, MUTATION_ORG)
    truth = recount(seeded.path, MUTATION_ORG)
    bypassed = _assigned_among(seeded.path, pools.without_aggregate)
    truth["loads_open"] += bypassed
    truth["loads_assigned"] -= bypassed
    exact = counts == truth and version == 1 + with_total
    check = (
        f"after the run, org_mut's aggregate row {'equals' if exact else 'DIFFERS FROM'} the recount "
        f"(corrected for the {bypassed} loads the without-aggregate runs left ASSIGNED), and its "
        f"version is {version} = 1 + {with_total} committed changes"
        + ("" if version == 1 + with_total else f" (EXPECTED {1 + with_total})")
    )
    log(check)

    elapsed = time.monotonic() - started
    loop, http = server_flags()
    text = report.render(
        profile=profile,
        machine=machine,
        seeded=seeded,
        cells=cells,
        mutation_cells=mutation_cells,
        db_cells=db_cells,
        breakdown=breakdown,
        exactness=(exact, check),
        server_flags=f"--workers 1 --loop {loop} --http {http} --no-access-log --log-level warning",
        elapsed=elapsed,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log(f"wrote {out} in {elapsed:.0f} s")
    return 0 if exact else 1


def _assigned_among(path: Path, ids: list[int]) -> int:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        total = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            total += conn.execute(
                f"SELECT count(*) FROM loads WHERE status = 'ASSIGNED' AND id IN ({marks})", chunk
            ).fetchone()[0]
        return total
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
