"""The hot path's writes on both logs: auto mode's begin, tries-and-decision and done round,
group-committed under concurrency, and the decision's guard against a registration that
races it."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.core.errors import NotFound
from coordinator.core.records import CallRecord, TryRecord
from coordinator.core.states import (
    BranchStatus,
    Decision,
    EventKind,
    GlobalStatus,
    Refusal,
    TryVerdict,
    Verdict,
)
from coordinator.txlog.interface import TransactionLog
from tests.txlog.conftest import LogTime
from tests.txlog.test_contract import OK, new_branch, new_txn

OWNER = "me"


def tried(*branch_ids: str) -> list[TryRecord]:
    return [TryRecord(b, TryVerdict.TRIED, OK) for b in branch_ids]


async def test_begin__many_at_once__each_logged_whole_and_once(store: TransactionLog) -> None:
    news = [new_txn(f"g{i}", branches=[new_branch("a"), new_branch("b")]) for i in range(25)]
    results = await asyncio.gather(*(store.begin(new) for new in news), store.begin(news[0]))
    created = [created for _, created in results]
    assert created.count(True) == 25  # the repeat of g0 is not a second creation
    for (detail, _), new in zip(results, news, strict=False):
        assert detail.transaction.gid == new.gid
        assert [b.branch_id for b in detail.branches] == ["a", "b"]
        assert [e.kind for e in detail.events] == [
            EventKind.BEGIN,
            EventKind.BRANCH_REGISTERED,
            EventKind.BRANCH_REGISTERED,
        ]
        assert detail == await store.detail(new.gid)


async def test_decide_after_tries__all_tried__confirms_in_one_write(store: TransactionLog) -> None:
    await store.begin(new_txn("g", branches=[new_branch("a"), new_branch("b")]))
    result, written = await store.decide_after_tries(
        "g", tried("a", "b"), owner=OWNER, lease_ttl_s=30
    )
    assert result.judgement.verdict is Verdict.DECIDE
    assert result.lease is not None
    assert written is not None
    assert written.transaction.status is GlobalStatus.CONFIRMING
    assert [b.status for b in written.branches] == [BranchStatus.TRIED, BranchStatus.TRIED]
    assert [e.kind for e in written.events] == [
        EventKind.TRY_RESULT,
        EventKind.TRY_RESULT,
        EventKind.DECISION,
    ]
    detail = await store.detail("g")
    assert detail.events[-3:] == written.events
    assert detail.branches == written.branches


async def test_decide_after_tries__a_refused_try__cancels_naming_it(store: TransactionLog) -> None:
    await store.begin(new_txn("g", branches=[new_branch("a"), new_branch("b")]))
    tries = [
        TryRecord("a", TryVerdict.TRIED, OK),
        TryRecord("b", TryVerdict.REFUSED, CallRecord(409, "no", 1.0)),
    ]
    _, written = await store.decide_after_tries("g", tries, owner=OWNER, lease_ttl_s=30)
    assert written is not None
    assert (written.transaction.status, written.transaction.cancel_reason) == (
        GlobalStatus.CANCELLING,
        "try_failed: b",
    )
    assert [b.status for b in written.branches] == [BranchStatus.TRIED, BranchStatus.TRY_FAILED]
    assert written.events[-1].detail == {
        "decision": "cancel",
        "reason": "try_failed: b",
        "by": OWNER,
    }


async def test_decide_after_tries__past_the_deadline__cancels_for_timeout(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.begin(new_txn("g", timeout_s=5, branches=[new_branch("a")]))
    await log_time.jump(10)
    _, written = await store.decide_after_tries("g", tried("a"), owner=OWNER, lease_ttl_s=30)
    assert written is not None
    assert written.transaction.cancel_reason == "timeout"


async def test_decide_after_tries__another_branch_waiting_for_its_try__decides_nothing(
    store: TransactionLog,
) -> None:
    await store.begin(new_txn("g", branches=[new_branch("a")]))
    await store.register_branch("g", new_branch("late"), 10)
    result, written = await store.decide_after_tries("g", tried("a"), owner=OWNER, lease_ttl_s=30)
    assert written is None
    assert result.lease is None
    assert result.judgement.refusal is Refusal.TRY_PENDING
    detail = await store.detail("g")
    assert detail.transaction.status is GlobalStatus.TRYING
    assert detail.branches[0].status is BranchStatus.TRIED  # the answer is logged all the same


async def test_decide_after_tries__no_longer_trying__decides_nothing(store: TransactionLog) -> None:
    await store.begin(new_txn("g", branches=[new_branch("a")]))
    await store.decide("g", Decision.CANCEL, reason="client", owner=OWNER, lease_ttl_s=30)
    result, written = await store.decide_after_tries("g", tried("a"), owner=OWNER, lease_ttl_s=30)
    assert written is None
    assert result.judgement.refusal is Refusal.NOT_TRYING
    assert result.transaction.status is GlobalStatus.CANCELLING
    with pytest.raises(NotFound):
        await store.decide_after_tries("nope", tried("a"), owner=OWNER, lease_ttl_s=30)


async def test_finish_done_round__ends_the_phase_in_one_write__and_fences(
    store: TransactionLog,
) -> None:
    await store.begin(new_txn("g", branches=[new_branch("a"), new_branch("b")]))
    result, _ = await store.decide_after_tries("g", tried("a", "b"), owner=OWNER, lease_ttl_s=30)
    assert result.lease is not None
    calls = [("a", OK), ("b", OK)]
    written = await store.finish_done_round(result.lease, Decision.CONFIRM, calls, OWNER)
    assert written is not None
    assert written.transaction.status is GlobalStatus.CONFIRMED
    assert written.transaction.finished_at is not None
    assert [b.status for b in written.branches] == [BranchStatus.CONFIRMED] * 2
    assert [e.kind for e in written.events] == [
        EventKind.CONFIRM_CALL,
        EventKind.CONFIRM_CALL,
        EventKind.CONFIRMED,
    ]
    detail = await store.detail("g")
    assert detail.transaction == written.transaction
    # The lease went with the round: a second finish under it writes nothing.
    assert await store.finish_done_round(result.lease, Decision.CONFIRM, calls, OWNER) is None
    assert (await store.detail("g")).events == detail.events


async def test_many_auto_transactions_at_once__each_decided_and_finished_alone(
    store: TransactionLog,
) -> None:
    gids = [f"g{i}" for i in range(20)]
    await asyncio.gather(*(store.begin(new_txn(g, branches=[new_branch("a")])) for g in gids))
    decided = await asyncio.gather(
        *(store.decide_after_tries(g, tried("a"), owner=OWNER, lease_ttl_s=30) for g in gids)
    )
    leases = [result.lease for result, _ in decided]
    assert all(lease is not None for lease in leases)
    finished = await asyncio.gather(
        *(
            store.finish_done_round(lease, Decision.CONFIRM, [("a", OK)], OWNER)
            for lease in leases
            if lease is not None
        )
    )
    assert [w.transaction.gid for w in finished if w is not None] == gids
    for gid in gids:
        assert (await store.get(gid)).status is GlobalStatus.CONFIRMED


async def test_a_registration_racing_a_confirm__is_never_confirmed_untried(
    store: TransactionLog,
) -> None:
    """Whichever comes first, a branch whose try has not answered is never confirmed."""
    for round_no in range(15):
        gid = f"race{round_no}"
        await store.begin(new_txn(gid, branches=[new_branch("a", with_try=False)]))

        async def register(gid: str = gid) -> None:
            try:
                await store.register_branch(gid, new_branch("late"), 10)
            except Exception:  # refused once the decision was taken: fine
                return

        _, decided = await asyncio.gather(
            register(),
            store.decide(gid, Decision.CONFIRM, reason=None, owner=OWNER, lease_ttl_s=30),
        )
        detail = await store.detail(gid)
        if detail.transaction.status is GlobalStatus.CONFIRMING:
            assert [b.branch_id for b in detail.branches] == ["a"], detail.branches
        else:
            assert decided.judgement.refusal is Refusal.TRY_PENDING
