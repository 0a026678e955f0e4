"""The recovery loop on the log's clock: deadlines, and leases that lapse."""

from __future__ import annotations

from coordinator.core.apikeys import INSECURE
from coordinator.core.states import BranchStatus, Decision, EventKind, GlobalStatus, Phase
from coordinator.engine.runtime import Runtime
from coordinator.txlog.memory import ManualClock
from tests.unit.engine.conftest import MakeRuntime
from tests.unit.engine.scripted import GID, Held, ScriptedCaller, begin_request, branch, url


async def test_trying_transaction__past_its_deadline__is_cancelled_with_reason_timeout(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    await runtime.coordinator.begin(begin_request(branch("a"), timeout_s=10), INSECURE)
    clock.advance(9.999)
    assert await runtime.recovery.run_once(wait=True) == []
    clock.advance(0.001)
    [lease] = await runtime.recovery.run_once(wait=True)
    assert lease.gid == GID

    detail = await runtime.log.detail(GID)
    assert detail.transaction.status is GlobalStatus.CANCELLED
    assert detail.transaction.cancel_reason == "timeout"
    assert detail.branches[0].status is BranchStatus.CANCELLED
    decision = next(e for e in detail.events if e.kind is EventKind.DECISION)
    assert decision.detail == {"decision": "cancel", "reason": "timeout", "by": "coordinator-1"}
    # The try never ran; the cancel is an empty compensation the participant must accept.
    assert caller.made(Phase.TRY) == []
    assert [c.url for c in caller.made(Phase.CANCEL)] == [url("a", Phase.CANCEL)]


async def test_trying_transaction__decided_before_recovery_ran__is_left_to_its_decider(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    await runtime.coordinator.begin(
        begin_request(branch("a", with_try=False), timeout_s=10), INSECURE
    )
    await runtime.coordinator.confirm(GID, INSECURE)
    clock.advance(3600)
    assert await runtime.recovery.run_once(wait=True) == []
    assert (await runtime.log.get(GID)).status is GlobalStatus.CONFIRMED


async def test_expired_lease__is_taken_over_by_a_second_coordinator_and_fences_the_first(
    make_runtime: MakeRuntime, clock: ManualClock
) -> None:
    stuck_caller, live_caller = ScriptedCaller(), ScriptedCaller()
    held = Held()
    stuck_caller.script(url("a", Phase.CONFIRM), Phase.CONFIRM, held)
    stuck = make_runtime(stuck_caller, lease_ttl_s=30)
    live = make_runtime(live_caller, lease_ttl_s=30)
    await stuck.coordinator.begin(begin_request(branch("a", with_try=False)), INSECURE)
    await stuck.driver.decide(GID, Decision.CONFIRM, reason=None)
    await held.entered.wait()  # the first coordinator's confirm is in flight, then hangs

    clock.advance(29.999)
    assert await live.recovery.run_once(wait=True) == []  # the lease still holds
    clock.advance(0.001)
    [lease] = await live.recovery.run_once(wait=True)
    assert lease.gid == GID
    assert (await live.log.get(GID)).status is GlobalStatus.CONFIRMED

    held.release()  # the first coordinator's answer arrives late: it may write nothing
    late = await stuck.driver.wait_for(GID)
    assert late.status is GlobalStatus.CONFIRMED
    detail = await live.log.detail(GID)
    assert detail.branches[0].attempts == 1
    assert [e.kind for e in detail.events].count(EventKind.CONFIRM_CALL) == 1
    assert detail.events[-1].kind is EventKind.CONFIRMED
    assert detail.events[-1].detail["by"] == live.driver.owner
    assert len(stuck_caller.made(Phase.CONFIRM)) == len(live_caller.made(Phase.CONFIRM)) == 1
