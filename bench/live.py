"""Live-update latency (docs/benchmarks-live.md, whose Method section tells how)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import resource
import socket
import struct
import subprocess
import tempfile
import time
from typing import Any

import httpx
import websockets
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from bench.common import field_of, log, percentile, process_cpu, run_async, token
from tests.live import STATS_CHANGED, RedisServer
from tests.scrape import live_figures, scrape
from tests.server import ServerUrl, running_server

ORG = "org_live"
GAP = 0.05  # seconds between the last delivery of one event and the next mutation
DELIVERY_TIMEOUT = 10.0
PROFILES = {
    "full": {"sizes": [1, 100, 1000], "mutations": 30, "at_largest": 15, "warmup": 10},
    "quick": {"sizes": [1, 5, 10], "mutations": 5, "at_largest": 5, "warmup": 3},
}
SETTINGS = dict(
    TALLY_RECALC_INTERVAL_SECONDS="0", TALLY_LOG_LEVEL="WARNING", TALLY_QUERY_STATS="0", TALLY_STATS_SHARDS="1",
    TALLY_MAX_CONNECTIONS_PER_TOKEN="5000", TALLY_MAX_PENDING_SOCKETS="5000",
    TALLY_MAX_PENDING_SOCKETS_PER_ADDRESS="5000",  # a thousand subscribers from one address
)  # fmt: skip
CREATE = "mutation($o: ID!) { createLoad(input: {orgId: $o, status: OPEN}) { id status } }"
TOGGLE = "mutation($id: ID!, $s: LoadStatus!) { updateLoadStatus(id: $id, status: $s) { id status } }"
VERSION = "query($o: ID!) { organizationStats(orgId: $o) { version } }"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # the kernel stamps each received segment (CLOCK_REALTIME)
REALTIME_OFFSET_NS = time.time_ns() - time.perf_counter_ns()  # puts those stamps on perf_counter's clock


class Arrivals:
    """Per version, across all subscribers: the kernel's receive time of each of its events."""

    def __init__(self) -> None:
        self.times: dict[int, list[float]] = {}
        self.changed, self.awaited = asyncio.Event(), (-1, 0)

    def add(self, version: int, at: float) -> None:
        arrived = self.times.setdefault(version, [])
        arrived.append(at)
        if (version, len(arrived)) == self.awaited:
            self.changed.set()  # once, not per message: a wake-up per message costs the client ~10 µs

    async def wait_for(self, version: int, count: int) -> list[float]:
        self.changed.clear()
        self.awaited = (version, count)
        if len(self.times.get(version, ())) < count:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), DELIVERY_TIMEOUT)
        return self.times.get(version, [])


class Subscriber:
    """One subscription: websockets' sans-I/O protocol on a raw socket the loop watches (no task per connection);
    receive times are the kernel's (SO_TIMESTAMPNS), not this process's, busy with a thousand sockets."""

    def __init__(self, arrivals: Arrivals, url: str) -> None:
        self.loop, self.arrivals, self.errors = asyncio.get_running_loop(), arrivals, 0
        self.step, self.subscribed = self.loop.create_future(), False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.uri = parse_uri(url)
        self.ws = ClientProtocol(self.uri, subprotocols=[Subprotocol("graphql-transport-ws")], max_size=2**20)

    async def open(self, bearer: str) -> None:
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        await self.loop.sock_connect(self.sock, (self.uri.host, self.uri.port))
        self.loop.add_reader(self.sock.fileno(), self.readable)
        self.ws.send_request(self.ws.connect())
        init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {bearer}"}}
        subscribe = {"query": STATS_CHANGED, "variables": {"org": ORG}}
        for then in (init, {"id": "1", "type": "subscribe", "payload": subscribe}, None):
            self.step = self.loop.create_future()
            self.flush()  # the handshake, then each message once the previous one is answered
            await asyncio.wait_for(self.step, 30)
            if then:
                self.ws.send_text(json.dumps(then).encode())
        self.subscribed = True  # the initial snapshot has come

    def readable(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(1 << 16, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            data, ancillary = b"", [repr(error)]
        at = time.perf_counter()
        if not data:
            return self.fail(f"connection lost: {ancillary or 'closed by the server'}")
        for level, kind, payload in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS):
                seconds, nanoseconds = struct.unpack("qq", payload[:16])
                at = (seconds * 1_000_000_000 + nanoseconds - REALTIME_OFFSET_NS) / 1e9
        self.ws.receive_data(data)
        if self.ws.handshake_exc is not None:
            return self.fail(repr(self.ws.handshake_exc))
        for event in self.ws.events_received():  # the handshake's response, then frames
            message = json.loads(bytes(event.data)) if getattr(event, "opcode", None) is Opcode.TEXT else {}
            if message.get("type") == "next" and self.subscribed:
                self.arrivals.add(message["payload"]["data"]["organizationStatsChanged"]["version"], at)
            elif message.get("type") == "ping":
                self.ws.send_text(json.dumps({"type": "pong"}).encode())
            elif message.get("type") in ("error", "complete"):
                self.fail(json.dumps(message))
            elif not self.step.done():
                self.step.set_result(None)  # the handshake, connection_ack, the initial snapshot
        self.flush()  # pongs to the server's pings, among others

    def fail(self, error: str) -> None:
        self.errors += 1
        self.loop.remove_reader(self.sock.fileno())
        if not self.step.done():
            self.step.set_exception(RuntimeError(f"subscription ended: {error}"))

    def flush(self) -> None:
        for chunk in self.ws.data_to_send():
            self.sock.sendall(chunk)  # a few hundred bytes at most: never blocks in practice

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()  # reset, no closing handshake: a thousand of them take seconds


async def run_mode(
    profile: dict[str, Any], mode: str, mutations_to: ServerUrl, subscribers_on: ServerUrl
) -> dict[str, Any]:
    """The mutation alone, then with each count of subscribers; the subscribers' server's memory."""
    bearer, pid = token(ORG), subscribers_on.process.pid if subscribers_on.process else 0
    arrivals, rows, rss, subscribers = Arrivals(), [], {}, []
    one_connection = httpx.Limits(max_keepalive_connections=1, max_connections=1)
    headers = {"Authorization": f"Bearer {bearer}"}
    async with httpx.AsyncClient(base_url=mutations_to, limits=one_connection, timeout=30, headers=headers) as client:

        async def graphql(query: str, **variables: str) -> dict[str, Any]:
            response = await client.post("/graphql", json={"query": query, "variables": variables})
            data = response.json()
            if response.status_code != 200 or data.get("errors"):
                raise RuntimeError(f"{query[:40]}... failed: {response.status_code} {data}")
            return data["data"]

        load = (await graphql(CREATE, o=ORG))["createLoad"]

        async def toggle() -> tuple[float, float]:
            load["status"] = "ASSIGNED" if load["status"] == "OPEN" else "OPEN"
            sent = time.perf_counter()
            await graphql(TOGGLE, id=load["id"], s=load["status"])
            return sent, time.perf_counter()

        async def version() -> int:
            return int((await graphql(VERSION, o=ORG))["organizationStats"]["version"])

        async def measure(size: int, mutations: int) -> dict[str, Any]:
            base, cpu, client_cpu = await version(), process_cpu(pid), time.process_time()
            arrivals.times.clear()
            times: dict[str, list[float]] = {"mutation": [], "commit": []}
            incomplete, started = 0, time.perf_counter()
            for k in range(1, mutations + 1):
                sent, answered = await toggle()
                times["mutation"].append((answered - sent) * 1000)
                if size:
                    arrived = await arrivals.wait_for(base + k, size)
                    incomplete += len(arrived) < size
                    times["commit"] += [(at - answered) * 1000 for at in arrived]
                await asyncio.sleep(GAP)
            wall, cpu = time.perf_counter() - started, process_cpu(pid) - cpu
            client_cpu = time.process_time() - client_cpu
            if await version() != base + mutations:
                raise RuntimeError("another writer moved the version: events cannot be matched to mutations")
            rows.append({
                "subscribers": size, "mutations": mutations, "received": sum(len(v) for v in arrivals.times.values()),
                "incomplete": incomplete, "wall": wall, "server_cpu": cpu, "client_cpu": client_cpu,
                "commit_max": max(times["commit"], default=math.nan),
                **{f"{kind}{q}": percentile(values, q) for kind, values in times.items() for q in (50, 99)},
            })  # fmt: skip
            return rows[-1]

        for _ in range(profile["warmup"]):
            await toggle()
        url = subscribers_on.replace("http", "ws", 1) + "/graphql"
        try:
            for size in [0, *profile["sizes"]]:  # 0: the mutation alone
                log(f"[{mode}] opening subscribers up to {size} ...")
                for start in range(len(subscribers), size, 50):  # 50 connect at a time
                    batch = [Subscriber(arrivals, url) for _ in range(min(50, size - start))]
                    subscribers += batch
                    await asyncio.gather(*(s.open(bearer) for s in batch))
                live = await asyncio.to_thread(lambda: live_figures(scrape(subscribers_on)))
                if live["subscribers"] != size:
                    raise RuntimeError(f"server reports {live['subscribers']} live subscribers, expected {size}")
                await asyncio.sleep(2)  # idle
                rss[size] = int(field_of(f"/proc/{pid}/status", "VmRSS:").split()[0])  # KiB
                for _ in range(2):  # warm the fan-out path at this size
                    await toggle()
                    await asyncio.sleep(0.3)
                mutations = profile["at_largest"] if size == profile["sizes"][-1] else profile["mutations"]
                row = await measure(size, mutations)
                log(f"[{mode}] {size}: commit-to-client p50 {row['commit50']:.1f} p99 {row['commit99']:.1f} ms, "
                    f"{row['received']}/{size * mutations} events")  # fmt: skip
        finally:
            errors = sum(s.errors for s in subscribers)
            for s in subscribers:
                s.close()
    return {"mode": mode, "rows": rows, "rss": rss, "errors": errors, "health": live_figures(scrape(subscribers_on))}


def run(profile: dict[str, Any]) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 10_000 if hard == resource.RLIM_INFINITY else min(10_000, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))  # inherited by the servers too
    redis = RedisServer()
    with tempfile.TemporaryDirectory(prefix="tally-bench-live-") as tmp:
        alone = {**SETTINGS, "TALLY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/memory.db"}
        with running_server({**alone, "TALLY_BROADCAST_URL": "memory://"}, timeout=90) as server:
            modes = [run_async(run_mode(profile, "one process (memory://)", server, server))]
        redis.start()
        try:
            shared = {
                **SETTINGS,
                "TALLY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/redis.db",
                "TALLY_BROADCAST_URL": redis.url,
            }
            with running_server(shared, timeout=90) as a, running_server(shared, timeout=90) as b:
                mode = "two processes over Redis (mutations -> A, subscribers on B)"
                modes.append(run_async(run_mode(profile, mode, a, b)))
        finally:
            redis.stop()
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "profile": profile,
        "modes": modes,
        "gap_ms": GAP * 1000,
        "timeout": DELIVERY_TIMEOUT,
        "machine": {"Redis": redis_version, "websockets (client)": websockets.__version__},
    }
