"""The transaction log's contract, on both logs: CAS guards, leases, fencing, the timeline,
paging and lists. Whatever holds for PostgresLog must hold for InMemoryLog (see conftest)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from datetime import timedelta

import pytest

from coordinator.core.errors import (
    Conflict,
    InvalidInput,
    LimitExceeded,
    NotFound,
    NotTrying,
    TakenGid,
)
from coordinator.core.records import (
    CallRecord,
    Lease,
    ListFilter,
    NewBranch,
    NewTransaction,
    OptionsUpdate,
)
from coordinator.core.states import (
    BranchStatus,
    Decision,
    EventKind,
    GlobalStatus,
    Phase,
    Refusal,
    TryVerdict,
    Verdict,
)
from coordinator.core.writes import phase_call
from coordinator.txlog.interface import TransactionLog
from tests.txlog.conftest import LogTime


def new_txn(
    gid: str,
    timeout_s: float = 60.0,
    *,
    service: str | None = "svc",
    branches: list[NewBranch] | None = None,
    options: dict[str, object] | None = None,
) -> NewTransaction:
    return NewTransaction(
        gid=gid,
        service=service,
        metadata={},
        timeout_s=timeout_s,
        call_timeout_s=None,
        request_hash=f"hash-{gid}",
        branches=branches or [],
        options=dict(options or {}),
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


async def confirming(
    store: TransactionLog, gid: str, branch_ids: tuple[str, ...] = ("b",)
) -> Lease:
    """A transaction decided for confirm (its branches run their tries themselves, so there
    is none to wait for); the decider's lease."""
    await store.begin(new_txn(gid, branches=[new_branch(b, with_try=False) for b in branch_ids]))
    decided = await store.decide(gid, Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=30)
    assert decided.lease is not None
    return decided.lease


async def parked(store: TransactionLog, gid: str, decision: Decision = Decision.CONFIRM) -> None:
    """A transaction whose phase two gave up: failed_to_confirm (or failed_to_cancel), with
    branch ``done`` finished and branch ``stuck`` not."""
    branches = [new_branch("done", with_try=False), new_branch("stuck", with_try=False)]
    await store.begin(new_txn(gid, branches=branches))
    reason = "client" if decision is Decision.CANCEL else None
    decided = await store.decide(gid, decision, reason=reason, owner="a", lease_ttl_s=30)
    assert decided.lease is not None
    assert await store.record_phase_call(decided.lease, phase_call(decision, "done", True, OK))
    assert await store.record_phase_call(decided.lease, phase_call(decision, "stuck", False, FAIL))
    parked_status = (
        GlobalStatus.FAILED_TO_CONFIRM
        if decision is Decision.CONFIRM
        else GlobalStatus.FAILED_TO_CANCEL
    )
    txn = await store.finish_round(decided.lease, decision, parked_status, 1.0, ["stuck"], "a")
    assert txn is not None
    assert txn.status is parked_status


# --- decisions -----------------------------------------------------------------------


async def test_decide__many_concurrent_deciders__exactly_one_wins(store: TransactionLog) -> None:
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


async def test_decide__the_decision__is_logged_with_a_lease_for_the_decider(
    store: TransactionLog,
) -> None:
    await store.begin(new_txn("g"))
    result = await store.decide("g", Decision.CANCEL, reason="client", owner="a", lease_ttl_s=30)
    assert result.lease is not None
    uuid.UUID(result.lease.token)  # a uuid, as text
    txn = result.transaction
    assert txn.status is GlobalStatus.CANCELLING
    assert txn.cancel_reason == "client"
    assert txn.decided_at is not None
    assert txn.next_attempt_at == txn.decided_at == txn.updated_at
    assert txn.lease_owner == "a"
    assert txn.lease_expires_at == txn.decided_at + timedelta(seconds=30)
    assert txn.phase_attempts == 0
    detail = await store.detail("g")
    assert detail.events[-1].kind is EventKind.DECISION
    assert detail.events[-1].detail == {"decision": "cancel", "reason": "client", "by": "a"}


async def test_decide__a_repeat_of_the_same_decision__is_already_taken_without_a_lease(
    store: TransactionLog,
) -> None:
    await confirming(store, "g")
    again = await store.decide("g", Decision.CONFIRM, reason=None, owner="b", lease_ttl_s=30)
    assert again.judgement.verdict is Verdict.ALREADY
    assert again.lease is None
    assert again.transaction.lease_owner == "a"
    cancel = await store.decide("g", Decision.CANCEL, reason="client", owner="b", lease_ttl_s=30)
    assert cancel.judgement.verdict is Verdict.REFUSE
    assert cancel.judgement.refusal is Refusal.DECIDED_OTHERWISE
    assert cancel.judgement.reason == "transaction is already confirming"


async def test_decide__confirm_of_a_cancelled_transaction__is_refused_with_its_reason(
    store: TransactionLog,
) -> None:
    await store.begin(new_txn("g"))
    await store.decide("g", Decision.CANCEL, reason="timeout", owner="a", lease_ttl_s=30)
    refused = await store.decide("g", Decision.CONFIRM, reason=None, owner="b", lease_ttl_s=30)
    assert refused.judgement.verdict is Verdict.REFUSE
    assert refused.judgement.refusal is Refusal.CANCELLED
    assert refused.judgement.reason == "transaction was cancelled (timeout)"


async def test_decide__confirm_with_a_try_pending_or_failed__is_refused(
    store: TransactionLog,
) -> None:
    await store.begin(new_txn("g", branches=[new_branch("b1"), new_branch("b2")]))
    pending = await store.decide("g", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=30)
    assert pending.judgement.refusal is Refusal.TRY_PENDING
    await store.record_try("g", "b1", TryVerdict.TRIED, OK)
    await store.record_try("g", "b2", TryVerdict.REFUSED, CallRecord(409, "HTTP 409", 1.0))
    failed = await store.decide("g", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=30)
    assert failed.judgement.refusal is Refusal.TRY_FAILED
    assert failed.judgement.reason == "try failed for branch 'b2'"
    assert (await store.get("g")).status is GlobalStatus.TRYING


async def test_decide__after_the_deadline__confirm_is_refused_and_cancel_taken(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.begin(new_txn("g", timeout_s=10))
    await log_time.jump(11)
    late = await store.decide("g", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=30)
    assert late.judgement.refusal is Refusal.DEADLINE_PASSED
    assert late.lease is None
    cancel = await store.decide("g", Decision.CANCEL, reason="timeout", owner="a", lease_ttl_s=30)
    assert cancel.judgement.verdict is Verdict.DECIDE


async def test_decide__an_unknown_gid__is_not_found(store: TransactionLog) -> None:
    with pytest.raises(NotFound, match="no transaction 'nope'"):
        await store.decide("nope", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=30)


async def test_decide__with_options__merges_them_when_the_decision_is_taken(
    store: TransactionLog,
) -> None:
    await store.begin(new_txn("g", options={"retry_interval": 5, "keep": "me"}))
    update = OptionsUpdate({"retry_interval": 9, "branch_headers": {"X-A": "1"}}, 3.0)
    result = await store.decide(
        "g", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=30, options=update
    )
    assert result.judgement.verdict is Verdict.DECIDE
    expected = {"retry_interval": 9, "keep": "me", "branch_headers": {"X-A": "1"}}
    assert result.transaction.options == expected
    assert result.transaction.call_timeout_s == 3.0
    assert (await store.get("g")).options == expected


async def test_decide__with_options_but_refused_or_repeated__leaves_the_options_alone(
    store: TransactionLog,
) -> None:
    await store.begin(new_txn("g", branches=[new_branch("b")], options={"retry_interval": 5}))
    update = OptionsUpdate({"retry_interval": 9}, 3.0)
    refused = await store.decide(
        "g", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=30, options=update
    )
    assert refused.judgement.refusal is Refusal.TRY_PENDING
    txn = await store.get("g")
    assert txn.options == {"retry_interval": 5}
    assert txn.call_timeout_s is None
    await store.record_try("g", "b", TryVerdict.TRIED, OK)
    # Without a call timeout, the one set at begin (none here) stays.
    taken = await store.decide(
        "g",
        Decision.CONFIRM,
        reason=None,
        owner="a",
        lease_ttl_s=30,
        options=OptionsUpdate({}, None),
    )
    assert taken.transaction.call_timeout_s is None
    repeated = await store.decide(
        "g", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=30, options=update
    )
    assert repeated.judgement.verdict is Verdict.ALREADY
    assert (await store.get("g")).options == {"retry_interval": 5}


# --- begin and branches ----------------------------------------------------------------


async def test_begin__a_new_transaction__is_trying_until_its_deadline(
    store: TransactionLog,
) -> None:
    begun, created = await store.begin(
        new_txn("g", timeout_s=30, branches=[new_branch("b1"), new_branch("b2")])
    )
    txn = begun.transaction
    assert created
    # The begin hands back what it wrote: exactly what a read finds after it.
    assert begun == await store.detail("g")
    assert txn.status is GlobalStatus.TRYING
    assert isinstance(txn.timeout_s, float)  # a double, though given as an int
    assert txn.created_at == txn.updated_at
    assert txn.deadline == txn.created_at + timedelta(seconds=30)
    assert txn.next_attempt_at == txn.deadline
    assert txn.lease_owner is None
    detail = await store.detail("g")
    assert [(b.branch_id, b.position, b.status) for b in detail.branches] == [
        ("b1", 0, BranchStatus.REGISTERED),
        ("b2", 1, BranchStatus.REGISTERED),
    ]
    assert [e.kind for e in detail.events] == [
        EventKind.BEGIN,
        EventKind.BRANCH_REGISTERED,
        EventKind.BRANCH_REGISTERED,
    ]
    assert detail.events[0].detail == {"timeout_s": 30, "service": "svc"}
    assert detail.events[1].detail == {"name": "b1", "coordinator_runs_try": True}


async def test_begin__an_identical_repeat__returns_the_original_and_logs_nothing(
    store: TransactionLog,
) -> None:
    first, _ = await store.begin(new_txn("g", branches=[new_branch("b")]))
    again, created = await store.begin(new_txn("g", branches=[new_branch("b")]))
    assert not created
    assert again.transaction == first.transaction
    assert again.branches == first.branches
    assert again.events == first.events
    assert len((await store.detail("g")).events) == 2


async def test_begin__a_gid_taken_by_another_request__is_refused(store: TransactionLog) -> None:
    await store.begin(new_txn("g"))
    with pytest.raises(TakenGid, match="gid 'g' cannot be used for a new transaction"):
        await store.begin(dataclasses.replace(new_txn("g"), request_hash="other"))


async def test_begin__a_value_json_cannot_hold__is_refused_and_nothing_is_logged(
    store: TransactionLog,
) -> None:
    with pytest.raises(InvalidInput, match="a value cannot be stored"):
        await store.begin(dataclasses.replace(new_txn("g"), metadata={"x": float("nan")}))
    with pytest.raises(NotFound):
        await store.get("g")


async def test_begin__values_passed_in_and_handed_out__are_copies(store: TransactionLog) -> None:
    metadata = {"order": {"id": 1}}
    branch = dataclasses.replace(new_branch("b"), payload={"items": [1, 2]})
    new = dataclasses.replace(new_txn("g", branches=[branch]), metadata=metadata)
    txn = (await store.begin(new))[0].transaction
    metadata["order"]["id"] = 2
    branch.payload["items"].append(3)
    txn.metadata["order"]["id"] = 3
    detail = await store.detail("g")
    detail.events[0].detail["service"] = "changed"
    assert (await store.get("g")).metadata == {"order": {"id": 1}}
    again = await store.detail("g")
    assert again.branches[0].payload == {"items": [1, 2]}
    assert again.events[0].detail["service"] == "svc"


async def test_register_branch__conflicts(store: TransactionLog) -> None:
    with pytest.raises(NotFound):
        await store.register_branch("nope", new_branch("b"), 10)
    await store.begin(new_txn("g"))
    await store.register_branch("g", new_branch("b"), 10)
    _, created = await store.register_branch("g", new_branch("b"), 10)
    assert not created
    other = dataclasses.replace(new_branch("b"), request_hash="different")
    with pytest.raises(Conflict, match="other values"):
        await store.register_branch("g", other, 10)


async def test_register_branch__beyond_the_limit__is_refused(store: TransactionLog) -> None:
    await store.begin(new_txn("g"))
    first, _ = await store.register_branch("g", new_branch("b1"), 2)
    second, _ = await store.register_branch("g", new_branch("b2"), 2)
    assert (first.position, second.position) == (0, 1)
    with pytest.raises(LimitExceeded, match="at most 2 branches"):
        await store.register_branch("g", new_branch("b3"), 2)
    # A repeat of a registered branch is still answered.
    _, created = await store.register_branch("g", new_branch("b2"), 2)
    assert not created


async def test_register_branch__once_decided_or_past_the_deadline__is_refused(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.begin(new_txn("late", timeout_s=5))
    await log_time.jump(6)
    with pytest.raises(Conflict, match="the transaction deadline has passed"):
        await store.register_branch("late", new_branch("b"), 10)
    await confirming(store, "g")
    with pytest.raises(NotTrying, match="transaction is confirming"):
        await store.register_branch("g", new_branch("other"), 10)


# --- tries -------------------------------------------------------------------------------


async def test_record_try__answers__move_the_branch_once(store: TransactionLog) -> None:
    await store.begin(new_txn("g", branches=[new_branch("ok"), new_branch("no")]))
    tried, recorded = await store.record_try("g", "ok", TryVerdict.TRIED, OK)
    assert recorded
    assert tried.status is BranchStatus.TRIED
    assert (tried.attempts, tried.last_http_status, tried.last_latency_ms) == (1, 200, 1.0)
    refused, _ = await store.record_try("g", "no", TryVerdict.REFUSED, CallRecord(409, "no", 2.0))
    assert refused.status is BranchStatus.TRY_FAILED
    assert refused.last_error == "no"
    again, recorded = await store.record_try("g", "ok", TryVerdict.FAILED, FAIL)
    assert not recorded
    assert again.status is BranchStatus.TRIED
    assert again.attempts == 1
    events = (await store.detail("g")).events
    assert [(e.kind, e.branch_id, e.phase) for e in events[-3:]] == [
        (EventKind.TRY_RESULT, "ok", Phase.TRY),
        (EventKind.TRY_RESULT, "no", Phase.TRY),
        (EventKind.TRY_RESULT, "ok", Phase.TRY),
    ]
    assert events[-1].detail == {"verdict": "failed", "late": True}
    assert (events[-1].http_status, events[-1].error) == (500, "HTTP 500")


async def test_record_try__late_answer_after_cancel__changes_nothing(
    store: TransactionLog,
) -> None:
    await store.begin(new_txn("g"))
    await store.register_branch("g", new_branch("b"), 10)
    decided = await store.decide("g", Decision.CANCEL, reason="timeout", owner="a", lease_ttl_s=30)
    assert decided.lease is not None
    assert await store.record_phase_call(decided.lease, phase_call(Decision.CANCEL, "b", True, OK))
    branch, recorded = await store.record_try("g", "b", TryVerdict.TRIED, OK)
    assert not recorded
    assert branch.status.value == "cancelled"  # what the log holds, for the late caller
    detail = await store.detail("g")
    assert detail.branches[0].status.value == "cancelled"
    assert detail.events[-1].detail == {"verdict": "tried", "late": True}


async def test_claim_stale_try__an_unanswered_try__is_given_to_one_caller_once_stale(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.begin(new_txn("g", branches=[new_branch("b")]))
    assert await store.claim_stale_try("g", "b", 5) is None  # it may still be answering
    await log_time.jump(6)
    claimed = await store.claim_stale_try("g", "b", 5)
    assert claimed is not None
    assert claimed.branch_id == "b"
    assert claimed.updated_at > claimed.created_at
    assert await store.claim_stale_try("g", "b", 5) is None  # someone has it now
    await log_time.jump(6)
    assert await store.claim_stale_try("g", "b", 5) is not None


async def test_claim_stale_try__answered_client_run_or_decided__is_never_rerun(
    store: TransactionLog, log_time: LogTime
) -> None:
    branches = [new_branch("answered"), new_branch("client", with_try=False), new_branch("x")]
    await store.begin(new_txn("g", branches=branches))
    await store.record_try("g", "answered", TryVerdict.FAILED, FAIL)
    await log_time.jump(10)
    assert await store.claim_stale_try("g", "answered", 5) is None
    assert await store.claim_stale_try("g", "client", 5) is None
    assert await store.claim_stale_try("g", "missing", 5) is None
    assert await store.claim_stale_try("nope", "x", 5) is None
    await store.decide("g", Decision.CANCEL, reason="client", owner="a", lease_ttl_s=30)
    assert await store.claim_stale_try("g", "x", 5) is None


# --- leases and phase two -------------------------------------------------------------


async def test_finish_round__with_a_stale_lease__writes_nothing(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.begin(new_txn("g"))
    await store.register_branch("g", new_branch("b", with_try=False), 10)
    first = await store.decide("g", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=30)
    assert first.lease is not None
    # Another coordinator takes over (here: the lease is simply replaced).
    await store.release_lease(first.lease)
    await log_time.jump(1)
    [(second, status, _)] = await store.claim_due("b", 10, 30)
    assert status is GlobalStatus.CONFIRMING

    assert not await store.record_phase_call(
        first.lease, phase_call(Decision.CONFIRM, "b", True, OK)
    )
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

    assert await store.record_phase_call(second, phase_call(Decision.CONFIRM, "b", True, OK))
    done = await store.finish_round(second, Decision.CONFIRM, GlobalStatus.CONFIRMED, 1.0, [], "o")
    assert done is not None
    assert done.status is GlobalStatus.CONFIRMED


async def test_record_phase_call__a_fenced_out_holder__writes_not_even_an_event(
    store: TransactionLog,
) -> None:
    lease = await confirming(store, "g")
    before = await store.detail("g")
    await store.release_lease(lease)
    assert not await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "b", False, FAIL))
    assert not await store.record_phase_call(
        Lease("g", str(uuid.uuid4())), phase_call(Decision.CONFIRM, "b", True, OK)
    )
    assert not await store.record_phase_call(
        Lease("nope", lease.token), phase_call(Decision.CONFIRM, "b", True, OK)
    )
    after = await store.detail("g")
    assert after.events == before.events
    assert after.branches[0].attempts == 0


async def test_record_phase_call__a_failed_call__counts_an_attempt_and_keeps_the_status(
    store: TransactionLog,
) -> None:
    lease = await confirming(store, "g")
    assert await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "b", False, FAIL))
    [branch] = (await store.detail("g")).branches
    assert branch.status is BranchStatus.REGISTERED
    assert (branch.attempts, branch.last_http_status, branch.last_error) == (1, 500, "HTTP 500")
    assert await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "b", True, OK))
    detail = await store.detail("g")
    assert detail.branches[0].status is BranchStatus.CONFIRMED
    assert (detail.branches[0].attempts, detail.branches[0].last_error) == (2, None)
    assert [(e.kind, e.detail) for e in detail.events[-2:]] == [
        (EventKind.CONFIRM_CALL, {"done": False}),
        (EventKind.CONFIRM_CALL, {"done": True}),
    ]
    # A reply for a branch already done is logged, and moves nothing.
    assert await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "b", False, FAIL))
    again = await store.detail("g")
    assert again.branches[0].status is BranchStatus.CONFIRMED
    assert again.branches[0].attempts == 2
    assert len(again.events) == len(detail.events) + 1


async def test_round_context__under_the_lease__spends_the_budget_by_the_log_clock(
    store: TransactionLog, log_time: LogTime
) -> None:
    lease = await confirming(store, "g", ("b1", "b2"))
    ctx = await store.round_context(lease, 60)
    assert ctx is not None
    assert ctx.transaction.status is GlobalStatus.CONFIRMING
    assert [b.branch_id for b in ctx.branches] == ["b1", "b2"]
    assert not ctx.budget_spent
    await log_time.jump(61)
    later = await store.round_context(lease, 60)
    assert later is not None
    assert later.budget_spent
    await store.release_lease(lease)
    assert await store.round_context(lease, 60) is None


async def test_finish_round__a_final_outcome__ends_the_transaction_and_frees_it(
    store: TransactionLog,
) -> None:
    lease = await confirming(store, "g")
    assert await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "b", True, OK))
    txn = await store.finish_round(lease, Decision.CONFIRM, GlobalStatus.CONFIRMED, 5, [], "a")
    assert txn is not None
    assert txn.status is GlobalStatus.CONFIRMED
    assert txn.finished_at == txn.updated_at
    assert (txn.next_attempt_at, txn.lease_owner, txn.lease_expires_at) == (None, None, None)
    assert txn.phase_attempts == 1
    assert not await store.renew_lease(lease, 30)
    events = (await store.detail("g")).events
    assert events[-1].kind is EventKind.CONFIRMED
    assert events[-1].detail == {"rounds": 1, "by": "a"}


async def test_finish_round__another_round_due__schedules_the_pending_branches(
    store: TransactionLog, log_time: LogTime
) -> None:
    lease = await confirming(store, "g", ("b1", "b2"))
    assert await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "b1", True, OK))
    assert await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "b2", False, FAIL))
    txn = await store.finish_round(lease, Decision.CONFIRM, GlobalStatus.CONFIRMING, 5, ["b2"], "a")
    assert txn is not None
    assert txn.status is GlobalStatus.CONFIRMING
    assert txn.next_attempt_at == txn.updated_at + timedelta(seconds=5)
    assert (txn.finished_at, txn.lease_owner, txn.phase_attempts) == (None, None, 1)
    detail = await store.detail("g")
    assert [b.next_retry_at for b in detail.branches] == [None, txn.next_attempt_at]
    assert detail.events[-1].kind is EventKind.RETRY_SCHEDULED
    assert detail.events[-1].detail == {"pending": ["b2"], "by": "a"}
    assert await store.claim_due("b", 10, 30) == []  # not before its time
    await log_time.jump(5)
    [(again, status, _)] = await store.claim_due("b", 10, 30)
    assert (again.gid, status) == ("g", GlobalStatus.CONFIRMING)
    # A reply clears the branch's retry time.
    assert await store.record_phase_call(again, phase_call(Decision.CONFIRM, "b2", False, FAIL))
    assert (await store.detail("g")).branches[1].next_retry_at is None


async def test_finish_round__budget_spent__parks_the_transaction_out_of_recovery(
    store: TransactionLog, log_time: LogTime
) -> None:
    lease = await confirming(store, "g")
    txn = await store.finish_round(
        lease, Decision.CONFIRM, GlobalStatus.FAILED_TO_CONFIRM, 5, ["b"], "a"
    )
    assert txn is not None
    assert txn.status is GlobalStatus.FAILED_TO_CONFIRM
    assert (txn.next_attempt_at, txn.finished_at, txn.lease_owner) == (None, None, None)
    events = (await store.detail("g")).events
    assert events[-1].kind is EventKind.FAILED_TO_CONFIRM
    assert events[-1].detail == {"rounds": 1, "by": "a"}
    await log_time.jump(3600)
    assert await store.claim_due("b", 10, 30) == []


async def test_finish_round__for_the_other_decision__is_refused(store: TransactionLog) -> None:
    lease = await confirming(store, "g")
    outcome = GlobalStatus.CANCELLED
    assert await store.finish_round(lease, Decision.CANCEL, outcome, 5, [], "a") is None
    txn = await store.get("g")
    assert txn.status is GlobalStatus.CONFIRMING
    assert txn.lease_owner == "a"  # still held


async def test_renew_and_release_lease__move_only_the_holders_lease(
    store: TransactionLog, log_time: LogTime
) -> None:
    lease = await confirming(store, "g")
    await log_time.jump(10)
    assert await store.renew_lease(lease, 60)
    renewed = await store.get("g")
    assert renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > renewed.updated_at + timedelta(seconds=60)
    await store.release_lease(Lease("g", str(uuid.uuid4())))  # not the holder: nothing
    assert (await store.get("g")).lease_owner == "a"
    await store.release_lease(lease)
    released = await store.get("g")
    assert (released.lease_owner, released.lease_expires_at) == (None, None)
    assert not await store.renew_lease(lease, 60)


async def test_renew_lease__a_lapsed_lease_nobody_took__is_still_the_holders(
    store: TransactionLog, log_time: LogTime
) -> None:
    lease = await confirming(store, "g")
    await log_time.jump(31)
    assert await store.renew_lease(lease, 30)
    assert await store.claim_due("b", 10, 30) == []


async def test_claim_due__concurrent_scanners__never_claim_the_same_transaction(
    store: TransactionLog, log_time: LogTime
) -> None:
    for i in range(30):
        await store.begin(new_txn(f"g{i}", timeout_s=0.01))
    await log_time.sleep(0.05)
    claims = await asyncio.gather(*(store.claim_due(f"owner{i}", 10, 30) for i in range(6)))
    gids = [c.lease.gid for claim in claims for c in claim]
    assert len(gids) == len(set(gids)) == 30
    # Nothing is due while the leases are held.
    assert await store.claim_due("late", 100, 30) == []


async def test_claim_due__an_expired_lease__is_taken_over(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.begin(new_txn("g", timeout_s=0.01))
    await log_time.sleep(0.05)
    [(lease, _, took_over)] = await store.claim_due("dead", 10, 0.2)
    assert not took_over  # nobody held it
    assert await store.claim_due("alive", 10, 30) == []
    await log_time.sleep(0.3)
    [(taken, _, took_over)] = await store.claim_due("alive", 10, 30)
    assert taken.token != lease.token
    assert took_over  # "dead" let its lease lapse


async def test_claim_due__the_longest_due_first__up_to_the_limit(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.begin(new_txn("third", timeout_s=3))
    await store.begin(new_txn("first", timeout_s=1))
    await store.begin(new_txn("second", timeout_s=2))
    await store.begin(new_txn("not-yet", timeout_s=60))
    await log_time.jump(5)
    claimed = await store.claim_due("o", 2, 30)
    assert {c.lease.gid for c in claimed} == {"first", "second"}
    assert {c.status for c in claimed} == {GlobalStatus.TRYING}
    txn = await store.get("first")
    assert txn.lease_owner == "o"
    assert txn.lease_expires_at is not None
    [(last, _, _)] = await store.claim_due("o", 2, 30)
    assert last.gid == "third"


async def test_claim_due__finished_and_parked_transactions__are_never_due(
    store: TransactionLog, log_time: LogTime
) -> None:
    await parked(store, "parked")
    lease = await confirming(store, "done")
    assert await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "b", True, OK))
    await store.finish_round(lease, Decision.CONFIRM, GlobalStatus.CONFIRMED, 1, [], "a")
    await log_time.jump(3600)
    assert await store.claim_due("o", 10, 30) == []


# --- operator actions -----------------------------------------------------------------


async def test_retry_parked__with_an_owner__runs_under_a_fresh_lease_and_budget(
    store: TransactionLog, log_time: LogTime
) -> None:
    await parked(store, "g")
    await log_time.jump(120)  # the first phase started long ago
    txn, lease = await store.retry_parked("g", actor="ops", owner="me", lease_ttl_s=30)
    assert lease is not None
    assert txn.status is GlobalStatus.CONFIRMING
    assert (txn.phase_attempts, txn.lease_owner) == (0, "me")
    assert txn.next_attempt_at == txn.updated_at
    assert txn.lease_expires_at == txn.updated_at + timedelta(seconds=30)
    ctx = await store.round_context(lease, 60)
    assert ctx is not None
    assert not ctx.budget_spent
    events = (await store.detail("g")).events
    assert events[-1].kind is EventKind.ADMIN_RETRY
    assert events[-1].detail == {"from": "failed_to_confirm", "actor": "ops"}
    assert await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "stuck", True, OK))


async def test_retry_parked__without_an_owner__is_left_to_recovery(
    store: TransactionLog, log_time: LogTime
) -> None:
    await parked(store, "g", Decision.CANCEL)
    txn, lease = await store.retry_parked("g", actor="cli", owner=None, lease_ttl_s=30)
    assert lease is None
    assert txn.status is GlobalStatus.CANCELLING
    assert (txn.lease_owner, txn.lease_expires_at) == (None, None)
    await log_time.jump(1)
    [(claimed, status, _)] = await store.claim_due("o", 10, 30)
    assert (claimed.gid, status) == ("g", GlobalStatus.CANCELLING)


async def test_retry_parked__a_transaction_not_parked__is_refused(store: TransactionLog) -> None:
    with pytest.raises(NotFound):
        await store.retry_parked("nope", actor="ops", owner=None, lease_ttl_s=30)
    await confirming(store, "g")
    with pytest.raises(
        Conflict,
        match="only failed_to_confirm and failed_to_cancel transactions can be retried;"
        " this one is confirming",
    ):
        await store.retry_parked("g", actor="ops", owner=None, lease_ttl_s=30)


async def test_resolve_parked__marks_the_stuck_branches_and_the_transaction_done(
    store: TransactionLog,
) -> None:
    await parked(store, "g")
    txn = await store.resolve_parked("g", actor="ops", note="fixed by hand")
    assert txn.status is GlobalStatus.CONFIRMED
    assert txn.finished_at == txn.updated_at
    assert (txn.next_attempt_at, txn.lease_owner) == (None, None)
    detail = await store.detail("g")
    done, stuck = detail.branches
    assert (done.status, done.last_error) == (BranchStatus.CONFIRMED, None)
    assert stuck.status is BranchStatus.CONFIRMED
    assert stuck.last_error == "resolved by an operator: fixed by hand"
    assert detail.events[-1].kind is EventKind.ADMIN_RESOLVED
    assert detail.events[-1].detail == {
        "actor": "ops",
        "note": "fixed by hand",
        "branches": ["stuck"],
        "finished": True,
    }
    with pytest.raises(Conflict, match="can be resolved; this one is confirmed"):
        await store.resolve_parked("g", actor="ops", note="again")


async def test_resolve_parked__failed_to_cancel__cancels_every_branch_left(
    store: TransactionLog,
) -> None:
    await parked(store, "g", Decision.CANCEL)
    txn = await store.resolve_parked("g", actor="ops", note="refunded")
    assert txn.status is GlobalStatus.CANCELLED
    statuses = [b.status for b in (await store.detail("g")).branches]
    assert statuses == [BranchStatus.CANCELLED, BranchStatus.CANCELLED]
    with pytest.raises(NotFound):
        await store.resolve_parked("nope", actor="ops", note="x")


# --- the timeline -----------------------------------------------------------------------


async def test_events__identical_failures_in_a_row__collapse_into_one_with_repeats(
    store: TransactionLog,
) -> None:
    lease = await confirming(store, "g")
    first_count = len((await store.detail("g")).events)
    for latency in (1.0, 2.0, 3.0):
        failed = CallRecord(503, "HTTP 503: busy", latency)
        assert await store.record_phase_call(
            lease, phase_call(Decision.CONFIRM, "b", False, failed)
        )
    events = (await store.detail("g")).events
    assert len(events) == first_count + 1
    repeated = events[-1]
    assert (repeated.kind, repeated.repeats, repeated.latency_ms) == (
        EventKind.CONFIRM_CALL,
        3,
        3.0,
    )
    assert repeated.last_at is not None
    assert repeated.last_at > repeated.at
    # Another error is a new entry, and so is success (never collapsed).
    assert await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "b", False, FAIL))
    assert await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "b", True, OK))
    assert await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "b", True, OK))
    tail = (await store.detail("g")).events[-3:]
    assert [(e.error, e.repeats, e.last_at) for e in tail] == [
        ("HTTP 500", 1, None),
        (None, 1, None),
        (None, 1, None),
    ]


async def test_events__failures_of_other_branches_in_between__still_collapse_per_branch(
    store: TransactionLog,
) -> None:
    lease = await confirming(store, "g", ("b1", "b2"))
    for _ in range(3):
        assert await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "b1", False, FAIL))
        assert await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "b2", False, FAIL))
    calls = [e for e in (await store.detail("g")).events if e.kind is EventKind.CONFIRM_CALL]
    assert [(e.branch_id, e.repeats) for e in calls] == [("b1", 3), ("b2", 3)]


async def test_events__identical_rounds__collapse_into_one_retry_scheduled_entry(
    store: TransactionLog, log_time: LogTime
) -> None:
    lease = await confirming(store, "g")
    for _ in range(3):
        assert await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "b", False, FAIL))
        txn = await store.finish_round(
            lease, Decision.CONFIRM, GlobalStatus.CONFIRMING, 1, ["b"], "a"
        )
        assert txn is not None
        await log_time.jump(1)
        [(lease, _, _)] = await store.claim_due("a", 10, 30)
    kinds = [(e.kind, e.repeats) for e in (await store.detail("g")).events]
    assert kinds[-2:] == [(EventKind.CONFIRM_CALL, 3), (EventKind.RETRY_SCHEDULED, 3)]
    # A round by another coordinator is told apart.
    await store.finish_round(lease, Decision.CONFIRM, GlobalStatus.CONFIRMING, 1, ["b"], "z")
    last = (await store.detail("g")).events[-1]
    assert (last.kind, last.repeats, last.detail["by"]) == (EventKind.RETRY_SCHEDULED, 1, "z")


async def test_events__pages_through_the_timeline_in_order(store: TransactionLog) -> None:
    await store.begin(new_txn("g", branches=[new_branch(f"b{i}") for i in range(6)]))
    full = await store.detail("g", events_limit=100)
    assert len(full.events) == 7
    assert not full.more_events
    first = await store.detail("g", events_limit=3)
    assert first.events == full.events[:3]
    assert first.more_events
    pages = []
    after = 0
    more = True
    while more:
        page, more = await store.events("g", after, 3)
        pages.append(page)
        after = page[-1].id
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [e for p in pages for e in p] == full.events
    assert await store.events("g", full.events[-1].id, 3) == ([], False)
    exact, more = await store.events("g", 0, 7)
    assert (len(exact), more) == (7, False)


async def test_events__of_an_unknown_transaction__are_not_found(store: TransactionLog) -> None:
    with pytest.raises(NotFound, match="no transaction 'nope'"):
        await store.events("nope", 0, 10)
    with pytest.raises(NotFound, match="no transaction 'nope'"):
        await store.detail("nope")
    with pytest.raises(NotFound, match="no transaction 'nope'"):
        await store.get("nope")


async def test_events__ids_and_times_increase_across_the_whole_log(
    store: TransactionLog,
) -> None:
    await store.begin(new_txn("a", branches=[new_branch("b1")]))
    await store.begin(new_txn("b", branches=[new_branch("b1")]))
    await store.register_branch("a", new_branch("b2"), 10)
    a = (await store.detail("a")).events
    b = (await store.detail("b")).events
    assert a[0].id < a[1].id < b[0].id < b[1].id < a[2].id
    timeline = sorted(a + b, key=lambda e: e.id)
    assert all(x.at <= y.at for x, y in itertools.pairwise(timeline))


# --- lists -------------------------------------------------------------------------------


async def test_list__pages_newest_first_with_a_cursor(store: TransactionLog) -> None:
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


async def test_list__newer_transactions__come_first_whatever_their_gid(
    store: TransactionLog, log_time: LogTime
) -> None:
    for gid in ("a", "c", "b"):
        await store.begin(new_txn(gid))
        await log_time.sleep(0.002)
    assert [t.gid for t in await store.list(ListFilter())] == ["b", "c", "a"]


async def test_list__filters_by_status_service_and_creation_time(
    store: TransactionLog, log_time: LogTime
) -> None:
    early = (await store.begin(new_txn("early", service="shop")))[0].transaction
    await log_time.sleep(0.002)
    await store.begin(new_txn("other", service="bank"))
    await store.begin(new_txn("anonymous", service=None))
    await confirming(store, "decided")
    await log_time.sleep(0.002)
    late = (await store.begin(new_txn("late", service="shop")))[0].transaction

    async def gids(flt: ListFilter) -> list[str]:
        return [t.gid for t in await store.list(flt)]

    assert await gids(ListFilter(service="shop")) == ["late", "early"]
    assert await gids(ListFilter(statuses=(GlobalStatus.CONFIRMING,))) == ["decided"]
    both = (GlobalStatus.CONFIRMING, GlobalStatus.CANCELLED)
    assert await gids(ListFilter(statuses=both, service="svc")) == ["decided"]
    assert len(await gids(ListFilter(statuses=()))) == 5  # empty: no status filter
    assert await gids(ListFilter(created_from=late.created_at)) == ["late"]
    assert await gids(ListFilter(created_to=early.created_at)) == []  # the bound is exclusive
    window = ListFilter(created_from=early.created_at, created_to=late.created_at)
    everything = await gids(window)
    assert sorted(everything) == ["anonymous", "decided", "early", "other"]
    assert everything[-1] == "early"
    first = await store.list(dataclasses.replace(window, limit=2))
    cursor = (first[-1].created_at, first[-1].gid)
    rest = await store.list(dataclasses.replace(window, after=cursor))
    assert [t.gid for t in first + rest] == everything


async def test_list__filters_by_dialect_and_gid_prefix_taking_wildcards_literally(
    store: TransactionLog,
) -> None:
    for gid in ("order-1", "order-2", "order_3", "orders", "refund-1"):
        await store.begin(new_txn(gid))
    await store.begin(dataclasses.replace(new_txn("order-dtm"), dialect="dtm"))

    async def gids(flt: ListFilter) -> list[str]:
        return sorted(t.gid for t in await store.list(flt))

    assert await gids(ListFilter(gid_prefix="order-")) == ["order-1", "order-2", "order-dtm"]
    # _ and % are characters of a gid here, not LIKE wildcards.
    assert await gids(ListFilter(gid_prefix="order_")) == ["order_3"]
    assert await gids(ListFilter(gid_prefix="%")) == []
    assert await gids(ListFilter(dialect="dtm")) == ["order-dtm"]
    assert await gids(ListFilter(dialect="dtm", gid_prefix="refund")) == []
    assert len(await gids(ListFilter(dialect="tcc"))) == 5


# --- operators ---------------------------------------------------------------------------


async def test_decide__by_an_operator__names_them_in_the_decision_entry(
    store: TransactionLog,
) -> None:
    await store.begin(new_txn("g", branches=[new_branch("b", with_try=False)]))
    await store.decide(
        "g", Decision.CANCEL, reason="operator: stuck", owner="a", lease_ttl_s=30, actor="alice"
    )
    decision = (await store.detail("g")).events[-1]
    assert decision.kind is EventKind.DECISION
    assert decision.detail is not None
    assert (decision.detail["actor"], decision.detail["reason"]) == ("alice", "operator: stuck")


async def test_retry_parked__with_a_reason__keeps_it_in_the_timeline(
    store: TransactionLog,
) -> None:
    await parked(store, "g")
    await store.retry_parked("g", actor="ops", owner=None, lease_ttl_s=30, reason="bank is up")
    entry = (await store.detail("g")).events[-1]
    assert entry.kind is EventKind.ADMIN_RETRY
    assert entry.detail == {"from": "failed_to_confirm", "actor": "ops", "reason": "bank is up"}


async def test_resolve_parked__branch_by_branch__finishes_the_transaction_with_the_last(
    store: TransactionLog,
) -> None:
    branches = [new_branch(b, with_try=False) for b in ("done", "s1", "s2")]
    await store.begin(new_txn("g", branches=branches))
    decided = await store.decide("g", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=30)
    assert decided.lease is not None
    assert await store.record_phase_call(
        decided.lease, phase_call(Decision.CONFIRM, "done", True, OK)
    )
    txn = await store.finish_round(
        decided.lease, Decision.CONFIRM, GlobalStatus.FAILED_TO_CONFIRM, 1.0, ["s1", "s2"], "a"
    )
    assert txn is not None

    first = await store.resolve_parked("g", actor="ops", note="s1 by hand", branch_id="s1")
    assert first.status is GlobalStatus.FAILED_TO_CONFIRM  # s2 still waits
    detail = await store.detail("g")
    assert [b.status for b in detail.branches] == [
        BranchStatus.CONFIRMED,
        BranchStatus.CONFIRMED,
        BranchStatus.REGISTERED,  # its try ran in the client: never tried here
    ]
    entry = detail.events[-1]
    assert (entry.kind, entry.branch_id) == (EventKind.ADMIN_RESOLVED, "s1")
    assert entry.detail == {
        "actor": "ops",
        "note": "s1 by hand",
        "branches": ["s1"],
        "finished": False,
    }
    with pytest.raises(Conflict, match="branch 's1' is already confirmed"):
        await store.resolve_parked("g", actor="ops", note="again", branch_id="s1")
    with pytest.raises(Conflict, match="branch 'done' is already confirmed"):
        await store.resolve_parked("g", actor="ops", note="x", branch_id="done")
    with pytest.raises(NotFound, match="no branch 'nope'"):
        await store.resolve_parked("g", actor="ops", note="x", branch_id="nope")

    last = await store.resolve_parked("g", actor="ops", note="s2 too", branch_id="s2")
    assert last.status is GlobalStatus.CONFIRMED
    assert last.finished_at is not None
    assert (await store.detail("g")).events[-1].detail == {
        "actor": "ops",
        "note": "s2 too",
        "branches": ["s2"],
        "finished": True,
    }


# --- the overview ------------------------------------------------------------------------


async def test_overview__counts_open_and_recent_and_lists_what_needs_attention(
    store: TransactionLog, log_time: LogTime
) -> None:
    # An hour ago: one left in phase two since, and one begun then and still trying.
    await confirming(store, "old-confirming")
    await store.begin(new_txn("old-trying", timeout_s=7200))
    await log_time.jump(3600)
    await parked(store, "parked")
    await store.begin(new_txn("due-soon", timeout_s=30))
    await store.begin(new_txn("far", timeout_s=600))
    await store.begin(new_txn("done", branches=[new_branch("b", with_try=False)]))
    decided = await store.decide(
        "done", Decision.CANCEL, reason="client", owner="a", lease_ttl_s=30
    )
    assert decided.lease is not None
    assert await store.record_phase_call(decided.lease, phase_call(Decision.CANCEL, "b", True, OK))
    await store.finish_round(decided.lease, Decision.CANCEL, GlobalStatus.CANCELLED, 1.0, [], "a")

    view = await store.overview(window_s=600, attention_limit=10)
    assert view.unfinished == {
        GlobalStatus.TRYING: 3,
        GlobalStatus.CONFIRMING: 1,
        GlobalStatus.FAILED_TO_CONFIRM: 1,
    }
    # The last ten minutes: the four begun after the jump, by where they are now.
    assert view.recent == {
        GlobalStatus.TRYING: 2,
        GlobalStatus.FAILED_TO_CONFIRM: 1,
        GlobalStatus.CANCELLED: 1,
    }
    assert 10 <= len(view.per_minute) <= 11
    assert [m.minute for m in view.per_minute] == sorted(m.minute for m in view.per_minute)
    assert sum(m.begun for m in view.per_minute) == 4
    assert sum(m.cancelled for m in view.per_minute) == 1
    assert sum(m.parked for m in view.per_minute) == 1
    assert sum(m.confirmed for m in view.per_minute) == 0

    assert [t.gid for t in view.parked] == ["parked"]
    assert [t.gid for t in view.retrying_long] == ["old-confirming"]
    assert [t.gid for t in view.near_deadline] == ["due-soon"]
    oldest = [t.gid for t in view.oldest_unfinished]
    assert oldest[:2] == ["old-confirming", "old-trying"]
    assert set(oldest) == {"old-confirming", "old-trying", "parked", "due-soon", "far"}

    limited = await store.overview(window_s=600, attention_limit=2)
    assert [t.gid for t in limited.oldest_unfinished] == ["old-confirming", "old-trying"]


async def test_overview__of_an_empty_log__is_all_zero_minutes(store: TransactionLog) -> None:
    view = await store.overview(window_s=300, attention_limit=10)
    assert (view.unfinished, view.recent, view.parked, view.oldest_unfinished) == ({}, {}, [], [])
    assert all(m.begun == 0 for m in view.per_minute)
    assert view.window_s == 300
