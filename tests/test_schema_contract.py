"""schema.graphql is the exported schema, and it keeps every name and shape of the contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLObjectType,
    GraphQLSchema,
    build_schema,
    extend_schema,
    parse,
)

from api.root import build_schema as build_tally_schema
from schema.limits import Limits

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "docs" / "contract.graphql"
MONEY_CONTRACT = ROOT / "docs" / "contract-money.graphql"  # additions to CONTRACT (money.md)
DESIGN = ROOT.parent / "shared" / "design"
DESIGN_COPY = DESIGN / "contract.graphql"


def test_schema_graphql_is_the_exported_schema() -> None:
    exported = build_tally_schema(Limits()).as_str() + "\n"
    assert (ROOT / "schema.graphql").read_text() == exported, (
        "schema.graphql is stale: run `uv run python main.py schema > schema.graphql`"
    )


def test_the_contract_in_the_repository_is_the_design_s() -> None:
    if not DESIGN_COPY.exists():
        pytest.skip("no design folder beside this checkout to compare with")
    assert CONTRACT.read_text() == DESIGN_COPY.read_text(), f"copy {DESIGN_COPY} to {CONTRACT}"
    design_money = DESIGN / MONEY_CONTRACT.name
    assert MONEY_CONTRACT.read_text() == design_money.read_text(), f"copy {design_money} to {MONEY_CONTRACT}"


@pytest.fixture(scope="module")
def contract() -> GraphQLSchema:
    """contract.graphql with the money contract's additions (its `extend type`s) applied."""
    return extend_schema(build_schema(CONTRACT.read_text()), parse(MONEY_CONTRACT.read_text()))


@pytest.fixture(scope="module")
def ours() -> GraphQLSchema:
    return build_schema((ROOT / "schema.graphql").read_text())


def test_every_contract_type_field_and_argument_is_served(contract: GraphQLSchema, ours: GraphQLSchema) -> None:
    missing: list[str] = []
    for name, expected in contract.type_map.items():
        if name.startswith("__"):
            continue
        actual = ours.type_map.get(name)
        if actual is None or type(actual) is not type(expected):
            missing.append(f"type {name}")
            continue
        if isinstance(expected, GraphQLEnumType) and set(expected.values) - set(actual.values):
            missing.append(f"enum values of {name}")
        if isinstance(expected, GraphQLObjectType | GraphQLInputObjectType):
            for field_name, field in expected.fields.items():
                mine = actual.fields.get(field_name)
                if mine is None or str(mine.type) != str(field.type):
                    missing.append(f"{name}.{field_name}: {field.type}")
                    continue
                default = getattr(field, "default_value", None)
                if default is not None and getattr(mine, "default_value", None) != default:
                    missing.append(f"default of {name}.{field_name}")
                for arg_name, arg in getattr(field, "args", {}).items():
                    theirs = getattr(mine, "args", {}).get(arg_name)
                    if theirs is None or str(theirs.type) != str(arg.type):
                        missing.append(f"{name}.{field_name}({arg_name}: {arg.type})")
                    elif arg.default_value is not None and theirs.default_value != arg.default_value:
                        missing.append(f"default of {name}.{field_name}({arg_name})")
    assert not missing, "contract not served: " + "; ".join(missing)
