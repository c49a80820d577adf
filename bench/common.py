"""What every scenario shares: statistics, machine facts, tokens, servers, closed-loop measurements (wrk,
bench/wrk.lua) and db-layer writers with their CPU cost and disturbance, and the report renderer."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import platform
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import uvloop
from jinja2 import FileSystemLoader, StrictUndefined, UndefinedError
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import func, select, text

from bench.servers import write_without_aggregate
from db.aggregates import STATS_QUERY, STATS_ROWS_QUERY
from db.models import Load
from db.recalculation import drift_report
from db.unit_of_work import Database
from edge.tokens import TokenVerifier
from settings import DEV_SECRET
from tests.server import ServerUrl, running_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PACKAGES = ("strawberry-graphql", "starlette", "uvicorn", "uvloop", "httptools", "sqlalchemy", "aiosqlite")
UVICORN_FLAGS = "--workers 1 --loop uvloop --http httptools --no-access-log --log-level warning"
CORES = os.cpu_count() or 1
TICK = os.sysconf("SC_CLK_TCK")
STARTED = time.monotonic()
run_async = uvloop.run


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return float(ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]) if ordered else math.nan


def summarize(values: list[float], seconds: float = 0.0) -> dict[str, float]:
    n = len(values)
    return {
        "n": n,
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "mean": sum(values) / n if n else math.nan,
        "max": float(max(values)) if n else math.nan,
        "rps": n / seconds if seconds else math.nan,
    }


def human(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    return f"{n // 1_000}k" if n >= 1_000 and n % 1_000 == 0 else str(n)


def read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def field_of(path: str, prefix: str) -> str:
    return next((line.split(":", 1)[1].strip() for line in read(path).splitlines() if line.startswith(prefix)), "")


def loadavg() -> str:
    return " ".join(read("/proc/loadavg").split()[:3]) or "unknown"


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    fields = read(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / TICK if len(fields) > 12 else math.nan


def self_cpu(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def foreign_meter(ours: Callable[[], float]) -> Callable[[], float | None]:
    """When called, the share of the CPUs other processes than `ours()` (CPU seconds so far) used since now."""

    def busy_seconds() -> float:
        """CPU time (all cores) the machine spent not idle since boot, from /proc/stat."""
        fields = [int(v) for v in read("/proc/stat").split("\n", 1)[0].split()[1:9]]
        return (sum(fields[:3]) + sum(fields[5:8])) / TICK if len(fields) == 8 else math.nan

    busy, own, wall = busy_seconds(), ours(), time.monotonic()

    def share() -> float | None:
        value = (busy_seconds() - busy - (ours() - own)) / ((time.monotonic() - wall) * CORES)
        return None if math.isnan(value) else max(0.0, value)

    return share


def wait_for_quiet(max_wait: float) -> float | None:
    """Wait (up to max_wait seconds) until other processes leave the CPUs alone; the last reading."""
    deadline = time.monotonic() + max_wait
    while True:
        meter = foreign_meter(lambda: 0.0)
        time.sleep(2.0)
        busy = meter()
        if busy is None or busy < 0.05 or time.monotonic() >= deadline:
            return busy
        log(f"the machine is {busy:.0%} busy with other processes; waiting for it to quiet down")
        time.sleep(3)


def describe(wait_quiet: float) -> dict[str, str]:
    """The machine table of every report; first waits (up to `wait_quiet` s) for the CPUs to quiet down."""
    since, busy = time.monotonic(), wait_for_quiet(wait_quiet)
    waited = f"after waiting {time.monotonic() - since:.0f} s for it to drop"
    memory = field_of("/proc/meminfo", "MemTotal:").split()
    installed = {d.metadata["Name"].lower(): d.version for d in metadata.distributions()}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    return {
        "Date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "CPU": field_of("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "Cores (logical)": f"{CORES} ({len(os.sched_getaffinity(0))} usable by this process)",
        "RAM": f"{int(memory[0]) / 1024 / 1024:.1f} GiB" if memory else "unknown",
        "Load average at start": loadavg(),
        "CPU used by other processes at start": "unknown" if busy is None else f"{busy:.0%} of the cores ({waited})",
        "OS": platform.platform(),
        "Python": f"{sys.version.split()[0]} ({platform.python_implementation()})",
        "SQLite": sqlite3.sqlite_version,
        "Packages": ", ".join(f"{name} {installed.get(name, '(absent)')}" for name in PACKAGES),
        "Tally revision": f"{git('rev-parse', '--short', 'HEAD') or 'unknown'}{dirty}",
    }


def token(org_id: str | None, role: str = "admin") -> str:
    return TokenVerifier(DEV_SECRET).issue(org_id=org_id, role=role, subject="bench", ttl_seconds=7200)


@contextmanager
def app_servers(*specs: tuple[str, str, dict[str, str]]) -> Iterator[list[ServerUrl]]:
    """One uvicorn process per (name, bench.servers factory, BENCH_* env), side by side, in this process's
    environment without TALLY_* (nothing but the bench decides what is measured)."""
    uvicorn = ["{python}", "-m", "uvicorn", "--factory", "--host", "127.0.0.1", "--port", "{port}"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    base["PYTHONPATH"] = str(ROOT) + os.pathsep + base.get("PYTHONPATH", "")
    with ExitStack() as stack:
        servers = []
        for name, factory, env in specs:
            command = [*uvicorn, f"bench.servers:{factory}", *UVICORN_FLAGS.split()]
            log_path = RESULTS / f"server-{name}.log"
            server = running_server({}, timeout=90, command=command, base_env={**base, **env}, log_path=log_path)
            servers.append(stack.enter_context(server))
        yield servers


def ms(us: float) -> str:
    value = us / 1000
    if math.isnan(value):
        return "n/a"
    return f"{value:.{0 if value >= 100 else 1 if value >= 10 else 2 if value >= 1 else 3}f}"


def x(ratio: float | None) -> str:
    if ratio is None:
        return "baseline"
    if math.isnan(ratio) or ratio <= 0:  # a ratio of a negative time (an event that overtook its response)
        return "n/a"
    return f"{ratio:.{0 if ratio >= 100 else 1 if ratio >= 10 else 2}f}x"


FORMATS: dict[str, Callable[[Any], str]] = {
    "ms": ms,
    "x": x,
    "rate": lambda v: f"{v:,.0f}",
    "cpu": lambda v: "n/a" if v is None or math.isnan(v) else f"{v:,.0f} µs",
    "share": lambda v: "n/a" if v is None else f"{v:.0%}",
    "met": lambda ok: "met" if ok else "**NOT MET**",
    "yes": lambda ok: "yes" if ok else "**NO**",
    "kv": lambda d: ", ".join(f"{k} ({v:,})" for k, v in d.items()),
}


class Templates(SandboxedEnvironment):
    """Arithmetic as the reports want it: nan where it divides by zero, None (a baseline) where a value is missing."""

    intercepted_binops = frozenset({"+", "-", "/"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        try:
            return super().call_binop(context, operator, left, right)
        except ZeroDivisionError:
            return math.nan
        except (TypeError, UndefinedError):
            return None


def pick(rows: list[dict[str, Any]], **where: Any) -> dict[str, Any] | None:
    """The first row with these values: how the templates look a baseline up."""
    return next((row for row in rows if where.items() <= row.items()), None)


TEMPLATES = Templates(
    loader=FileSystemLoader(ROOT / "bench" / "templates"),
    undefined=StrictUndefined,
    trim_blocks=True,
    keep_trailing_newline=True,
)
TEMPLATES.filters.update(FORMATS, f=format)
TEMPLATES.globals.update(abs=abs, pick=pick, human=human, zip=zip)
TEMPLATES.globals["max"] = lambda *values: None if None in values else max(values)  # a value missing: no verdict


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
DISTURBED = 0.10  # a read measurement during which other processes used this share of the CPUs is redone
POOL = 500  # loads per mutation run; each run toggles its own, so every change is a real one
WARM_POOL = 100  # loads per mutation run's warm-up
VARIANTS = {True: "with", False: "without"}
WRK = ["wrk", "-t1", "--timeout", "10s", "-s", str(ROOT / "bench" / "wrk.lua")]


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


@dataclass(frozen=True)
class Stream:
    """One wrk process; `expect`: every response's exact body; `part`: which part its latencies join."""

    server: ServerUrl
    connections: int
    bodies: list[str]
    expect: str | None = None
    part: int = 0
    path: str = "/graphql"


@dataclass
class Cell:
    """One measurement: latencies (µs) and what it cost (CPU µs per request)."""

    variant: str
    label: str
    concurrency: int
    latencies_us: list[int]
    seconds: float
    answered: int  # requests answered, warm-up included
    server_cpu: float | None = None  # the servers' (or, at the db layer, this process's)
    client_cpu: float | None = None
    foreign: float | None = None  # share of the machine's CPUs used by other processes meanwhile
    also_cpu: float | None = None  # of the ALSO_OURS processes (PostgreSQL, Redis)
    parts: tuple[list[int], ...] = ()  # latencies per part (streams run side by side)
    sent: int | None = None  # requests sent, warm-up included: answered + those in flight when wrk stopped
    attempts: int = 1

    @property
    def stats(self) -> dict[str, float]:
        return summarize(self.latencies_us, self.seconds)

    def row(self) -> dict[str, Any]:
        """Its statistics, costs and place, with those of each part when it has several."""
        parts = [summarize(samples, self.seconds) for samples in self.parts] if len(self.parts) > 1 else []
        return {
            **self.stats, "server_cpu": self.server_cpu, "db_cpu": self.also_cpu, "client_cpu": self.client_cpu,
            "foreign": self.foreign, "variant": self.variant, "org": self.label, "clients": self.concurrency,
            "parts": parts,
        }  # fmt: skip

    def log(self) -> None:
        s, f = self.stats, self.foreign
        note = f"  (other processes: {f:.0%} of the CPUs)" if f and f >= 0.05 else ""
        what, p50, p99 = f"{self.variant} {self.label} c={self.concurrency}", s["p50"] / 1000, s["p99"] / 1000
        log(f"  {what:<40} p50 {p50:8.3f} ms  p99 {p99:8.3f} ms  {s['rps']:8.0f}/s  n={s['n']}{note}")


# CPU seconds so far of other processes whose work is part of every measurement (a database
# server, say): counted as ours, not as disturbance. bench/postgres.py registers PostgreSQL's.
ALSO_OURS: list[Callable[[], float]] = []


def also_ours() -> float:
    return sum(f() for f in ALSO_OURS)


def per_change(cpu_seconds: float, changes: int) -> float | None:
    return cpu_seconds * 1e6 / changes if changes else None


def post(url: str, body: str, bearer: str | None = None, timeout: float = 60) -> str:
    """One POST of a JSON body; its response, which must be HTTP 200 without errors."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {bearer}"} if bearer else {})}
    response = httpx.post(url, content=body, headers=headers, timeout=timeout)
    if response.status_code != 200 or '"errors"' in response.text:
        raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
    return response.text


def run_wrk(streams: list[Stream], seconds: float, token: str | None) -> list[dict[str, Any]]:
    """One wrk process per stream (bench/wrk.lua), side by side, interrupted after `seconds`; their results."""
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    with tempfile.TemporaryDirectory(prefix="tally-wrk-") as tmp:
        processes = []
        for k, stream in enumerate(streams):
            bodies, expect = Path(tmp, f"{k}.bodies"), Path(tmp, f"{k}.expect")
            bodies.write_text("".join(f"{body}\n" for body in stream.bodies))
            expect.write_text(stream.expect or "")
            script = [str(stream.connections), str(bodies), str(expect) if stream.expect else ""]
            command = [*WRK, f"-c{stream.connections}", f"-d{math.ceil(seconds) + 10}s", *auth]
            command += [stream.server + stream.path, "--", *script]
            processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(seconds)
        for process in processes:
            process.send_signal(signal.SIGINT)  # wrk stops, then runs the script's done()
        outputs = [(process, *process.communicate(timeout=60)) for process in processes]
    if failed := [f"{p.args}: {out}{err}" for p, out, err in outputs if p.returncode or '"sent"' not in out]:
        raise RuntimeError(f"wrk failed: {failed[0]}")
    return [json.loads(out.strip().splitlines()[-1]) for _, out, _ in outputs]


def closed_loop(
    streams: list[Stream], variant: str, label: str, profile: Profile, clients: int, token: str | None,
    retry_until: float = 0.0, warmup: list[Stream] | None = None,
) -> Cell:  # fmt: skip
    """A warm-up (status changes warm up on loads of their own: a request in flight when wrk stops may or may
    not be carried out), then the window; until `retry_until`, a disturbed run is redone (3 attempts)."""
    servers = list({s.server.port: s.server for s in streams}.values())
    total = {"requests": 0, "sent": 0}

    def meters() -> list[float]:
        """CPU seconds so far: of the servers, of the ALSO_OURS processes, of wrk."""
        cpu = sum(process_cpu(s.process.pid) for s in servers if s.process)
        return [cpu, also_ours(), self_cpu(resource.RUSAGE_CHILDREN)]

    def window(runs: list[Stream], seconds: float) -> tuple[list[dict[str, Any]], list[float], float | None]:
        before, foreign = meters(), foreign_meter(lambda: sum(meters()))
        results = run_wrk(runs, seconds, token)
        if errors := [r for r in results if r["errors"]]:
            raise RuntimeError(
                f"{variant} {label} c={clients}: {errors[0]['errors']} errors: {errors[0]['first_error']}"
            )
        for key in total:
            total[key] += sum(r[key] for r in results)
        return results, [after - b for after, b in zip(meters(), before, strict=True)], foreign()

    def once() -> Cell:
        warm, *_ = window(warmup or streams, profile.warmup)
        rate = sum(r["requests"] for r in warm) / profile.warmup
        seconds = min(profile.max_duration, max(profile.duration, profile.min_samples / max(rate, 1e-9)))
        results, (cpu, also, client), foreign = window(streams, seconds)
        served = sum(r["sent"] for r in results)
        parts: tuple[list[int], ...] = tuple([] for _ in range(1 + max(s.part for s in streams)))
        for stream, result in zip(streams, results, strict=True):
            parts[stream.part].extend(us for us, count in result["latency_us"] for _ in range(count))
        cell = Cell(
            variant, label, clients, sorted(itertools.chain(*parts)), max(r["duration_us"] for r in results) / 1e6,
            total["requests"], per_change(cpu, served), per_change(client, served), foreign,
            per_change(also, served) if ALSO_OURS else None, parts=parts, sent=total["sent"],
        )  # fmt: skip
        cell.log()
        return cell

    best = once()
    for attempt in (2, 3):
        if (best.foreign or 0) < DISTURBED or time.monotonic() >= retry_until:
            break
        log(f"  (disturbed: other processes used {best.foreign:.0%} of the CPUs; measuring again)")
        wait_for_quiet(15)
        best = min(best, once(), key=lambda cell: cell.foreign or 0)
        best.attempts = attempt
    return best


def spread(servers: list[ServerUrl], clients: int) -> list[tuple[ServerUrl, int]]:
    """The clients spread evenly over the servers; servers left without one are left out."""
    shares = [(server, clients // len(servers) + (k < clients % len(servers))) for k, server in enumerate(servers)]
    return [(server, n) for server, n in shares if n]


def count_body(org_id: str) -> str:
    return json.dumps({"query": COUNT_QUERY, "variables": {"org": org_id}, "operationName": "CountLoads"})


def count_answer(truth: dict[str, int]) -> str:
    """The exact bytes countLoadsByStatus answers for these counters (loads_open, ...)."""
    counts = {k: truth[f"loads_{k}"] for k in ("open", "assigned", "completed", "canceled")}
    answer = {"data": {"countLoadsByStatus": {**counts, "total": sum(counts.values())}}}
    return json.dumps(answer, separators=(",", ":"))


def count_reads(
    servers: dict[str, ServerUrl], tokens: dict[str, str], expected: dict[str, str], profile: Profile
) -> list[Cell]:
    """countLoadsByStatus of each org at 1 and 16 clients, the variants back to back; every answer must be
    `expected`'s (wrk checks each). The floor answers at /floor/<org> without a token."""
    log(f"countLoadsByStatus, {', '.join(servers)} interleaved per org and clients")
    retry_until, cells = time.monotonic() + profile.retry_until, []
    for org, answer in expected.items():
        for clients in (1, 16):
            for variant, server in servers.items():
                path, bearer = (f"/floor/{org}", None) if variant == "floor" else ("/graphql", tokens[org])
                streams = [Stream(server, clients, [count_body(org)], answer, path=path)]
                size = org.removeprefix("org_")
                cells.append(closed_loop(streams, variant, size, profile, clients, bearer, retry_until))
    return cells


def disturbance(cells: list[Cell]) -> dict[str, Any]:
    """How much other processes used the machine's CPUs during these measurements."""
    shares = [c.foreign for c in cells if c.foreign is not None]
    return {
        "mean": statistics.fmean(shares) if shares else None,
        "max": max(shares, default=None),
        "disturbed": [
            f"{c.variant} {c.label} c={c.concurrency} ({c.foreign:.0%})" for c in cells if (c.foreign or 0) >= 0.05
        ],
        "repeated": sum(c.attempts > 1 for c in cells),
    }


def pooled(group: list[Cell]) -> dict[str, Any]:
    """Statistics over the samples of several runs of the same variant, CPU weighted by their requests."""

    def weighted(values: list[float | None]) -> float:
        known = [(v, c.answered) for v, c in zip(values, group, strict=True) if v is not None]
        total = sum(n for _, n in known)
        return sum(v * n for v, n in known) / total if total else math.nan

    return {
        **summarize([v for c in group for v in c.latencies_us], sum(c.seconds for c in group)),
        "server_cpu": weighted([c.server_cpu for c in group]),
        "db_cpu": weighted([c.also_cpu for c in group]),
        "foreign": max((c.foreign for c in group if c.foreign is not None), default=None),
    }


def pairs(cells: list[Cell]) -> list[dict[str, Any]]:
    """Per (label, clients), in measuring order: the runs with and without the aggregate, each side pooled."""
    out = []
    for label, clients in dict.fromkeys((c.label, c.concurrency) for c in cells):
        same = [c for c in cells if (c.label, c.concurrency) == (label, clients)]
        sides = {side: pooled([c for c in same if c.variant == side]) for side in VARIANTS.values()}
        out.append({"label": label, "clients": clients, **sides})
    return out


def toggles(shares: list[tuple[ServerUrl, int]], aggregate: bool, ids: list[int]) -> list[Stream]:
    """Per (server, clients), a wrk process toggling its own share of `ids`: each load OPEN -> ASSIGNED, then
    each back, every request a real change."""
    query = SET_STATUS if aggregate else SET_STATUS_WITHOUT_AGGREGATE

    def body(load_id: int, status: str) -> str:
        variables = {"id": str(load_id), "status": status}
        return json.dumps({"query": query, "variables": variables, "operationName": "SetStatus"})

    mine = [ids[k :: len(shares)] for k in range(len(shares))]
    return [
        Stream(s, n, [body(i, st) for st in ("ASSIGNED", "OPEN") for i in mine[k]]) for k, (s, n) in enumerate(shares)
    ]


def alternating(rounds: int, sizes: tuple[int, ...] = (1,)) -> Iterator[tuple[int, bool]]:
    """(size, with aggregate?) in measuring order: which variant goes first alternates per round and size."""
    for round_ in range(rounds):
        for k, size in enumerate(sizes):
            first = (round_ + k) % 2 == 0
            yield size, first
            yield size, not first


class Pools:
    """Disjoint sets of OPEN loads (ids read once, before any change), one per mutation run."""

    def __init__(self, ids: list[int]) -> None:
        self.ids, self.without_aggregate = ids, []

    def take(self, aggregate: bool, size: int = POOL) -> list[int]:
        ids, self.ids = self.ids[:size], self.ids[size:]
        if len(ids) < size:
            raise RuntimeError("too few OPEN loads in the pools")
        self.without_aggregate += [] if aggregate else ids
        return ids


def status_changes(
    servers: list[ServerUrl], writers: tuple[int, ...], pools: Pools, profile: Profile, bearer: str, label: str,
    sizes: tuple[int, int] = (POOL, WARM_POOL),
) -> list[Cell]:  # fmt: skip
    """updateLoadStatus over HTTP with and without the aggregate at each count of writers (spread over the
    servers), alternating which goes first; every run, and its warm-up, toggles loads of its own."""
    cells = []
    for n, aggregate in alternating(profile.mutation_rounds, writers):
        window, warm = (toggles(spread(servers, n), aggregate, pools.take(aggregate, size)) for size in sizes)
        cells.append(closed_loop(window, VARIANTS[aggregate], label, profile, n, bearer, warmup=warm))
    return cells


def side_by_side(server: ServerUrl, orgs: list[str], clients: int, profile: Profile, expected: Any = None) -> Cell:
    """countLoadsByStatus of several orgs on one server at once, with a service token: one wrk process per org
    (a part of the cell), each with its share of the clients (at least one)."""
    each, answers = max(1, clients // len(orgs)), expected or {}
    streams = [Stream(server, each, [count_body(o)], answers.get(o), k) for k, o in enumerate(orgs)]
    return closed_loop(streams, "tally", "orgs side by side", profile, clients, token(None, "service"))


async def db_layer(
    url: str, label: str, profile: Profile, writers: tuple[int, ...], ids: Callable[[bool, int], list[int]],
    state: dict[int, str], scope: str, **options: Any,
) -> list[Cell]:  # fmt: skip
    """Status changes with and without the aggregate in this process, on the loads `ids(aggregate, writers)`
    (state: each load's status)."""
    from db.loads import set_load_status

    async def closed_loop(aggregate: bool, ids: list[int], writers: int) -> Cell:
        write = db.write_row if aggregate else partial(write_without_aggregate, db)
        start = time.perf_counter() + min(1.0, profile.warmup)
        stop, per = start + profile.db_ops_seconds, len(ids) // writers
        latencies: list[int] = []
        completed = 0

        async def writer(mine: list[int]) -> None:
            nonlocal completed
            for load_id in itertools.cycle(mine):
                if (began := time.perf_counter()) >= stop:
                    return
                status = state[load_id] = "ASSIGNED" if state.get(load_id, "OPEN") == "OPEN" else "OPEN"
                await write(partial(set_load_status, load_id=str(load_id), status=status, scope=scope))
                completed += 1
                if start <= (ended := time.perf_counter()) <= stop:
                    latencies.append(int((ended - began) * 1e6))

        cpu, also = self_cpu(), also_ours()
        foreign = foreign_meter(lambda: self_cpu() + also_ours())
        await asyncio.gather(*(writer(ids[k * per : (k + 1) * per]) for k in range(writers)))
        cpu, also = per_change(self_cpu() - cpu, completed), per_change(also_ours() - also, completed)
        return Cell(
            VARIANTS[aggregate], label, writers, latencies, profile.db_ops_seconds, completed, cpu, None, foreign(),
            also if ALSO_OURS else None,
        )  # fmt: skip

    cells = []
    async with database(url, **options) as db:
        for n, aggregate in alternating(profile.mutation_rounds, writers):
            cells.append(await closed_loop(aggregate, ids(aggregate, n), n))
            cells[-1].log()
    return cells


def org_name(size: int, copy: int = 1) -> str:
    """org_10k, then org_10k_2, org_10k_3, ... for more orgs of the same size."""
    return f"org_{human(size)}" + (f"_{copy}" if copy > 1 else "")


@asynccontextmanager
async def database(url: str, **options: Any) -> AsyncIterator[Database]:
    db = Database(url, **options)
    try:
        yield db
    finally:
        await db.dispose()


async def plans(url: str, org_id: str) -> list[dict[str, Any]]:
    """The plans of Tally's count statement and of the naive resolver's GROUP BY for one org: SQLite's
    STATS_QUERY by EXPLAIN QUERY PLAN, PostgreSQL's STATS_ROWS_QUERY (its fast path's, db/postgres/reads.py)
    by EXPLAIN (ANALYZE, BUFFERS)."""
    naive = select(Load.status, func.count()).where(Load.org_id == org_id).group_by(Load.status)
    sqlite = url.startswith("sqlite")
    tally = ("Tally (STATS_QUERY)", STATS_QUERY) if sqlite else ("Tally (STATS_ROWS_QUERY)", STATS_ROWS_QUERY)
    statements = {tally[0]: tally[1].params(org_id=org_id), "naive": naive}
    out = []
    async with database(url) as db, db.engine.connect() as conn:
        for what, statement in statements.items():
            compiled = statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
            sql = " ".join(str(compiled).split())
            explain = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN (ANALYZE, BUFFERS) "
            rows = (await conn.execute(text(explain + sql))).all()
            out.append({"what": what, "sql": sql, "plan": [row[-1] if sqlite else row[0] for row in rows]})
    return out


async def first_ids(url: str, org_id: str, count: int, row: Any = Load, status: str = "OPEN") -> list[int]:
    """The ids of the org's first `count` loads (or `row`s) in this status."""
    query = select(row.id).where(row.org_id == org_id, row.status == status).order_by(row.id).limit(count)
    async with database(url) as db:
        ids = list(await db.read(lambda session: session.scalars(query)))
    if len(ids) < count:
        raise RuntimeError(f"only {len(ids)} {status} rows of {row.__name__} in {org_id}")
    return ids


async def audit(url: str, orgs: list[str], bypassing: list[int], changed_org: str = "") -> list[dict[str, Any]]:
    """Every org's stored counters against a recount: equal, but in `changed_org` off by the loads of
    `bypassing` (changed without the aggregate) left ASSIGNED."""
    query = select(func.count()).where(Load.status == "ASSIGNED", Load.id.in_(bypassing))
    async with database(url) as db:
        bypassed = await db.read(lambda session: session.scalar(query))
        checks = []
        for org in orgs:
            drift = await drift_report(db, org)
            allowed = bypassed if org == changed_org else 0
            want = {"loads_open": -allowed, "loads_assigned": allowed} if allowed else {}
            checks.append({"org": org, "ok": drift.delta == want, "bypassed": allowed, "delta": drift.delta,
                           "version": drift.stored.version, "actual": drift.actual})  # fmt: skip
    return checks
