"""Live stats: publish committed snapshots, fan them out to local subscribers.

What carries a snapshot to the other processes (`StatsHub.fan_out`):
- "redis" (redis://) and "postgres" (postgres://: LISTEN/NOTIFY): broadcaster's
  channel, at most once, hardened below;
- "sqlite-follow": memory:// on a SQLite file. memory:// itself reaches only
  this process, so each process follows the database instead
  (db/sqlite_follower.py): another process's commit reaches its subscribers
  within FOLLOW_SECONDS and a read or two;
- "process-only": memory:// on PostgreSQL (or an in-memory SQLite): nothing
  does. Fine for one process; with more, set TALLY_BROADCAST_URL (a WARNING at
  start says so).

Around broadcaster's known gaps:
- a supervisor sends a heartbeat through the channel every second; when a
  reader or publish fails, or a heartbeat does not come back
  (backend dropped, listener dead), the broadcaster is rebuilt with backoff
  and every local subscriber is offered a fresh snapshot read from the
  database;
- each org has one channel reader per process, and each local subscriber keeps
  only the newest snapshot (`LatestSnapshot`), so a slow client costs O(1);
- a failed publish never fails the commit that caused it: it is counted,
  delivered locally, and (unless it only timed out on a busy process)
  triggers the reconnect. Its org is remembered, and once the channel answers
  a heartbeat again the org's current snapshot, read from the database, is
  published: other processes' subscribers converge even if no later commit
  comes;
- an outage is logged once (`OutageLog`): a WARNING when the channel goes
  down, an INFO with the failed publishes when a heartbeat comes back;
- every task a broadcaster starts is cancelled and awaited when it is torn
  down, also after a failed connect (broadcaster leaves its Redis listener
  pending, which asyncio reports as "Task was destroyed").
Every event is a full snapshot with a version, so a missed one is repaired by
the next, and a repeated one is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from broadcaster import Broadcast
from broadcaster._backends.redis import RedisBackend
from sqlalchemy.engine import make_url

from db.aggregates import StatsSnapshot
from db.sqlite_follower import SqliteFollower, sqlite_file
from db.tasks import finish

log = logging.getLogger("tally.broadcast")

ReadSnapshot = Callable[[str], Awaitable[StatsSnapshot]]
PUBLISHED_ORGS = 10_000  # orgs whose last published version is remembered
HEARTBEAT = "\0heartbeat"  # key of the heartbeat reader among the per-org readers


def channel_of(org_id: str) -> str:
    # Hashed: PostgreSQL channel names are identifiers of at most 63 bytes.
    return "tally_stats_" + hashlib.sha256(org_id.encode()).hexdigest()[:32]


def encode(snapshot: StatsSnapshot) -> str:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return json.dumps(
        {
            "orgId": snapshot.org_id,
            "version": snapshot.version,
            "counts": snapshot.counts,
            "updatedAt": iso(snapshot.updated_at),
            "lastRecalculatedAt": iso(snapshot.last_recalculated_at),
        }
    )


def decode(message: str) -> StatsSnapshot:
    data = json.loads(message)

    def when(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    return StatsSnapshot(
        org_id=data["orgId"],
        counts={k: int(v) for k, v in data["counts"].items()},
        version=int(data["version"]),
        updated_at=when(data["updatedAt"]),
        last_recalculated_at=when(data["lastRecalculatedAt"]),
    )


def fan_out_of(broadcast_url: str, database_url: str | None) -> str:
    """What carries a commit to the other processes' subscribers (see the module doc)."""
    scheme = urlsplit(broadcast_url).scheme
    if scheme == "memory":
        return "sqlite-follow" if sqlite_file(database_url) else "process-only"
    return {"rediss": "redis", "postgresql": "postgres"}.get(scheme, scheme)


def described(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


class _RedisBackend(RedisBackend):
    """broadcaster's Redis backend with its subscribe race closed and its listener owned.

    It wakes its listener before SUBSCRIBE has been sent, and redis-py records
    the channel only after sending it: a listener that runs in between finds no
    channel, stops, and waits for the next subscribe, so a channel's first
    messages (on a reconnect, often all of them) reach no one. And it starts the
    listener before connecting, so a failed connect left it pending forever.
    """

    async def connect(self) -> None:
        await self._pubsub.connect()
        self._listener = asyncio.create_task(self._pubsub_listener())

    async def disconnect(self) -> None:
        if self._listener is not None:
            await finish([self._listener], at_most=2.0)
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
        with contextlib.suppress(Exception):
            await self._conn.aclose()

    async def subscribe(self, channel: str) -> None:
        await self._pubsub.subscribe(channel)
        self._ready.set()


class _Broadcast(Broadcast):
    """A Broadcast whose disconnect awaits its listener, also after a failed connect."""

    async def disconnect(self) -> None:
        listener: asyncio.Task[None] | None = getattr(self, "_listener_task", None)
        if listener is not None:
            await finish([listener], at_most=2.0)
        await self._backend.disconnect()


def _broadcast(url: str) -> Broadcast:
    if url.startswith(("redis://", "rediss://")):
        return _Broadcast(backend=_RedisBackend(url))
    return _Broadcast(url)


class OutageLog:
    """One WARNING when the channel goes down, one INFO when it answers again."""

    def __init__(self, url: str) -> None:
        self.url = redacted(url)
        self._since: float | None = None
        self._failed_publishes = 0

    def failed(self, reason: str, *, publish: bool = False) -> None:
        self._failed_publishes += publish
        if self._since is None:
            self._since = time.monotonic()
            log.warning(
                "broadcast channel %s is down (%s): commits reach only this process's subscribers until it recovers",
                self.url,
                reason,
            )
        else:
            log.debug("broadcast channel %s still down (%s)", self.url, reason)

    def recovered(self) -> None:
        if self._since is None:
            return
        log.info(
            "broadcast channel %s recovered after %.1f s; %d publishes failed meanwhile"
            " (each org's current stats are published again)",
            self.url,
            time.monotonic() - self._since,
            self._failed_publishes,
        )
        self._since = None
        self._failed_publishes = 0


class LatestSnapshot:
    """One subscriber's mailbox: only the newest snapshot is kept."""

    def __init__(self) -> None:
        self._latest: StatsSnapshot | None = None
        # The one consumer's wake-up (a bare future: a fan-out wakes 1,000s of them at once).
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, snapshot: StatsSnapshot) -> None:
        if self._latest is None or snapshot.version > self._latest.version:
            self._latest = snapshot
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def newer_than(self, version: int | None) -> StatsSnapshot:
        while True:
            latest = self._latest
            if latest is not None and (version is None or latest.version > version):
                return latest
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter


@dataclass
class HubMetrics:
    subscribers: int = 0
    channels: int = 0
    published: int = 0
    publish_failures: int = 0
    republished: int = 0
    reconnects: int = 0
    connected: bool = False


class StatsHub:
    def __init__(
        self,
        url: str,
        read_snapshot: ReadSnapshot,
        *,
        heartbeat_seconds: float = 1.0,
        publish_timeout: float = 2.0,
        database_url: str | None = None,
    ) -> None:
        """`database_url` picks the fan-out on memory:// (see the module doc)."""
        self.url = url
        self.database_url = database_url
        self.fan_out = fan_out_of(url, database_url)
        self.read_snapshot = read_snapshot
        self.heartbeat_seconds = heartbeat_seconds
        self.publish_timeout = publish_timeout
        self.metrics = HubMetrics()
        self._subscribers: dict[str, set[LatestSnapshot]] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._reader_ready: dict[str, asyncio.Event] = {}
        self._broadcast: Broadcast | None = None
        self._connected = asyncio.Event()
        self._unhealthy = asyncio.Event()
        self._heartbeat_channel = f"tally_heartbeat_{uuid.uuid4().hex}"
        self._heartbeat_seen = asyncio.Event()
        self._unpublished: set[str] = set()  # orgs whose last publish failed
        self._published: dict[str, int] = {}  # org -> the version this process published last
        self._supervisor: asyncio.Task[None] | None = None
        self._outage = OutageLog(url)
        self._follower: SqliteFollower | None = None

    # Lifecycle -----------------------------------------------------------

    async def start(self, *, wait_seconds: float = 5.0) -> None:
        self._start_fan_out()
        self._supervisor = asyncio.create_task(self._supervise(), name="tally-broadcast-supervisor")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), wait_seconds)

    def _start_fan_out(self) -> None:
        path = sqlite_file(self.database_url)
        if self.fan_out == "sqlite-follow" and path is not None:
            self._follower = SqliteFollower(path, self._subscribers.keys, self.read_snapshot, self._deliver)
            self._follower.start()
            return
        # An in-memory SQLite database has one process anyway.
        server_database = self.database_url is not None and make_url(self.database_url).get_backend_name() != "sqlite"
        if self.fan_out == "process-only" and server_database:
            log.warning(
                "TALLY_BROADCAST_URL is memory://: commits reach only this process's subscribers. "
                "With more than one process, set TALLY_BROADCAST_URL=redis://host:6379 or postgres://user@host/db"
            )

    async def stop(self) -> None:
        if self._follower is not None:
            await self._follower.stop()
        if self._supervisor:
            await finish([self._supervisor])
        await self._teardown()

    # Publishing (the unit of work's after-commit hook) --------------------

    def hears_of(self, org_id: str) -> bool:
        """Whether a commit of this org must be published: over memory:// only this process's
        subscribers hear of it, so with none of them for the org nothing is read or sent."""
        return self.fan_out not in ("sqlite-follow", "process-only") or org_id in self._subscribers

    async def publish(self, snapshots: list[StatsSnapshot]) -> None:
        for snapshot in snapshots:
            if self._published.get(snapshot.org_id) == snapshot.version:
                continue  # writers that shared one read after commit (sharded stats): one event
            self._published[snapshot.org_id] = snapshot.version
            if len(self._published) > PUBLISHED_ORGS:
                del self._published[next(iter(self._published))]  # the oldest entry
            self.metrics.published += 1
            broadcast = self._broadcast
            try:
                if broadcast is None:
                    raise ConnectionError("broadcast is not connected")
                async with asyncio.timeout(self.publish_timeout):  # no task per publish, unlike wait_for
                    await broadcast.publish(channel_of(snapshot.org_id), encode(snapshot))
            except Exception as error:
                self.metrics.publish_failures += 1
                reason = (
                    f"a publish timed out after {self.publish_timeout} s"
                    if isinstance(error, TimeoutError)
                    else f"a publish failed: {described(error)}"
                )
                self._outage.failed(reason, publish=True)
                self._deliver(snapshot)  # local subscribers still hear of it
                self._unpublished.add(snapshot.org_id)  # the other processes hear of it later
                if not isinstance(error, TimeoutError):
                    self._unhealthy.set()  # a slow publish is left to the heartbeat to judge

    # Subscribing ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def subscribe(self, org_id: str) -> AsyncIterator[LatestSnapshot]:
        """A mailbox that receives every snapshot of the org published from now on."""
        mailbox = LatestSnapshot()
        self._subscribers.setdefault(org_id, set()).add(mailbox)
        self._count()
        try:
            if org_id not in self._readers and self._broadcast is not None:
                self._start_reader(org_id, self._broadcast)
            ready = self._reader_ready.get(org_id)
            if ready is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), self.publish_timeout)
            yield mailbox
        finally:
            mailboxes = self._subscribers.get(org_id, set())
            mailboxes.discard(mailbox)
            if not mailboxes:
                self._subscribers.pop(org_id, None)
                self._stop_reader(org_id)
            self._count()

    def _count(self) -> None:
        self.metrics.subscribers = sum(len(m) for m in self._subscribers.values())
        self.metrics.channels = len(self._readers.keys() - {HEARTBEAT})

    def _deliver(self, snapshot: StatsSnapshot) -> None:
        for mailbox in list(self._subscribers.get(snapshot.org_id, ())):
            mailbox.offer(snapshot)

    def _start_reader(self, org_id: str, broadcast: Broadcast) -> None:
        if org_id in self._readers:
            return
        ready = asyncio.Event()
        self._reader_ready[org_id] = ready
        self._readers[org_id] = asyncio.create_task(self._read(broadcast, channel_of(org_id), ready))
        self._count()

    def _stop_reader(self, org_id: str) -> None:
        task = self._readers.pop(org_id, None)
        self._reader_ready.pop(org_id, None)
        if task is not None:
            task.cancel()
        self._count()

    async def _read(self, broadcast: Broadcast, channel: str, ready: asyncio.Event) -> None:
        try:
            async with broadcast.subscribe(channel) as subscriber:
                ready.set()
                async for event in subscriber:  # type: ignore[union-attr]
                    if event is None:
                        break
                    if channel == self._heartbeat_channel:
                        self._heartbeat_seen.set()
                    else:
                        self._deliver(decode(event.message))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if broadcast is not self._broadcast:
                return  # a reader of a torn-down channel, failing as it closes: not news
            self._outage.failed(f"a channel reader failed: {described(error)}")
            self._unhealthy.set()

    # Supervision ----------------------------------------------------------

    async def _supervise(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._connect()
                backoff = 0.1
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._outage.failed(described(error))
            self.metrics.connected = False
            self._connected.clear()
            await self._teardown()
            self.metrics.reconnects += 1
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, 1.0)

    async def _connect(self) -> None:
        broadcast = _broadcast(self.url)
        try:
            await asyncio.wait_for(broadcast.connect(), 5)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(broadcast.disconnect(), 2)
            raise
        self._broadcast = broadcast
        self._unhealthy.clear()
        heartbeat_ready = asyncio.Event()
        self._readers[HEARTBEAT] = asyncio.create_task(self._read(broadcast, self._heartbeat_channel, heartbeat_ready))
        await asyncio.wait_for(heartbeat_ready.wait(), 5)
        for org_id in list(self._subscribers):
            self._start_reader(org_id, broadcast)
        await asyncio.gather(*(event.wait() for event in self._reader_ready.values()))
        self.metrics.connected = True
        self._connected.set()
        await self._resync()

    async def _resync(self) -> None:
        """After any (re)connect: offer every local subscriber a fresh snapshot."""
        for org_id in list(self._subscribers):
            try:
                self._deliver(await self.read_snapshot(org_id))
            except Exception as error:
                log.warning("resync of %s failed: %r", org_id, error)

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._unhealthy.wait(), self.heartbeat_seconds)
            if self._unhealthy.is_set():
                raise ConnectionError("a publish or a channel reader failed")
            assert self._broadcast is not None
            self._heartbeat_seen.clear()
            try:
                await asyncio.wait_for(self._broadcast.publish(self._heartbeat_channel, "1"), self.publish_timeout)
                await asyncio.wait_for(self._heartbeat_seen.wait(), self.publish_timeout)
            except TimeoutError:
                raise ConnectionError(f"no heartbeat within {self.publish_timeout} s") from None
            await self._republish(self._broadcast)
            self._outage.recovered()

    async def _republish(self, broadcast: Broadcast) -> None:
        """Publish the current snapshot of each org whose publish failed."""
        while self._unpublished:
            org_id = self._unpublished.pop()  # first: a publish failing meanwhile marks it again
            try:
                snapshot = await self.read_snapshot(org_id)
            except Exception as error:  # the database's trouble, not the channel's: next heartbeat
                self._unpublished.add(org_id)
                log.warning("republish of %s: reading its stats failed: %r", org_id, error)
                return
            try:
                await asyncio.wait_for(broadcast.publish(channel_of(org_id), encode(snapshot)), self.publish_timeout)
            except Exception:
                self._unpublished.add(org_id)  # tried again after the reconnect this causes
                raise
            self.metrics.republished += 1

    async def _teardown(self) -> None:
        broadcast, self._broadcast = self._broadcast, None
        readers = list(self._readers.values())
        self._readers.clear()
        self._reader_ready.clear()
        self._count()
        await finish(readers, at_most=2.0)
        if broadcast is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(broadcast.disconnect(), 2)

    def snapshot_metrics(self) -> dict[str, Any]:
        self._count()
        metrics = dict(self.metrics.__dict__)
        if self._follower is not None:
            metrics["connected"] = metrics["connected"] and self._follower.healthy
        return metrics
