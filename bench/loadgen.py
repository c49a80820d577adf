"""Closed-loop HTTP/1.1 load generator, its own process: `python -m bench.loadgen` < spec JSON > result JSON.

Spec: ports (client k connects to ports[k % len]), path, headers, bodies (sent in turn: one sequence shared
by all clients), expect (the exact response body per body, or null), concurrency, warmup, duration,
min_samples, max_duration (s). Each client holds one keep-alive connection and sends its next pre-encoded
request when the previous response (parsed just enough: status, Content-Length) has arrived. A response
that is not HTTP 200, contains `"errors"` or differs from `expect` is an error. Samples are the requests
completed in the window, which opens after the warm-up and lasts `duration` (extended up to
`max_duration` until there are `min_samples`); the result has their latencies, also per body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from typing import Any

import uvloop

HOST = "127.0.0.1"


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class HttpClient(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, int]] | None = None
        self.body_start = self.end = -1
        self.status = 0

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.end < 0:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(self.buffer[:head_end]).lower()
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                return self.connection_lost(RuntimeError(f"response without Content-Length: {head[:200]!r}"))
            line_end = head.find(b"\r\n", at + 2)
            self.body_start = head_end + 4
            self.end = self.body_start + int(head[at + 17 : line_end if line_end >= 0 else len(head)])
        if len(self.buffer) >= self.end:
            done = time.perf_counter_ns()
            body = bytes(self.buffer[self.body_start : self.end])
            del self.buffer[: self.end]
            self.end = -1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result((self.status, body, done))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionError("server closed the connection"))


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    ports = spec["ports"]
    headers = {"Host": f"{HOST}:{ports[0]}", "Content-Type": "application/json", **spec["headers"]}
    head = f"POST {spec['path']} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    requests = [f"{head}Content-Length: {len(b.encode())}\r\n\r\n{b}".encode() for b in spec["bodies"]]
    expects = [e.encode() for e in spec["expect"]] if spec["expect"] else [None] * len(requests)
    by_body: list[list[int]] = [[] for _ in requests]
    latencies_us: list[int] = []
    errors: list[str] = []
    state = {"next": 0, "ok": 0, "measuring": False, "stopped": False}
    failed, enough = asyncio.Event(), asyncio.Event()

    def fail(message: str) -> None:
        errors.append(message)
        if len(errors) >= 10 or message.startswith("connection"):
            state["stopped"] = True
            failed.set()
            enough.set()

    clients = range(spec["concurrency"])
    connections = [await loop.create_connection(HttpClient, HOST, ports[k % len(ports)]) for k in clients]

    async def client(transport: asyncio.Transport, protocol: HttpClient) -> None:
        while not state["stopped"]:
            index = state["next"] % len(requests)
            state["next"] += 1
            protocol.waiter = loop.create_future()
            started = time.perf_counter_ns()
            transport.write(requests[index])
            try:
                status, body, done = await protocol.waiter
            except Exception as error:  # the connection broke: stop everything, report it
                return fail(f"connection failed: {error!r}")
            if status != 200 or b'"errors"' in body or expects[index] not in (None, body):
                fail(f"HTTP {status}: {body[:300].decode(errors='replace')}")
                continue
            state["ok"] += 1
            if state["measuring"] and not state["stopped"]:
                latencies_us.append((done - started) // 1000)
                by_body[index].append(latencies_us[-1])
                if len(latencies_us) >= spec["min_samples"]:
                    enough.set()

    async def until(event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(seconds, 0))

    tasks = [asyncio.ensure_future(client(t, p)) for t, p in connections]  # type: ignore[arg-type]
    await until(failed, spec["warmup"])
    state["measuring"], start, cpu_start = True, time.perf_counter(), self_cpu()
    await until(failed, spec["duration"])
    await until(enough, spec["max_duration"] - (time.perf_counter() - start))
    state["stopped"], seconds, cpu = True, time.perf_counter() - start, self_cpu() - cpu_start
    await asyncio.gather(*tasks)
    for transport, _ in connections:
        transport.close()
    return {
        "seconds": seconds,
        "latencies_us": latencies_us,
        "latencies_by_body": by_body,
        "completed_ok": state["ok"],
        "errors": len(errors),
        "first_errors": errors[:3],
        "client_cpu_us_per_request": cpu * 1e6 / max(1, len(latencies_us)),
    }


if __name__ == "__main__":
    json.dump(uvloop.run(run(json.load(sys.stdin))), sys.stdout)
