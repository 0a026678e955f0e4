"""Tries, decisions and phase-two rounds, with retries timed by the log's clock."""

from __future__ import annotations

from datetime import timedelta

from coordinator.core.apikeys import INSECURE
from coordinator.core.records import Transaction
from coordinator.core.states import BranchStatus, EventKind, GlobalStatus, Phase, TryReport
from coordinator.engine.runtime import Runtime
from coordinator.txlog.memory import ManualClock
from tests.unit.engine.conftest import MakeRuntime
from tests.unit.engine.scripted import (
    GID,
    CeilingDraws,
    ScriptedCaller,
    begin_request,
    branch,
    reply,
    url,
)


def retry_delay(txn: Transaction) -> timedelta:
    """How long after the round that scheduled it the next round is due."""
    assert txn.next_attempt_at is not None
    return txn.next_attempt_at - txn.updated_at


async def test_auto_begin__both_tries_succeed__confirms_both_branches(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    begun = await runtime.coordinator.begin(
        begin_request(branch("a"), branch("b"), auto=True), INSECURE
    )
    assert begun.created
    txn = begun.detail.transaction
    assert txn.status is GlobalStatus.CONFIRMED
    assert txn.phase_attempts == 1
    assert [b.status for b in begun.detail.branches] == [BranchStatus.CONFIRMED] * 2
    assert [c.url for c in caller.made(Phase.TRY)] == [url("a", Phase.TRY), url("b", Phase.TRY)]
    confirms = caller.made(Phase.CONFIRM)
    assert sorted(c.url for c in confirms) == [url("a", Phase.CONFIRM), url("b", Phase.CONFIRM)]
    assert {c.headers["Idempotency-Key"] for c in confirms} == {
        f"{GID}:a:confirm",
        f"{GID}:b:confirm",
    }
    assert caller.made(Phase.CANCEL) == []
    assert begun.detail.events[-1].kind is EventKind.CONFIRMED


async def test_auto_begin__a_refused_try__cancels_with_reason_try_failed(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    caller.script(url("b", Phase.TRY), Phase.TRY, reply(409, "out of stock"))
    begun = await runtime.coordinator.begin(
        begin_request(branch("a"), branch("b"), auto=True), INSECURE
    )
    txn = begun.detail.transaction
    assert txn.status is GlobalStatus.CANCELLED
    assert txn.cancel_reason == "try_failed: b"
    assert [b.status for b in begun.detail.branches] == [BranchStatus.CANCELLED] * 2
    assert caller.made(Phase.CONFIRM) == []
    # Both are compensated: the tried one, and the refused one (an empty compensation).
    assert sorted(c.url for c in caller.made(Phase.CANCEL)) == [
        url("a", Phase.CANCEL),
        url("b", Phase.CANCEL),
    ]


async def test_try_branch__a_try_without_an_answer__cancels_the_transaction(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    caller.script(url("a", Phase.TRY), Phase.TRY, reply(None))
    await runtime.coordinator.begin(begin_request(), INSECURE)
    tried = await runtime.coordinator.try_branch(GID, branch("a"), INSECURE)
    assert tried.report is TryReport.FAILED
    assert tried.branch.status is BranchStatus.TRY_FAILED
    txn = await runtime.driver.wait_for(GID)
    assert txn.status is GlobalStatus.CANCELLED
    assert txn.cancel_reason == "try_failed: a"


async def test_confirm__failing_participant__is_retried_once_the_clock_passes_the_retry_time(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    caller.script(url("a", Phase.CONFIRM), Phase.CONFIRM, reply(500), reply(500), reply(200))
    begun = await runtime.coordinator.begin(
        begin_request(branch("a"), branch("b"), auto=True), INSECURE
    )
    txn = begun.detail.transaction
    assert txn.status is GlobalStatus.CONFIRMING
    assert timedelta(0) < retry_delay(txn) <= timedelta(seconds=runtime.settings.retry_max_s)
    assert await runtime.recovery.run_once(wait=True) == []  # not yet due

    for round_number in (2, 3):
        clock.advance(runtime.settings.retry_max_s)
        [lease] = await runtime.recovery.run_once(wait=True)
        assert lease.gid == GID
        assert (await runtime.log.get(GID)).phase_attempts == round_number

    detail = await runtime.log.detail(GID)
    assert detail.transaction.status is GlobalStatus.CONFIRMED
    assert len(caller.made(Phase.CONFIRM, url("a", Phase.CONFIRM))) == 3
    assert len(caller.made(Phase.CONFIRM, url("b", Phase.CONFIRM))) == 1  # done in round 1
    failures = [e for e in detail.events if e.kind is EventKind.CONFIRM_CALL and e.error]
    assert [(f.branch_id, f.http_status, f.repeats) for f in failures] == [("a", 500, 2)]
    scheduled = [e for e in detail.events if e.kind is EventKind.RETRY_SCHEDULED]
    assert [(e.detail["pending"], e.repeats) for e in scheduled] == [(["a"], 2)]


async def test_confirm__still_failing_after_give_up_after_s__is_parked_in_failed_to_confirm(
    make_runtime: MakeRuntime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    runtime = make_runtime(caller, give_up_after_s=60)
    caller.script(url("a", Phase.CONFIRM), Phase.CONFIRM, reply(503, "down"))
    await runtime.coordinator.begin(begin_request(branch("a"), auto=True), INSECURE)

    clock.advance(30)  # within the budget: one more round, still confirming
    assert len(await runtime.recovery.run_once(wait=True)) == 1
    assert (await runtime.log.get(GID)).status is GlobalStatus.CONFIRMING
    clock.advance(30)  # the budget is spent: the last round parks it
    assert len(await runtime.recovery.run_once(wait=True)) == 1

    detail = await runtime.log.detail(GID)
    txn = detail.transaction
    assert txn.status is GlobalStatus.FAILED_TO_CONFIRM
    assert (txn.phase_attempts, txn.next_attempt_at) == (3, None)
    assert detail.branches[0].status is BranchStatus.TRIED  # tried, never confirmed
    assert detail.events[-1].kind is EventKind.FAILED_TO_CONFIRM
    clock.advance(86400)  # parked transactions wait for an operator, not for recovery
    assert await runtime.recovery.run_once(wait=True) == []
    assert len(caller.made(Phase.CONFIRM)) == 3


async def test_dtm_retry_interval__is_the_base_of_the_backoff(
    make_runtime: MakeRuntime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    runtime = make_runtime(caller, rng=CeilingDraws())  # the largest delay, every time
    confirm = url("a", Phase.CONFIRM)
    caller.script(confirm, Phase.CONFIRM, reply(500, "busy"), reply(500, "busy"), reply(200))
    caller.script(url("t", Phase.CONFIRM), Phase.CONFIRM, reply(500, "busy"))
    dtm = begin_request(
        branch("a", with_try=False, data='{"amount": 30}'),
        dialect="dtm",
        options={"retry_interval": 7},
    )
    await runtime.coordinator.begin(dtm, INSECURE)
    decided = await runtime.coordinator.submit(GID, INSECURE, None, wait=True)
    assert decided.after is not None
    assert decided.after.status is GlobalStatus.CONFIRMING
    assert retry_delay(decided.after) == timedelta(seconds=7)
    # Without the option, the server's backoff applies (retry_initial_s after one round).
    tcc = begin_request(branch("t", with_try=False), gid="plain")
    await runtime.coordinator.begin(tcc, INSECURE)
    await runtime.coordinator.confirm("plain", INSECURE)
    plain = await runtime.log.get("plain")
    assert retry_delay(plain) == timedelta(seconds=runtime.settings.retry_initial_s)

    clock.advance(6.9)
    claimed = await runtime.recovery.run_once(wait=True)
    assert [lease.gid for lease in claimed] == ["plain"]
    clock.advance(0.1)
    claimed = await runtime.recovery.run_once(wait=True)
    assert [lease.gid for lease in claimed] == [GID]
    # The ceiling grows from the interval, but never past it: the server's cap is lower.
    assert retry_delay(await runtime.log.get(GID)) == timedelta(seconds=7)
    clock.advance(7)
    assert GID in [lease.gid for lease in await runtime.recovery.run_once(wait=True)]
    assert (await runtime.log.get(GID)).status is GlobalStatus.CONFIRMED
    assert len(caller.made(Phase.CONFIRM, confirm)) == 3


async def test_dtm_ongoing_reply__is_retried_at_exactly_the_retry_interval(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    confirm = url("a", Phase.CONFIRM)
    caller.script(confirm, Phase.CONFIRM, reply(425, "ONGOING"), reply(425, "ONGOING"), reply(200))
    dtm = begin_request(
        branch("a", with_try=False, data="{}"), dialect="dtm", options={"retry_interval": 4}
    )
    await runtime.coordinator.begin(dtm, INSECURE)
    decided = await runtime.coordinator.submit(GID, INSECURE, None, wait=True)
    assert decided.after is not None
    # Not a failure: no backoff, no jitter; the next round comes at the interval itself.
    assert retry_delay(decided.after) == timedelta(seconds=4)

    clock.advance(3.999)
    assert await runtime.recovery.run_once(wait=True) == []
    clock.advance(0.001)
    assert len(await runtime.recovery.run_once(wait=True)) == 1
    assert retry_delay(await runtime.log.get(GID)) == timedelta(seconds=4)  # still ongoing
    clock.advance(4)
    assert len(await runtime.recovery.run_once(wait=True)) == 1

    detail = await runtime.log.detail(GID)
    assert detail.transaction.status is GlobalStatus.CONFIRMED
    calls = [e for e in detail.events if e.kind is EventKind.CONFIRM_CALL]
    assert [(e.http_status, e.repeats) for e in calls] == [(425, 2), (200, 1)]
    assert caller.made(Phase.CONFIRM)[0].params == {
        "gid": GID,
        "trans_type": "tcc",
        "branch_id": "a",
        "op": "confirm",
    }


async def test_a_decision_on_a_transaction_without_branches__ends_at_once(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    begun = await runtime.coordinator.begin(begin_request(), INSECURE)
    gid = begun.detail.transaction.gid
    detail = await runtime.coordinator.cancel(gid, INSECURE)
    assert detail.transaction.status is GlobalStatus.CANCELLED  # nothing to call: done
    assert caller.made(Phase.CANCEL) == []


async def test_auto_begin__its_answer__is_what_the_log_holds_afterwards(
    runtime: Runtime,
) -> None:
    begun = await runtime.coordinator.begin(
        begin_request(branch("a"), branch("b"), auto=True), INSECURE
    )
    assert begun.detail == await runtime.log.detail(begun.detail.transaction.gid)
