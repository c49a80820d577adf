"""Test databases: a fresh, migrated SQLite file or PostgreSQL database per test.

PostgreSQL databases are cloned from a migrated template (CREATE DATABASE ...
TEMPLATE), which takes a fraction of a second. Without a reachable server the
PostgreSQL half of the suite skips locally and fails in CI (CI=true).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from db.migrate import upgrade

PG_SERVER = os.environ.get("TALLY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
# The fast tier (-m "not slow") runs on SQLite; every run of the whole suite, as CI does, on both.
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]


def require_service(name: str, error: BaseException | str) -> None:
    message = f"{name} is not reachable ({error})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}: CI must test it", pytrace=False)
    pytest.skip(message)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(f"{PG_SERVER}/postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def admin(sql: str) -> None:
    """Runs in its own thread and loop, so sync and async tests alike can call it."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _admin(sql)).result()


def pg_url(name: str) -> str:
    return f"{PG_SERVER.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"


class Databases:
    """Makes databases of one backend for one test session."""

    def __init__(self, backend: str, root: Path) -> None:
        self.backend = backend
        self.root = root
        self.template: str | None = None
        self.created: list[str] = []

    def empty(self) -> str:
        """A new database with no tables; returns its URL."""
        name = f"tally_test_{uuid.uuid4().hex[:12]}"
        if self.backend == "sqlite":
            return f"sqlite+aiosqlite:///{self.root / (name + '.db')}"
        admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return pg_url(name)

    def migrated(self) -> str:
        """A new database at the newest revision; returns its URL."""
        if self.template is None:
            self.template = self.empty()
            with ThreadPoolExecutor(1) as pool:
                pool.submit(upgrade, self.template).result()
        name = f"tally_test_{uuid.uuid4().hex[:12]}"
        if self.backend == "sqlite":
            path = self.root / f"{name}.db"
            shutil.copy(self.template.removeprefix("sqlite+aiosqlite:///"), path)
            return f"sqlite+aiosqlite:///{path}"
        admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template.rsplit("/", 1)[1]}"')
        self.created.append(name)
        return pg_url(name)

    def drop(self, url: str) -> None:
        """Drop one database made here (a PostgreSQL database; SQLite files go with tmp)."""
        name = url.rsplit("/", 1)[1]
        if self.backend == "postgresql" and name in self.created:
            admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in self.created:
            admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


def make_databases(backend: str, root: Path) -> Databases:
    if backend == "postgresql":
        try:
            admin("SELECT 1")
        except (OSError, asyncpg.PostgresError, TimeoutError) as error:
            require_service("PostgreSQL", error)
    return Databases(backend, root)
