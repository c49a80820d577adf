"""Closed-loop measurements: over HTTP (bench/loadgen.py in its own process) and of db-layer writers
in this process, each with what it cost and how much other processes disturbed it."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import httpx

from bench.common import ROOT, child_env, foreign_meter, log, process_cpu, self_cpu, summarize, wait_for_quiet, weighted
from tests.server import ServerUrl

COUNT_QUERY = "query CountLoads($org: ID!) { countLoadsByStatus(orgId: $org) { open assigned completed canceled total } }"
SET_STATUS = "mutation SetStatus($id: ID!, $status: LoadStatus!) { updateLoadStatus(id: $id, status: $status) { id status } }"
# The bench-only mutation, aliased so that its response has the same shape and size.
SET_STATUS_WITHOUT_AGGREGATE = (
    "mutation SetStatus($id: ID!, $status: LoadStatus!) "
    "{ updateLoadStatus: updateLoadStatusWithoutAggregate(id: $id, status: $status) { id status } }"
)
DISTURBED = 0.10  # a read measurement during which other processes used this share of the CPUs is redone
POOL = 500  # loads per mutation run; each run toggles its own, so every change is a real one
VARIANTS = {True: "with aggregate", False: "without aggregate"}


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


@dataclass
class Cell:
    """One measurement: latencies (µs) of a closed-loop run and what it cost (CPU µs per request)."""

    variant: str
    label: str
    concurrency: int
    latencies_us: list[int]
    seconds: float
    completed_ok: int
    server_cpu: float | None = None  # the servers' (or, at the db layer, this process's)
    client_cpu: float | None = None
    foreign: float | None = None  # share of the machine's CPUs used by other processes meanwhile
    also_cpu: float | None = None  # of the ALSO_OURS processes (PostgreSQL, Redis)
    round_trips: int | None = None  # calls into aiosqlite's thread per change (db layer)
    by_body: list[list[int]] | None = None  # latencies per request body (split measurements)
    attempts: int = 1
    stats: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stats = summarize(self.latencies_us, self.seconds)

    def split(self) -> list[dict[str, float]]:
        return [summarize(samples, self.seconds) for samples in self.by_body or []]

    def json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("latencies_us", "by_body")}


def pooled(group: list[Cell]) -> dict[str, float]:
    """Statistics over the samples of several runs of the same variant, CPU weighted by their requests."""
    stats = summarize([v for c in group for v in c.latencies_us], sum(c.seconds for c in group))
    stats["server_cpu"] = weighted([(c.server_cpu, c.completed_ok) for c in group])
    stats["db_cpu"] = weighted([(c.also_cpu, c.completed_ok) for c in group])
    stats["foreign"] = max((c.foreign for c in group if c.foreign is not None), default=None)
    return stats


# CPU seconds so far of other processes whose work is part of every measurement (a database
# server, say): counted as ours, not as disturbance. bench/postgres.py registers PostgreSQL's.
ALSO_OURS: list[Callable[[], float]] = []


def also_ours() -> float:
    return sum(f() for f in ALSO_OURS)


def log_cell(what: str, cell: Cell) -> None:
    s, f = cell.stats, cell.foreign
    note = f"  (other processes: {f:.0%} of the CPUs)" if f and f >= 0.05 else ""
    log(f"  {what:<40} p50 {s['p50'] / 1000:8.3f} ms  p99 {s['p99'] / 1000:8.3f} ms  {s['rps']:8.0f}/s  n={s['n']:.0f}{note}")


def measure(
    servers: ServerUrl | list[ServerUrl], variant: str, label: str, *, bodies: list[str], token: str | None, concurrency: int,
    profile: Profile, path: str = "/graphql", expect: str | list[str] | None = None, split: bool = False, retry_until: float = 0.0,
) -> Cell:  # fmt: skip
    """bench/loadgen.py against the servers (clients spread over them), with the servers' CPU. Until
    `retry_until` (monotonic), a run disturbed by other processes is redone (3 attempts at most) and
    the least disturbed one kept."""
    servers = servers if isinstance(servers, list) else [servers]
    spec = {
        "ports": [s.port for s in servers], "path": path, "headers": {"Authorization": f"Bearer {token}"} if token else {},
        "bodies": bodies, "expect": expect, "concurrency": concurrency, "split": split,
        **{k: getattr(profile, k) for k in ("warmup", "duration", "min_samples", "max_duration")},
    }  # fmt: skip

    def servers_cpu() -> float:
        return sum(process_cpu(s.process.pid) for s in servers if s.process)

    best: Cell | None = None
    for attempt in range(1, 4):
        if best is not None:
            if best.foreign is None or best.foreign < DISTURBED or time.monotonic() >= retry_until:
                break
            log(f"  (disturbed: other processes used {best.foreign:.0%} of the CPUs; measuring again)")
            wait_for_quiet(15)
        cpu_before, also_before = servers_cpu(), also_ours()
        foreign = foreign_meter(lambda: servers_cpu() + self_cpu(resource.RUSAGE_CHILDREN) + also_ours())
        done = subprocess.run(
            [sys.executable, "-m", "bench.loadgen"], input=json.dumps(spec), capture_output=True, text=True, cwd=ROOT,
            env=child_env(), timeout=profile.warmup + profile.max_duration + 60,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"load generator failed:\n{done.stderr}")
        result = json.loads(done.stdout)
        if result["errors"]:
            raise RuntimeError(f"{variant} {label} c={concurrency}: {result['errors']} errors: {result['first_errors']}")
        ok = result["completed_ok"]
        cpu, also = servers_cpu() - cpu_before, also_ours() - also_before
        cell = Cell(
            variant, label, concurrency, sorted(result["latencies_us"]), result["seconds"], ok, cpu * 1e6 / ok if ok else None,
            result["client_cpu_us_per_request"], foreign(), also * 1e6 / ok if ALSO_OURS and ok else None,
            by_body=result.get("latencies_by_body"), attempts=attempt,
        )  # fmt: skip
        log_cell(f"{variant} {label} c={concurrency}", cell)
        if best is None or (cell.foreign or 0) < (best.foreign or 0):
            best = cell
        best.attempts = attempt
    assert best is not None
    return best


def post(url: str, body: str, token: str | None) -> str:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    response = httpx.post(url, content=body, headers=headers, timeout=60)
    response.raise_for_status()
    return response.text


def count_body(org_id: str) -> str:
    return json.dumps({"query": COUNT_QUERY, "variables": {"org": org_id}, "operationName": "CountLoads"})


def count_answer(truth: dict[str, int]) -> str:
    """The exact bytes countLoadsByStatus answers for these counters (loads_open, ...)."""
    counts = {k: truth[f"loads_{k}"] for k in ("open", "assigned", "completed", "canceled")}
    return json.dumps({"data": {"countLoadsByStatus": {**counts, "total": sum(counts.values())}}}, separators=(",", ":"))


def toggle_bodies(aggregate: bool, ids: list[int]) -> list[str]:
    """Each load OPEN -> ASSIGNED, then each back: every request a real change."""
    query = SET_STATUS if aggregate else SET_STATUS_WITHOUT_AGGREGATE
    return [
        json.dumps({"query": query, "variables": {"id": str(i), "status": status}, "operationName": "SetStatus"})
        for status in ("ASSIGNED", "OPEN")
        for i in ids
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
        self.ids, self.taken, self.without_aggregate = ids, 0, []

    def take(self, *, aggregate: bool, size: int = POOL) -> list[int]:
        ids = self.ids[self.taken : self.taken + size]
        if len(ids) < size:
            raise RuntimeError(f"only {len(self.ids)} OPEN loads in the pools")
        self.taken += size
        if not aggregate:
            self.without_aggregate.extend(ids)
        return ids


async def db_writers(
    write: Callable[[Any], Awaitable[Any]], ids: list[int], state: dict[int, str], scope: str, writers: int,
    profile: Profile, count_trips: bool = False,
) -> Cell:  # fmt: skip
    """`writers` closed-loop coroutines in this process, writer k toggling its share of `ids` in turn
    through `write(set_load_status)` (state: each load's current status); after a warm-up
    (min(1 s, profile.warmup)), the changes ending in the next db_ops_seconds are the samples.
    CPU per change: this process's and the ALSO_OURS processes', over all changes."""
    from bench.breakdown import counting_round_trips
    from db.loads import set_load_status

    per = len(ids) // writers
    start = time.perf_counter() + min(1.0, profile.warmup)
    stop = start + profile.db_ops_seconds
    latencies: list[int] = []
    completed, trips = 0, None

    async def writer(k: int) -> None:
        nonlocal completed, trips
        mine, n = ids[k * per : (k + 1) * per], 0
        while (began := time.perf_counter()) < stop:
            load_id, n = mine[n % len(mine)], n + 1
            status = "ASSIGNED" if state.get(load_id, "OPEN") == "OPEN" else "OPEN"
            work = write(partial(set_load_status, load_id=str(load_id), status=status, scope=scope))
            if count_trips and completed == 2:  # a warm call (pooled connection)
                with counting_round_trips() as counted:
                    await work
                trips = counted["n"]
            else:
                await work
            state[load_id] = status
            completed += 1
            if start <= (ended := time.perf_counter()) <= stop:
                latencies.append(int((ended - began) * 1e6))

    cpu_before, also_before = self_cpu(), also_ours()
    foreign = foreign_meter(lambda: self_cpu() + also_ours())
    await asyncio.gather(*(writer(k) for k in range(writers)))
    cpu, also = self_cpu() - cpu_before, also_ours() - also_before
    share = foreign()
    return Cell(
        "", "", writers, latencies, profile.db_ops_seconds, completed, cpu * 1e6 / completed if completed else None,
        None, share, also * 1e6 / completed if ALSO_OURS and completed else None, trips,
    )  # fmt: skip
