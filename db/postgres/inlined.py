"""PostgreSQL statements with their values written into the SQL text, so that several go to the
server in one round trip.

asyncpg sends a statement with parameters through the extended protocol: one statement, one
round trip, ~50 µs of this process's CPU each. The simple protocol takes several statements in
one message, but no parameters. A status change ends with its update (the counter upsert a CTE
of it), up to four money upserts and COMMIT (db/row_writes.py); sent as one message they cost
one round trip instead of up to six, and run in the order written, so concurrent writers still
lock rows in one order (no deadlock).

Only values whose text is unambiguous are written in: None, bool, int, date, a datetime with
its time zone (timestamptz, microseconds and offset included) and str (as an escape-string
literal, E'...', its backslashes doubled and its quotes doubled, which reads the same whatever
standard_conforming_strings or backslash_quote say); anything else, a naive datetime included
(the server would read it in its session's time zone), is refused. A date is written as asyncpg
binds it: Python's first and last dates as '-infinity' and 'infinity'.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from db.prepared import Prepared

_PLACEHOLDER = re.compile(r"\$(\d+)")
# asyncpg binds Python's first and last dates as PostgreSQL's infinities: written in, they must be too,
# or one date would be two keys of an aggregate's rows (the one bound, the one written in).
_ENDS = {date.min: "DATE '-infinity'", date.max: "DATE 'infinity'"}


def literal(value: Any) -> str:
    """`value` as a PostgreSQL literal."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if value >= 0 else f"({value})"  # "- -1" would start a comment
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("PostgreSQL text cannot hold NUL")
        # Quotes doubled, not backslashed: with backslash_quote=off the server refuses \'.
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise TypeError("no literal for a datetime without a time zone")
        return f"TIMESTAMPTZ '{value.isoformat()}'"
    if isinstance(value, date):
        return _ENDS.get(value) or f"DATE '{value.isoformat()}'"
    raise TypeError(f"no literal for a {type(value).__name__}")


class Inlined:
    """A prepared PostgreSQL statement whose SQL text is written with its values in."""

    def __init__(self, prepared: Prepared) -> None:
        if prepared.dialect.name != "postgresql":
            raise ValueError("only PostgreSQL statements are inlined")
        parts = _PLACEHOLDER.split(prepared.sql)  # text, $n, text, $n, ..., text
        self._texts = parts[0::2]
        self._slots = [int(n) - 1 for n in parts[1::2]]
        self._prepared = prepared

    def sql(self, parameters: Mapping[str, Any]) -> str:
        values = self._prepared.values(parameters)
        out = [self._texts[0]]
        for slot, text in zip(self._slots, self._texts[1:], strict=True):
            out.append(literal(values[slot]))
            out.append(text)
        return "".join(out)
