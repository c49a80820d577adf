"""The GraphQL enums: the counted values of db/counters.py, under the same names."""

from __future__ import annotations

import strawberry

from db.counters import InvoiceStatus, LoadStatus, LoadType

strawberry.enum(LoadStatus)
strawberry.enum(LoadType)
strawberry.enum(InvoiceStatus)

__all__ = ["InvoiceStatus", "LoadStatus", "LoadType"]
