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
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench import report
from bench.machine import describe
from bench.seed import MUTATION_ORG, Seeded, open_loads, org_name, recount, seed, stored
from edge.tokens import TokenVerifier
from settings import DEV_SECRET

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
NAIVE_SQL = "SELECT status, count(*) FROM loads WHERE org_id = ? GROUP BY status"  # what naive_app runs
PLANS: list[dict[str, Any]] = []  # EXPLAIN QUERY PLAN of the reads (filled by read_breakdown)
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
    retry_until: float  # seconds after the reads start during which disturbed reads are measured again


FULL = Profile("full", (1_000, 100_000, 1_000_000), 2.0, 8.0, 400, 20.0, 2, 5.0, 90.0)
QUICK = Profile("quick", (1_000, 10_000), 0.2, 0.8, 20, 1.5, 1, 0.8, 0.0)
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
    by_body: list[list[int]] | None = None  # latencies per request body (interleaved measurements)
    attempts: int = 1
    also_cpu_us_per_request: float | None = None  # CPU of the ALSO_OURS processes (e.g. PostgreSQL)
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
# CPU seconds so far of other processes whose work is part of every measurement (a database
# server, say): counted as ours, not as disturbance. bench/postgres.py registers PostgreSQL's.
ALSO_OURS: list[Callable[[], float]] = []
RETRY_DEADLINE = [0.0]  # disturbed reads are measured again until then (set when the reads start)


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

    def wait_ready(self, timeout: float = 90) -> None:
        name = self.name
        deadline = time.monotonic() + timeout
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
def running(*specs: tuple[str, str, dict[str, str]]) -> Iterator[list[Server]]:
    """Start the servers (name, factory, env) side by side, wait until all are healthy."""
    servers: list[Server] = []
    try:
        for name, factory, env in specs:
            servers.append(Server(name, factory, env))
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


def post(server: Server, path: str, token: str | None, body: dict[str, Any]) -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(f"{server.base}{path}", json=body, headers=headers, timeout=60)
    response.raise_for_status()
    return response.content


def cpu_seconds(servers: list[Server]) -> float | None:
    """CPU time of the server processes together so far (None if any is unknown)."""
    times = [server.cpu_seconds() for server in servers]
    return None if None in times else sum(t for t in times if t is not None)


def measure(
    server: Server | list[Server],
    variant: str,
    label: str,
    *,
    path: str,
    token: str | None,
    bodies: list[str],
    expect: str | list[str] | None,
    concurrency: int,
    profile: Profile,
    split: bool = False,
) -> Cell:
    servers = server if isinstance(server, list) else [server]  # clients are spread over them
    spec = {
        "host": "127.0.0.1",
        "port": servers[0].port,
        "ports": [s.port for s in servers],
        "path": path,
        "headers": {"Authorization": f"Bearer {token}"} if token else {},
        "bodies": bodies,
        "expect": expect,
        "concurrency": concurrency,
        "warmup": profile.warmup,
        "duration": profile.duration,
        "min_samples": profile.min_samples,
        "max_duration": profile.max_duration,
        "split": split,
    }
    cpu_before = cpu_seconds(servers)
    busy_before, children_before, wall_before = busy_seconds(), children_cpu(), time.monotonic()
    also_before = sum(f() for f in ALSO_OURS)
    done = subprocess.run(
        [sys.executable, "-m", "bench.loadgen"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
        timeout=profile.warmup + profile.max_duration + 60,
    )
    cpu_after = cpu_seconds(servers)
    busy_after, children_after, wall = busy_seconds(), children_cpu(), time.monotonic() - wall_before
    also = sum(f() for f in ALSO_OURS) - also_before
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
        ours = (cpu_after - cpu_before) + (children_after - children_before) + also
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
        also_cpu_us_per_request=also * 1e6 / result["completed_ok"] if ALSO_OURS and result["completed_ok"] else None,
    )
    cell.by_body = result.get("latencies_by_body")
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
        and time.monotonic() < RETRY_DEADLINE[0]
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


def count_answer(truth: dict[str, int]) -> str:
    """The exact bytes countLoadsByStatus answers for these counters (loads_open, ...)."""
    counts = {k: truth[f"loads_{k}"] for k in ("open", "assigned", "completed", "canceled")}
    answer = {"data": {"countLoadsByStatus": {**counts, "total": sum(counts.values())}}}
    return json.dumps(answer, separators=(",", ":"))


def toggle_bodies(query: str, ids: list[int]) -> list[str]:
    """OPEN -> ASSIGNED for every id, then back: with one client, each request is a real change."""
    return [
        json.dumps({"query": query, "variables": {"id": str(i), "status": status}, "operationName": "SetStatus"})
        for status in ("ASSIGNED", "OPEN")
        for i in ids
    ]


class Pools:
    """Disjoint sets of OPEN loads (ids read once, before any change), one per mutation run."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.taken = 0
        self.without_aggregate: list[int] = []

    def take(self, *, aggregate: bool, size: int = POOL) -> list[int]:
        ids = self.ids[self.taken : self.taken + size]
        if len(ids) < size:
            raise RuntimeError(f"only {len(self.ids)} OPEN loads in the pools")
        self.taken += size
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


async def read_breakdown(path: Path, url: str, org_id: str, token: str, calls: int) -> list[report.Step]:
    """Median time of each step of a Tally read, in process, each step alone, and its
    number of round trips to aiosqlite's thread."""
    import sqlite3

    import aiosqlite
    from sqlalchemy import event

    from bench.servers import tally_app, uncached_app
    from db.queries import get_stats
    from db.unit_of_work import Database

    async def timed(key: str, name: str, step: Callable[[], Awaitable[Any]]) -> report.Step:
        for _ in range(calls // 10):
            await step()
        with counting_round_trips() as trips:
            await step()
        samples = []
        cpu_before = self_cpu()
        for _ in range(calls):
            started = time.perf_counter_ns()
            await step()
            samples.append(time.perf_counter_ns() - started)
        cpu_us = (self_cpu() - cpu_before) * 1e6 / calls
        samples.sort()
        return report.Step(
            key, name, samples[len(samples) // 2] / 1000, trips["n"] if trips["n"] >= 0 else None, cpu_us=cpu_us
        )

    select_row = "SELECT * FROM organization_stats WHERE org_id = ?"
    steps: list[report.Step] = []
    plain = sqlite3.connect(path)

    async def direct() -> None:
        plain.execute(select_row, (org_id,)).fetchone()

    steps.append(await timed("sqlite3", "sqlite3, same thread: SELECT the aggregate row", direct))
    plain.close()
    async with aiosqlite.connect(path) as conn:

        async def raw() -> None:
            async with conn.execute(select_row, (org_id,)) as cursor:
                await cursor.fetchone()

        steps.append(await timed("aiosqlite", "aiosqlite: the same SELECT via its worker thread (no SQLAlchemy)", raw))
    verifier = TokenVerifier(DEV_SECRET)

    async def check_signature() -> None:
        await verifier._verify_signature(token)

    async def verify() -> None:
        await verifier.verify(token)

    steps.append(await timed("jwt", "JWT signature check (a token not seen before)", check_signature))
    steps.append(await timed("jwt-cached", "`TokenVerifier.verify` of a token already verified", verify))
    db = Database(url)
    try:
        steps.append(
            await timed(
                "read-session",
                "`Database.read(get_stats)`: the same statement in an async session (BEGIN, SELECT, ROLLBACK)",
                lambda: db.read(lambda s: get_stats(s, org_id)),
            )
        )
        steps.append(
            await timed(
                "read",
                "`Database.read_stats`: what count queries run (inline on the loop's thread, autocommit)",
                lambda: db.read_stats(org_id),
            )
        )
        # The SQL Tally actually runs for a read, captured from the engine, for its query plan.
        captured: list[tuple[str, Any]] = []

        def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT"):
                captured.append((statement, parameters))

        event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
        await db.read(lambda s: get_stats(s, org_id))
        event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
    finally:
        await db.dispose()
    plan_conn = sqlite3.connect(path)
    try:
        for statement, parameters in captured:
            PLANS.append(
                {
                    "what": "Tally's countLoadsByStatus read (`get_stats`)",
                    "sql": " ".join(statement.split()),
                    "plan": [row[-1] for row in plan_conn.execute("EXPLAIN QUERY PLAN " + statement, parameters)],
                }
            )
        PLANS.append(
            {
                "what": "the naive resolver",
                "sql": NAIVE_SQL,
                "plan": [row[-1] for row in plan_conn.execute("EXPLAIN QUERY PLAN " + NAIVE_SQL, (org_id,))],
            }
        )
    finally:
        plan_conn.close()

    os.environ["BENCH_DATABASE_URL"] = url
    app, uncached = tally_app(), uncached_app()
    body = count_body(org_id).encode()
    for server in (app, uncached):
        answer = json.loads(await call_asgi(server, body, token))
        if "errors" in answer or answer.get("data", {}).get("countLoadsByStatus") is None:
            raise RuntimeError(f"in-process Tally app failed: {answer}")
    try:
        steps.append(
            await timed(
                "app",
                "Tally's whole ASGI app, in process (no HTTP server): a count-cache hit",
                lambda: call_asgi(app, body, token),
            )
        )
        steps.append(
            await timed(
                "app-uncached",
                "the same with the count cache off: Starlette, Strawberry, the read",
                lambda: call_asgi(uncached, body, token),
            )
        )
        # Throughput of the app alone (no HTTP, no client process) at 1 and 16 concurrent callers.
        seconds = 0.5 if calls < 500 else 3.0
        for concurrency in (1, 16):
            steps.append(
                report.Step(
                    f"rate{concurrency}",
                    f"throughput of the app alone, {concurrency} concurrent caller"
                    + ("s" if concurrency > 1 else "")
                    + " (requests/s)",
                    await in_process_rate(app, body, token, concurrency, seconds),
                    None,
                    cpu_us=math.nan,
                )
            )
    finally:
        await app.state.db.dispose()
        await uncached.state.db.dispose()
    return steps


async def in_process_rate(app: Any, body: bytes, token: str, concurrency: int, seconds: float) -> float:
    """Requests per second through the ASGI app from `concurrency` closed-loop callers."""
    done = 0
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await call_asgi(app, body, token)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def call_asgi(app: Any, body: bytes, token: str) -> bytes:
    """One POST /graphql straight into an ASGI app (no server, no socket); the response body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return b"".join(chunks)


def breakdown_in_subprocess(
    seeded: Seeded, org_id: str, token: str, calls: int
) -> tuple[list[report.Step], list[dict[str, Any]]]:
    """read_breakdown in a fresh process (`python -m bench --breakdown SPEC`), away from this
    process's state (its memory, its earlier event loops)."""
    spec = json.dumps({"path": str(seeded.path), "url": seeded.url, "org_id": org_id, "token": token, "calls": calls})
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--breakdown", spec],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the in-process breakdown failed:\n{done.stderr}")
    result = json.loads(done.stdout)
    return [report.Step(**step) for step in result["steps"]], result["plans"]


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
        help="seconds to wait at start for other processes to stop using the CPUs (default 60; quick 0)",
    )
    parser.add_argument("--data-dir", type=Path, default=RESULTS, help="where the SQLite file is created")
    parser.add_argument("--breakdown", help=argparse.SUPPRESS)  # internal: see breakdown_in_subprocess
    parser.add_argument(
        "--report-only",
        type=Path,
        metavar="JSON",
        help="measure nothing: re-render the report from a saved run (bench/results/last-*-run.json)",
    )
    args = parser.parse_args(argv)
    if args.report_only:
        run = json.loads(args.report_only.read_text())
        target = args.out or (RESULTS / "quick.md" if run["profile"] == "quick" else ROOT / "docs" / "benchmarks.md")
        write_report(run, target)
        log(f"wrote {target} from {args.report_only}")
        return 0
    if args.breakdown:
        spec = json.loads(args.breakdown)
        steps = run_async(read_breakdown(Path(spec["path"]), spec["url"], spec["org_id"], spec["token"], spec["calls"]))
        print(json.dumps({"steps": [asdict(step) for step in steps], "plans": PLANS}))
        return 0
    # SIGTERM unwinds like Ctrl-C, so the servers started below are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    profile = QUICK if args.quick else FULL
    out: Path = args.out or (RESULTS / "quick.md" if args.quick else ROOT / "docs" / "benchmarks.md")
    started = time.monotonic()
    machine = describe(ROOT)
    wait = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 60.0)
    waited = time.monotonic()
    busy = wait_for_quiet(wait)
    waited = time.monotonic() - waited
    machine["CPU used by other processes at start"] = (
        "unknown" if busy is None else f"{busy:.0%} of both cores (after waiting {waited:.0f} s for it to drop)"
    )
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
    interleaved: list[Cell] = []
    pools = Pools(open_loads(seeded.path, MUTATION_ORG, POOL * (4 * profile.mutation_rounds + 1)))
    with_total = 0  # committed changes that went through the aggregate (each bumps version by 1)

    with ExitStack() as stack:
        # The floor answers what Tally should answer: the JSON of a recount (checked below).
        expected: dict[str, str] = {}
        for org in orgs:
            expected[org] = count_answer(recount(seeded.path, org))
        floor_bodies = args.data_dir / f"floor-{profile.name}.json"
        floor_bodies.write_text(json.dumps({f"/floor/{org}": expected[org] for org in orgs}))
        tally, uncached, naive, floor = stack.enter_context(
            running(
                ("tally", "tally_app", env),
                ("uncached", "uncached_app", env),
                ("naive", "naive_app", env),
                ("floor", "floor_app", {"BENCH_FLOOR_BODIES": str(floor_bodies)}),
            )
        )
        log("servers are up; checking that all four answer the same bytes")
        for org in orgs:
            body = json.loads(count_body(org))
            for server, path, token in (
                (tally, "/graphql", tokens[org]),
                (uncached, "/graphql", tokens[org]),
                (naive, "/graphql", tokens[org]),
                (floor, f"/floor/{org}", None),
            ):
                answer = post(server, path, token, body).decode()
                if answer != expected[org]:
                    raise RuntimeError(f"{server.name} answers {answer} for {org}, expected {expected[org]}")

        log("countLoadsByStatus (variants interleaved per size and concurrency)")
        RETRY_DEADLINE[0] = time.monotonic() + profile.retry_until
        for org in orgs:
            for concurrency in (1, 16):
                for variant, server, path, token in (
                    ("floor", floor, f"/floor/{org}", None),
                    ("tally", tally, "/graphql", tokens[org]),
                    ("uncached", uncached, "/graphql", tokens[org]),
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

        log("countLoadsByStatus on Tally with the orgs interleaved (one service token, bodies alternate)")
        service = verifier.issue(org_id=None, role="service", subject="bench", ttl_seconds=3600)
        for concurrency in (1, 16):
            interleaved.append(
                measure(
                    tally,
                    "tally, orgs interleaved",
                    "all orgs",
                    path="/graphql",
                    token=service,
                    bodies=[count_body(org) for org in orgs],
                    expect=[expected[org] for org in orgs],
                    concurrency=concurrency,
                    profile=profile,
                    split=True,
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
    breakdown, plans = breakdown_in_subprocess(seeded, orgs[-1], tokens[orgs[-1]], calls=100 if args.quick else 600)
    for step in breakdown:
        log(
            f"  wall {step.us:8.0f}  cpu {step.cpu_us:8.0f} µs  "
            f"{step.trips if step.trips is not None else '-':>3} calls into aiosqlite  {step.name}"
        )

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
    run = {
        "profile": profile.name,
        "machine": machine,
        "seeded": {**asdict(seeded), "path": str(seeded.path)},
        "cells": [cell_json(c) for c in cells],
        "mutation_cells": [cell_json(c) for c in mutation_cells],
        "interleaved": [cell_json(c) for c in interleaved],
        "db_cells": [cell_json(c) for c in db_cells],
        "breakdown": [asdict(step) for step in breakdown],
        "plans": plans,
        "exactness": [exact, check],
        "server_flags": f"--workers 1 --loop {loop} --http {http} --no-access-log --log-level warning",
        "elapsed": elapsed,
    }
    raw = RESULTS / f"last-{profile.name}-run.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(run))
    write_report(run, out)
    log(f"wrote {out} in {elapsed:.0f} s (raw results: {raw})")
    return 0 if exact else 1


def cell_json(cell: Cell) -> dict[str, Any]:
    data = asdict(cell)
    data.pop("stats")  # recomputed from the latencies
    return data


def write_report(run: dict[str, Any], out: Path) -> None:
    """Render a run (as saved in bench/results/last-*-run.json) to Markdown at `out`."""

    def cells(key: str) -> list[Cell]:
        return [Cell(**data) for data in run[key]]

    text = report.render(
        profile=FULL if run["profile"] == "full" else QUICK,
        machine=run["machine"],
        seeded=Seeded(**{**run["seeded"], "path": Path(run["seeded"]["path"])}),
        cells=cells("cells"),
        mutation_cells=cells("mutation_cells"),
        interleaved=cells("interleaved"),
        db_cells=cells("db_cells"),
        breakdown=[report.Step(**step) for step in run["breakdown"]],
        plans=run["plans"],
        exactness=(run["exactness"][0], run["exactness"][1]),
        server_flags=run["server_flags"],
        elapsed=run["elapsed"],
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


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
