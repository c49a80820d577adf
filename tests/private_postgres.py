"""A throwaway PostgreSQL server of our own (initdb in a temp dir) that a test may restart."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.databases import require_service
from tests.server import free_port


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


class PrivatePostgres:
    def __init__(self) -> None:
        initdb, self.pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if not initdb or not self.pg_ctl:
            require_service("PostgreSQL server binaries", "initdb/pg_ctl not found")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="tally-pg-")
        self.data = os.path.join(self.dir, "data")
        os.chmod(self.dir, 0o777)
        self._as_postgres([initdb, "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync"])

    def _as_postgres(self, command: list[str]) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(prefix + command, check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            [self.pg_ctl, "-D", self.data, "-o", options, "-l", os.path.join(self.dir, "log"), "-w", "start"]
        )

    def stop(self) -> None:
        self._as_postgres([self.pg_ctl, "-D", self.data, "-m", "fast", "-w", "stop"])

    def restart(self, down_seconds: float = 1.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.destroy()
