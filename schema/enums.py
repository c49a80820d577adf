from __future__ import annotations

from enum import Enum

import strawberry


@strawberry.enum
class LoadStatus(Enum):
    OPEN = "OPEN"
    ASSIGNED = "ASSIGNED"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"


@strawberry.enum
class LoadType(Enum):
    CONTRACT = "CONTRACT"
    SPOT = "SPOT"
    UNMAPPED = "UNMAPPED"


@strawberry.enum
class InvoiceStatus(Enum):
    MISSING_DATA = "MISSING_DATA"
    DRAFT = "DRAFT"
    BILLED = "BILLED"
    PENDING_PAYMENT = "PENDING_PAYMENT"
    PAID = "PAID"
    VOID = "VOID"
