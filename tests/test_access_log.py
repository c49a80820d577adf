"""`serve` logs a line per request only when TALLY_ACCESS_LOG asks for it (README, Configuration)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.server import running_server

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("access_log", ["0", "1"])
def test_one_line_per_request_only_when_asked(tmp_path: Path, access_log: str) -> None:
    env = {"TALLY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'tally.db'}", "TALLY_LOG_LEVEL": "INFO",
           "TALLY_ACCESS_LOG": access_log, "TALLY_RECALC_INTERVAL_SECONDS": "0"}  # fmt: skip
    with running_server(env) as server:
        for _ in range(3):
            assert httpx.get(f"{server}/metrics").status_code == 200
    logged = Path(server.log_path).read_text().count('"GET /metrics HTTP/1.1" 200')
    assert logged == (3 if access_log == "1" else 0)
