"""Closed-loop HTTP/1.1 load generator, run as its own process: `python -m bench.loadgen`.

Reads one JSON spec on stdin, writes one JSON result on stdout. Each of
`concurrency` clients holds one keep-alive connection and sends its next
request as soon as the previous response has arrived (closed loop). Requests
are pre-encoded bytes and responses are parsed just enough (status line,
Content-Length) to keep the client's own CPU cost per request small: on a
2-core machine the client competes with the server for CPU.

Spec keys: host, port (or ports, a list: client k connects to ports[k % len]),
path, headers (dict), bodies (list of str, sent in turn: one global sequence
shared by all clients), expect (exact response body, or one per body, or
null), warmup, duration, min_samples, max_duration (seconds), split (also
return the latencies per body: `latencies_by_body`).

Every response must be HTTP 200, must not contain `"errors"`, and must equal
`expect` when given; anything else is counted as an error.
Latency samples are requests that complete inside the measurement window,
which opens after the warm-up and closes after `duration` seconds (extended
up to `max_duration` until `min_samples` have been collected).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from typing import Any

perf_ns = time.perf_counter_ns


class HttpClient(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, int]] | None = None
        self.body_start = -1
        self.end = -1
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

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
                self._fail(RuntimeError(f"response without Content-Length: {head[:200]!r}"))
                return
            line_end = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
            self.body_start = head_end + 4
            self.end = self.body_start + length
        if len(self.buffer) >= self.end:
            done = perf_ns()
            body = bytes(self.buffer[self.body_start : self.end])
            del self.buffer[: self.end]
            self.end = -1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result((self.status, body, done))

    def _fail(self, error: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("server closed the connection"))


async def wait_for_event(event: asyncio.Event, seconds: float) -> None:
    """Wait until the event is set or `seconds` have passed, whichever comes first."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)


def encode_requests(spec: dict[str, Any]) -> list[bytes]:
    headers = {
        "Host": f"{spec['host']}:{spec['port']}",
        "Content-Type": "application/json",
        **spec["headers"],
    }
    encoded = []
    for body in spec["bodies"]:
        payload = body.encode()
        lines = [f"POST {spec['path']} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
        lines.append(f"Content-Length: {len(payload)}")
        encoded.append(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
    return encoded


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    requests = encode_requests(spec)
    raw_expect = spec.get("expect")
    expects: list[bytes | None] = (
        [e.encode() for e in raw_expect]
        if isinstance(raw_expect, list)
        else [raw_expect.encode() if raw_expect is not None else None] * len(requests)
    )
    by_body: list[list[int]] = [[] for _ in requests]
    state = {"next": 0, "measuring": False, "stopped": False}
    window: dict[str, int] = {}
    latencies_us: list[int] = []
    errors: list[str] = []
    completed_ok = 0
    failed = asyncio.Event()  # set when the run must stop early
    enough = asyncio.Event()  # set once min_samples are in (or on failure)

    def fail(message: str) -> None:
        errors.append(message)
        if len(errors) >= 10 or message.startswith("connection"):
            state["stopped"] = True
            failed.set()
            enough.set()

    ports = spec.get("ports") or [spec["port"]]
    connections = [
        await loop.create_connection(HttpClient, spec["host"], ports[k % len(ports)])
        for k in range(spec["concurrency"])
    ]

    async def client(transport: asyncio.Transport, protocol: HttpClient) -> None:
        nonlocal completed_ok
        while not state["stopped"]:
            index = state["next"] % len(requests)
            request = requests[index]
            expect = expects[index]
            state["next"] += 1
            protocol.waiter = loop.create_future()
            started = perf_ns()
            transport.write(request)
            try:
                status, body, done = await protocol.waiter
            except Exception as error:  # the connection broke: stop everything, report it
                fail(f"connection failed: {error!r}")
                return
            ok = status == 200 and b'"errors"' not in body and (expect is None or body == expect)
            if not ok:
                fail(f"HTTP {status}: {body[:300].decode(errors='replace')}")
                continue
            completed_ok += 1
            if state["measuring"] and not state["stopped"]:
                latencies_us.append((done - started) // 1000)
                by_body[index].append(latencies_us[-1])
                if len(latencies_us) >= spec["min_samples"]:
                    enough.set()

    async def controller() -> None:
        await wait_for_event(failed, spec["warmup"])
        state["measuring"] = True
        window["start"] = perf_ns()
        cpu_start = resource.getrusage(resource.RUSAGE_SELF)
        window["cpu_start"] = int((cpu_start.ru_utime + cpu_start.ru_stime) * 1e6)
        await wait_for_event(failed, spec["duration"])
        await wait_for_event(enough, spec["max_duration"] - (perf_ns() - window["start"]) / 1e9)
        state["stopped"] = True
        window["end"] = perf_ns()
        cpu_end = resource.getrusage(resource.RUSAGE_SELF)
        window["cpu_end"] = int((cpu_end.ru_utime + cpu_end.ru_stime) * 1e6)

    tasks = [asyncio.ensure_future(client(t, p)) for t, p in connections]
    await controller()
    await asyncio.gather(*tasks)
    for transport, _ in connections:
        transport.close()
    seconds = (window["end"] - window["start"]) / 1e9
    return {
        "concurrency": spec["concurrency"],
        "seconds": seconds,
        "latencies_us": latencies_us,
        **({"latencies_by_body": by_body} if spec.get("split") else {}),
        "requests_per_second": len(latencies_us) / seconds,
        "completed_ok": completed_ok,
        "errors": len(errors),
        "first_errors": errors[:3],
        "client_cpu_us_per_request": (window["cpu_end"] - window["cpu_start"]) / max(1, len(latencies_us)),
    }


def main() -> None:
    spec = json.load(sys.stdin)
    runner: Any
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is installed with uvicorn[standard]
        runner = asyncio.run
    json.dump(runner(run(spec)), sys.stdout)


if __name__ == "__main__":
    main()
