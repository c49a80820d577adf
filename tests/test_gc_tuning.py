"""TALLY_GC_YOUNG_THRESHOLD (main.tune_gc): the server's GC settings, applied when it starts."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from main import create_app
from settings import Settings


@pytest.fixture
def python_gc() -> Iterator[None]:
    """Python's GC untuned for the test (an app started earlier in this process tuned it), and
    afterwards as it was."""
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count() > 0
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*threshold)
    if frozen:
        gc.freeze()
    else:
        gc.unfreeze()


async def started(tmp_path: Path, young_threshold: int) -> None:
    app = create_app(
        Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 't.db'}", recalc_interval_seconds=0,
                 gc_young_threshold=young_threshold)
    )  # fmt: skip
    async with app.router.lifespan_context(app):
        pass


async def test_a_started_server_freezes_what_is_alive_and_collects_less_often(tmp_path: Path, python_gc: None) -> None:
    await started(tmp_path, 12_345)
    assert gc.get_threshold() == (12_345, 10, 10)
    frozen = gc.get_freeze_count()
    assert frozen > 10_000  # the modules, schema and app, out of every collection
    await started(tmp_path, 20_000)  # a second app in the same process freezes nothing more (an app is ~4,000 objects)
    assert gc.get_freeze_count() <= frozen + 1_000 and gc.get_threshold() == (20_000, 10, 10)


async def test_zero_keeps_pythons_gc_as_it_is(tmp_path: Path, python_gc: None) -> None:
    await started(tmp_path, 0)
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0
