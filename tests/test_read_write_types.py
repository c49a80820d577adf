"""Read work and write work are different types: a writing function handed to
`Database.read` is refused by mypy, not rolled back in silence at run time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mypy import api

pytestmark = pytest.mark.slow  # mypy runs

ROOT = Path(__file__).resolve().parent.parent

HEADER = """
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import Organization
from db.queries import organizations
from db.unit_of_work import Database
from db.work import ReadSession


async def create(session: AsyncSession) -> None:
    session.add(Organization(org_id="org_x", name="x"))


async def count(session: ReadSession) -> int:
    return len(await organizations(session))
"""


def mypy_errors(tmp_path: Path, body: str) -> list[str]:
    os.chdir(ROOT)  # mypy finds Tally's packages from the working directory
    snippet = tmp_path / "snippet.py"
    snippet.write_text(HEADER + body)
    out, _, status = api.run(["--no-incremental", "--config-file", str(ROOT / "pyproject.toml"), str(snippet)])
    return [line for line in out.splitlines() if ": error:" in line] if status else []


def test_a_writing_function_given_to_read_is_a_type_error(tmp_path: Path) -> None:
    errors = mypy_errors(
        tmp_path,
        """
async def wrong(db: Database) -> None:
    await db.read(create)
    await db.read(lambda session: session.flush())
""",
    )
    assert len(errors) == 2, errors
    assert '"read" of "Database"' in errors[0] and "ReadSession" in errors[0]
    assert '"ReadSession" has no attribute "flush"' in errors[1]


def test_reads_and_writes_of_the_right_kind_type_check(tmp_path: Path) -> None:
    body = """
async def right(db: Database) -> int:
    await db.write(create)
    await db.write(count)  # a write may read
    return await db.read(count)
"""
    assert mypy_errors(tmp_path, body) == []
