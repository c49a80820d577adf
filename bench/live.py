"""Live-update latency (docs/benchmarks-live.md): real `python main.py serve` processes on
loopback, real WebSocket subscribers (the `websockets` library's sans-I/O protocol speaking
graphql-transport-ws, one connection each) and real HTTP mutations, all timed with
`time.perf_counter()` in this one process, so every clock agrees:

- one process, `memory://`: subscribers and mutations on the same server;
- two processes over a private `redis-server`: subscribers on B, mutations sent to A
  (both on the same SQLite file).

For 0 (mutation alone) and each subscriber count of one org, `updateLoadStatus` calls
toggle one load OPEN <-> ASSIGNED; each commit bumps the org's version by one, so event
version `base + k` belongs to mutation k. The next mutation is sent once every subscriber
has the event (or after a timeout), plus a GAP, so events never coalesce. Per event:
commit-to-client = receive time - arrival of the mutation's HTTP response (a lower bound);
send-to-client = receive time - moment the mutation was sent (an upper bound). Memory per
idle subscriber: VmRSS of the subscribers' server process with 0 .. N idle subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from bench.common import live_metrics, log, percentile, process_cpu, rss_kib, run_async, table
from bench.common import token as bench_token
from tests.server import ServerUrl, free_port, running_server

ORG = "org_live"
GAP = 0.05  # seconds between the last delivery of one event and the next mutation
DELIVERY_TIMEOUT = 10.0
OPEN_BATCH = 50  # subscribers connected concurrently
SUBSCRIPTION = (
    "subscription($org: ID!) { organizationStatsChanged(orgId: $org) "
    "{ orgId version loads { open assigned completed canceled total } invoices { draft void total } } }"
)
UPDATE = "mutation($id: ID!, $s: LoadStatus!) { updateLoadStatus(id: $id, status: $s) { id status } }"


@dataclass(frozen=True)
class Profile:
    sizes: tuple[int, ...]  # subscriber counts
    mutations: int  # per configuration ...
    mutations_at_largest: int  # ... but fewer at the largest, where one round takes seconds (fan-out)
    warmup: int  # mutations before measuring


PROFILES = {"full": Profile((1, 100, 1000), 30, 15, 10), "quick": Profile((1, 5, 10), 5, 5, 3)}


def say(text: str) -> None:
    log(text)


def pct(values: list[float], q: float) -> float:
    return percentile(values, q)


@contextmanager
def tally_server(database_url: str, broadcast_url: str) -> Iterator[ServerUrl]:
    env = {
        "TALLY_DATABASE_URL": database_url,
        "TALLY_BROADCAST_URL": broadcast_url,
        "TALLY_RECALC_INTERVAL_SECONDS": "0",
        "TALLY_LOG_LEVEL": "WARNING",
        "TALLY_QUERY_STATS": "0",
        "TALLY_STATS_SHARDS": "1",
        "TALLY_MAX_CONNECTIONS_PER_TOKEN": "5000",
    }
    with running_server(env, timeout=90) as server:
        yield server


@contextmanager
def private_redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- subscribers --------------------------------------------------------------------------



# --- subscribers --------------------------------------------------------------------------


@dataclass
class Arrivals:
    """Receive times by version, across all subscribers."""

    times: dict[int, list[float]] = field(default_factory=dict)  # the kernel's receive times
    read_times: dict[int, list[float]] = field(default_factory=dict)  # when this process read them
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    awaited: tuple[int, int] = (-1, 0)  # (version, count) that wait_for is waiting for

    def add(self, version: int, at: float, read_at: float) -> None:
        self.read_times.setdefault(version, []).append(read_at)
        arrived = self.times.setdefault(version, [])
        arrived.append(at)
        if (version, len(arrived)) == self.awaited:
            self.changed.set()  # once, not per message: a wake-up per message costs the client ~10 µs

    async def wait_for(self, version: int, count: int, timeout: float) -> bool:
        self.changed.clear()
        self.awaited = (version, count)
        if len(self.times.get(version, ())) < count:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout)
        return len(self.times.get(version, ())) >= count


# SO_TIMESTAMPNS: the kernel stamps each received segment (CLOCK_REALTIME); read with recvmsg.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
# CLOCK_REALTIME minus perf_counter's clock, to put kernel stamps on the bench's one clock.
REALTIME_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


class Subscriber:
    """One WebSocket, one graphql-transport-ws subscription; records receive times.

    The websockets library's sans-I/O client protocol on a raw non-blocking socket
    watched by the event loop (no task per connection). Each message's receive
    time is the kernel's timestamp of its arrival (SO_TIMESTAMPNS), so the
    figures measure the server and the network, not this Python process working
    through a thousand sockets (~40 µs each); the time this process read it is
    recorded too.
    """

    def __init__(self, arrivals: Arrivals) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.arrivals = arrivals
        self.opened: asyncio.Future[None] = loop.create_future()
        self.acked: asyncio.Future[None] = loop.create_future()
        self.first: asyncio.Future[int] = loop.create_future()
        self.sock: socket.socket | None = None
        self.ws: ClientProtocol | None = None
        self.errors: list[str] = []

    async def open(self, url: str, token: str) -> None:
        uri = parse_uri(url)
        self.ws = ClientProtocol(uri, subprotocols=[Subprotocol("graphql-transport-ws")], max_size=2**20)
        sock = self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        await self.loop.sock_connect(sock, (uri.host, uri.port))
        self.loop.add_reader(sock.fileno(), self._readable)
        self.ws.send_request(self.ws.connect())
        self._flush()
        await asyncio.wait_for(self.opened, 30)
        self._send({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}})
        await asyncio.wait_for(self.acked, 30)
        self._send({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIPTION, "variables": {"org": ORG}}})
        await asyncio.wait_for(self.first, 30)  # the initial snapshot: subscribed

    def _readable(self) -> None:
        assert self.sock is not None and self.ws is not None
        try:
            data, ancillary, _flags, _address = self.sock.recvmsg(1 << 16, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._lost(repr(error))
            return
        read_at = time.perf_counter()
        if not data:
            self._lost("closed by the server")
            return
        at = read_at
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = struct.unpack("qq", payload[:16])
                at = (seconds * 1_000_000_000 + nanoseconds - REALTIME_OFFSET_NS) / 1e9
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Response):
                if self.ws.handshake_exc is not None:
                    self._fail(repr(self.ws.handshake_exc))
                elif not self.opened.done():
                    self.opened.set_result(None)
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self._message(json.loads(bytes(event.data)), at, read_at)
        self._flush()  # pongs to the server's pings, among others

    def _message(self, message: dict[str, Any], at: float, read_at: float) -> None:
        kind = message.get("type")
        if kind == "connection_ack" and not self.acked.done():
            self.acked.set_result(None)
        elif kind == "next":
            version = message["payload"]["data"]["organizationStatsChanged"]["version"]
            if not self.first.done():
                self.first.set_result(version)
            else:
                self.arrivals.add(version, at, read_at)
        elif kind == "ping":
            self._send({"type": "pong"})
        elif kind in ("error", "complete"):
            self._fail(json.dumps(message))

    def _lost(self, why: str) -> None:
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
        self._fail(f"connection lost: {why}")

    def _fail(self, error: str) -> None:
        self.errors.append(error)
        for future in (self.opened, self.acked, self.first):
            if not future.done():
                future.set_exception(RuntimeError(f"subscription ended: {self.errors}"))

    def _send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        self.ws.send_text(json.dumps(message).encode())
        self._flush()

    def _flush(self) -> None:
        assert self.ws is not None and self.sock is not None
        for chunk in self.ws.data_to_send():
            if chunk:
                self.sock.sendall(chunk)  # a few hundred bytes at most: never blocks in practice

    async def close(self) -> None:
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()  # reset, no closing handshake: a thousand of them take seconds


async def open_subscribers(url: str, token: str, arrivals: Arrivals, count: int) -> list[Subscriber]:
    subscribers: list[Subscriber] = []
    for start in range(0, count, OPEN_BATCH):
        batch = [Subscriber(arrivals) for _ in range(min(OPEN_BATCH, count - start))]
        await asyncio.gather(*(s.open(url, token) for s in batch))
        subscribers.extend(batch)
    return subscribers


async def live_subscribers(base: str) -> int:
    return int((await asyncio.to_thread(live_metrics, base))["subscribers"])


# --- measurement ----------------------------------------------------------------------------

@dataclass
class Run:
    mode: str
    subscribers: int
    mutation_ms: list[float]
    commit_ms: list[float]  # receive - HTTP response arrival
    send_ms: list[float]  # receive - mutation sent
    read_ms: list[float]  # read by this process - HTTP response arrival
    expected_events: int
    received_events: int
    incomplete_deliveries: int
    seconds: float
    mutations: int
    server_cpu: float  # CPU seconds of the subscribers' server over the measurement
    client_cpu: float  # CPU seconds of this (client) process over the measurement


class Mutator:
    def __init__(self, client: httpx.AsyncClient, token: str, load_id: str, status: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}
        self.load_id = load_id
        self.status = status

    async def toggle(self) -> tuple[float, float]:
        self.status = "ASSIGNED" if self.status == "OPEN" else "OPEN"
        body = {"query": UPDATE, "variables": {"id": self.load_id, "s": self.status}}
        sent = time.perf_counter()
        response = await self.client.post("/graphql", json=body, headers=self.headers)
        arrived = time.perf_counter()
        data = response.json()
        if response.status_code != 200 or data.get("errors"):
            raise RuntimeError(f"mutation failed: {response.status_code} {data}")
        return sent, arrived


async def current_version(client: httpx.AsyncClient, token: str) -> int:
    response = await client.post(
        "/graphql",
        json={"query": "query($o: ID!) { organizationStats(orgId: $o) { version } }", "variables": {"o": ORG}},
        headers={"Authorization": f"Bearer {token}"},
    )
    return int(response.json()["data"]["organizationStats"]["version"])


async def measure(mode: str, mutator: Mutator, token: str, arrivals: Arrivals, subscribers: int, pid: int, mutations: int) -> Run:
    base = await current_version(mutator.client, token)
    server_cpu, client_cpu = process_cpu(pid) or 0.0, time.process_time()
    arrivals.times.clear()
    arrivals.read_times.clear()
    mutation_ms: list[float] = []
    commit_ms: list[float] = []
    send_ms: list[float] = []
    read_ms: list[float] = []
    incomplete = 0
    started = time.perf_counter()
    for k in range(1, mutations + 1):
        sent, arrived = await mutator.toggle()
        mutation_ms.append((arrived - sent) * 1000)
        version = base + k
        if subscribers:
            if not await arrivals.wait_for(version, subscribers, DELIVERY_TIMEOUT):
                incomplete += 1
            for at in arrivals.times.get(version, ()):
                commit_ms.append((at - arrived) * 1000)
                send_ms.append((at - sent) * 1000)
            read_ms.extend((at - arrived) * 1000 for at in arrivals.read_times.get(version, ()))
        await asyncio.sleep(GAP)
    seconds = time.perf_counter() - started
    server_cpu, client_cpu = (process_cpu(pid) or 0.0) - server_cpu, time.process_time() - client_cpu
    if await current_version(mutator.client, token) != base + mutations:
        raise RuntimeError("another writer moved the version: events cannot be matched to mutations")
    received = sum(len(v) for v in arrivals.times.values())
    return Run(
        mode,
        subscribers,
        mutation_ms,
        commit_ms,
        send_ms,
        read_ms,
        mutations * subscribers,
        received,
        incomplete,
        seconds,
        mutations,
        server_cpu,
        client_cpu,
    )


@dataclass
class ModeResult:
    mode: str
    runs: list[Run]
    rss_kib: dict[int, int]
    subscriber_errors: int
    health: dict[str, Any]


async def run_mode(profile: Profile, mode: str, mutations_server: ServerUrl, subscriptions_server: ServerUrl) -> ModeResult:
    token = bench_token(ORG, ttl=3600)
    pid = subscriptions_server.process.pid if subscriptions_server.process else 0
    arrivals = Arrivals()
    runs: list[Run] = []
    rss: dict[int, int] = {}
    subscribers: list[Subscriber] = []
    limits = httpx.Limits(max_keepalive_connections=1, max_connections=1)
    async with httpx.AsyncClient(base_url=mutations_server, limits=limits, timeout=30) as client:
        created = await client.post(
            "/graphql",
            json={
                "query": "mutation($o: ID!) { createLoad(input: {orgId: $o, status: OPEN}) { id status } }",
                "variables": {"o": ORG},
            },
            headers={"Authorization": f"Bearer {token}"},
        )
        load = created.json()["data"]["createLoad"]
        mutator = Mutator(client, token, load["id"], load["status"])
        for _ in range(profile.warmup):
            await mutator.toggle()
        await asyncio.sleep(1)
        rss[0] = rss_kib(pid)
        say(f"[{mode}] 0 subscribers (mutation alone) ...")
        runs.append(await measure(mode, mutator, token, arrivals, 0, pid, profile.mutations))
        try:
            for size in profile.sizes:
                mutations = profile.mutations_at_largest if size == profile.sizes[-1] else profile.mutations
                say(f"[{mode}] opening subscribers up to {size} ...")
                subscribers += await open_subscribers(subscriptions_server.replace("http", "ws", 1) + "/graphql", token, arrivals, size - len(subscribers))
                live = await live_subscribers(subscriptions_server)
                if live != size:
                    raise RuntimeError(f"server reports {live} live subscribers, expected {size}")
                await asyncio.sleep(2)  # idle
                rss[size] = rss_kib(pid)
                for _ in range(2):  # warm the fan-out path at this size
                    await mutator.toggle()
                    await asyncio.sleep(0.3)
                say(f"[{mode}] {size} subscribers: {mutations} mutations ...")
                runs.append(await measure(mode, mutator, token, arrivals, size, pid, mutations))
                r = runs[-1]
                say(
                    f"[{mode}] {size}: mutation p50 {pct(r.mutation_ms, 50):.1f} ms, commit-to-client "
                    f"p50 {pct(r.commit_ms, 50):.1f} p99 {pct(r.commit_ms, 99):.1f} ms, "
                    f"{r.received_events}/{r.expected_events} events",
                )
        finally:
            errors = sum(len(s.errors) for s in subscribers)
            for start in range(0, len(subscribers), 200):
                await asyncio.gather(*(s.close() for s in subscribers[start : start + 200]))
    health = {k: int(v) for k, v in live_metrics(subscriptions_server).items()}
    return ModeResult(mode, runs, rss, errors, health)


# --- the run and its report -------------------------------------------------------------------


def run(profile: Profile) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 10_000 if hard == resource.RLIM_INFINITY else min(10_000, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # inherited by the servers too
    results: list[ModeResult] = []
    with tempfile.TemporaryDirectory(prefix="tally-bench-live-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'memory.db'}"
        with tally_server(url, "memory://") as server:
            results.append(run_async(run_mode(profile, "one process (memory://)", server, server)))
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'redis.db'}"
        with private_redis() as redis_url, tally_server(url, redis_url) as a, tally_server(url, redis_url) as b:
            results.append(run_async(run_mode(profile, "two processes over Redis (mutations -> A, subscribers on B)", a, b)))
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    return {"profile": asdict(profile), "modes": [asdict(r) for r in results], "machine": {"Redis": redis_version, "websockets (client)": websockets.__version__}}


def fmt(value: float) -> str:
    return f"{value:.1f}"


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.1f}x" if baseline > 0 and value > 0 else "n/a"


def mode_section(mode: dict[str, Any], sizes: list[int]) -> str:
    runs = {r["subscribers"]: r for r in mode["runs"]}
    alone = runs[0]
    alone50, alone99 = pct(alone["mutation_ms"], 50), pct(alone["mutation_ms"], 99)
    latency, costs = [], []
    for size in sizes:
        r = runs[size]
        m50, m99 = pct(r["mutation_ms"], 50), pct(r["mutation_ms"], 99)
        c50, c99 = pct(r["commit_ms"], 50), pct(r["commit_ms"], 99)
        latency.append([
            f"{size:,}", f"{fmt(m50)} / {fmt(m99)} ({ratio(m50, alone50)} / {ratio(m99, alone99)})", f"{fmt(c50)} ({ratio(c50, m50)})",
            f"{fmt(c99)} ({ratio(c99, m99)})", fmt(max(r["commit_ms"])), f"{fmt(pct(r['send_ms'], 50))} / {fmt(pct(r['send_ms'], 99))}",
            fmt(pct(r["read_ms"], 99)), f"{r['received_events']:,} / {r['expected_events']:,}", str(r["incomplete_deliveries"]),
        ])  # fmt: skip
    for size in (0, *sizes):
        r = runs[size]
        events = max(1, r["received_events"])
        extra = f"{(r['server_cpu'] - alone['server_cpu']) / events * 1e6:.0f}" if size else "nan"
        client = f"{r['client_cpu'] / events * 1e6:.0f}" if size else "nan"
        costs.append([f"{size:,}", f"{r['server_cpu'] / r['mutations'] * 1000:.1f}", extra, client, f"{r['seconds']:.1f}"])
    one = runs[sizes[0]]
    rss = {int(n): kib for n, kib in mode["rss_kib"].items()}
    middle, largest = sizes[-2], sizes[-1]
    return "\n".join([
        f"### {mode['mode']}\n",
        f"Mutation alone (0 subscribers, same run): p50 {fmt(alone50)} ms, p99 {fmt(alone99)} ms.\n",
        table(["subscribers", "mutation p50 / p99 ms (x alone)", "commit-to-client p50 ms (x mutation p50)", "commit-to-client p99 ms (x mutation p99)",
               "commit-to-client max ms", "send-to-client p50 / p99 ms", "client read p99 ms", "events received / expected",
               f"rounds not fully delivered in {DELIVERY_TIMEOUT:.0f} s"], latency),
        "\nWhere the time goes (CPU seconds over each configuration's mutations, from `/proc/<pid>/stat` of the subscribers' server and "
        "`time.process_time()` of the client process):\n",
        table(["subscribers", "subscribers' server CPU ms per mutation", "server CPU per delivered event, above the 0-subscriber cost (us)",
               "client CPU per event (us)", "wall s"], costs),
        f"\nGrowth against {sizes[0]} subscriber (same run; send-to-client, as commit-to-client at {sizes[0]} subscriber is about 0): p50 "
        + ", ".join(f"{size:,}: {ratio(pct(runs[size]['send_ms'], 50), pct(one['send_ms'], 50))}" for size in sizes[1:]) + "; p99 "
        + ", ".join(f"{size:,}: {ratio(pct(runs[size]['send_ms'], 99), pct(one['send_ms'], 99))}" for size in sizes[1:]) + ".\n",
        table(["open subscribers", "server VmRSS MiB"], [[f"{n:,}", f"{kib / 1024:.1f}"] for n, kib in sorted(rss.items())]),
        f"\nMemory per idle subscriber: **{(rss[largest] - rss[0]) / largest:.1f} KiB** ((RSS({largest:,}) - RSS(0)) / {largest:,}); marginal "
        f"{(rss[largest] - rss[middle]) / (largest - middle):.1f} KiB ((RSS({largest:,}) - RSS({middle:,})) / {largest - middle:,}). "
        f"Subscriber-side errors/closes: {mode['subscriber_errors']}. Subscribers' server `/metrics` (tally_live_*) at the end: {mode['health']}.\n",
    ])  # fmt: skip


def fields(data: dict[str, Any]) -> dict[str, Any]:
    profile = Profile(**{**data["profile"], "sizes": tuple(data["profile"]["sizes"])})
    sizes = list(profile.sizes)
    largest = sizes[-1]
    one_process = data["modes"][0]
    p99 = pct(next(r for r in one_process["runs"] if r["subscribers"] == largest)["commit_ms"], 99)
    return {
        "mutations": profile.mutations,
        "mutations_at_largest": profile.mutations_at_largest,
        "largest": f"{largest:,}",
        "sizes": ", ".join(f"{n:,}" for n in sizes),
        "timeout": f"{DELIVERY_TIMEOUT:.0f}",
        "gap_ms": int(GAP * 1000),
        "warmup": profile.warmup,
        "events": ", ".join(f"{(profile.mutations_at_largest if n == largest else profile.mutations) * n:,} at {n:,}" for n in sizes),
        "modes": "\n".join(mode_section(mode, sizes) for mode in data["modes"]),
        "target_p99": fmt(p99),
        "target_met": "met" if p99 < 50 else "not met",
    }
