"""Live-update latency benchmark: `uv run python -m bench.live` (results: docs/benchmarks-live.md).

Real `python main.py serve` processes on loopback, real WebSocket subscribers
(the `websockets` library's sans-I/O protocol speaking graphql-transport-ws,
one connection per subscriber) and real HTTP mutations, all timed with `time.perf_counter()` in
this one process, so every clock agrees:

- (a) one process, `memory://`: subscribers and mutations on the same server;
- (b) two processes over a private `redis-server`: subscribers on B,
  mutations sent to A (both on the same SQLite file).

For 0 (mutation alone), 1, 100 and 1,000 subscribers of one org, MUTATIONS (MUTATIONS_AT)
`updateLoadStatus` calls toggle one load OPEN <-> ASSIGNED; each commit bumps
the org's version by one, so event version `base + k` belongs to mutation k.
The next mutation is sent once every subscriber has the event (or after a
timeout), plus a GAP, so events never coalesce. Per event:

- commit-to-client = receive time - moment the mutation's HTTP response arrived
  (the response leaves the server after the commit and after the publish, so
  this is a lower bound; it can be negative);
- send-to-client = receive time - moment the mutation was sent (upper bound).

Memory per idle subscriber: VmRSS of the subscribers' server process with 0,
100 and 1,000 idle subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from bench.machine import describe
from edge.tokens import TokenVerifier
from settings import DEV_SECRET

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks-live.md"
ORG = "org_live"
SIZES = (1, 100, 1000)
MUTATIONS = 30
# At 1,000 subscribers one round takes seconds (fan-out): fewer rounds keep the run bounded.
MUTATIONS_AT = {1000: 15}
WARMUP = 10
GAP = 0.05  # seconds between the last delivery of one event and the next mutation
DELIVERY_TIMEOUT = 10.0
OPEN_BATCH = 50  # subscribers connected concurrently
SUBSCRIPTION = (
    "subscription($org: ID!) { organizationStatsChanged(orgId: $org) "
    "{ orgId version loads { open assigned completed canceled total } invoices { draft void total } } }"
)
UPDATE = "mutation($id: ID!, $s: LoadStatus!) { updateLoadStatus(id: $id, status: $s) { id status } }"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


T0 = time.perf_counter()


def say(text: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {text}", flush=True)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# --- processes ------------------------------------------------------------------------------


class Server:
    """`python main.py serve` on a spare loopback port; exposes its pid for VmRSS."""

    def __init__(self, name: str, database_url: str, broadcast_url: str, workdir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/graphql"
        self.log_path = workdir / f"server-{name}.log"
        env = {
            **os.environ,
            "TALLY_HOST": "127.0.0.1",
            "TALLY_PORT": str(self.port),
            "TALLY_DATABASE_URL": database_url,
            "TALLY_BROADCAST_URL": broadcast_url,
            "TALLY_RECALC_INTERVAL_SECONDS": "0",
            "TALLY_LOG_LEVEL": "WARNING",
            "TALLY_QUERY_STATS": "0",
            "TALLY_STATS_SHARDS": "1",
            "TALLY_MAX_CONNECTIONS_PER_TOKEN": "5000",
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "main.py", "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 90
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not become healthy")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Redis:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


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
    async with httpx.AsyncClient() as client:
        return int((await client.get(f"{base}/healthz")).json()["live"]["subscribers"])


# --- measurement ----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


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


async def measure(mode: str, mutator: Mutator, token: str, arrivals: Arrivals, subscribers: int, pid: int) -> Run:
    mutations = MUTATIONS_AT.get(subscribers, MUTATIONS)
    base = await current_version(mutator.client, token)
    server_cpu, client_cpu = cpu_seconds(pid), time.process_time()
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
    server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, time.process_time() - client_cpu
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


async def run_mode(mode: str, mutations_server: Server, subscriptions_server: Server) -> ModeResult:
    verifier = TokenVerifier(DEV_SECRET)
    token = verifier.issue(org_id=ORG, role="admin", subject="bench-live", ttl_seconds=3600)
    arrivals = Arrivals()
    runs: list[Run] = []
    rss: dict[int, int] = {}
    subscribers: list[Subscriber] = []
    limits = httpx.Limits(max_keepalive_connections=1, max_connections=1)
    async with httpx.AsyncClient(base_url=mutations_server.base, limits=limits, timeout=30) as client:
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
        for _ in range(WARMUP):
            await mutator.toggle()
        await asyncio.sleep(1)
        rss[0] = rss_kib(subscriptions_server.pid)
        say(f"[{mode}] 0 subscribers (mutation alone) ...")
        runs.append(await measure(mode, mutator, token, arrivals, 0, subscriptions_server.pid))
        try:
            for size in SIZES:
                say(f"[{mode}] opening subscribers up to {size} ...")
                subscribers += await open_subscribers(subscriptions_server.ws, token, arrivals, size - len(subscribers))
                live = await live_subscribers(subscriptions_server.base)
                if live != size:
                    raise RuntimeError(f"server reports {live} live subscribers, expected {size}")
                await asyncio.sleep(2)  # idle
                rss[size] = rss_kib(subscriptions_server.pid)
                for _ in range(2):  # warm the fan-out path at this size
                    await mutator.toggle()
                    await asyncio.sleep(0.3)
                say(f"[{mode}] {size} subscribers: {MUTATIONS_AT.get(size, MUTATIONS)} mutations ...")
                runs.append(await measure(mode, mutator, token, arrivals, size, subscriptions_server.pid))
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
    async with httpx.AsyncClient() as client:
        health = (await client.get(f"{subscriptions_server.base}/healthz")).json()["live"]
    return ModeResult(mode, runs, rss, errors, health)


# --- report ---------------------------------------------------------------------------------


def fmt(value: float) -> str:
    return f"{value:.1f}"


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.1f}x" if baseline > 0 and value > 0 else "n/a"


ANALYSIS = "\n## Analysis"  # a hand-written section of the doc that a re-run keeps


def render(results: list[ModeResult], machine: dict[str, str], load_end: str, seconds: float) -> str:
    lines = [
        "# Live-update latency benchmark",
        "",
        "`uv run python -m bench.live` (bench/live.py) wrote this file. Loopback only; "
        f"{MUTATIONS} mutations per configuration ({MUTATIONS_AT[1000]} at 1,000 subscribers, where one round "
        f"takes seconds); whole run {seconds:.0f} s.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in machine.items()]
    lines += [
        f"| Load average at end | {load_end} |",
        f"| Redis | {subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.strip()} |",
        f"| websockets (client) | {websockets.__version__} |",
        "",
        "The machine is shared with other agents' test runs (see the load averages): absolute figures are "
        "noisy; each figure's ratio is against a baseline measured in the same run, minutes apart.",
        "",
        "## Method",
        "",
        "- Servers: `python main.py serve` subprocesses (uvicorn, one worker) on loopback, SQLite (WAL) on a "
        "fresh temporary file, `TALLY_RECALC_INTERVAL_SECONDS=0`, `TALLY_LOG_LEVEL=WARNING`, "
        "`TALLY_MAX_CONNECTIONS_PER_TOKEN=5000`.",
        "  - **one process**: `TALLY_BROADCAST_URL=memory://`; subscribers and mutations on the same server.",
        "  - **two processes + Redis**: a private `redis-server` on a spare loopback port; processes A and B "
        "share the SQLite file and `TALLY_BROADCAST_URL=redis://...`; subscribers connect to **B**, mutations "
        "go to **A**.",
        "- Subscribers: real WebSocket clients (`websockets` library, graphql-transport-ws, one connection "
        'each, `connection_init` with `{"Authorization": "Bearer <token>"}`, then `subscribe` to '
        "`organizationStatsChanged(orgId)` selecting `orgId version loads { open assigned completed canceled "
        "total } invoices { draft void total }`). Each is ready once it has received the initial snapshot; "
        "`/healthz` must then report exactly that many live subscribers. All run in the bench process, one "
        "asyncio loop.",
        f"- Mutations: `updateLoadStatus` toggling one load OPEN <-> ASSIGNED over HTTP/1.1 keep-alive "
        f"(httpx), from the same loop. Each commit bumps the org's version by one, so the event with version "
        f"`base + k` is mutation k's (checked: the version moved by exactly the number of mutations of each configuration). "
        f"The next mutation is sent when every subscriber has mutation k's event (timeout "
        f"{DELIVERY_TIMEOUT:.0f} s) plus {int(GAP * 1000)} ms, so events never coalesce. "
        f"{WARMUP} warm-up mutations at start and 2 more at each size are not counted.",
        "- Timing: `time.perf_counter()` in the bench process, which both sends the mutation and receives "
        "the events, so all times are on one clock. An event's receive time is the kernel's timestamp of "
        "the segment's arrival at the subscriber's socket (SO_TIMESTAMPNS, CLOCK_REALTIME converted to the "
        "same clock): the figures measure the server and the loopback network, not this one Python process "
        "working through 1,000 sockets (~40 µs of CPU each, on the same 2 cores as the server). The moment "
        "this process read each event is reported as well (client read p99).",
        "  - **commit-to-client** = event receive time - moment the mutation's HTTP response arrived. The "
        "server commits, publishes and only then answers, so this is a lower bound of the true "
        "commit-to-client time (it can be slightly negative when the event overtakes the response).",
        "  - **send-to-client** = event receive time - moment the mutation was sent: an upper bound "
        "(it includes the whole mutation).",
        "  - **mutation** = the mutation's HTTP round trip, measured on the same mutations; the "
        '"0 subscribers" row is the mutation alone.',
        f"- Percentiles are nearest-rank over every (mutation, subscriber) event: {MUTATIONS} events at 1 subscriber, "
        f"{MUTATIONS * 100:,} at 100, {MUTATIONS_AT[1000] * 1000:,} at 1,000.",
        "- Memory: VmRSS (`/proc/<pid>/status`) of the subscribers' server process (B in the Redis mode) "
        "after 2 s idle with 0, 1, 100 and 1,000 open subscriptions; per idle subscriber = "
        "(RSS(1,000) - RSS(0)) / 1,000, and the marginal (RSS(1,000) - RSS(100)) / 900.",
        "",
        "## Results",
        "",
    ]
    for result in results:
        runs = {r.subscribers: r for r in result.runs}
        alone = runs[0]
        alone50, alone99 = pct(alone.mutation_ms, 50), pct(alone.mutation_ms, 99)
        lines += [
            f"### {result.mode}",
            "",
            f"Mutation alone (0 subscribers, same run): p50 {fmt(alone50)} ms, p99 {fmt(alone99)} ms.",
            "",
            "| subscribers | mutation p50 / p99 ms (x alone) | commit-to-client p50 ms (x mutation p50) "
            "| commit-to-client p99 ms (x mutation p99) | commit-to-client max ms | send-to-client p50 / p99 ms "
            "| client read p99 ms | events received / expected | rounds not fully delivered in 10 s |",
            "|---:|---|---|---|---:|---|---:|---|---:|",
        ]
        for size in SIZES:
            r = runs[size]
            m50, m99 = pct(r.mutation_ms, 50), pct(r.mutation_ms, 99)
            c50, c99 = pct(r.commit_ms, 50), pct(r.commit_ms, 99)
            lines.append(
                f"| {size:,} | {fmt(m50)} / {fmt(m99)} ({ratio(m50, alone50)} / {ratio(m99, alone99)}) "
                f"| {fmt(c50)} ({ratio(c50, m50)}) | {fmt(c99)} ({ratio(c99, m99)}) | {fmt(max(r.commit_ms))} "
                f"| {fmt(pct(r.send_ms, 50))} / {fmt(pct(r.send_ms, 99))} | {fmt(pct(r.read_ms, 99))} "
                f"| {r.received_events:,} / {r.expected_events:,} | {r.incomplete_deliveries} |"
            )
        lines += [
            "",
            "Where the time goes (CPU seconds over each configuration's mutations, from `/proc/<pid>/stat` of "
            "the subscribers' server and `time.process_time()` of the client process):",
            "",
            "| subscribers | subscribers' server CPU ms per mutation | server CPU per delivered event, above the "
            "0-subscriber cost (us) | client CPU per event (us) | wall s |",
            "|---:|---:|---:|---:|---:|",
        ]
        for size in (0, *SIZES):
            r = runs[size]
            events = max(1, r.received_events)
            extra = (r.server_cpu - alone.server_cpu) / events * 1e6 if size else float("nan")
            client = r.client_cpu / events * 1e6 if size else float("nan")
            lines.append(
                f"| {size:,} | {r.server_cpu / r.mutations * 1000:.1f} | {extra:.0f} | {client:.0f} | {r.seconds:.1f} |"
            )
        one = runs[1]
        lines += [
            "",
            "Growth against 1 subscriber (same run; send-to-client, as commit-to-client at 1 subscriber is about "
            "0): p50 "
            + ", ".join(f"{size:,}: {ratio(pct(runs[size].send_ms, 50), pct(one.send_ms, 50))}" for size in SIZES[1:])
            + "; p99 "
            + ", ".join(f"{size:,}: {ratio(pct(runs[size].send_ms, 99), pct(one.send_ms, 99))}" for size in SIZES[1:])
            + ".",
            "",
            "| open subscribers | server VmRSS MiB |",
            "|---:|---:|",
        ]
        lines += [f"| {n:,} | {kib / 1024:.1f} |" for n, kib in sorted(result.rss_kib.items())]
        per = (result.rss_kib[1000] - result.rss_kib[0]) / 1000
        marginal = (result.rss_kib[1000] - result.rss_kib[100]) / 900
        lines += [
            "",
            f"Memory per idle subscriber: **{per:.1f} KiB** ((RSS(1,000) - RSS(0)) / 1,000); marginal "
            f"{marginal:.1f} KiB ((RSS(1,000) - RSS(100)) / 900). Subscriber-side errors/closes: "
            f"{result.subscriber_errors}. Subscribers' server `/healthz` at the end: {result.health}.",
            "",
        ]
    memory = next(r for r in results if r.mode.startswith("one process"))
    p99_1000 = pct(next(r for r in memory.runs if r.subscribers == 1000).commit_ms, 99)
    lines += [
        "## Targets",
        "",
        "| target | measured | met? |",
        "|---|---|---|",
        f"| p99 commit-to-client < 50 ms at 1,000 subscribers, one process | {fmt(p99_1000)} ms "
        f"| {'met' if p99_1000 < 50 else 'not met'} |",
        "",
    ]
    return "\n".join(lines)


async def main_async() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 10_000 if hard == resource.RLIM_INFINITY else min(10_000, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # inherited by the servers too
    started = time.perf_counter()
    machine = describe(ROOT)
    results: list[ModeResult] = []
    with tempfile.TemporaryDirectory(prefix="tally-bench-live-") as tmp:
        workdir = Path(tmp)
        url = f"sqlite+aiosqlite:///{workdir / 'memory.db'}"
        server = Server("memory", url, "memory://", workdir)
        try:
            results.append(await run_mode("one process (memory://)", server, server))
        finally:
            server.stop()
        redis = Redis()
        url = f"sqlite+aiosqlite:///{workdir / 'redis.db'}"
        a: Server | None = None
        b: Server | None = None
        try:
            a = Server("A", url, redis.url, workdir)
            b = Server("B", url, redis.url, workdir)
            results.append(await run_mode("two processes over Redis (mutations -> A, subscribers on B)", a, b))
        finally:
            for started_server in (a, b):
                if started_server is not None:
                    started_server.stop()
            redis.stop()
    seconds = time.perf_counter() - started
    kept = DOC.read_text().partition(ANALYSIS) if DOC.exists() else ("", "", "")
    DOC.write_text(render(results, machine, loadavg(), seconds) + (kept[1] + kept[2] if kept[1] else ""))
    print(f"wrote {DOC} in {seconds:.0f} s")


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    try:
        import uvloop

        uvloop.run(main_async())
    except ImportError:
        asyncio.run(main_async())


if __name__ == "__main__":
    main()
