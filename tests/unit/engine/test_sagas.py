"""Sagas and reliable messages in the engine, on the in-memory log: the order steps run and
are compensated in, what each answer does, retries timed by the log's clock (moved by the
test, never waited for), a prepared message asked about, and a coordinator that dies
mid-saga with another finishing it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import timedelta
from typing import Any

import pytest

from coordinator.core.apikeys import INSECURE
from coordinator.core.errors import Conflict, DatabaseUnavailable
from coordinator.core.records import NewBranch, OutboundCall, Transaction, TransactionDetail
from coordinator.core.states import (
    BranchStatus,
    Decision,
    EventKind,
    GlobalStatus,
    Phase,
    TransactionKind,
)
from coordinator.engine.runtime import Runtime
from coordinator.engine.service import BeginRequest
from coordinator.txlog.memory import ManualClock
from tests.unit.engine.conftest import MakeRuntime
from tests.unit.engine.scripted import (
    GID,
    OK,
    CeilingDraws,
    Held,
    ScriptedCaller,
    begin_request,
    reply,
    url,
)

ACTION = Phase.ACTION
COMPENSATE = Phase.COMPENSATE
QUERY_URL = "http://127.0.0.1:9001/query"
REFUSED = reply(409, "no")
DOWN = reply(503, "down")
CONFIRMING, CONFIRMED = GlobalStatus.CONFIRMING, GlobalStatus.CONFIRMED
CANCELLING, CANCELLED = GlobalStatus.CANCELLING, GlobalStatus.CANCELLED


# --- requests ----------------------------------------------------------------------------


def act(step: str) -> str:
    """A step's action URL (kept as the branch's confirm URL)."""
    return url(step, Phase.CONFIRM)


def undo(step: str) -> str:
    """A step's compensation URL (kept as the branch's cancel URL)."""
    return url(step, Phase.CANCEL)


def step(step_id: str, *, compensated: bool = True, data: str | None = None) -> NewBranch:
    return NewBranch(
        branch_id=step_id,
        name=step_id,
        try_url=None,
        confirm_url=act(step_id),
        cancel_url=undo(step_id) if compensated else "",
        payload={"step": step_id},
        request_hash=f"hash-{step_id}",
        data=data,
    )


def saga(
    *steps: str,
    concurrent: bool = False,
    after: dict[str, list[str]] | None = None,
    retry_limit: int | None = None,
    timeout_s: float | None = None,
    bounded: bool = True,
    dialect: str = "tcc",
    gid: str = GID,
) -> BeginRequest:
    """A saga as POST /v1/sagas logs it (``bounded``: its timeout_s bounds the actions)."""
    options: dict[str, Any] = {"concurrent": concurrent}
    if after:
        options["after"] = after
    if retry_limit is not None:
        options["retry_limit"] = retry_limit
    if timeout_s is not None and bounded:
        options["forward_timeout"] = True
    data = "{}" if dialect == "dtm" else None
    request = begin_request(
        *(step(s, data=data) for s in steps),
        timeout_s=timeout_s,
        dialect=dialect,
        options=options,
        gid=gid,
    )
    return dataclasses.replace(request, kind=TransactionKind.SAGA)


def message(
    *steps: str,
    query_url: str | None = QUERY_URL,
    timeout_s: float | None = 10,
    concurrent: bool = False,
    gid: str = GID,
) -> BeginRequest:
    options: dict[str, Any] = {"concurrent": concurrent}
    if query_url is not None:
        options["query_url"] = query_url
    request = begin_request(
        *(step(s, compensated=False) for s in steps), timeout_s=timeout_s, options=options, gid=gid
    )
    return dataclasses.replace(request, kind=TransactionKind.MSG)


# --- running them ------------------------------------------------------------------------


async def run_saga(runtime: Runtime, request: BeginRequest) -> TransactionDetail:
    """Begin the saga and let its first round run to its end (no clock moves)."""
    begun = await runtime.coordinator.begin_saga(request, INSECURE, wait=False)
    assert begun.created
    await runtime.driver.settle(request.gid or GID)
    return await runtime.log.detail(request.gid or GID)


async def send(runtime: Runtime, request: BeginRequest) -> TransactionDetail:
    """Send a message (not prepared) and let its deliveries run."""
    begun = await runtime.coordinator.post_message(request, INSECURE, prepared=False)
    assert begun.created
    await runtime.driver.settle(request.gid or GID)
    return await runtime.log.detail(request.gid or GID)


async def later_round(runtime: Runtime, clock: ManualClock, seconds: float) -> TransactionDetail:
    """Move the log's clock on, let recovery run what is due, and read the transaction."""
    clock.advance(seconds)
    await runtime.recovery.run_once(wait=True)
    return await runtime.log.detail(GID)


def steps_called(caller: ScriptedCaller, phase: Phase) -> list[str]:
    return [c.headers["X-TCC-Branch"] for c in caller.made(phase)]


def statuses(detail: TransactionDetail) -> dict[str, BranchStatus]:
    return {b.branch_id: b.status for b in detail.branches}


def event_kinds(detail: TransactionDetail) -> list[EventKind]:
    return [e.kind for e in detail.events]


def retry_delay(txn: Transaction) -> timedelta:
    assert txn.next_attempt_at is not None
    return txn.next_attempt_at - txn.updated_at


def course_changes(detail: TransactionDetail) -> list[dict[str, Any]]:
    return [dict(e.detail) for e in detail.events if e.kind is EventKind.COURSE_CHANGED]


# --- in order ----------------------------------------------------------------------------


async def test_in_order__every_action_succeeds__runs_them_one_by_one_in_one_round(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    detail = await run_saga(runtime, saga("a", "b", "c"))
    txn = detail.transaction
    assert (txn.status, txn.kind, txn.phase_attempts) == (CONFIRMED, TransactionKind.SAGA, 1)
    assert txn.cancel_reason is None
    assert steps_called(caller, ACTION) == ["a", "b", "c"]
    assert [c.url for c in caller.made(ACTION)] == [act(s) for s in "abc"]
    assert caller.made(COMPENSATE) == []
    assert set(statuses(detail).values()) == {BranchStatus.CONFIRMED}
    assert event_kinds(detail) == [
        EventKind.BEGIN,
        *[EventKind.BRANCH_REGISTERED] * 3,
        EventKind.DECISION,
        *[EventKind.ACTION_CALL] * 3,
        EventKind.CONFIRMED,
    ]


async def test_in_order__an_action_call__carries_the_step_and_the_action_phase(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    await run_saga(runtime, saga("a"))
    [call] = caller.made(ACTION)
    assert call.method == "POST"
    assert call.body is not None
    assert json.loads(call.body) == {
        "gid": GID,
        "branch_id": "a",
        "phase": "action",
        "payload": {"step": "a"},
    }
    assert call.headers["Idempotency-Key"] == f"{GID}:a:action"


@pytest.mark.parametrize("k", [1, 2, 3, 4])
async def test_in_order__step_k_fails__compensates_k_to_1_in_reverse_and_never_calls_later_steps(
    runtime: Runtime, caller: ScriptedCaller, k: int
) -> None:
    steps = ["a", "b", "c", "d"]
    failing = steps[k - 1]
    caller.script(act(failing), ACTION, REFUSED)

    detail = await run_saga(runtime, saga(*steps))

    txn = detail.transaction
    assert txn.status is CANCELLED
    assert txn.cancel_reason == f"action_failed: {failing}"
    assert steps_called(caller, ACTION) == steps[:k]
    # The failed step too: its action may have done something before it said no.
    assert steps_called(caller, COMPENSATE) == list(reversed(steps[:k]))
    assert [c.url for c in caller.made(COMPENSATE)] == [undo(s) for s in reversed(steps[:k])]
    assert statuses(detail) == {
        s: BranchStatus.CANCELLED if i < k else BranchStatus.REGISTERED for i, s in enumerate(steps)
    }
    assert course_changes(detail) == [
        {"reason": f"action_failed: {failing}", "by": runtime.driver.owner}
    ]
    failed = [e for e in detail.events if e.kind is EventKind.ACTION_CALL and e.http_status == 409]
    assert [(e.branch_id, e.detail) for e in failed] == [(failing, {"done": False, "failed": True})]
    assert detail.events[-1].kind is EventKind.CANCELLED


@pytest.mark.parametrize("refusal", [400, 404, 409, 422])
async def test_in_order__any_4xx_but_408_425_429__fails_the_action(
    runtime: Runtime, caller: ScriptedCaller, refusal: int
) -> None:
    caller.script(act("b"), ACTION, reply(refusal, "no"))
    detail = await run_saga(runtime, saga("a", "b"))
    assert detail.transaction.status is CANCELLED
    assert steps_called(caller, COMPENSATE) == ["b", "a"]


async def test_in_order__a_failed_step_is_try_failed_until_its_compensation_answers(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    held = Held()
    caller.script(act("b"), ACTION, REFUSED)
    caller.script(undo("b"), COMPENSATE, held)
    await runtime.coordinator.begin_saga(saga("a", "b", "c"), INSECURE, wait=False)
    await asyncio.wait_for(held.entered.wait(), 5)
    detail = await runtime.log.detail(GID)
    assert detail.transaction.status is CANCELLING
    assert statuses(detail) == {
        "a": BranchStatus.CONFIRMED,  # waits for b's compensation: reverse order
        "b": BranchStatus.TRY_FAILED,
        "c": BranchStatus.REGISTERED,
    }
    held.release()
    await runtime.driver.settle(GID)
    detail = await runtime.log.detail(GID)
    assert detail.transaction.status is CANCELLED
    assert statuses(detail) == {
        "a": BranchStatus.CANCELLED,
        "b": BranchStatus.CANCELLED,
        "c": BranchStatus.REGISTERED,
    }


async def test_in_order__the_failed_steps_compensation_down__ends_the_round_with_a_retry(
    make_runtime: MakeRuntime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    # Short waits: a round that kept calling the compensation would spin until the runtime stops.
    runtime = make_runtime(caller, confirm_wait_s=0.5, shutdown_grace_s=0)
    caller.script(act("b"), ACTION, REFUSED)
    caller.script(undo("b"), COMPENSATE, DOWN, OK)
    detail = await run_saga(runtime, saga("a", "b", "c"))
    assert steps_called(caller, COMPENSATE) == ["b"]
    assert detail.transaction.status is CANCELLING
    assert detail.transaction.next_attempt_at is not None
    assert statuses(detail)["b"] is BranchStatus.TRY_FAILED
    detail = await later_round(runtime, clock, runtime.settings.retry_max_s)
    assert detail.transaction.status is CANCELLED
    assert steps_called(caller, COMPENSATE) == ["b", "b", "a"]


async def test_compensation__answering_404_or_410__counts_as_nothing_to_undo(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    caller.script(act("c"), ACTION, REFUSED)
    caller.script(undo("c"), COMPENSATE, reply(404))
    caller.script(undo("b"), COMPENSATE, reply(410))
    detail = await run_saga(runtime, saga("a", "b", "c"))
    assert detail.transaction.status is CANCELLED
    assert steps_called(caller, COMPENSATE) == ["c", "b", "a"]


# --- at once and as a graph ------------------------------------------------------------------


async def test_concurrent__every_action_is_in_flight_at_once_then_the_saga_confirms(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    held = {s: Held() for s in "abc"}
    for s, h in held.items():
        caller.script(act(s), ACTION, h)
    await runtime.coordinator.begin_saga(saga("a", "b", "c", concurrent=True), INSECURE, wait=False)
    # All three calls are out before any has answered.
    await asyncio.wait_for(asyncio.gather(*(h.entered.wait() for h in held.values())), 5)
    for h in held.values():
        h.release()
    await runtime.driver.settle(GID)
    detail = await runtime.log.detail(GID)
    assert detail.transaction.status is CONFIRMED
    assert detail.transaction.phase_attempts == 1
    assert sorted(steps_called(caller, ACTION)) == ["a", "b", "c"]


async def test_concurrent__one_action_fails__compensates_every_step_at_once(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    caller.script(act("b"), ACTION, REFUSED)
    detail = await run_saga(runtime, saga("a", "b", "c", concurrent=True))
    assert detail.transaction.status is CANCELLED
    assert detail.transaction.cancel_reason == "action_failed: b"
    assert sorted(steps_called(caller, ACTION)) == ["a", "b", "c"]
    assert sorted(steps_called(caller, COMPENSATE)) == ["a", "b", "c"]
    assert set(statuses(detail).values()) == {BranchStatus.CANCELLED}


async def test_concurrent__one_fails_while_another_is_retried__compensates_that_one_too(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    caller.script(act("a"), ACTION, REFUSED)
    caller.script(act("b"), ACTION, DOWN)  # may have reached the participant: undo it too
    detail = await run_saga(runtime, saga("a", "b", "c", concurrent=True))
    assert detail.transaction.status is CANCELLED
    assert sorted(steps_called(caller, COMPENSATE)) == ["a", "b", "c"]
    assert len(caller.made(ACTION, act("b"))) == 1


DIAMOND = {"b": ["a"], "c": ["a"], "d": ["b", "c"]}


async def test_graph__a_step_runs_only_once_every_step_it_waits_for_is_done(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    detail = await run_saga(runtime, saga("a", "b", "c", "d", after=DIAMOND))
    assert detail.transaction.status is CONFIRMED
    assert detail.transaction.phase_attempts == 1
    called = steps_called(caller, ACTION)
    assert called[0] == "a"
    assert sorted(called[1:3]) == ["b", "c"]
    assert called[3] == "d"


async def test_graph__a_slow_prerequisite__holds_back_only_the_steps_that_wait_for_it(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    caller.script(act("c"), ACTION, DOWN, OK)
    detail = await run_saga(runtime, saga("a", "b", "c", "d", after=DIAMOND))
    assert detail.transaction.status is CONFIRMING
    assert statuses(detail) == {
        "a": BranchStatus.CONFIRMED,
        "b": BranchStatus.CONFIRMED,
        "c": BranchStatus.REGISTERED,
        "d": BranchStatus.REGISTERED,
    }
    assert "d" not in steps_called(caller, ACTION)
    detail = await later_round(runtime, clock, runtime.settings.retry_max_s)
    assert detail.transaction.status is CONFIRMED
    assert steps_called(caller, ACTION)[-2:] == ["c", "d"]


async def test_graph__the_last_step_fails__compensates_in_reverse_graph_order(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    caller.script(act("d"), ACTION, REFUSED)
    detail = await run_saga(runtime, saga("a", "b", "c", "d", after=DIAMOND))
    assert detail.transaction.status is CANCELLED
    undone = steps_called(caller, COMPENSATE)
    assert undone[0] == "d"
    assert sorted(undone[1:3]) == ["b", "c"]
    assert undone[3] == "a"


async def test_graph__a_middle_step_fails__undoes_what_may_have_started_and_never_runs_the_rest(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    caller.script(act("c"), ACTION, REFUSED)
    detail = await run_saga(runtime, saga("a", "b", "c", "d", after=DIAMOND))
    assert detail.transaction.status is CANCELLED
    assert detail.transaction.cancel_reason == "action_failed: c"
    assert "d" not in steps_called(caller, ACTION)
    undone = steps_called(caller, COMPENSATE)
    assert sorted(undone[:2]) == ["b", "c"]
    assert undone[2:] == ["a"]
    assert statuses(detail)["d"] is BranchStatus.REGISTERED


async def test_graph__a_compensation_down__holds_back_the_steps_it_waited_for(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    caller.script(act("d"), ACTION, REFUSED)
    caller.script(undo("b"), COMPENSATE, DOWN, OK)
    detail = await run_saga(runtime, saga("a", "b", "c", "d", after=DIAMOND))
    assert detail.transaction.status is CANCELLING
    assert "a" not in steps_called(caller, COMPENSATE)  # b waited for a: a is undone last
    assert statuses(detail)["c"] is BranchStatus.CANCELLED
    detail = await later_round(runtime, clock, runtime.settings.retry_max_s)
    assert detail.transaction.status is CANCELLED
    assert steps_called(caller, COMPENSATE)[-2:] == ["b", "a"]


# --- answers that are retried ----------------------------------------------------------------


@pytest.mark.parametrize(
    "trouble",
    [DOWN, reply(500), reply(None), reply(408), reply(429)],
    ids=["503", "500", "no-answer", "408", "429"],
)
async def test_an_action_that_fails_for_now__is_retried_on_a_later_round_and_the_saga_succeeds(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock, trouble: Any
) -> None:
    caller.script(act("b"), ACTION, trouble, OK)
    detail = await run_saga(runtime, saga("a", "b", "c"))
    txn = detail.transaction
    assert (txn.status, txn.phase_attempts) == (CONFIRMING, 1)
    assert steps_called(caller, ACTION) == ["a", "b"]  # c waits for b
    assert statuses(detail)["b"] is BranchStatus.REGISTERED
    assert detail.branches[1].next_retry_at == txn.next_attempt_at
    assert event_kinds(detail)[-1] is EventKind.RETRY_SCHEDULED
    assert await runtime.recovery.run_once(wait=True) == []  # not due yet

    detail = await later_round(runtime, clock, runtime.settings.retry_max_s)

    assert detail.transaction.status is CONFIRMED
    assert detail.transaction.phase_attempts == 2
    assert steps_called(caller, ACTION) == ["a", "b", "b", "c"]
    assert course_changes(detail) == []
    assert caller.made(COMPENSATE) == []


@pytest.mark.parametrize(
    ("trouble", "delays"),
    [(reply(425, "not yet"), [0.1, 0.1]), (DOWN, [0.1, 0.2])],
    ids=["425-at-the-initial-interval", "503-with-backoff"],
)
async def test_an_action_answering_425__is_retried_at_the_initial_interval_without_backoff(
    make_runtime: MakeRuntime,
    caller: ScriptedCaller,
    clock: ManualClock,
    trouble: Any,
    delays: list[float],
) -> None:
    runtime = make_runtime(caller, rng=CeilingDraws())  # backoff draws its ceiling
    assert runtime.settings.retry_initial_s == 0.1
    caller.script(act("a"), ACTION, trouble, trouble, OK)
    detail = await run_saga(runtime, saga("a"))
    assert retry_delay(detail.transaction) == timedelta(seconds=delays[0])
    clock.advance(delays[0] - 0.001)
    assert await runtime.recovery.run_once(wait=True) == []
    detail = await later_round(runtime, clock, 0.001)
    assert detail.transaction.status is CONFIRMING
    assert retry_delay(detail.transaction) == timedelta(seconds=delays[1])
    detail = await later_round(runtime, clock, delays[1])
    assert detail.transaction.status is CONFIRMED
    assert len(caller.made(ACTION)) == 3


@pytest.mark.parametrize("answer", [reply(409, "cannot undo yet"), reply(400), DOWN])
async def test_a_compensation_answering_409_or_any_error__is_retried_and_never_fails(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock, answer: Any
) -> None:
    caller.script(act("b"), ACTION, REFUSED)
    caller.script(undo("a"), COMPENSATE, answer, answer, OK)
    detail = await run_saga(runtime, saga("a", "b"))
    assert detail.transaction.status is CANCELLING
    assert statuses(detail) == {"a": BranchStatus.CONFIRMED, "b": BranchStatus.CANCELLED}
    for _ in range(2):
        detail = await later_round(runtime, clock, runtime.settings.retry_max_s)
    assert detail.transaction.status is CANCELLED
    assert len(caller.made(COMPENSATE, undo("a"))) == 3
    undos = [e for e in detail.events if e.kind is EventKind.COMPENSATE_CALL and e.branch_id == "a"]
    assert [(e.detail, e.repeats) for e in undos] == [({"done": False}, 2), ({"done": True}, 1)]
    assert len(course_changes(detail)) == 1


async def test_dtm__a_compensation_answering_failure__is_retried_and_an_action_failure_fails(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    failure = reply(200, '{"dtm_result": "FAILURE"}')
    caller.script(act("b"), ACTION, failure)
    caller.script(undo("a"), COMPENSATE, failure, OK)
    detail = await run_saga(runtime, saga("a", "b", dialect="dtm"))
    assert detail.transaction.status is CANCELLING
    assert detail.transaction.cancel_reason == "action_failed: b"
    [first, _] = caller.made(ACTION)
    assert first.params == {"gid": GID, "trans_type": "saga", "branch_id": "a", "op": "action"}
    detail = await later_round(runtime, clock, runtime.settings.retry_max_s)
    assert detail.transaction.status is CANCELLED
    assert steps_called(caller, COMPENSATE) == ["b", "a", "a"]


# --- when a saga gives up its actions ----------------------------------------------------------


async def test_retry_limit__reached__compensates_with_reason_retry_limit(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    caller.script(act("b"), ACTION, DOWN)
    detail = await run_saga(runtime, saga("a", "b", "c", retry_limit=3))
    for _ in range(2):
        assert detail.transaction.status is CONFIRMING
        detail = await later_round(runtime, clock, runtime.settings.retry_max_s)
    txn = detail.transaction
    assert txn.status is CANCELLED
    assert txn.cancel_reason == "retry_limit: 3 rounds"
    assert len(caller.made(ACTION, act("b"))) == 3  # the limit's rounds, no more
    assert "c" not in steps_called(caller, ACTION)
    assert steps_called(caller, COMPENSATE) == ["b", "a"]
    assert course_changes(detail) == [
        {"reason": "retry_limit: 3 rounds", "by": runtime.driver.owner}
    ]


async def test_retry_limit_1__compensates_in_the_first_round(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    caller.script(act("a"), ACTION, DOWN)
    detail = await run_saga(runtime, saga("a", "b", retry_limit=1))
    assert detail.transaction.status is CANCELLED
    assert detail.transaction.cancel_reason == "retry_limit: 1 rounds"
    assert steps_called(caller, ACTION) == ["a"]
    assert steps_called(caller, COMPENSATE) == ["a"]


async def test_timeout__passed_while_the_actions_run__compensates_with_reason_timeout(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    caller.script(act("b"), ACTION, DOWN)
    detail = await run_saga(runtime, saga("a", "b", "c", timeout_s=10))
    assert detail.transaction.status is CONFIRMING
    # Rounds before the deadline go on retrying.
    detail = await later_round(runtime, clock, runtime.settings.retry_max_s)
    assert detail.transaction.status is CONFIRMING
    calls_before = len(caller.made(ACTION))

    detail = await later_round(runtime, clock, 10)

    txn = detail.transaction
    assert txn.status is CANCELLED
    assert txn.cancel_reason == "timeout: the actions ran past 10 s"
    assert len(caller.made(ACTION)) == calls_before  # no action once the deadline passed
    assert steps_called(caller, COMPENSATE) == ["b", "a"]


async def test_timeout__of_a_saga_whose_timeout_does_not_bound_its_actions__changes_nothing(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    caller.script(act("b"), ACTION, DOWN, OK)
    detail = await run_saga(runtime, saga("a", "b", timeout_s=10, bounded=False))
    assert detail.transaction.status is CONFIRMING
    detail = await later_round(runtime, clock, 3600)
    assert detail.transaction.status is CONFIRMED
    assert caller.made(COMPENSATE) == []


# --- a spent budget, and an operator ----------------------------------------------------------


async def test_budget_spent__while_running_actions__parks_in_failed_to_confirm(
    make_runtime: MakeRuntime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    runtime = make_runtime(caller, give_up_after_s=60)
    caller.script(act("b"), ACTION, DOWN)
    await run_saga(runtime, saga("a", "b", "c"))
    detail = await later_round(runtime, clock, 30)
    assert detail.transaction.status is CONFIRMING
    detail = await later_round(runtime, clock, 30)

    txn = detail.transaction
    assert txn.status is GlobalStatus.FAILED_TO_CONFIRM
    assert txn.next_attempt_at is None
    assert event_kinds(detail)[-1] is EventKind.FAILED_TO_CONFIRM
    assert caller.made(COMPENSATE) == []  # parked: an operator decides, nothing is undone
    clock.advance(86400)
    assert await runtime.recovery.run_once(wait=True) == []

    # The participant is back; an operator retries the saga, which carries on where it was.
    caller.script(act("b"), ACTION, OK)
    detail = await runtime.coordinator.retry(GID, INSECURE, actor="ops")
    assert detail.transaction.status is CONFIRMED
    # Three rounds (the last one parked it), then the operator's round.
    assert steps_called(caller, ACTION) == ["a", "b", "b", "b", "b", "c"]
    assert statuses(detail) == dict.fromkeys("abc", BranchStatus.CONFIRMED)
    assert EventKind.ADMIN_RETRY in event_kinds(detail)


async def test_budget_spent__while_compensating__parks_in_failed_to_cancel_and_a_retry_ends_it(
    make_runtime: MakeRuntime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    runtime = make_runtime(caller, give_up_after_s=60)
    caller.script(act("c"), ACTION, REFUSED)
    caller.script(undo("a"), COMPENSATE, DOWN)
    detail = await run_saga(runtime, saga("a", "b", "c"))
    assert detail.transaction.status is CANCELLING
    detail = await later_round(runtime, clock, 30)
    assert detail.transaction.status is CANCELLING
    detail = await later_round(runtime, clock, 30)

    assert detail.transaction.status is GlobalStatus.FAILED_TO_CANCEL
    assert detail.transaction.cancel_reason == "action_failed: c"
    assert statuses(detail) == {
        "a": BranchStatus.CONFIRMED,
        "b": BranchStatus.CANCELLED,
        "c": BranchStatus.CANCELLED,
    }

    caller.script(undo("a"), COMPENSATE, OK)
    detail = await runtime.coordinator.retry(GID, INSECURE, actor="ops", run_now=False)
    assert detail.transaction.status is CANCELLING
    detail = await later_round(runtime, clock, 0)
    assert detail.transaction.status is CANCELLED
    assert set(statuses(detail).values()) == {BranchStatus.CANCELLED}
    # Compensating again never runs an action again.
    assert steps_called(caller, ACTION) == ["a", "b", "c"]


async def test_resolve__a_saga_parked_compensating__marks_the_steps_left_compensated(
    make_runtime: MakeRuntime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    runtime = make_runtime(caller, give_up_after_s=60)
    caller.script(act("b"), ACTION, REFUSED)
    caller.script(undo("a"), COMPENSATE, DOWN)
    await run_saga(runtime, saga("a", "b"))
    await later_round(runtime, clock, 60)
    assert (await runtime.log.get(GID)).status is GlobalStatus.FAILED_TO_CANCEL

    detail = await runtime.coordinator.resolve(GID, INSECURE, actor="ops", note="undone by hand")

    assert detail.transaction.status is CANCELLED
    [a, b] = detail.branches
    assert (a.status, a.last_error) == (
        BranchStatus.CANCELLED,
        "resolved by an operator: undone by hand",
    )
    assert b.status is BranchStatus.CANCELLED


# --- messages ---------------------------------------------------------------------------------


async def test_message__sent__delivers_each_step_once_in_order(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    detail = await send(runtime, message("a", "b", "c", query_url=None))
    txn = detail.transaction
    assert (txn.status, txn.kind) == (CONFIRMED, TransactionKind.MSG)
    assert steps_called(caller, ACTION) == ["a", "b", "c"]
    assert caller.made(COMPENSATE) == []
    assert set(statuses(detail).values()) == {BranchStatus.CONFIRMED}


async def test_message__concurrent__delivers_every_step(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    detail = await send(runtime, message("a", "b", "c", concurrent=True))
    assert detail.transaction.status is CONFIRMED
    assert sorted(steps_called(caller, ACTION)) == ["a", "b", "c"]


@pytest.mark.parametrize("answer", [REFUSED, reply(400), DOWN, reply(None)])
async def test_message__a_delivery_refused_or_failing__is_retried_never_failed(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock, answer: Any
) -> None:
    caller.script(act("b"), ACTION, answer, answer, OK)
    detail = await send(runtime, message("a", "b", "c"))
    assert detail.transaction.status is CONFIRMING
    assert statuses(detail)["b"] is BranchStatus.REGISTERED  # not "refused": it goes out later
    for _ in range(2):
        detail = await later_round(runtime, clock, runtime.settings.retry_max_s)
    assert detail.transaction.status is CONFIRMED
    assert steps_called(caller, ACTION) == ["a", "b", "b", "b", "c"]
    assert course_changes(detail) == []
    assert detail.transaction.cancel_reason is None


async def test_message__prepared_then_submitted__delivers_only_once_submitted(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    begun = await runtime.coordinator.post_message(message("a", "b"), INSECURE, prepared=True)
    assert begun.created
    assert begun.detail.transaction.status is GlobalStatus.TRYING
    assert caller.calls == []

    decided = await runtime.coordinator.decide_message(GID, Decision.CONFIRM, INSECURE)
    assert decided.transaction.status in (CONFIRMING, CONFIRMED)  # the decision was taken
    assert decided.transaction.decided_at is not None
    await runtime.driver.settle(GID)

    detail = await runtime.log.detail(GID)
    assert detail.transaction.status is CONFIRMED
    assert steps_called(caller, ACTION) == ["a", "b"]
    # A repeat is no error and sends nothing again; an abort now is refused.
    again = await runtime.coordinator.decide_message(GID, Decision.CONFIRM, INSECURE)
    assert again.transaction.status is CONFIRMED
    assert again.transaction.decided_at == detail.transaction.decided_at  # not decided again
    with pytest.raises(Conflict):
        await runtime.coordinator.decide_message(GID, Decision.CANCEL, INSECURE)
    assert len(caller.made(ACTION)) == 2


async def test_message__prepared_then_aborted__calls_nobody(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    await runtime.coordinator.post_message(message("a", "b"), INSECURE, prepared=True)
    await runtime.coordinator.decide_message(
        GID, Decision.CANCEL, INSECURE, reason="order withdrawn"
    )
    await runtime.driver.settle(GID)
    detail = await runtime.log.detail(GID)
    assert detail.transaction.status is CANCELLED
    assert detail.transaction.cancel_reason == "client: order withdrawn"
    assert set(statuses(detail).values()) == {BranchStatus.REGISTERED}
    with pytest.raises(Conflict):
        await runtime.coordinator.decide_message(GID, Decision.CONFIRM, INSECURE)
    clock.advance(3600)
    assert await runtime.recovery.run_once(wait=True) == []
    assert caller.calls == []


async def test_message__decisions_on_a_saga__are_refused(
    runtime: Runtime, caller: ScriptedCaller
) -> None:
    await run_saga(runtime, saga("a"))
    with pytest.raises(Conflict, match="not a message"):
        await runtime.coordinator.decide_message(GID, Decision.CANCEL, INSECURE)


# --- a prepared message past its deadline ------------------------------------------------------


async def prepared(runtime: Runtime, clock: ManualClock, *steps: str, **kw: Any) -> None:
    """A prepared message (deadline in 10 s) whose deadline has just passed."""
    await runtime.coordinator.post_message(message(*steps, **kw), INSECURE, prepared=True)
    clock.advance(9.999)
    assert await runtime.recovery.run_once(wait=True) == []  # not asked before its deadline
    clock.advance(0.001)


def queries(caller: ScriptedCaller) -> list[OutboundCall]:
    return [c for c in caller.calls if c.url == QUERY_URL]


async def test_prepared_past_its_deadline__query_answering_200__delivers_it(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    caller.script(QUERY_URL, None, reply(200))
    await prepared(runtime, clock, "a", "b")
    [lease] = await runtime.recovery.run_once(wait=True)
    assert lease.gid == GID
    await runtime.driver.settle(GID)
    detail = await runtime.log.detail(GID)
    assert detail.transaction.status is CONFIRMED
    assert steps_called(caller, ACTION) == ["a", "b"]
    [query] = queries(caller)
    assert (query.method, query.params) == ("GET", {"gid": GID})
    assert query.headers["X-TCC-Gid"] == GID
    decision = next(e for e in detail.events if e.kind is EventKind.DECISION)
    assert decision.detail["decision"] == "confirm"


async def test_prepared_past_its_deadline__query_answering_409__aborts_it_calling_nobody(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    caller.script(QUERY_URL, None, reply(409, "never"))
    await prepared(runtime, clock, "a", "b")
    await runtime.recovery.run_once(wait=True)
    await runtime.driver.settle(GID)
    detail = await runtime.log.detail(GID)
    txn = detail.transaction
    assert txn.status is CANCELLED
    assert txn.cancel_reason is not None
    assert txn.cancel_reason.startswith("query_refused")
    assert caller.made(ACTION) == []
    assert len(queries(caller)) == 1


async def test_prepared_past_its_deadline__without_a_query_url__is_aborted_as_timed_out(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    await prepared(runtime, clock, "a", query_url=None)
    await runtime.recovery.run_once(wait=True)
    await runtime.driver.settle(GID)
    txn = await runtime.log.get(GID)
    assert txn.status is CANCELLED
    assert txn.cancel_reason is not None
    assert txn.cancel_reason.startswith("timeout: ")  # nobody said no: it was not submitted
    assert caller.calls == []


async def test_prepared_past_its_deadline__query_answering_503__asks_again_with_backoff(
    make_runtime: MakeRuntime, clock: ManualClock
) -> None:
    caller = ScriptedCaller()
    runtime = make_runtime(caller, rng=CeilingDraws())
    caller.script(QUERY_URL, None, DOWN, DOWN, reply(200))
    await prepared(runtime, clock, "a")

    [claimed] = await runtime.recovery.run_once(wait=True)
    assert claimed.gid == GID
    txn = await runtime.log.get(GID)
    assert (txn.status, txn.phase_attempts, txn.lease_owner) == (GlobalStatus.TRYING, 1, None)
    assert retry_delay(txn) == timedelta(seconds=0.1)
    clock.advance(0.099)
    assert await runtime.recovery.run_once(wait=True) == []
    detail = await later_round(runtime, clock, 0.001)
    assert detail.transaction.phase_attempts == 2
    assert retry_delay(detail.transaction) == timedelta(seconds=0.2)  # backing off
    asked = [e for e in detail.events if e.kind is EventKind.QUERY_PREPARED]
    assert [(e.http_status, e.detail["answer"], e.repeats) for e in asked] == [(503, "retry", 2)]
    assert caller.made(ACTION) == []

    await later_round(runtime, clock, 0.2)
    await runtime.driver.settle(GID)
    detail = await runtime.log.detail(GID)
    assert detail.transaction.status is CONFIRMED
    assert detail.transaction.phase_attempts == 1  # the deliveries' rounds, counted afresh
    assert steps_called(caller, ACTION) == ["a"]
    assert len(queries(caller)) == 3


async def test_prepared_past_its_deadline__query_answering_425__asks_again_at_the_interval(
    make_runtime: MakeRuntime, clock: ManualClock
) -> None:
    caller = ScriptedCaller()
    runtime = make_runtime(caller, rng=CeilingDraws())
    caller.script(QUERY_URL, None, reply(425), reply(425), reply(409))
    await prepared(runtime, clock, "a")
    detail = await later_round(runtime, clock, 0)
    assert retry_delay(detail.transaction) == timedelta(seconds=0.1)
    detail = await later_round(runtime, clock, 0.1)
    assert detail.transaction.phase_attempts == 2
    assert retry_delay(detail.transaction) == timedelta(seconds=0.1)  # no backoff
    asked = [e for e in detail.events if e.kind is EventKind.QUERY_PREPARED]
    assert [(e.detail["answer"], e.repeats) for e in asked] == [("ongoing", 2)]
    await later_round(runtime, clock, 0.1)
    await runtime.driver.settle(GID)
    assert (await runtime.log.get(GID)).status is CANCELLED
    assert caller.made(ACTION) == []


async def test_prepared_past_its_deadline__may_still_be_submitted_while_asked_about(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    caller.script(QUERY_URL, None, DOWN)
    await prepared(runtime, clock, "a")
    await runtime.recovery.run_once(wait=True)
    assert (await runtime.log.get(GID)).phase_attempts == 1

    decided = await runtime.coordinator.decide_message(GID, Decision.CONFIRM, INSECURE)
    assert decided.transaction.status in (CONFIRMING, CONFIRMED)  # the decision was taken
    assert decided.transaction.decided_at is not None
    await runtime.driver.settle(GID)
    assert (await runtime.log.get(GID)).status is CONFIRMED
    assert steps_called(caller, ACTION) == ["a"]


async def test_confirm__of_a_prepared_message_past_its_deadline__submits_it_or_says_why_not(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    caller.script(QUERY_URL, None, DOWN)
    await prepared(runtime, clock, "a")
    await runtime.recovery.run_once(wait=True)
    try:
        detail = await runtime.coordinator.confirm(GID, INSECURE)
    except Conflict:
        return  # refused in words: fine too
    assert detail.transaction.status in (CONFIRMING, CONFIRMED)


# --- a coordinator that dies mid-saga ---------------------------------------------------------


async def test_stopped_mid_saga__a_second_coordinator_finishes_it_at_once(
    make_runtime: MakeRuntime, clock: ManualClock
) -> None:
    first_caller, second_caller = ScriptedCaller(), ScriptedCaller()
    held = Held()
    first_caller.script(act("b"), ACTION, held)
    first = make_runtime(first_caller, shutdown_grace_s=0)
    second = make_runtime(second_caller)
    await first.coordinator.begin_saga(saga("a", "b", "c"), INSECURE, wait=False)
    await asyncio.wait_for(held.entered.wait(), 5)  # a is done, b's action is out

    await first.stop()  # b's call is cut short; the lease is handed back

    txn = await second.log.get(GID)
    assert (txn.status, txn.lease_owner) == (CONFIRMING, None)
    [lease] = await second.recovery.run_once(wait=True)
    assert lease.gid == GID
    detail = await second.log.detail(GID)
    assert detail.transaction.status is CONFIRMED
    assert steps_called(first_caller, ACTION) == ["a", "b"]
    assert steps_called(second_caller, ACTION) == ["b", "c"]  # b again: it never answered
    assert detail.events[-1].detail["by"] == second.driver.owner


async def test_lease_lapsed_mid_saga__a_second_coordinator_takes_over_and_fences_the_first(
    make_runtime: MakeRuntime, clock: ManualClock
) -> None:
    first_caller, second_caller = ScriptedCaller(), ScriptedCaller()
    held = Held(OK)
    first_caller.script(act("b"), ACTION, held)
    first = make_runtime(first_caller, lease_ttl_s=30)
    second = make_runtime(second_caller, lease_ttl_s=30)
    await first.coordinator.begin_saga(saga("a", "b", "c"), INSECURE, wait=False)
    await asyncio.wait_for(held.entered.wait(), 5)

    clock.advance(29.999)
    assert await second.recovery.run_once(wait=True) == []  # the first still holds it
    clock.advance(0.001)
    [lease] = await second.recovery.run_once(wait=True)
    assert lease.gid == GID
    assert (await second.log.get(GID)).status is CONFIRMED

    held.release()  # the first one's answer comes late: it may write nothing
    await first.driver.settle(GID)
    detail = await second.log.detail(GID)
    assert detail.transaction.status is CONFIRMED
    assert {b.branch_id: b.attempts for b in detail.branches} == {"a": 1, "b": 1, "c": 1}
    assert event_kinds(detail).count(EventKind.ACTION_CALL) == 3
    assert steps_called(second_caller, ACTION) == ["b", "c"]


async def test_lease_lapsed_mid_compensation__the_second_coordinator_goes_on_compensating(
    make_runtime: MakeRuntime, clock: ManualClock
) -> None:
    first_caller, second_caller = ScriptedCaller(), ScriptedCaller()
    held = Held(OK)
    first_caller.script(act("c"), ACTION, REFUSED)
    first_caller.script(undo("b"), COMPENSATE, held)
    first = make_runtime(first_caller, lease_ttl_s=30)
    second = make_runtime(second_caller, lease_ttl_s=30)
    await first.coordinator.begin_saga(saga("a", "b", "c"), INSECURE, wait=False)
    await asyncio.wait_for(held.entered.wait(), 5)  # c undone, b's compensation out

    clock.advance(30)
    [claim] = await second.recovery.run_once(wait=True)
    assert claim.gid == GID
    held.release()
    await first.driver.settle(GID)

    detail = await second.log.detail(GID)
    assert detail.transaction.status is CANCELLED
    assert detail.transaction.cancel_reason == "action_failed: c"
    assert second_caller.made(ACTION) == []  # the course change held: no action runs again
    assert steps_called(second_caller, COMPENSATE) == ["b", "a"]
    assert set(statuses(detail).values()) == {BranchStatus.CANCELLED}
    assert len(course_changes(detail)) == 1


# --- a request that died between its writes, and other edges -------------------------------


def fail_first_call(target: Any, name: str) -> None:
    """The log's ``name`` fails once as if the database were away, then works again."""
    real = getattr(target, name)
    failed = False

    async def once_unavailable(*args: Any, **kwargs: Any) -> Any:
        nonlocal failed
        if not failed:
            failed = True
            raise DatabaseUnavailable("the database went away")
        return await real(*args, **kwargs)

    setattr(target, name, once_unavailable)


async def test_every_action_done__the_round_end_lost__the_deadline_then_compensates_nothing(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    fail_first_call(runtime.log, "finish_round")
    await runtime.coordinator.begin_saga(saga("a", "b", timeout_s=10), INSECURE, wait=False)
    await runtime.driver.settle(GID)
    assert (await runtime.log.get(GID)).status is CONFIRMING  # both actions logged, no end

    detail = await later_round(runtime, clock, 60)  # past its deadline
    assert detail.transaction.status is CONFIRMED
    assert steps_called(caller, COMPENSATE) == []
    assert steps_called(caller, ACTION) == ["a", "b"]


async def test_unprepared_message__its_decision_lost__recovery_delivers_it(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    fail_first_call(runtime.log, "decide")
    request = message("a", query_url=None)
    with pytest.raises(DatabaseUnavailable):
        await runtime.coordinator.post_message(request, INSECURE, prepared=False)
    assert (await runtime.log.get(GID)).status is GlobalStatus.TRYING

    detail = await later_round(runtime, clock, 120)
    assert detail.transaction.status is CONFIRMED
    assert steps_called(caller, ACTION) == ["a"]
    assert queries(caller) == []  # nobody to ask, and no need: it was never held


async def test_saga__its_decision_lost__recovery_runs_its_actions(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    fail_first_call(runtime.log, "decide")
    with pytest.raises(DatabaseUnavailable):
        await runtime.coordinator.begin_saga(saga("a", "b"), INSECURE, wait=False)

    detail = await later_round(runtime, clock, 120)
    assert detail.transaction.status is CONFIRMED
    assert steps_called(caller, ACTION) == ["a", "b"]
    assert steps_called(caller, COMPENSATE) == []


async def test_parked_compensating__the_overview_names_the_step_whose_compensation_fails(
    make_runtime: MakeRuntime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    runtime = make_runtime(caller, give_up_after_s=60)
    caller.script(act("b"), ACTION, REFUSED)
    caller.script(undo("b"), COMPENSATE, DOWN)
    await run_saga(runtime, saga("a", "b", "c"))
    await later_round(runtime, clock, 30)
    detail = await later_round(runtime, clock, 31)
    assert detail.transaction.status is GlobalStatus.FAILED_TO_CANCEL

    overview = await runtime.log.overview(3600, 10)
    assert overview.parked_branches[GID].branch_id == "b"


async def test_a_branch_added_to_a_prepared_message__is_refused(runtime: Runtime) -> None:
    await runtime.coordinator.post_message(message("a"), INSECURE, prepared=True)
    with pytest.raises(Conflict, match="no branch can be added"):
        await runtime.coordinator.register_branch(GID, step("x"), INSECURE)
    assert [b.branch_id for b in (await runtime.log.detail(GID)).branches] == ["a"]
