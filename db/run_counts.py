"""Recalculation runs finished in this process, per Database: what /metrics reports."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from db.unit_of_work import Database


@dataclass
class RunCounts:
    succeeded: int = 0
    failed: int = 0
    corrections: int = 0

    def finished(self, corrections: int, *, failed: bool) -> None:
        """A run ended; `corrections` are those it committed (a failed run keeps its earlier ones)."""
        if failed:
            self.failed += 1
        else:
            self.succeeded += 1
        self.corrections += corrections


# Keyed by Database, not global: tests serve several apps from one process.
_counts: weakref.WeakKeyDictionary[Database, RunCounts] = weakref.WeakKeyDictionary()


def run_counts(db: Database) -> RunCounts:
    return _counts.setdefault(db, RunCounts())
