"""Sagas and messages in the log's contract, on both logs (see conftest): a transaction's kind
is kept and filtered on; a saga changes course under its lease; a prepared message is asked
about again later; a message may be submitted past its deadline; the kind CHECK."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from coordinator.core.errors import InvalidInput, NotFound
from coordinator.core.records import CallRecord, Lease, ListFilter, NewTransaction
from coordinator.core.states import (
    BranchStatus,
    Decision,
    EventKind,
    GlobalStatus,
    Refusal,
    TransactionKind,
    Verdict,
)
from coordinator.core.writes import course_change, phase_call, postpone_query
from coordinator.txlog.interface import TransactionLog
from tests.txlog.conftest import LogTime
from tests.txlog.test_contract import OK, new_branch, new_txn

SAGA = TransactionKind.SAGA
MSG = TransactionKind.MSG
DOWN = CallRecord(503, "HTTP 503: down", 2.0)
TTL = 300.0  # leases outlive any jump below unless a test lets one lapse on purpose


def of_kind(
    gid: str, kind: TransactionKind, timeout_s: float = 60.0, steps: str = "ab"
) -> NewTransaction:
    """A saga's or message's steps, as the APIs log them: no try, the action (delivery) as
    the confirm URL."""
    branches = [new_branch(s, with_try=False) for s in steps]
    return dataclasses.replace(new_txn(gid, timeout_s, branches=branches), kind=kind)


async def running_saga(store: TransactionLog, gid: str = "s", timeout_s: float = 60.0) -> Lease:
    """A saga running its actions (decided under the saga's guard); the decider's lease."""
    await store.begin(of_kind(gid, SAGA, timeout_s))
    decided = await store.decide(
        gid, Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=TTL, kind=SAGA
    )
    assert decided.lease is not None
    assert decided.transaction.status is GlobalStatus.CONFIRMING
    return decided.lease


async def overdue_message(store: TransactionLog, log_time: LogTime, gid: str = "m") -> Lease:
    """A prepared message past its deadline, claimed by recovery (owner "a") to be asked about."""
    await store.begin(of_kind(gid, MSG, timeout_s=5))
    await log_time.jump(5)
    [claim] = await store.claim_due("a", 10, TTL)
    assert claim.lease.gid == gid
    assert claim.status is GlobalStatus.TRYING
    return claim.lease


# --- the kind is kept -------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(TransactionKind))
async def test_begin__a_transaction_of_each_kind__keeps_and_returns_its_kind(
    store: TransactionLog, kind: TransactionKind
) -> None:
    detail, created = await store.begin(of_kind("g", kind))
    assert created
    assert detail.transaction.kind is kind
    assert (await store.get("g")).kind is kind
    assert (await store.detail("g")).transaction.kind is kind
    [listed] = await store.list(ListFilter())
    assert listed.kind is kind
    # An identical repeat answers the same transaction, kind and all.
    again, created = await store.begin(of_kind("g", kind))
    assert not created
    assert again.transaction.kind is kind


async def test_begin__without_a_kind__is_tcc(store: TransactionLog) -> None:
    detail, _ = await store.begin(new_txn("g"))
    assert detail.transaction.kind is TransactionKind.TCC


async def test_list__filters_by_kind(store: TransactionLog) -> None:
    for gid, kind in [("t1", TransactionKind.TCC), ("s1", SAGA), ("m1", MSG), ("s2", SAGA)]:
        await store.begin(of_kind(gid, kind))
    sagas = await store.list(ListFilter(kind=SAGA))
    assert sorted(t.gid for t in sagas) == ["s1", "s2"]
    assert [t.gid for t in await store.list(ListFilter(kind=MSG))] == ["m1"]
    assert [t.gid for t in await store.list(ListFilter(kind=TransactionKind.TCC))] == ["t1"]
    assert len(await store.list(ListFilter())) == 4
    # With the other filters.
    await store.decide("s2", Decision.CANCEL, reason="client", owner="a", lease_ttl_s=TTL)
    cancelling = ListFilter(kind=SAGA, statuses=(GlobalStatus.CANCELLING,))
    assert [t.gid for t in await store.list(cancelling)] == ["s2"]
    assert await store.list(ListFilter(kind=MSG, statuses=(GlobalStatus.CANCELLING,))) == []


@pytest.mark.parametrize("kind", ["xyz", "", "SAGA", "tcc "])
async def test_kind_check__a_kind_nobody_knows__is_refused_and_nothing_is_kept(
    store: TransactionLog, kind: str
) -> None:
    new = dataclasses.replace(of_kind("g", SAGA), kind=kind)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="tcc_transactions_kind_check"):
        await store.begin(new)
    with pytest.raises(NotFound):
        await store.get("g")
    assert await store.list(ListFilter()) == []


# --- change_course ----------------------------------------------------------------------


async def test_change_course__moves_a_running_saga_to_compensating_under_the_same_lease(
    store: TransactionLog, log_time: LogTime
) -> None:
    lease = await running_saga(store)
    assert await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "a", True, OK, SAGA))
    # A first round that left b to retry, and the round after it, claimed by recovery.
    ended = await store.finish_round(
        lease, Decision.CONFIRM, GlobalStatus.CONFIRMING, 1.0, ["b"], "a"
    )
    assert ended is not None
    assert ended.phase_attempts == 1
    await log_time.jump(1)
    [claim] = await store.claim_due("a", 10, TTL)
    lease = claim.lease

    changed = await store.change_course(lease, course_change("action_failed: b", owner="a"))

    assert changed is not None
    assert changed.status is GlobalStatus.CANCELLING
    assert changed.cancel_reason == "action_failed: b"
    assert changed.phase_attempts == 0  # the compensations' rounds are counted afresh
    assert changed.lease_owner == "a"  # the lease is kept: the round goes on compensating
    detail = await store.detail("s")
    entry = detail.events[-1]
    assert entry.kind is EventKind.COURSE_CHANGED
    assert entry.detail == {"reason": "action_failed: b", "by": "a"}
    assert entry.branch_id is None

    # Still the holder: a compensation is recorded, and it undoes a step already done.
    undo = phase_call(Decision.CANCEL, "a", True, OK, SAGA)
    assert await store.record_phase_call(lease, undo)
    assert await store.record_phase_call(lease, phase_call(Decision.CANCEL, "b", True, OK, SAGA))
    branches = {b.branch_id: b.status for b in (await store.detail("s")).branches}
    assert branches == {"a": BranchStatus.CANCELLED, "b": BranchStatus.CANCELLED}
    done = await store.finish_round(lease, Decision.CANCEL, GlobalStatus.CANCELLED, 0.0, [], "a")
    assert done is not None
    assert done.status is GlobalStatus.CANCELLED
    assert done.cancel_reason == "action_failed: b"


async def test_change_course__gives_the_compensations_a_fresh_budget(
    store: TransactionLog, log_time: LogTime
) -> None:
    lease = await running_saga(store)
    await log_time.jump(50)
    ctx = await store.round_context(lease, 60)
    assert ctx is not None
    assert not ctx.budget_spent
    assert await store.change_course(lease, course_change("timeout", owner="a")) is not None
    await log_time.jump(20)  # 70 s since the decision, 20 s since the course changed
    ctx = await store.round_context(lease, 60)
    assert ctx is not None
    assert ctx.transaction.status is GlobalStatus.CANCELLING
    assert not ctx.budget_spent
    await log_time.jump(40)
    ctx = await store.round_context(lease, 60)
    assert ctx is not None
    assert ctx.budget_spent


async def test_change_course__with_a_lost_lease__is_refused_and_writes_nothing(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.begin(of_kind("s", SAGA))
    decided = await store.decide(
        "s", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=5, kind=SAGA
    )
    assert decided.lease is not None
    await log_time.jump(5)  # the lease lapses and another coordinator takes it
    [claim] = await store.claim_due("b", 10, TTL)
    assert claim.took_over
    before = await store.detail("s")

    assert await store.change_course(decided.lease, course_change("x", owner="a")) is None

    after = await store.detail("s")
    assert after == before
    assert after.transaction.status is GlobalStatus.CONFIRMING
    # The new holder may still change course.
    changed = await store.change_course(claim.lease, course_change("y", owner="b"))
    assert changed is not None
    assert changed.cancel_reason == "y"


async def test_change_course__after_the_lease_was_released__is_refused(
    store: TransactionLog,
) -> None:
    lease = await running_saga(store)
    await store.release_lease(lease)
    assert await store.change_course(lease, course_change("x", owner="a")) is None
    assert (await store.get("s")).status is GlobalStatus.CONFIRMING


async def test_change_course__of_a_saga_already_compensating__is_refused(
    store: TransactionLog,
) -> None:
    await store.begin(of_kind("s", SAGA))
    decided = await store.decide("s", Decision.CANCEL, reason="client", owner="a", lease_ttl_s=TTL)
    assert decided.lease is not None
    before = await store.detail("s")
    assert await store.change_course(decided.lease, course_change("x", owner="a")) is None
    after = await store.detail("s")
    assert after == before
    assert after.transaction.cancel_reason == "client"


async def test_change_course__of_a_saga_not_yet_running__is_refused(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.begin(of_kind("s", SAGA, timeout_s=5))
    await log_time.jump(5)
    [claim] = await store.claim_due("a", 10, TTL)  # past its deadline, still trying
    assert claim.status is GlobalStatus.TRYING
    assert await store.change_course(claim.lease, course_change("x", owner="a")) is None
    txn = await store.get("s")
    assert (txn.status, txn.cancel_reason) == (GlobalStatus.TRYING, None)


async def test_change_course__of_a_finished_saga__is_refused(store: TransactionLog) -> None:
    lease = await running_saga(store)
    for step in "ab":
        await store.record_phase_call(lease, phase_call(Decision.CONFIRM, step, True, OK, SAGA))
    await store.finish_round(lease, Decision.CONFIRM, GlobalStatus.CONFIRMED, 0.0, [], "a")
    assert await store.change_course(lease, course_change("x", owner="a")) is None
    assert (await store.get("s")).status is GlobalStatus.CONFIRMED


# --- a saga's steps ----------------------------------------------------------------------


async def test_record_phase_call__a_failed_action__fails_the_step_once(
    store: TransactionLog,
) -> None:
    lease = await running_saga(store)
    failed = phase_call(Decision.CONFIRM, "a", False, CallRecord(409, "no", 1.0), SAGA, failed=True)
    assert await store.record_phase_call(lease, failed)
    [a, b] = (await store.detail("s")).branches
    assert (a.status, a.attempts, a.last_http_status) == (BranchStatus.TRY_FAILED, 1, 409)
    assert b.status is BranchStatus.REGISTERED
    # A second FAILURE (a retried call answering late) changes nothing but is logged.
    assert await store.record_phase_call(lease, failed)
    detail = await store.detail("s")
    assert detail.branches[0].attempts == 1
    calls = [e for e in detail.events if e.kind is EventKind.ACTION_CALL]
    assert [(e.branch_id, e.http_status, e.repeats) for e in calls] == [
        ("a", 409, 1),
        ("a", 409, 1),
    ]


async def test_record_phase_call__a_tcc_cancel__does_not_undo_a_confirmed_branch(
    store: TransactionLog,
) -> None:
    # The same log, a TCC rule: a confirmed branch stays confirmed.
    await store.begin(new_txn("t", branches=[new_branch("a", with_try=False)]))
    decided = await store.decide("t", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=TTL)
    assert decided.lease is not None
    assert await store.record_phase_call(decided.lease, phase_call(Decision.CONFIRM, "a", True, OK))
    assert await store.record_phase_call(decided.lease, phase_call(Decision.CANCEL, "a", True, OK))
    assert (await store.detail("t")).branches[0].status is BranchStatus.CONFIRMED


# --- postpone -----------------------------------------------------------------------------


async def test_postpone__asks_again_later_by_the_logs_clock_and_lets_the_lease_go(
    store: TransactionLog, log_time: LogTime
) -> None:
    lease = await overdue_message(store, log_time)

    txn = await store.postpone(lease, postpone_query("retry", 600.0, owner="a"), DOWN)

    assert txn is not None
    assert txn.status is GlobalStatus.TRYING
    assert txn.phase_attempts == 1
    assert (txn.lease_owner, txn.lease_expires_at) == (None, None)
    assert txn.next_attempt_at is not None
    assert txn.next_attempt_at - txn.updated_at == timedelta(seconds=600)
    assert txn.next_attempt_at > txn.deadline
    entry = (await store.detail("m")).events[-1]
    assert entry.kind is EventKind.QUERY_PREPARED
    assert entry.detail == {"answer": "retry", "by": "a"}
    assert (entry.http_status, entry.error, entry.repeats) == (503, "HTTP 503: down", 1)
    # The lease is gone: its holder can do nothing more under it.
    assert not await store.renew_lease(lease, TTL)
    assert await store.postpone(lease, postpone_query("retry", 1.0, owner="a")) is None
    assert await store.round_context(lease, 60) is None
    # Not due again until then.
    assert await store.claim_due("a", 10, TTL) == []
    await log_time.jump(600)
    [again] = await store.claim_due("a", 10, TTL)
    assert (again.lease.gid, again.status, again.took_over) == ("m", GlobalStatus.TRYING, False)


async def test_postpone__identical_answers_collapse_into_repeats_and_each_is_counted(
    store: TransactionLog, log_time: LogTime
) -> None:
    lease = await overdue_message(store, log_time)
    for attempt in (1, 2, 3):
        answer = "ongoing" if attempt == 3 else "retry"
        txn = await store.postpone(lease, postpone_query(answer, 10.0, owner="a"), DOWN)
        assert txn is not None
        assert txn.phase_attempts == attempt
        await log_time.jump(10)
        [claim] = await store.claim_due("a", 10, TTL)
        lease = claim.lease
    detail = await store.detail("m")
    asked = [e for e in detail.events if e.kind is EventKind.QUERY_PREPARED]
    assert [(e.detail["answer"], e.repeats) for e in asked] == [("retry", 2), ("ongoing", 1)]
    assert asked[0].last_at is not None


async def test_postpone__without_a_reply__notes_the_answer_alone(
    store: TransactionLog, log_time: LogTime
) -> None:
    lease = await overdue_message(store, log_time)
    assert await store.postpone(lease, postpone_query("failure", 1.0, owner="a")) is not None
    entry = (await store.detail("m")).events[-1]
    assert (entry.kind, entry.http_status, entry.error) == (EventKind.QUERY_PREPARED, None, None)


async def test_postpone__with_a_lost_lease__is_refused_and_writes_nothing(
    store: TransactionLog, log_time: LogTime
) -> None:
    lease = await overdue_message(store, log_time)
    await log_time.jump(TTL)
    [claim] = await store.claim_due("b", 10, TTL)
    assert claim.took_over
    before = await store.detail("m")
    assert await store.postpone(lease, postpone_query("retry", 1.0, owner="a"), DOWN) is None
    assert await store.detail("m") == before


async def test_postpone__of_a_message_submitted_meanwhile__is_refused(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.begin(of_kind("m", MSG))
    decided = await store.decide(
        "m", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=TTL, kind=MSG
    )
    assert decided.lease is not None
    before = await store.detail("m")
    assert await store.postpone(decided.lease, postpone_query("retry", 1.0, owner="a")) is None
    after = await store.detail("m")
    assert after == before
    assert after.transaction.phase_attempts == 0


# --- a message's deadline ------------------------------------------------------------------


async def test_decide__a_message_past_its_deadline__may_still_be_submitted(
    store: TransactionLog, log_time: LogTime
) -> None:
    lease = await overdue_message(store, log_time)
    await store.postpone(lease, postpone_query("retry", 600.0, owner="a"), DOWN)

    decided = await store.decide(
        "m", Decision.CONFIRM, reason=None, owner="b", lease_ttl_s=TTL, kind=MSG
    )

    assert decided.judgement.verdict is Verdict.DECIDE
    assert decided.lease is not None
    txn = decided.transaction
    assert (txn.status, txn.phase_attempts, txn.lease_owner) == (
        GlobalStatus.CONFIRMING,
        0,  # the questions' count is not the deliveries'
        "b",
    )
    assert txn.next_attempt_at is not None
    assert txn.next_attempt_at <= txn.updated_at  # due at once, not in 600 s


async def test_decide__a_message_past_its_deadline__may_be_aborted(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.begin(of_kind("m", MSG, timeout_s=5))
    await log_time.jump(6)
    decided = await store.decide(
        "m", Decision.CANCEL, reason="query_refused: no", owner="a", lease_ttl_s=TTL, kind=MSG
    )
    assert decided.lease is not None
    assert decided.transaction.cancel_reason == "query_refused: no"


async def test_decide__a_tcc_transaction_past_its_deadline__may_not_be_confirmed(
    store: TransactionLog, log_time: LogTime
) -> None:
    kind = TransactionKind.TCC
    await store.begin(of_kind("g", kind, timeout_s=5))
    await log_time.jump(6)
    refused = await store.decide(
        "g", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=TTL, kind=kind
    )
    assert refused.judgement.verdict is Verdict.REFUSE
    assert refused.judgement.refusal is Refusal.DEADLINE_PASSED
    assert refused.lease is None
    assert (await store.get("g")).status is GlobalStatus.TRYING


async def test_decide__a_saga_past_its_deadline__goes_forward(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.begin(of_kind("s", SAGA, timeout_s=5))
    await log_time.jump(6)
    decided = await store.decide(
        "s", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=TTL, kind=SAGA
    )
    assert decided.judgement.verdict is Verdict.DECIDE
    assert decided.lease is not None
    assert (await store.get("s")).status is GlobalStatus.CONFIRMING


async def test_decide__a_message_in_time__is_submitted_under_its_guard(
    store: TransactionLog,
) -> None:
    await store.begin(of_kind("m", MSG))
    decided = await store.decide(
        "m", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=TTL, kind=MSG
    )
    assert decided.judgement.verdict is Verdict.DECIDE
    again = await store.decide(
        "m", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=TTL, kind=MSG
    )
    assert again.judgement.verdict is Verdict.ALREADY
    assert again.lease is None
    # Submitted: it can no longer be aborted.
    aborted = await store.decide(
        "m", Decision.CANCEL, reason="client", owner="a", lease_ttl_s=TTL, kind=MSG
    )
    assert aborted.judgement.refusal is Refusal.DECIDED_OTHERWISE
