"""The GraphQL surface: every field of contract.graphql, its resolver and who may call it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import strawberry
from graphql.validation import ASTValidationRule
from strawberry.extensions import AddValidationRules, MaxTokensLimiter, ParserCache, ValidationCache
from strawberry.extensions.max_aliases import create_validator as alias_rule
from strawberry.extensions.query_depth_limiter import create_validator as depth_rule
from strawberry.permission import BasePermission
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from api.extensions import ErrorCodes, ObserveOperation, OperationOutcomes, QueryStats, to_client_error
from api.permissions import AdminOnly, Authenticated, ServiceOnly
from resolvers import imports, invoices, lanes, loads, money, organizations, recalculation, stats
from schema.context import OperationLoaders
from schema.limits import Limits
from schema.scalars import SCALARS
from schema.types import (
    BulkResult,
    Customer,
    DeleteResult,
    DriftReport,
    ImportResult,
    Invoice,
    InvoiceConnection,
    InvoiceStatusCounts,
    Lane,
    LaneBackfillResult,
    Load,
    LoadConnection,
    LoadStatusCounts,
    Organization,
    OrganizationStats,
    PromotionResult,
    RecalculationResult,
    RecalculationRun,
    ReceivablesAging,
    RevenueMonth,
)

member: list[type[BasePermission]] = [Authenticated]
admin: list[type[BasePermission]] = [AdminOnly]
service: list[type[BasePermission]] = [ServiceOnly]
ONE_STATEMENT = "Exactly one SQL statement."
# A field whose resolver is one read, or one transaction on one row: edge/direct_operations.py may run it
# without the executor.
DIRECT = {"direct": True}


@strawberry.type
class Query:
    organization_stats: OrganizationStats = strawberry.field(
        resolver=stats.organization_stats,
        permission_classes=member,
        metadata=DIRECT,
        description="The whole aggregate row: exactly one SQL statement.",
    )
    count_loads_by_status: LoadStatusCounts = strawberry.field(
        resolver=stats.count_loads_by_status, permission_classes=member, description=ONE_STATEMENT, metadata=DIRECT
    )
    count_invoices_by_status: InvoiceStatusCounts = strawberry.field(
        resolver=stats.count_invoices_by_status, permission_classes=member, description=ONE_STATEMENT, metadata=DIRECT
    )
    organizations: list[Organization] = strawberry.field(
        resolver=organizations.organizations, permission_classes=service
    )
    revenue_by_month: list[RevenueMonth] = strawberry.field(
        resolver=money.revenue_by_month,
        permission_classes=member,
        metadata=DIRECT,
        description="Every month from..to (YYYY-MM, at most 120), zeros where nothing was billed. " + ONE_STATEMENT,
    )
    receivables_aging: ReceivablesAging = strawberry.field(
        resolver=money.receivables_aging,
        permission_classes=member,
        metadata=DIRECT,
        description="Open balances by age on asOf (default: today, UTC). " + ONE_STATEMENT,
    )
    load: Load | None = strawberry.field(resolver=loads.load, permission_classes=member)
    loads: LoadConnection = strawberry.field(resolver=loads.loads_page, permission_classes=member)
    invoice: Invoice | None = strawberry.field(resolver=invoices.invoice, permission_classes=member)
    invoices: InvoiceConnection = strawberry.field(resolver=invoices.invoices_page, permission_classes=member)
    lanes: list[Lane] = strawberry.field(resolver=lanes.lanes_of, permission_classes=member)
    drift_report: DriftReport = strawberry.field(
        resolver=recalculation.drift_report,
        permission_classes=admin,
        description="Recounts from source rows and compares; changes nothing.",
    )
    recalculation_runs: list[RecalculationRun] = strawberry.field(
        resolver=recalculation.recalculation_runs,
        permission_classes=admin,
        description="The newest recalculation runs first (at most 100).",
    )


@strawberry.type
class Mutation:
    create_organization: Organization = strawberry.mutation(
        resolver=organizations.create_organization,
        permission_classes=admin,
        description="Idempotent: returns the existing organization when orgId is known.",
    )
    create_customer: Customer = strawberry.mutation(resolver=organizations.create_customer, permission_classes=member)
    create_load: Load = strawberry.mutation(resolver=loads.create_load, permission_classes=member, metadata=DIRECT)
    update_load_status: Load = strawberry.mutation(
        resolver=loads.update_load_status, permission_classes=member, metadata=DIRECT
    )
    delete_load: DeleteResult = strawberry.mutation(
        resolver=loads.delete_load, permission_classes=admin, description="Deletes the load and its invoice."
    )
    import_shipment: ImportResult = strawberry.mutation(resolver=imports.import_shipment, permission_classes=member)
    import_shipments: list[ImportResult] = strawberry.mutation(
        resolver=imports.import_shipments,
        permission_classes=member,
        description="One transaction; one stats change event for the whole batch.",
    )
    create_lane: LaneBackfillResult = strawberry.mutation(
        resolver=lanes.create_lane,
        permission_classes=member,
        description="Creates the lane and backfills matching UNMAPPED (and, for an exact lane, SPOT) loads.",
    )
    promote_spot_loads: PromotionResult = strawberry.mutation(
        resolver=lanes.promote_spot_loads,
        permission_classes=member,
        description="Promotes SPOT loads that now have an exact lane to CONTRACT (the periodic cleanup).",
    )
    create_invoice: Invoice = strawberry.mutation(resolver=invoices.create_invoice, permission_classes=member)
    update_invoice_status: Invoice = strawberry.mutation(
        resolver=invoices.update_invoice_status, permission_classes=member, metadata=DIRECT
    )
    bulk_update_invoice_status: BulkResult = strawberry.mutation(
        resolver=invoices.bulk_update_invoice_status, permission_classes=member
    )
    bulk_void_invoices: BulkResult = strawberry.mutation(
        resolver=invoices.bulk_void_invoices, permission_classes=member
    )
    delete_invoice: DeleteResult = strawberry.mutation(resolver=invoices.delete_invoice, permission_classes=admin)
    set_invoice_amount: Invoice = strawberry.mutation(
        resolver=money.set_invoice_amount,
        permission_classes=member,
        metadata=DIRECT,
        description="Only while MISSING_DATA or DRAFT.",
    )
    record_payment: Invoice = strawberry.mutation(
        resolver=money.record_payment,
        permission_classes=member,
        metadata=DIRECT,
        description="Only BILLED or PENDING_PAYMENT; never more than the balance. PAID when nothing is left.",
    )
    recalculate_org_stats: RecalculationResult = strawberry.mutation(
        resolver=recalculation.recalculate_org_stats, permission_classes=admin
    )
    recalculate_all_org_stats: list[RecalculationResult] = strawberry.mutation(
        resolver=recalculation.recalculate_all_org_stats, permission_classes=service
    )


@strawberry.type
class Subscription:
    organization_stats_changed: OrganizationStats = strawberry.subscription(  # type: ignore[assignment]
        resolver=stats.organization_stats_changed,
        permission_classes=member,
        description=(
            "Emits the current stats at once (unless sinceVersion equals the current version), "
            "then the full stats after every committed change of this org. Never emits a "
            "version lower than or equal to one it already emitted."
        ),
    )


class TallySchema(strawberry.Schema):
    def process_errors(self, errors: Any, execution_context: Any = None) -> None:
        """Errors are logged (once, with a request id) by `to_client_error`.

        They are also coded here, in place: a syntax error raised by ParserCache's
        on_parse escapes ErrorCodes.on_operation and would reach the client without
        a code. Coding twice is harmless (an already coded error is kept as it is).
        """
        errors[:] = [to_client_error(error) for error in errors]

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        """Queries and mutations. A subscription is served over WebSocket only: sent over
        HTTP it is refused (400), where it would run as a query and fail as INTERNAL."""
        allowed = set(allowed_operation_types or (OperationType.QUERY, OperationType.MUTATION))
        return await super().execute(
            query,
            variable_values,
            context_value,
            root_value,
            operation_name,
            allowed - {OperationType.SUBSCRIPTION},
            operation_extensions,
        )

    async def subscribe(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> Any:
        """Any operation over the legacy graphql-ws protocol, whose `start` message
        carries queries and mutations as well (gql's and Apollo's older clients send
        them there); Strawberry's handler would refuse them as INTERNAL."""
        return await self.stream(
            query,
            variable_values=variable_values,
            context_value=context_value,
            root_value=root_value,
            operation_name=operation_name,
            operation_extensions=operation_extensions,
        )


def build_schema(
    limits: Limits,
    *,
    query_stats: bool = False,
    execution_context_class: type[Any] | None = None,
    observe_operation: ObserveOperation | None = None,
) -> strawberry.Schema:
    """The schema; `execution_context_class` is where the edge plugs in its shared-event executor,
    `observe_operation` what hears of every operation's outcome (see OperationOutcomes)."""
    # The rule classes are made once: ValidationCache keys on them, so classes made
    # per request (as QueryDepthLimiter(...) would) would never hit the cache.
    rules: list[type[ASTValidationRule]] = [depth_rule(limits.query_depth, None, None), alias_rule(limits.aliases)]
    extensions: list[Any] = [
        ErrorCodes,
        OperationLoaders,
        lambda: MaxTokensLimiter(max_token_count=limits.query_tokens),
        lambda: ParserCache(maxsize=256),
        lambda: AddValidationRules(rules),
        lambda: ValidationCache(maxsize=256),
    ]
    if query_stats:
        extensions.append(QueryStats)
    if observe_operation is not None:
        # First: its on_operation exits last, after every error is coded.
        extensions.insert(0, lambda: OperationOutcomes(observe_operation))
    return TallySchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        config=StrawberryConfig(auto_camel_case=True, scalar_map=SCALARS),
        execution_context_class=execution_context_class,
    )


schema = build_schema(Limits())
