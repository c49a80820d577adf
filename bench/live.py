"""Live-update latency (docs/benchmarks-live.md): `python main.py serve` processes on loopback, WebSocket
subscribers (graphql-transport-ws) and HTTP mutations, all timed in this one process on one clock.

Modes: one process on `memory://`; two processes over a private redis-server (subscribers on B,
mutations to A, one SQLite file). For 0 and each subscriber count, `updateLoadStatus` toggles one
load; each commit bumps the org's version by one, so event version `base + k` is mutation k's. The
next mutation goes once every subscriber has the event (or after DELIVERY_TIMEOUT), plus GAP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websockets
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from bench.common import log, percentile, process_cpu, rss_kib, run_async, token
from tests.live import STATS_CHANGED, RedisServer
from tests.scrape import live_figures, scrape
from tests.server import ServerUrl, running_server

ORG = "org_live"
GAP = 0.05  # seconds between the last delivery of one event and the next mutation
DELIVERY_TIMEOUT = 10.0
PROFILES = {"full": {"sizes": [1, 100, 1000], "mutations": 30, "at_largest": 15, "warmup": 10}, "quick": {"sizes": [1, 5, 10], "mutations": 5, "at_largest": 5, "warmup": 3}}
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # the kernel stamps each received segment (CLOCK_REALTIME)
REALTIME_OFFSET_NS = time.time_ns() - time.perf_counter_ns()  # puts those stamps on perf_counter's clock


class Arrivals:
    """Receive times by version, across all subscribers: the kernel's, and when this process read them."""

    def __init__(self) -> None:
        self.times: dict[int, list[float]] = {}
        self.read_times: dict[int, list[float]] = {}
        self.changed = asyncio.Event()
        self.awaited = (-1, 0)

    def add(self, version: int, at: float, read_at: float) -> None:
        self.read_times.setdefault(version, []).append(read_at)
        arrived = self.times.setdefault(version, [])
        arrived.append(at)
        if (version, len(arrived)) == self.awaited:
            self.changed.set()  # once, not per message: a wake-up per message costs the client ~10 µs

    async def wait_for(self, version: int, count: int) -> bool:
        self.changed.clear()
        self.awaited = (version, count)
        if len(self.times.get(version, ())) < count:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), DELIVERY_TIMEOUT)
        return len(self.times.get(version, ())) >= count


class Subscriber:
    """One WebSocket and subscription: the websockets library's sans-I/O protocol on a raw socket the
    loop watches (no task per connection); each message's receive time is the kernel's timestamp of
    its arrival (SO_TIMESTAMPNS), so the figures measure the server and the network, not this
    process working through a thousand sockets (~40 µs each)."""

    def __init__(self, arrivals: Arrivals) -> None:
        self.loop, self.arrivals, self.errors = asyncio.get_running_loop(), arrivals, 0
        self.opened, self.acked, self.ready = (self.loop.create_future() for _ in range(3))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ws: ClientProtocol | None = None

    async def open(self, url: str, bearer: str) -> None:
        uri = parse_uri(url)
        self.ws = ClientProtocol(uri, subprotocols=[Subprotocol("graphql-transport-ws")], max_size=2**20)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        await self.loop.sock_connect(self.sock, (uri.host, uri.port))
        self.loop.add_reader(self.sock.fileno(), self.readable)
        self.ws.send_request(self.ws.connect())
        self.flush()
        await asyncio.wait_for(self.opened, 30)
        self.send({"type": "connection_init", "payload": {"Authorization": f"Bearer {bearer}"}})
        await asyncio.wait_for(self.acked, 30)
        self.send({"id": "1", "type": "subscribe", "payload": {"query": STATS_CHANGED, "variables": {"org": ORG}}})
        await asyncio.wait_for(self.ready, 30)  # the initial snapshot: subscribed

    def readable(self) -> None:
        assert self.ws is not None
        try:
            data, ancillary, _, _ = self.sock.recvmsg(1 << 16, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            data, ancillary = b"", [repr(error)]
        read_at = at = time.perf_counter()
        if not data:
            return self.fail(f"connection lost: {ancillary or 'closed by the server'}")
        for level, kind, payload in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS):
                seconds, nanoseconds = struct.unpack("qq", payload[:16])
                at = (seconds * 1_000_000_000 + nanoseconds - REALTIME_OFFSET_NS) / 1e9
        self.ws.receive_data(data)
        if self.ws.handshake_exc is not None:
            return self.fail(repr(self.ws.handshake_exc))
        for event in self.ws.events_received():
            message = json.loads(bytes(event.data)) if getattr(event, "opcode", None) is Opcode.TEXT else {}
            if not self.opened.done():
                self.opened.set_result(None)
            if message.get("type") == "connection_ack":
                self.acked.set_result(None)
            elif message.get("type") == "next":
                if self.ready.done():
                    self.arrivals.add(message["payload"]["data"]["organizationStatsChanged"]["version"], at, read_at)
                else:
                    self.ready.set_result(None)
            elif message.get("type") == "ping":
                self.send({"type": "pong"})
            elif message.get("type") in ("error", "complete"):
                self.fail(json.dumps(message))
        self.flush()  # pongs to the server's pings, among others

    def fail(self, error: str) -> None:
        self.errors += 1
        self.loop.remove_reader(self.sock.fileno())
        for future in (self.opened, self.acked, self.ready):
            if not future.done():
                future.set_exception(RuntimeError(f"subscription ended: {error}"))

    def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        self.ws.send_text(json.dumps(message).encode())
        self.flush()

    def flush(self) -> None:
        assert self.ws is not None
        for chunk in self.ws.data_to_send():
            self.sock.sendall(chunk)  # a few hundred bytes at most: never blocks in practice

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()  # reset, no closing handshake: a thousand of them take seconds


async def graphql(client: httpx.AsyncClient, bearer: str, query: str, **variables: str) -> dict[str, Any]:
    response = await client.post("/graphql", json={"query": query, "variables": variables}, headers={"Authorization": f"Bearer {bearer}"})
    data = response.json()
    if response.status_code != 200 or data.get("errors"):
        raise RuntimeError(f"{query[:40]}... failed: {response.status_code} {data}")
    return data["data"]


async def run_mode(profile: dict[str, Any], mode: str, mutations_server: ServerUrl, subscriptions_server: ServerUrl) -> dict[str, Any]:
    bearer, pid = token(ORG, ttl=3600), subscriptions_server.process.pid if subscriptions_server.process else 0
    arrivals, runs, rss, subscribers = Arrivals(), [], {}, []
    async with httpx.AsyncClient(base_url=mutations_server, limits=httpx.Limits(max_keepalive_connections=1, max_connections=1), timeout=30) as client:
        load = (await graphql(client, bearer, "mutation($o: ID!) { createLoad(input: {orgId: $o, status: OPEN}) { id status } }", o=ORG))["createLoad"]

        async def toggle() -> tuple[float, float]:
            load["status"] = "ASSIGNED" if load["status"] == "OPEN" else "OPEN"
            sent = time.perf_counter()
            await graphql(client, bearer, "mutation($id: ID!, $s: LoadStatus!) { updateLoadStatus(id: $id, status: $s) { id status } }", id=load["id"], s=load["status"])
            return sent, time.perf_counter()

        async def version() -> int:
            return int((await graphql(client, bearer, "query($o: ID!) { organizationStats(orgId: $o) { version } }", o=ORG))["organizationStats"]["version"])

        async def measure(size: int, mutations: int) -> None:
            base, cpu = await version(), (process_cpu(pid), time.process_time())
            arrivals.times.clear()
            arrivals.read_times.clear()
            run: dict[str, Any] = {"subscribers": size, "mutations": mutations, "mutation_ms": [], "commit_ms": [], "send_ms": [], "read_ms": [], "incomplete": 0}
            started = time.perf_counter()
            for k in range(1, mutations + 1):
                sent, arrived = await toggle()
                run["mutation_ms"].append((arrived - sent) * 1000)
                if size:
                    run["incomplete"] += not await arrivals.wait_for(base + k, size)
                    run["commit_ms"] += [(at - arrived) * 1000 for at in arrivals.times.get(base + k, ())]
                    run["send_ms"] += [(at - sent) * 1000 for at in arrivals.times.get(base + k, ())]
                    run["read_ms"] += [(at - arrived) * 1000 for at in arrivals.read_times.get(base + k, ())]
                await asyncio.sleep(GAP)
            run.update(seconds=time.perf_counter() - started, server_cpu=process_cpu(pid) - cpu[0], client_cpu=time.process_time() - cpu[1])
            if await version() != base + mutations:
                raise RuntimeError("another writer moved the version: events cannot be matched to mutations")
            run["received"] = sum(len(v) for v in arrivals.times.values())
            runs.append(run)

        for _ in range(profile["warmup"]):
            await toggle()
        await asyncio.sleep(1)
        rss[0] = rss_kib(pid)
        log(f"[{mode}] 0 subscribers (mutation alone) ...")
        await measure(0, profile["mutations"])
        try:
            for size in profile["sizes"]:
                log(f"[{mode}] opening subscribers up to {size} ...")
                for start in range(len(subscribers), size, 50):  # 50 connect at a time
                    batch = [Subscriber(arrivals) for _ in range(min(50, size - start))]
                    subscribers += batch
                    await asyncio.gather(*(s.open(subscriptions_server.replace("http", "ws", 1) + "/graphql", bearer) for s in batch))
                if (live := (await asyncio.to_thread(lambda: live_figures(scrape(subscriptions_server))))["subscribers"]) != size:
                    raise RuntimeError(f"server reports {live} live subscribers, expected {size}")
                await asyncio.sleep(2)  # idle
                rss[size] = rss_kib(pid)
                for _ in range(2):  # warm the fan-out path at this size
                    await toggle()
                    await asyncio.sleep(0.3)
                await measure(size, profile["at_largest"] if size == profile["sizes"][-1] else profile["mutations"])
                r = runs[-1]
                log(f"[{mode}] {size}: commit-to-client p50 {percentile(r['commit_ms'], 50):.1f} p99 {percentile(r['commit_ms'], 99):.1f} ms, {r['received']}/{size * r['mutations']} events")
        finally:
            errors = sum(s.errors for s in subscribers)
            for s in subscribers:
                s.close()
    return report(mode, runs, rss, errors, live_figures(scrape(subscriptions_server)), profile["sizes"])


def report(mode: str, runs: list[dict[str, Any]], rss: dict[int, int], errors: int, health: dict[str, int], sizes: list[int]) -> dict[str, Any]:
    def p(values: list[float], q: float) -> float:
        return percentile(values, q)

    alone, one = runs[0], runs[1]
    rows = []
    for r in runs:
        events = max(1, r["received"])
        row = {"mode": mode, "subscribers": r["subscribers"], "events": r["subscribers"] * r["mutations"], "received": r["received"], "incomplete": r["incomplete"], "wall": r["seconds"],
               "server_ms": r["server_cpu"] / r["mutations"] * 1000, "extra_us": (r["server_cpu"] - alone["server_cpu"]) / events * 1e6, "client_us": r["client_cpu"] / events * 1e6,
               **{f"{k}{q}": p(r[f"{k}_ms"], q) for k in ("mutation", "commit", "send", "read") for q in (50, 99)}, "commit_max": max(r["commit_ms"], default=float("nan"))}
        row.update({f"x_{k}": row[k] / base if base > 0 and row[k] > 0 else float("nan") for k, base in (("mutation50", p(alone["mutation_ms"], 50)), ("mutation99", p(alone["mutation_ms"], 99)),
                    ("commit50", row["mutation50"]), ("commit99", row["mutation99"]), ("send50", p(one["send_ms"], 50)), ("send99", p(one["send_ms"], 99)))})
        rows.append(row)
    middle, largest = sizes[-2], sizes[-1]
    return {"mode": mode, "alone": rows[0], "rows": rows, "errors": errors, "health": health, "rss": [{"mode": mode, "n": n, "mib": kib / 1024} for n, kib in sorted(rss.items())],
            "per_idle": (rss[largest] - rss[0]) / largest, "marginal": (rss[largest] - rss[middle]) / (largest - middle), "middle": middle, "largest": largest}


def run(profile: dict[str, Any]) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 10_000 if hard == resource.RLIM_INFINITY else min(10_000, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # inherited by the servers too
    settings = {"TALLY_RECALC_INTERVAL_SECONDS": "0", "TALLY_LOG_LEVEL": "WARNING", "TALLY_QUERY_STATS": "0", "TALLY_STATS_SHARDS": "1", "TALLY_MAX_CONNECTIONS_PER_TOKEN": "5000", "TALLY_MAX_PENDING_SOCKETS": "5000", "TALLY_MAX_PENDING_SOCKETS_PER_ADDRESS": "5000"}
    modes = []
    with tempfile.TemporaryDirectory(prefix="tally-bench-live-") as tmp:
        memory = {**settings, "TALLY_DATABASE_URL": f"sqlite+aiosqlite:///{Path(tmp) / 'memory.db'}", "TALLY_BROADCAST_URL": "memory://"}
        with running_server(memory, timeout=90) as server:
            modes.append(run_async(run_mode(profile, "one process (memory://)", server, server)))
        redis = RedisServer()
        redis.start()
        try:
            shared = {**settings, "TALLY_DATABASE_URL": f"sqlite+aiosqlite:///{Path(tmp) / 'redis.db'}", "TALLY_BROADCAST_URL": redis.url}
            with running_server(shared, timeout=90) as a, running_server(shared, timeout=90) as b:
                modes.append(run_async(run_mode(profile, "two processes over Redis (mutations -> A, subscribers on B)", a, b)))
        finally:
            redis.stop()
    target = modes[0]["rows"][-1]["commit99"]
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    rows = [row for mode in modes for row in mode.pop("rows")]
    return {"profile": profile, "modes": modes, "rows": rows, "fanned": [r for r in rows if r["subscribers"]], "rss": [r for mode in modes for r in mode.pop("rss")], "target": {"p99": target, "met": target < 50}, "gap_ms": GAP * 1000, "timeout": DELIVERY_TIMEOUT,
            "machine": {"Redis": redis_version, "websockets (client)": websockets.__version__}}
