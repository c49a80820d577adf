"""Money and Date (contract-money.graphql).

`Money` reaches a resolver as the client's string: the resolver turns it into cents
(`db.money.parse_cents`), so a bad amount is refused with BAD_USER_INPUT naming
its field (`amount must be ...`). Responses carry two fraction digits. `Date` is an
ISO calendar date, parsed here (a bad one is refused like any bad variable).
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any, NewType

import strawberry
from graphql import GraphQLError
from strawberry.types.scalar import ScalarDefinition

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _money_input(value: Any) -> str:
    if not isinstance(value, str):
        raise GraphQLError('Money is a decimal string, e.g. "1250.50"')
    return value


def _date_input(value: Any) -> date:
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise GraphQLError(f'Date is an ISO calendar date, e.g. "2026-03-14" (got {str(value)[:40]!r})')


Money = NewType("Money", str)
Date = NewType("Date", date)
# Handed to the schema (StrawberryConfig.scalar_map): type checkers see plain NewTypes.
SCALARS: dict[object, ScalarDefinition] = {
    Money: strawberry.scalar(
        name="Money",
        description='A decimal amount as a string, two fraction digits in responses: "1250.50".',
        serialize=str,
        parse_value=_money_input,
    ),
    Date: strawberry.scalar(
        name="Date",
        description='An ISO calendar date: "2026-03-14".',
        serialize=date.isoformat,
        parse_value=_date_input,
    ),
}
