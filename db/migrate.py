"""Alembic, driven from code: `python main.py migrate` and the server's start-up."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Blocking; call from outside a running event loop (or via `upgrade_async`).

    Safe to run from several processes at once: PostgreSQL migrations take an
    advisory lock (env.py); SQLite ones an exclusive lock on a file beside the
    database.
    """
    with sqlite_file_lock(url):
        command.upgrade(alembic_config(url), revision)


@contextlib.contextmanager
def sqlite_file_lock(url: str) -> Iterator[None]:
    """An exclusive lock on a file beside an SQLite database (none for other databases): one
    migration, or one rewrite (`main.py vacuum`), at a time."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        yield
        return
    with open(f"{parsed.database}.migrate-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


async def upgrade_async(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, url, revision)
