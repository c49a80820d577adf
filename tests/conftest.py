from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from db.unit_of_work import Database
from main import create_app
from settings import Settings
from tests.databases import BACKENDS, Databases, make_databases
from tests.helpers import Api, token


@pytest.fixture(scope="session", params=BACKENDS)
def databases(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Databases]:
    """Every database test runs on SQLite and on PostgreSQL."""
    made = make_databases(request.param, tmp_path_factory.mktemp(request.param))
    yield made
    made.drop_all()


@pytest.fixture
def database_url(databases: Databases) -> Iterator[str]:
    """A fresh, migrated database per test (dropped after it)."""
    url = databases.migrated()
    yield url
    databases.drop(url)


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
