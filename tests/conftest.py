from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from db.migrate import upgrade
from db.unit_of_work import Database
from main import Settings, create_app
from tests.helpers import Api, token


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "tally.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
def database_url(migrated_template: Path, tmp_path: Path) -> str:
    """A fresh, migrated SQLite file per test."""
    path = tmp_path / "tally.db"
    shutil.copy(migrated_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, query_stats=True, recalc_interval_seconds=0)


@pytest.fixture
async def app_client(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Database]]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    await app.state.hub.start()
    async with httpx.AsyncClient(transport=transport, base_url="http://tally") as client:
        yield client, app.state.db
    await app.state.hub.stop()
    await app.state.db.dispose()


@pytest.fixture
def db(app_client: tuple[httpx.AsyncClient, Database]) -> Database:
    return app_client[1]


@pytest.fixture
def api(app_client: tuple[httpx.AsyncClient, Database]) -> Api:
    """Admin of org_a."""
    return Api(app_client[0], token("org_a", "admin"))
