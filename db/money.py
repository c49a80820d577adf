"""Money values (money.md): decimal strings in the API, integer cents everywhere else.

No float ever holds an amount: a string is parsed digit by digit, a lane's Float
rate is converted through its shortest decimal representation and rounded half
to even to cents, and every sum is integer arithmetic.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal

from db.errors import BadInput

MAX_CENTS = 999_999_999_999  # 9,999,999,999.99: one amount or payment
_MONEY = re.compile(r"([0-9]{1,10})(?:\.([0-9]{1,2}))?")  # ASCII digits only


def parse_cents(value: str, field: str) -> int:
    """`value` ("1250", "1250.5", "1250.50") as cents; BAD_USER_INPUT naming `field` if it is not
    a plain decimal with at most two fraction digits between 0.00 and 9,999,999,999.99."""
    match = _MONEY.fullmatch(value)
    if match is None:
        raise BadInput(
            f"{field} must be a decimal amount with at most two fraction digits, "
            f"from 0.00 to 9999999999.99 (got {value[:40]!r})"
        )
    whole, fraction = match.group(1), (match.group(2) or "").ljust(2, "0")
    cents = int(whole) * 100 + int(fraction)
    if cents > MAX_CENTS:
        raise BadInput(f"{field} must be at most 9999999999.99")
    return cents


_FRACTIONS = tuple(f".{k:02d}" for k in range(100))  # ".00" to ".99": an aging answer formats ~100 amounts


def format_cents(cents: int) -> str:
    """Cents as a decimal string with two fraction digits: 125050 -> "1250.50" (sums may be negative in drift)."""
    if cents >= 0:
        return f"{cents // 100}{_FRACTIONS[cents % 100]}"
    return f"-{format_cents(-cents)}"


def rate_cents(rate: float | None) -> int | None:
    """A lane's Float rate as cents, rounded half to even (1250.125 -> 125012)."""
    if rate is None:
        return None
    return int((Decimal(repr(rate)) * 100).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def month_of(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"
