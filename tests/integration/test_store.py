"""The transaction log's Postgres itself: what the SQL relies on from the database.

The log's contract (CAS guards, leases, fencing, the timeline) is tested on Postgres and on
the in-memory twin alike in tests/txlog/test_contract.py.
"""

from __future__ import annotations

import asyncio

from coordinator.txlog.postgres import PostgresLog
from coordinator.txlog.queries import statement


async def test_claim_due__uses_the_partial_index_with_many_finished_rows(
    store: PostgresLog,
) -> None:
    async with store.connection() as conn:
        await conn.execute(
            "INSERT INTO tcc_transactions (gid, status, request_hash, timeout_s, deadline)"
            " SELECT 'f' || i, 'confirmed', 'h', 60, now() FROM generate_series(1, 20000) i"
        )
        await conn.execute("ANALYZE tcc_transactions")
        sql, *args = statement("claim_due", owner="o", limit=100, lease_ttl_s=30.0)
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))
    assert "tcc_transactions_due" in plan, plan
    assert "Seq Scan on tcc_transactions" not in plan, plan


async def test_a_batch_with_one_value_postgres_refuses__fails_only_that_begin(
    store: PostgresLog,
) -> None:
    from coordinator.core.errors import InvalidInput
    from coordinator.core.records import NewTransaction

    def new(gid: str) -> NewTransaction:
        return NewTransaction(gid, "svc", {}, 30, None, f"h-{gid}")

    # The gid CHECK refuses "not a gid!"; the API never lets it through, the log holds anyway.
    results = await asyncio.gather(
        *(store.begin(new(g)) for g in ("ok1", "not a gid!", "ok2")), return_exceptions=True
    )
    assert isinstance(results[1], InvalidInput)
    assert [r[1] for r in (results[0], results[2]) if isinstance(r, tuple)] == [True, True]
    assert (await store.get("ok2")).gid == "ok2"
