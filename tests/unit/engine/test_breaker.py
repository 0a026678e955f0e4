"""Circuit breakers on the in-memory log with a moved clock: a participant that keeps failing
opens its breaker, its phase-two calls wait (no round counted, nothing parks), new tries to it
fail at once; after the open time one probe goes (its health URL, or one real call), and calls
resume at a ramped rate. The state is the log's: another coordinator, or one started later,
holds the same calls back."""

from __future__ import annotations

import dataclasses
import random

import pytest

from coordinator.core import breaker
from coordinator.core.apikeys import INSECURE
from coordinator.core.breaker import BreakerState
from coordinator.core.errors import CircuitOpen
from coordinator.core.records import NewParticipant
from coordinator.core.states import BranchStatus, EventKind, GlobalStatus, Phase, TransactionKind
from coordinator.engine.runtime import Runtime
from coordinator.txlog.memory import InMemoryLog, ManualClock
from tests.unit.engine.conftest import MakeRuntime
from tests.unit.engine.scripted import (
    GID,
    OK,
    ScriptedCaller,
    begin_request,
    branch,
    reply,
    url,
)

DOWN = reply(None)
BASE = "http://127.0.0.1:9001/a"  # branch("a")'s URLs are under it
HEALTH = "http://127.0.0.1:9001/health"
BREAKER = {
    "breaker_failures": 3,
    "breaker_open_s": 10.0,
    "breaker_max_open_s": 40.0,
    "breaker_ramp_s": 10.0,
    "breaker_ramp_start_per_s": 1.0,
    "retry_initial_s": 0.1,
    "retry_max_s": 0.2,
    "give_up_after_s": 3600.0,
    "confirm_wait_s": 0.05,  # an auto begin answers once its first round is over
}


class NoSpread(random.Random):
    """Held calls come back as soon as they may (no spreading over the ramp) and retries
    at their longest: the times a test waits are exact."""

    def random(self) -> float:
        return 0.0

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def breaking(make_runtime: MakeRuntime, caller: ScriptedCaller) -> Runtime:
    return make_runtime(caller, rng=NoSpread(), **BREAKER)


async def register(runtime: Runtime, health_url: str | None = None) -> None:
    new = NewParticipant.of("stock", base_url=BASE, health_url=health_url)
    await runtime.coordinator.register_participant(new, INSECURE)


async def confirming_on_a_dead_participant(
    runtime: Runtime, caller: ScriptedCaller, gid: str = "g1"
) -> None:
    caller.script(url("a", Phase.CONFIRM), Phase.CONFIRM, DOWN)
    begun = await runtime.coordinator.begin(
        begin_request(branch("a"), auto=True, gid=gid), INSECURE
    )
    assert begun.detail.transaction.status is GlobalStatus.CONFIRMING
    assert begun.detail.branches[0].participant == "stock"


async def rounds(runtime: Runtime, clock: ManualClock, count: int, step_s: float = 1.0) -> None:
    for _ in range(count):
        clock.advance(step_s)
        await runtime.recovery.run_once(wait=True)


async def state(txlog: InMemoryLog) -> BreakerState:
    registered = await txlog.participant("stock")
    assert registered is not None
    return registered.breaker_state


async def test_failing_calls__open_the_breaker__then_phase_two_waits_without_counting_rounds(
    breaking: Runtime, caller: ScriptedCaller, clock: ManualClock, txlog: InMemoryLog
) -> None:
    await register(breaking)
    await confirming_on_a_dead_participant(breaking, caller)  # failure 1 (the auto round)
    await rounds(breaking, clock, 2)  # failures 2 and 3: open
    assert await state(txlog) is BreakerState.OPEN
    sent = len(caller.made(Phase.CONFIRM))
    assert sent == 3
    before = await txlog.get("g1")

    await rounds(breaking, clock, 5)  # due once the round's backoff is over, then held
    assert len(caller.made(Phase.CONFIRM)) == sent  # nothing sent while open
    txn = await txlog.get("g1")
    assert txn.status is GlobalStatus.CONFIRMING
    assert txn.phase_attempts == before.phase_attempts  # held rounds are no rounds
    detail = await txlog.detail("g1")
    held = [e for e in detail.events if e.kind is EventKind.HELD_BY_BREAKER]
    assert len(held) == 1  # repeats collapse
    assert held[0].detail["participants"] == ["stock"]
    assert "3 calls failed in a row" in held[0].detail["reason"]


async def test_open__a_new_try_fails_at_once_and_its_transaction_cancels(
    breaking: Runtime, caller: ScriptedCaller, clock: ManualClock, txlog: InMemoryLog
) -> None:
    await register(breaking)
    await confirming_on_a_dead_participant(breaking, caller)
    await rounds(breaking, clock, 2)
    tries = len(caller.made(Phase.TRY))
    begun = await breaking.coordinator.begin(
        begin_request(branch("a"), branch("b"), auto=True, gid="g2"), INSECURE
    )
    assert len(caller.made(Phase.TRY)) == tries + 1  # b's try only
    txn = begun.detail.transaction
    assert txn.cancel_reason == "try_failed: a"
    stuck = next(b for b in begun.detail.branches if b.branch_id == "a")
    assert stuck.status is BranchStatus.TRY_FAILED
    assert stuck.last_error is not None
    assert "not sent: circuit open" in stuck.last_error
    # b (another participant) is cancelled at once; a's (empty) cancel waits for the probe.
    other = next(b for b in begun.detail.branches if b.branch_id == "b")
    assert other.status is BranchStatus.CANCELLED


async def test_open__registering_a_branch_whose_try_the_client_runs__is_refused(
    breaking: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    await register(breaking)
    await confirming_on_a_dead_participant(breaking, caller)
    await rounds(breaking, clock, 2)
    await breaking.coordinator.begin(begin_request(gid="g3"), INSECURE)
    with pytest.raises(CircuitOpen, match="'stock' is not taking new work"):
        await breaking.coordinator.register_branch("g3", branch("a", with_try=False), INSECURE)


async def test_probe__one_real_call_after_the_open_time__recovers_it(
    breaking: Runtime, caller: ScriptedCaller, clock: ManualClock, txlog: InMemoryLog
) -> None:
    await register(breaking)
    await confirming_on_a_dead_participant(breaking, caller)
    await rounds(breaking, clock, 2)
    sent = len(caller.made(Phase.CONFIRM))
    await rounds(breaking, clock, 9)
    assert len(caller.made(Phase.CONFIRM)) == sent  # still open
    caller.script(url("a", Phase.CONFIRM), Phase.CONFIRM, OK)
    await rounds(breaking, clock, 2)  # the open time is over: one probe, which answers
    assert len(caller.made(Phase.CONFIRM)) == sent + 1
    assert await state(txlog) is BreakerState.CLOSED
    assert (await txlog.get("g1")).status is GlobalStatus.CONFIRMED


async def test_probe__failing__reopens_for_twice_as_long(
    breaking: Runtime, caller: ScriptedCaller, clock: ManualClock, txlog: InMemoryLog
) -> None:
    await register(breaking)
    await confirming_on_a_dead_participant(breaking, caller)
    await rounds(breaking, clock, 2)
    await rounds(breaking, clock, 11)  # the probe goes, and fails
    registered = await txlog.participant("stock")
    assert registered is not None
    assert registered.breaker_state is BreakerState.OPEN
    assert registered.breaker_opens == 2
    assert registered.breaker_retry_at is not None
    assert (registered.breaker_retry_at - registered.breaker_since).total_seconds() == 20
    assert registered.breaker_reason is not None
    assert registered.breaker_reason.startswith("probe failed")


async def test_probe__by_the_health_url__sends_no_real_call(
    breaking: Runtime, caller: ScriptedCaller, clock: ManualClock, txlog: InMemoryLog
) -> None:
    await register(breaking, health_url=HEALTH)
    await confirming_on_a_dead_participant(breaking, caller)
    await rounds(breaking, clock, 2)
    sent = len(caller.made(Phase.CONFIRM))
    caller.script(HEALTH, None, reply(503))
    clock.advance(11)
    assert await breaking.participants.watch() == 1
    await breaking.participants.probes_done()
    assert await state(txlog) is BreakerState.OPEN  # still down: reopened
    caller.script(HEALTH, None, OK)
    clock.advance(21)
    assert await breaking.participants.watch() == 1
    await breaking.participants.probes_done()
    assert await state(txlog) is BreakerState.CLOSED
    assert len(caller.made(Phase.CONFIRM)) == sent
    assert [c.method for c in caller.made(None, HEALTH)] == ["GET", "GET"]


async def test_recovered__the_backlog_returns_within_the_ramp(
    make_runtime: MakeRuntime, caller: ScriptedCaller, clock: ManualClock, txlog: InMemoryLog
) -> None:
    # Opened by consecutive failures only, so that all 30 begin (each try that answers
    # breaks the run of failed confirms) before the recovery rounds open it.
    breaking = make_runtime(caller, rng=NoSpread(), **{**BREAKER, "breaker_min_calls": 0})
    await register(breaking, health_url=HEALTH)
    for n in range(30):
        await confirming_on_a_dead_participant(breaking, caller, gid=f"g{n}")
    await rounds(breaking, clock, 1)
    assert await state(txlog) is BreakerState.OPEN
    caller.script(url("a", Phase.CONFIRM), Phase.CONFIRM, OK)
    clock.advance(11)
    await breaking.participants.watch()  # healthy: closed, ramping from 1 call/s
    await breaking.participants.probes_done()
    assert await state(txlog) is BreakerState.CLOSED
    sent = len(caller.made(Phase.CONFIRM))
    per_second = []
    for _ in range(12):
        await rounds(breaking, clock, 1)
        per_second.append(len(caller.made(Phase.CONFIRM)) - sent)
        sent = len(caller.made(Phase.CONFIRM))
    # 1 call/s doubling every 2 s (five doublings over 10 s), one second's worth banked.
    allowed = [2 ** (1 + (s + 1) / 2) for s in range(12)]
    assert all(n <= a + 1 for n, a in zip(per_second, allowed, strict=True)), per_second
    assert sum(per_second[:4]) < 30  # not everything at once
    await rounds(breaking, clock, 10)
    statuses = {(await txlog.get(f"g{n}")).status for n in range(30)}
    assert statuses == {GlobalStatus.CONFIRMED}


async def test_shared__another_coordinator_holds_the_same_calls__and_a_new_one_too(
    breaking: Runtime,
    caller: ScriptedCaller,
    clock: ManualClock,
    txlog: InMemoryLog,
    make_runtime: MakeRuntime,
) -> None:
    await register(breaking)
    await confirming_on_a_dead_participant(breaking, caller)
    await rounds(breaking, clock, 2)
    other_caller = ScriptedCaller()
    other = make_runtime(other_caller, rng=NoSpread(), **BREAKER)  # e.g. started after
    await other.participants.refresh()
    await rounds(other, clock, 5)
    assert other_caller.made(Phase.CONFIRM) == []
    begun = await other.coordinator.begin(begin_request(branch("a"), auto=True, gid="g9"), INSECURE)
    assert other_caller.made(Phase.TRY) == []
    assert begun.detail.transaction.status in (GlobalStatus.CANCELLING, GlobalStatus.CANCELLED)


async def test_breaker_off__calls_go_out_whatever_fails(
    make_runtime: MakeRuntime, caller: ScriptedCaller, clock: ManualClock, txlog: InMemoryLog
) -> None:
    runtime = make_runtime(caller, rng=NoSpread(), **{**BREAKER, "breaker": False})
    await register(runtime)
    await confirming_on_a_dead_participant(runtime, caller)
    await rounds(runtime, clock, 6)
    assert await state(txlog) is BreakerState.CLOSED
    assert len(caller.made(Phase.CONFIRM)) >= 5


async def test_failures_counted_before_the_breaker_moved__are_forgotten(
    make_runtime: MakeRuntime, caller: ScriptedCaller, clock: ManualClock, txlog: InMemoryLog
) -> None:
    """Two coordinators each saw failures; one opened and then closed the breaker. The other
    neither counts its old failures nor the late answers of calls it sent before."""
    first = make_runtime(caller, rng=NoSpread(), **BREAKER)
    second = make_runtime(ScriptedCaller(), rng=NoSpread(), **BREAKER)
    await register(first)
    await second.participants.refresh()
    book = second.participants
    in_flight = await book.admit("stock", Phase.CONFIRM)  # sent before the breaker moves
    for _ in range(2):
        await book.report("stock", Phase.CONFIRM, DOWN, await book.admit("stock", Phase.CONFIRM))
    clock.advance(1)  # (each move is stamped with the log's clock: its stay's identity)
    await txlog.move_breaker(breaker.trip("stock", "elsewhere", 0, first.settings.breaker_policy))
    clock.advance(1)
    await txlog.move_breaker(breaker.reset("stock"))
    await book.refresh()
    await book.report("stock", Phase.CONFIRM, DOWN, in_flight)  # old news
    await book.report("stock", Phase.CONFIRM, DOWN, await book.admit("stock", Phase.CONFIRM))
    assert await state(txlog) is BreakerState.CLOSED  # 1 fresh failure, not 3 or 4


async def test_tripping_again_while_ramping_up__stays_open_twice_as_long(
    breaking: Runtime, caller: ScriptedCaller, clock: ManualClock, txlog: InMemoryLog
) -> None:
    """A participant whose health URL answers while its real calls fail does not flap."""
    await register(breaking, health_url=HEALTH)
    book = breaking.participants
    for _ in range(3):
        await book.report("stock", Phase.CONFIRM, DOWN, await book.admit("stock", Phase.CONFIRM))
    first = await txlog.participant("stock")
    assert first is not None
    assert first.breaker_retry_at is not None
    assert (first.breaker_retry_at - first.breaker_since).total_seconds() == 10
    clock.advance(11)
    await book.watch()
    await book.probes_done()  # the health URL answers (unscripted: 200)
    assert await state(txlog) is BreakerState.CLOSED
    clock.advance(1)  # within the 10 s ramp
    for _ in range(3):
        admitted = await book.admit("stock", Phase.TRY)  # (tries are not held by the ramp)
        await book.report("stock", Phase.TRY, DOWN, admitted)
    again = await txlog.participant("stock")
    assert again is not None
    assert again.breaker_state is BreakerState.OPEN
    assert again.breaker_retry_at is not None
    assert (again.breaker_retry_at - again.breaker_since).total_seconds() == 20


async def test_saga__a_round_whose_step_was_held__spends_none_of_its_retry_limit(
    make_runtime: MakeRuntime, caller: ScriptedCaller, clock: ManualClock, txlog: InMemoryLog
) -> None:
    runtime = make_runtime(caller, rng=NoSpread(), **{**BREAKER, "breaker_failures": 2})
    await register(runtime)
    caller.script(url("a", Phase.CONFIRM), Phase.ACTION, DOWN)
    request = dataclasses.replace(
        begin_request(
            dataclasses.replace(branch("a", with_try=False), cancel_url=url("a", Phase.CANCEL))
        ),
        kind=TransactionKind.SAGA,
        options={"concurrent": False, "retry_limit": 3},
    )
    await runtime.coordinator.begin_saga(request, INSECURE, wait=False)
    await runtime.driver.settle(GID)
    await rounds(runtime, clock, 1)  # the second failure: the breaker opens
    assert await state(txlog) is BreakerState.OPEN
    await rounds(runtime, clock, 3)  # held rounds: no limit spent, no compensation
    assert (await txlog.get(GID)).status is GlobalStatus.CONFIRMING
    caller.script(url("a", Phase.CONFIRM), Phase.ACTION, OK)
    await rounds(runtime, clock, 10)  # the probe (a real action) answers
    txn = await txlog.get(GID)
    assert txn.status is GlobalStatus.CONFIRMED
    assert caller.made(Phase.COMPENSATE) == []
