"""The direct path for single-row mutations (edge/direct_operations.py): the same answers as GraphQL's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace as Row
from typing import Any

import httpx
import pytest
import strawberry
from graphql import GraphQLID, GraphQLInt, GraphQLString, get_argument_values
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from strawberry.extensions import FieldExtension
from strawberry.types.arguments import convert_arguments

from api import root as api_root
from api.permissions import Authenticated
from api.root import DIRECT
from edge import direct_operations
from edge.direct_operations import DirectOperations, Selected
from edge.renderers import renderer
from edge.view import TallyGraphQL
from settings import Settings
from tests.helpers import Api, assert_exact, create_invoice, create_load, served_in_process, stored, token

LOAD_FIELDS = ["id", "orgId", "status", "loadType", "requiresManualReview", "externalId", "loadNumber", "hcr",
               "tripNumber", "createdAt", "updatedAt", "__typename"]  # fmt: skip
INVOICE_FIELDS = ["id", "orgId", "status", "missingDataReason", "voidReason", "createdAt", "updatedAt", "__typename"]
SET_LOAD = "mutation Set($id: ID!, $s: LoadStatus!) { updateLoadStatus(id: $id, status: $s) { id status } }"


async def serve(database_url: str, *, direct: bool) -> AsyncIterator[tuple[Api, TallyGraphQL]]:
    """The app on `database_url` with the direct path on or off (whatever the environment says);
    no count cache, no per-response statement counts."""
    settings = Settings(
        database_url=database_url,
        recalc_interval_seconds=0,
        query_stats=False,
        count_cache_entries=0,
        direct_operations=direct,
    )
    async with served_in_process(settings) as (api, app):
        yield api, app.state.graphql


@pytest.fixture
async def direct(database_url: str) -> AsyncIterator[tuple[Api, TallyGraphQL]]:
    async for served in serve(database_url, direct=True):
        yield served


@pytest.fixture
async def ordinary(database_url: str) -> AsyncIterator[tuple[Api, TallyGraphQL]]:
    """The same database, served with the direct path off."""
    async for served in serve(database_url, direct=False):
        yield served


def operations_of(view: TallyGraphQL) -> DirectOperations:
    assert view.direct_operations is not None
    return view.direct_operations


async def post(api: Api, query: str, accept: str | None = None, **variables: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api.bearer}", **({"Accept": accept} if accept else {})}
    return await api.client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)


async def test_a_document_is_served_directly_once_graphql_answered_it_without_error(
    direct: tuple[Api, TallyGraphQL], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, view = direct
    load = await create_load(api)
    await api.error(SET_LOAD, id=load["id"], s="PAID")  # does not coerce: the ordinary path answers, learns nothing
    await api.error(SET_LOAD, id="999999", s="ASSIGNED")  # an error: not learned either
    assert not operations_of(view).known
    await api.ok(SET_LOAD, id=load["id"], s="ASSIGNED")
    assert SET_LOAD in operations_of(view).known

    async def no_executor(*_args: Any) -> Any:
        raise AssertionError("the executor ran")

    monkeypatch.setattr(view, "run", no_executor)
    assert (await api.ok(SET_LOAD, id=load["id"], s="OPEN"))["updateLoadStatus"]["status"] == "OPEN"
    # as gql, Apollo and urql send it: the operation's name, maybe empty extensions
    body = {
        "query": SET_LOAD,
        "operationName": "Set",
        "variables": {"id": load["id"], "s": "ASSIGNED"},
        "extensions": {},
    }
    headers = {"Authorization": f"Bearer {api.bearer}"}
    answer = (await api.client.post("/graphql", json=body, headers=headers)).json()
    assert answer == {"data": {"updateLoadStatus": {"id": load["id"], "status": "ASSIGNED"}}}
    assert len(operations_of(view).known) == 1  # the same document, whatever else the request carries


def selections(fields: list[str]) -> st.SearchStrategy[str]:
    """A selection of leaf fields, some aliased (never two fields under one key), some repeated."""
    field = st.tuples(st.sampled_from(fields), st.sampled_from(["", "a", "b"]))
    return st.lists(field, min_size=1, max_size=6).map(
        lambda chosen: " ".join(f"{alias}_{name.strip('_')}: {name}" if alias else name for name, alias in chosen)
    )


@pytest.mark.slow
@hypothesis_settings(
    max_examples=20,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(load_selection=selections(LOAD_FIELDS), invoice_selection=selections(INVOICE_FIELDS), alias=st.booleans())
async def test_a_direct_answer_equals_what_graphql_renders_for_the_row(
    direct: tuple[Api, TallyGraphQL], load_selection: str, invoice_selection: str, alias: bool
) -> None:
    """Each mutation's result, served directly, is what a query of the same row renders after it
    (the first round, which teaches the direct path the documents, is GraphQL's own)."""
    api, view = direct
    root = "changed: " if alias else ""

    def of(field: str, arguments: str, selection: str, variables: str = "$id: ID!") -> str:
        kind = "mutation" if field[0] in "cu" else "query"
        return f"{kind}({variables}) {{ {root}{field}({arguments}) {{ {selection} }} }}"

    create = of("createLoad", 'input: {orgId: $o, loadNumber: "L1"}', f"{load_selection} _id: id", "$o: ID!")
    set_load = of("updateLoadStatus", "id: $id, status: ASSIGNED", load_selection)
    set_invoice = of("updateInvoiceStatus", "id: $id, status: $s", invoice_selection, "$id: ID!, $s: InvoiceStatus!")

    async def same_as_read(response: httpx.Response, field: str, selection: str, row_id: str) -> None:
        read = await post(api, of(field, "id: $id", selection), id=row_id)
        assert response.status_code == read.status_code == 200
        assert response.headers["content-type"] == read.headers["content-type"]
        if not alias:
            answer = response.json()["data"]
            assert len(answer) == 1
            read_text = read.text.replace(f'"{field}":', f'"{next(iter(answer))}":', 1)
        assert response.text == (read.text if alias else read_text)

    for _ in range(2):
        created = await post(api, create, o="org_a")
        load_id = next(iter(created.json()["data"].values()))["_id"]
        await same_as_read(created, "load", f"{load_selection} _id: id", load_id)
        invoice = await create_invoice(api, load_id, status="DRAFT")
        await same_as_read(await post(api, set_load, id=load_id), "load", load_selection, load_id)
        billed = await post(api, set_invoice, id=invoice["id"], s="BILLED")
        await same_as_read(billed, "invoice", invoice_selection, invoice["id"])
    assert {create, set_load, set_invoice} <= operations_of(view).known.keys()
    await assert_exact(view.db, "org_a")


async def test_an_answer_is_written_as_graphql_writes_it_whatever_the_accept(
    direct: tuple[Api, TallyGraphQL], ordinary: tuple[Api, TallyGraphQL]
) -> None:
    """A served answer's status, headers and bytes are the ordinary path's, in either media type."""
    api, view = direct
    await create_load(api)
    query = 'query { organizationStats(orgId: "org_a") { version loads { open total } } }'
    for accept in (None, "application/json", "application/graphql-response+json", "*/*"):
        await post(api, query, accept)  # the first answer is GraphQL's own
        assert query in operations_of(view).known
        direct_answer, graphql_answer = await post(api, query, accept), await post(ordinary[0], query, accept)
        assert direct_answer.status_code == graphql_answer.status_code == 200
        assert (direct_answer.text, direct_answer.headers) == (graphql_answer.text, graphql_answer.headers)


async def test_a_refused_mutation_is_answered_as_graphql_answers_it(
    direct: tuple[Api, TallyGraphQL], ordinary: tuple[Api, TallyGraphQL]
) -> None:
    """Same bytes and status, both media types, whichever path refuses; nothing changes."""
    api, view = direct
    load = await create_load(api)
    await api.ok(SET_LOAD, id=load["id"], s="ASSIGNED")  # now known
    await api.ok(SET_LOAD, id=load["id"], s="COMPLETED")  # served directly; a COMPLETED load moves no more
    refusals = [
        (token("org_a", "admin"), {"id": "999999", "s": "OPEN"}),  # NOT_FOUND
        (token("org_a", "admin"), {"id": load["id"], "s": "OPEN"}),  # INVALID_TRANSITION
        (token("org_a", "member"), {"id": load["id"], "s": "CANCELED"}),
        (token("org_b", "admin"), {"id": load["id"], "s": "OPEN"}),  # another org's load: NOT_FOUND
        (token("org_a", "admin", ttl=-5), {"id": load["id"], "s": "OPEN"}),  # UNAUTHENTICATED
        (None, {"id": load["id"], "s": "OPEN"}),
        (token("org_a", "admin"), {"id": load["id"], "s": "NOT_A_STATUS"}),  # does not coerce
        (token("org_a", "admin"), {"id": True, "s": "OPEN"}),
    ]
    before = await stored(view.db, "org_a")
    for bearer, variables in refusals:
        for accept in (None, "application/graphql-response+json"):
            answers = []
            for client in (api, ordinary[0]):
                answers.append(await post(client.as_(bearer), SET_LOAD, accept, **variables))
            direct_answer, graphql_answer = answers
            assert (direct_answer.status_code, direct_answer.text) == (graphql_answer.status_code, graphql_answer.text)
            assert direct_answer.headers["content-type"] == graphql_answer.headers["content-type"]
    assert await stored(view.db, "org_a") == before


async def test_direct_operations_are_counted_in_the_metrics(direct: tuple[Api, TallyGraphQL]) -> None:
    api, _view = direct
    load = await create_load(api)
    for status in ("ASSIGNED", "OPEN", "ASSIGNED"):
        await api.ok(SET_LOAD, id=load["id"], s=status)
    await api.error(SET_LOAD, id="424242", s="OPEN")
    scraped = (await api.client.get("/metrics")).text
    assert 'tally_graphql_requests_total{field="updateLoadStatus",outcome="ok",type="mutation"} 3.0' in scraped
    assert 'tally_graphql_requests_total{field="updateLoadStatus",outcome="NOT_FOUND",type="mutation"} 1.0' in scraped


def counts(group: list[str]) -> st.SearchStrategy[str]:
    return selections([*group, "total", "__typename"]).map(lambda chosen: f"{{ {chosen} }}")


STATS_SELECTION = st.lists(
    st.one_of(
        selections(["orgId", "version", "updatedAt", "lastRecalculatedAt", "__typename"]),
        counts(["open", "assigned", "completed", "canceled"]).map(lambda c: f"loads {c}"),
        counts(["contract", "spot", "unmapped"]).map(lambda c: f"b_types: loadTypes {c}"),
        counts(["missingData", "draft", "billed", "pendingPayment", "paid", "void"]).map(lambda c: f"invoices {c}"),
    ),
    min_size=1,
    max_size=4,
).map(" ".join)


@pytest.mark.slow
@hypothesis_settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(selection=STATS_SELECTION, field=st.sampled_from(["organizationStats", "a: organizationStats"]))
async def test_a_count_query_served_directly_equals_graphqls_answer(
    direct: tuple[Api, TallyGraphQL], ordinary: tuple[Api, TallyGraphQL], selection: str, field: str
) -> None:
    api, view = direct
    query = f"query Stats($o: ID!) {{ {field}(orgId: $o) {{ {selection} }} }}"
    await create_load(api)
    for _ in range(2):  # the first answer teaches the direct path the document
        served = await post(api, query, o="org_a")
        assert served.json().get("data"), served.text
        expected = await post(ordinary[0], query, o="org_a")
        assert (served.status_code, served.text) == (expected.status_code, expected.text)
    assert query in operations_of(view).known
    for refused in ("org_b", "nobody"):  # another org's counts: FORBIDDEN, as GraphQL words it
        served, expected = [await post(client, query, o=refused) for client in (api, ordinary[0])]
        assert served.text == expected.text and "FORBIDDEN" in served.text


async def test_count_fields_by_name_are_served_directly(
    direct: tuple[Api, TallyGraphQL], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, view = direct
    await create_load(api)
    queries = [
        'query { countLoadsByStatus(orgId: "org_a") { open total } }',
        'query { countInvoicesByStatus(orgId: "org_a") { __typename draft } }',
        'query { organizationStats(orgId: "org_a") { version loads { open } } }',
    ]
    first = [await api.ok(query) for query in queries]

    async def no_executor(*_args: Any) -> Any:
        raise AssertionError("the executor ran")

    monkeypatch.setattr(view, "run", no_executor)
    assert [await api.ok(query) for query in queries] == first
    assert first[0] == {"countLoadsByStatus": {"open": 1, "total": 1}}


@strawberry.type
class Answer:
    value: int


async def answer(info: strawberry.Info) -> Answer:
    return Answer(value=1)


class Passing(FieldExtension):
    async def resolve_async(self, next_: Any, source: Any, info: Any, **kwargs: Any) -> Any:
        return await next_(source, info, **kwargs)


@strawberry.type
class Fields:
    open: Answer = strawberry.field(resolver=answer, metadata=DIRECT)
    guarded: Answer = strawberry.field(resolver=answer, metadata=DIRECT, permission_classes=[Authenticated])
    extended: Answer = strawberry.field(
        resolver=answer, metadata=DIRECT, permission_classes=[Authenticated], extensions=[Passing()]
    )


async def test_a_field_with_more_than_permissions_around_its_resolver_is_never_served_directly() -> None:
    """The direct path runs the permission classes and the resolver, nothing else: a DIRECT field
    without permission classes, or with another extension, keeps the executor."""
    operations = DirectOperations(strawberry.Schema(query=Fields))
    assert operations.plan_of("{ guarded { value } }", None) is not None
    assert operations.plan_of("{ open { value } }", None) is None
    assert operations.plan_of("{ extended { value } }", None) is None


async def test_known_documents_are_bounded(direct: tuple[Api, TallyGraphQL], monkeypatch: pytest.MonkeyPatch) -> None:
    api, view = direct
    monkeypatch.setattr(direct_operations, "KNOWN_DOCUMENTS", 2)
    load = await create_load(api)
    documents = [
        f'query {{ countLoadsByStatus(orgId: "org_a") {{ {field} }} }}' for field in ("open", "total", "canceled")
    ]
    for document in documents:
        await api.ok(document)
    assert list(operations_of(view).known) == documents[1:]
    del load


BUCKETS = selections(["current", "days31to60", "days61to90", "over90", "total", "__typename"])
AGING_SELECTION = st.lists(
    st.one_of(
        selections(["orgId", "asOf", "__typename"]),
        BUCKETS.map(lambda b: f"buckets {{ {b} }}"),
        st.tuples(selections(["invoices", "__typename"]), selections(["id", "name", "__typename"]), BUCKETS).map(
            lambda parts: f"customers {{ {parts[0]} customer {{ {parts[1]} }} z_buckets: buckets {{ {parts[2]} }} }}"
        ),
    ),
    min_size=1,
    max_size=3,
).map(" ".join)
MOVE = "mutation($id: ID!, $d: Date) { updateInvoiceStatus(id: $id, status: BILLED, invoiceDate: $d) { id } }"


async def owing(api: Api) -> None:
    """Once per database: invoices billed in 2026 to a named customer and to none."""
    if (await api.ok('query { organizationStats(orgId: "org_a") { money { invoiced } } }'))["organizationStats"][
        "money"
    ]["invoiced"] != "0.00":
        return
    acme = (await api.ok('mutation { createCustomer(orgId: "org_a", name: "Acme") { id } }'))["createCustomer"]["id"]
    for customer, day, amount in ((acme, "2026-03-20", "10.50"), (acme, "2026-01-05", "7"), (None, "2026-02-01", "3")):
        load = await create_load(api, **({"customerId": customer} if customer else {}))
        invoice = await create_invoice(api, load["id"])
        await api.ok(
            "mutation($id: ID!, $a: Money!) { setInvoiceAmount(id: $id, amount: $a) { id } }",
            id=invoice["id"],
            a=amount,
        )
        await api.ok(MOVE, id=invoice["id"], d=day)


REVENUE_SELECTION = selections(["month", "invoicedCount", "invoiced", "paidCount", "collected", "__typename"])


@pytest.mark.slow
@hypothesis_settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(aging=AGING_SELECTION, revenue=REVENUE_SELECTION, alias=st.booleans())
async def test_money_reads_served_directly_equal_graphqls_answer(
    direct: tuple[Api, TallyGraphQL], ordinary: tuple[Api, TallyGraphQL], aging: str, revenue: str, alias: bool
) -> None:
    """Receivables aging (a customer with a name, invoices with none: a null customer) and revenue
    by month, served directly, are GraphQL's answers byte for byte."""
    api, view = direct
    root = "a: " if alias else ""
    queries = [
        f'query($o: ID!) {{ {root}receivablesAging(orgId: $o, asOf: "2026-03-31", first: 5) {{ {aging} }} }}',
        f'query($o: ID!) {{ {root}revenueByMonth(orgId: $o, from: "2026-01", to: "2026-04") {{ {revenue} }} }}',
    ]
    await owing(api)
    for _ in range(2):  # the first answer teaches the direct path each document
        for query in queries:
            served = await post(api, query, o="org_a")
            assert served.json().get("data"), served.text
            expected = await post(ordinary[0], query, o="org_a")
            assert (served.status_code, served.text) == (expected.status_code, expected.text)
    assert set(queries) <= operations_of(view).known.keys()


def test_a_rendered_value_is_what_its_type_serializes_and_null_only_where_allowed() -> None:
    """The generated renderer (edge/renderers.py) keeps values of the exact type as they are, gives any
    other to the type's serializer, and refuses null where the type does: as the executor would."""
    item = (Selected("n", "n", GraphQLInt.serialize),)
    fields = (
        Selected("count", "count", GraphQLInt.serialize),
        Selected("id", "id", GraphQLID.serialize),
        Selected("label", "label", GraphQLString.serialize, nullable=True),
        Selected("kind", None, lambda _parent: "Thing"),
        Selected("previous", "from", GraphQLString.serialize),  # not an identifier Python allows: read by getattr
        Selected("child", "child", dict, nullable=True, fields=item),
        Selected("items", "items", dict, fields=item, many=True),
        Selected("tags", "tags", GraphQLString.serialize, many=True),
    )
    render = renderer(fields)

    def row(**changes: Any) -> Any:
        values = {"count": 3, "id": 7, "label": None, "from": "x", "child": None, "items": [Row(n=True)], "tags": ["a"]}
        return Row(**{**values, **changes})

    assert render(row()) == {
        "count": 3, "id": "7", "label": None, "kind": "Thing", "previous": "x", "child": None,
        "items": [{"n": 1}], "tags": ["a"],
    }  # fmt: skip
    rendered = render(row(count=2.0, label=5, child=Row(n=-(2**31))))
    assert (rendered["count"], rendered["label"], rendered["child"]) == (2, "5", {"n": -(2**31)})
    assert type(rendered["count"]) is int and type(render(row())["items"][0]["n"]) is int  # 2.0 and True: as Int
    for bad, message in [
        (row(count=None), "Cannot return null for non-nullable field count"),
        (row(items=[Row(n=1), None]), "Cannot return null for a non-null item of items"),
        (row(tags=None), "Cannot return null for non-nullable field tags"),
        (row(count=2**31), "Int cannot represent non 32-bit signed integer value"),
        (row(items=[Row(n="1.5")]), "Int cannot represent non-integer value"),
    ]:
        with pytest.raises(Exception, match=message):
            render(bad)


@pytest.mark.parametrize(
    ("document", "plain"),
    [
        ('query { receivablesAging(orgId: "org_a", asOf: "2026-03-31", first: 5) { orgId } }', True),
        ('query { receivablesAging(orgId: "org_a") { orgId } }', True),
        ('query { revenueByMonth(orgId: "org_a", from: "2026-01", to: "2026-02") { month } }', True),
        ('mutation { updateLoadStatus(id: "1", status: ASSIGNED) { id } }', True),
        ('mutation { recordPayment(invoiceId: "1", amount: "1.50") { id } }', True),
        ('mutation { createLoad(input: {orgId: "org_a", loadNumber: "L1"}) { id } }', True),
        ('mutation { createLoad(input: {orgId: "o", status: ASSIGNED, loadType: SPOT, hcr: null}) { id } }', True),
    ],
)
def test_plain_arguments_reach_the_resolver_as_strawberrys_conversion_hands_them_on(document: str, plain: bool) -> None:
    """Scalar and enum arguments skip Strawberry's conversion (it would change nothing), and an input
    object is built by its own `from_input`, as the conversion would."""
    schema = api_root.schema
    operations = DirectOperations(schema)
    plan = operations._plan(document, None)
    assert plan is not None
    arguments = get_argument_values(plan.definition, plan.node, {})
    converted = convert_arguments(
        arguments, plan.field.arguments, scalar_registry=schema.schema_converter.scalar_registry, config=schema.config
    )
    assert (plan.argument_builders is not None) == plain
    assert operations.resolver_arguments(plan, arguments) == converted


async def test_a_renderer_is_written_only_for_a_document_that_runs_directly(direct: tuple[Api, TallyGraphQL]) -> None:
    """Planning a document (any request's) writes no code: only a document GraphQL answered without
    an error (so an authenticated caller's, within the limits) gets its renderer, when it first runs."""
    api, view = direct
    query = 'query { organizationStats(orgId: "org_a") { version } }'
    stranger = await api.client.post("/graphql", json={"query": query}, headers={"Authorization": "Bearer nonsense"})
    assert stranger.json()["errors"]
    plan = operations_of(view).plan_of(query, None)
    assert plan is not None and "render" not in vars(plan)
    for _ in range(2):  # answered through GraphQL, then directly
        assert (await post(api, query)).json()["data"]["organizationStats"]["version"] >= 0
    assert "render" in vars(operations_of(view).plan_of(query, None))
