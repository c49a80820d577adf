from tests.helpers import Api, assert_exact

STATS = (
    "query($o: ID!) { organizationStats(orgId: $o) { version loads { open assigned total } invoices { draft total } } }"
)


async def test_create_load_and_invoice(api: Api, db) -> None:
    data = await api.ok('mutation { createLoad(input: {orgId: "org_a"}) { id status loadType } }')
    load_id = data["createLoad"]["id"]
    await api.ok("mutation($id: ID!) { createInvoice(input: {loadId: $id}) { id status } }", id=load_id)
    await api.ok(
        "mutation($id: ID!) { updateLoadStatus(id: $id, status: ASSIGNED) { id status invoice { status } customer { name } } }",
        id=load_id,
    )
    stats = await api.ok(STATS, o="org_a")
    assert stats["organizationStats"]["loads"] == {"open": 0, "assigned": 1, "total": 1}
    assert stats["organizationStats"]["version"] == 3
    await assert_exact(db, "org_a")
