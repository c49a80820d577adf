"""Live updates between processes sharing one SQLite file, with no channel to run.

Each process follows the database. Every FOLLOW_SECONDS it asks its own
read-only connection for `PRAGMA data_version`, which changes only when another
connection has committed (this process's writers included: they commit on
other connections). Only then does one statement read the versions of the orgs
with local subscribers, and each org whose version moved is read and delivered
to them. Subscribers drop anything not newer, so a commit that also came
through the process's own memory:// channel reaches each of them once.

Everything runs on the event loop's thread: the pragma takes microseconds, and
WAL readers never wait for writers (a rare "busy" is retried at the next tick).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Collection

from sqlalchemy.engine import make_url

from db.aggregates import StatsSnapshot
from db.models import OrganizationStats
from db.tasks import finish

log = logging.getLogger("tally.broadcast")

FOLLOW_SECONDS = 0.05
VERSIONS = (
    f"SELECT org_id, SUM(version) FROM {OrganizationStats.__tablename__}"
    " WHERE org_id IN (SELECT value FROM json_each(?)) GROUP BY org_id"
)


def sqlite_file(database_url: str | None) -> str | None:
    """The SQLite file a database URL names (None: not SQLite, or in memory)."""
    if database_url is None:
        return None
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return url.database


class SqliteFollower:
    def __init__(
        self,
        path: str,
        subscribed_orgs: Callable[[], Collection[str]],
        read_snapshot: Callable[[str], Awaitable[StatsSnapshot]],
        deliver: Callable[[StatsSnapshot], None],
        *,
        interval: float = FOLLOW_SECONDS,
    ) -> None:
        self.path = path
        self.interval = interval
        self.healthy = True
        self._subscribed_orgs = subscribed_orgs
        self._read_snapshot = read_snapshot
        self._deliver = deliver
        self._connection: sqlite3.Connection | None = None
        self._data_version: int | None = None
        self._versions: dict[str, int] = {}  # org -> the version last delivered from here
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="tally-sqlite-follower")

    async def stop(self) -> None:
        if self._task is not None:
            await finish([self._task])
            self._task = None
        self._close()

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except Exception as error:
                self._data_version = None  # read everything again once it works
                self._close()
                if self.healthy:
                    self.healthy = False
                    log.warning(
                        "following %s failed (%r): other processes' commits reach no subscriber here until it works",
                        self.path,
                        error,
                    )
            else:
                if not self.healthy:
                    self.healthy = True
                    log.info("following %s again", self.path)

    async def poll(self) -> None:
        orgs = self._subscribed_orgs()
        if not orgs:
            self._versions.clear()
            return
        connection = self._open()
        try:
            data_version = connection.execute("PRAGMA data_version").fetchone()[0]
            if data_version == self._data_version:
                return
            rows = connection.execute(VERSIONS, (json.dumps(list(orgs)),)).fetchall()
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                return  # e.g. a WAL being recovered: the next tick tries again
            raise
        self._data_version = data_version
        self._versions = {org: version for org, version in self._versions.items() if org in orgs}
        for org_id, version in rows:
            if self._versions.get(org_id) == version:
                continue
            try:
                snapshot = await self._read_snapshot(org_id)
            except Exception:
                self._data_version = None  # this org (and any after it) next time
                raise
            self._versions[org_id] = snapshot.version
            self._deliver(snapshot)

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            # timeout=0: never block the event loop (WAL readers do not wait for writers).
            connection = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA query_only=ON")
            self._connection = connection
        return self._connection

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(sqlite3.Error):
                connection.close()
