"""The transaction log's guards, straight against Postgres: CAS, leases, fencing."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from coordinator.core.errors import Conflict, NotFound
from coordinator.core.records import CallRecord, ListFilter, NewBranch, NewTransaction
from coordinator.core.states import Decision, EventKind, GlobalStatus, TryVerdict, Verdict
from coordinator.txlog.postgres import PostgresLog
from coordinator.txlog.queries import q


def new_txn(gid: str, timeout_s: float = 60.0) -> NewTransaction:
    return NewTransaction(
        gid=gid,
        service="svc",
        metadata={},
        timeout_s=timeout_s,
        call_timeout_s=None,
        request_hash=f"hash-{gid}",
    )


def new_branch(branch_id: str, with_try: bool = True) -> NewBranch:
    return NewBranch(
        branch_id=branch_id,
        name=branch_id,
        try_url="http://127.0.0.1:9/try" if with_try else None,
        confirm_url="http://127.0.0.1:9/confirm",
        cancel_url="http://127.0.0.1:9/cancel",
        payload={"n": 1},
        request_hash=f"hash-{branch_id}",
    )


OK = CallRecord(200, None, 1.0)
FAIL = CallRecord(500, "HTTP 500", 1.0)


async def test_decide__many_concurrent_deciders__exactly_one_wins(store: PostgresLog) -> None:
    await store.begin(new_txn("g"))
    await store.register_branch("g", new_branch("b", with_try=False), 10)
    results = await asyncio.gather(
        *(
            store.decide(
                "g",
                Decision.CONFIRM if i % 2 else Decision.CANCEL,
                reason=None if i % 2 else "client",
                owner=f"o{i}",
                lease_ttl_s=30,
            )
            for i in range(40)
        )
    )
    winners = [r for r in results if r.judgement.verdict is Verdict.DECIDE]
    assert len(winners) == 1
    assert sum(r.lease is not None for r in results) == 1
    decided = winners[0].transaction.status
    for r in results:
        if r.judgement.verdict is Verdict.REFUSE:
            assert r.judgement.reason
    detail = await store.detail("g")
    assert detail.transaction.status is decided
    assert [e.kind for e in detail.events].count(EventKind.DECISION) == 1


async def test_finish_round__with_a_stale_lease__writes_nothing(store: PostgresLog) -> None:
    await store.begin(new_txn("g"))
    await store.register_branch("g", new_branch("b", with_try=False), 10)
    first = await store.decide("g", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=30)
    assert first.lease is not None
    # Another coordinator takes over (here: the lease is simply replaced).
    await store.release_lease(first.lease)
    async with store.connection() as conn:
        await conn.execute("UPDATE tcc_transactions SET next_attempt_at = now() WHERE gid = 'g'")
    [(second, status)] = await store.claim_due("b", 10, 30)
    assert status is GlobalStatus.CONFIRMING

    assert not await store.record_phase_call(first.lease, "b", Decision.CONFIRM, True, OK)
    assert (
        await store.finish_round(
            first.lease, Decision.CONFIRM, GlobalStatus.CONFIRMED, 1.0, [], "o"
        )
        is None
    )
    assert not await store.renew_lease(first.lease, 30)
    detail = await store.detail("g")
    assert detail.transaction.status is GlobalStatus.CONFIRMING
    assert detail.branches[0].status.value == "registered"

    assert await store.record_phase_call(second, "b", Decision.CONFIRM, True, OK)
    done = await store.finish_round(second, Decision.CONFIRM, GlobalStatus.CONFIRMED, 1.0, [], "o")
    assert done is not None
    assert done.status is GlobalStatus.CONFIRMED


async def test_claim_due__concurrent_scanners__never_claim_the_same_transaction(
    store: PostgresLog,
) -> None:
    for i in range(30):
        await store.begin(new_txn(f"g{i}", timeout_s=0.01))
    await asyncio.sleep(0.05)
    claims = await asyncio.gather(*(store.claim_due(f"owner{i}", 10, 30) for i in range(6)))
    gids = [lease.gid for claim in claims for lease, _ in claim]
    assert len(gids) == len(set(gids)) == 30
    # Nothing is due while the leases are held.
    assert await store.claim_due("late", 100, 30) == []


async def test_claim_due__an_expired_lease__is_taken_over(store: PostgresLog) -> None:
    await store.begin(new_txn("g", timeout_s=0.01))
    await asyncio.sleep(0.05)
    [(lease, _)] = await store.claim_due("dead", 10, 0.2)
    assert await store.claim_due("alive", 10, 30) == []
    await asyncio.sleep(0.3)
    [(taken, _)] = await store.claim_due("alive", 10, 30)
    assert taken.token != lease.token


async def test_record_try__late_answer_after_cancel__changes_nothing(store: PostgresLog) -> None:
    await store.begin(new_txn("g"))
    await store.register_branch("g", new_branch("b"), 10)
    decided = await store.decide("g", Decision.CANCEL, reason="timeout", owner="a", lease_ttl_s=30)
    assert decided.lease is not None
    assert await store.record_phase_call(decided.lease, "b", Decision.CANCEL, True, OK)
    branch, recorded = await store.record_try("g", "b", TryVerdict.TRIED, OK)
    assert not recorded
    assert branch.status.value == "cancelled"  # what the log holds, for the late caller
    detail = await store.detail("g")
    assert detail.branches[0].status.value == "cancelled"
    assert detail.events[-1].detail == {"verdict": "tried", "late": True}


async def test_register_branch__conflicts(store: PostgresLog) -> None:
    with pytest.raises(NotFound):
        await store.register_branch("nope", new_branch("b"), 10)
    await store.begin(new_txn("g"))
    await store.register_branch("g", new_branch("b"), 10)
    _, created = await store.register_branch("g", new_branch("b"), 10)
    assert not created
    other = dataclasses.replace(new_branch("b"), request_hash="different")
    with pytest.raises(Conflict, match="other values"):
        await store.register_branch("g", other, 10)


async def test_list__pages_newest_first_with_a_cursor(store: PostgresLog) -> None:
    for i in range(7):
        await store.begin(new_txn(f"g{i}"))
    seen: list[str] = []
    after = None
    for _ in range(10):  # bounded: 7 rows in pages of 3
        page = await store.list(ListFilter(after=after, limit=3))
        if not page:
            break
        seen += [t.gid for t in page]
        after = (page[-1].created_at, page[-1].gid)
    assert seen == [f"g{i}" for i in reversed(range(7))]
    cancelled = await store.list(ListFilter(statuses=(GlobalStatus.CANCELLED,)))
    assert cancelled == []


async def test_claim_due__uses_the_partial_index_with_many_finished_rows(
    store: PostgresLog,
) -> None:
    async with store.connection() as conn:
        await conn.execute(
            "INSERT INTO tcc_transactions (gid, status, request_hash, timeout_s, deadline)"
            " SELECT 'f' || i, 'confirmed', 'h', 60, now() FROM generate_series(1, 20000) i"
        )
        await conn.execute("ANALYZE tcc_transactions")
        plan = "\n".join(
            r[0] for r in await conn.fetch("EXPLAIN " + q("claim_due"), "o", 100, 30.0)
        )
    assert "tcc_transactions_due" in plan, plan
    assert "Seq Scan on tcc_transactions" not in plan, plan
