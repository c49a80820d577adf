"""Guards at the edge: body size, WebSockets per token, sockets waiting for connection_init."""

from __future__ import annotations

import json
from collections import Counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ConnectionsPerToken:
    """Open WebSocket connections per bearer token, in this process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()

    def acquire(self, token: str) -> bool:
        if self._open[token] >= self.limit:
            return False
        self._open[token] += 1
        return True

    def release(self, token: str) -> None:
        self._open[token] -= 1
        if self._open[token] <= 0:
            del self._open[token]


class PendingSockets:
    """WebSockets not yet authenticated, in this process and per client address.

    An unauthenticated socket costs a file descriptor and memory while proving
    nothing, so only a few may wait at once; an authenticated one is counted by
    `ConnectionsPerToken` instead.
    """

    def __init__(self, limit: int, per_address: int) -> None:
        self.limit = limit
        self.per_address = per_address
        self._by_address: Counter[str] = Counter()
        self.total = 0

    def admit(self, address: str) -> bool:
        if self.total >= self.limit or self._by_address[address] >= self.per_address:
            return False
        self._by_address[address] += 1
        self.total += 1
        return True

    def settle(self, address: str) -> None:
        self.total -= 1
        self._by_address[address] -= 1
        if self._by_address[address] <= 0:
            del self._by_address[address]


class BodySizeLimit:
    """Refuses HTTP bodies over `limit` bytes with 413 and a coded GraphQL error."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except BodyTooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {
                "data": None,
                "errors": [
                    {
                        "message": f"Request body is larger than {self.limit} bytes",
                        "extensions": {"code": "BAD_USER_INPUT"},
                    }
                ],
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    pass
