"""Imports run one way: main -> edge -> api -> resolvers -> schema -> db.

Each package may import itself and the packages below it, never one above.
`web/` (pages and their assets) imports none of Tally's packages: `main.py` hands it
what it needs. `resolvers/` and `schema/` speak GraphQL and call `db/`; SQL and
SQLAlchemy stay in `db/`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["edge", "api", "resolvers", "schema", "db"]  # highest first
OURS = {*LAYERS, "web", "main", "settings", "tests", "bench"}
NO_SQLALCHEMY = {"resolvers", "schema"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def package_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def allowed_below(package: str) -> set[str]:
    if package == "web":
        return set()
    return set(LAYERS[LAYERS.index(package) :])


@pytest.mark.parametrize("package", [*LAYERS, "web"])
def test_a_package_imports_only_itself_and_the_layers_below(package: str) -> None:
    wrong = []
    for path in package_files(package):
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top in OURS and top not in allowed_below(package):
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
            if package in NO_SQLALCHEMY and top == "sqlalchemy":
                wrong.append(f"{path.relative_to(ROOT)} imports {module} (SQL belongs in db/)")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_wrong_import(tmp_path: Path) -> None:
    upward = tmp_path / "upward.py"
    upward.write_text("from edge.view import TallyGraphQL\nimport sqlalchemy.orm\n")
    assert imported_modules(upward) == {"edge.view", "sqlalchemy.orm"}
    assert "edge" not in allowed_below("db") and "db" in allowed_below("edge")
