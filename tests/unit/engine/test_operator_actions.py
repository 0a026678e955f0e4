"""An operator's retry and resolve of a parked transaction, through the service layer."""

from __future__ import annotations

import pytest

from coordinator.core.apikeys import INSECURE, Principal, Scope
from coordinator.core.errors import Conflict, Forbidden
from coordinator.core.states import BranchStatus, EventKind, GlobalStatus, Phase
from coordinator.engine.runtime import Runtime
from coordinator.txlog.memory import ManualClock
from tests.unit.engine.conftest import MakeRuntime
from tests.unit.engine.scripted import (
    GID,
    ScriptedCaller,
    begin_request,
    branch,
    reply,
    url,
)

SERVICE = Principal("shop", Scope.SERVICE)
CONFIRM_A = url("a", Phase.CONFIRM)


@pytest.fixture
async def parked(make_runtime: MakeRuntime, caller: ScriptedCaller, clock: ManualClock) -> Runtime:
    """A coordinator whose transaction GID gave up confirming branch a (b is confirmed)."""
    runtime = make_runtime(caller, give_up_after_s=60)
    caller.script(CONFIRM_A, Phase.CONFIRM, reply(503, "down"))
    await runtime.coordinator.begin(begin_request(branch("a"), branch("b"), auto=True), INSECURE)
    clock.advance(60)
    await runtime.recovery.run_once(wait=True)
    assert (await runtime.log.get(GID)).status is GlobalStatus.FAILED_TO_CONFIRM
    return runtime


async def test_retry__a_parked_transaction__runs_a_round_at_once_and_confirms(
    parked: Runtime, caller: ScriptedCaller
) -> None:
    caller.script(CONFIRM_A, Phase.CONFIRM, reply(200))  # the participant is back
    detail = await parked.coordinator.retry(GID, INSECURE, actor="ops")
    assert detail.transaction.status is GlobalStatus.CONFIRMED
    assert detail.transaction.phase_attempts == 1  # a fresh budget, counted afresh
    retried = next(e for e in detail.events if e.kind is EventKind.ADMIN_RETRY)
    assert retried.detail == {"from": "failed_to_confirm", "actor": "ops"}
    assert detail.events[-1].kind is EventKind.CONFIRMED
    assert len(caller.made(Phase.CONFIRM, CONFIRM_A)) == 3


async def test_retry__without_run_now__leaves_the_round_to_recovery(
    parked: Runtime, caller: ScriptedCaller
) -> None:
    caller.script(CONFIRM_A, Phase.CONFIRM, reply(200))
    detail = await parked.coordinator.retry(GID, INSECURE, actor="cli", run_now=False)
    assert detail.transaction.status is GlobalStatus.CONFIRMING
    assert detail.transaction.lease_owner is None
    [lease] = await parked.recovery.run_once(wait=True)
    assert lease.gid == GID
    assert (await parked.log.get(GID)).status is GlobalStatus.CONFIRMED


async def test_retry__still_failing__is_parked_again_once_the_fresh_budget_is_spent(
    parked: Runtime, clock: ManualClock
) -> None:
    await parked.coordinator.retry(GID, INSECURE, actor="ops")
    assert (await parked.log.get(GID)).status is GlobalStatus.CONFIRMING
    clock.advance(60)
    await parked.recovery.run_once(wait=True)
    assert (await parked.log.get(GID)).status is GlobalStatus.FAILED_TO_CONFIRM


async def test_resolve__a_parked_transaction__is_confirmed_without_calling_anyone(
    parked: Runtime, caller: ScriptedCaller
) -> None:
    calls_before = len(caller.calls)
    detail = await parked.coordinator.resolve(
        GID, INSECURE, actor="ops", note="confirmed in the shop's back office"
    )
    assert detail.transaction.status is GlobalStatus.CONFIRMED
    a, b = detail.branches
    assert a.status is BranchStatus.CONFIRMED
    assert a.last_error == "resolved by an operator: confirmed in the shop's back office"
    assert (b.status, b.last_error) == (BranchStatus.CONFIRMED, None)
    assert detail.events[-1].kind is EventKind.ADMIN_RESOLVED
    assert detail.events[-1].detail["branches"] == ["a"]
    assert len(caller.calls) == calls_before
    with pytest.raises(Conflict, match="this one is confirmed"):
        await parked.coordinator.retry(GID, INSECURE, actor="ops")


async def test_operator_actions__need_an_admin_key(parked: Runtime) -> None:
    with pytest.raises(Forbidden, match="needs an admin key"):
        await parked.coordinator.retry(GID, SERVICE, actor="shop")
    with pytest.raises(Forbidden, match="needs an admin key"):
        await parked.coordinator.resolve(GID, SERVICE, actor="shop", note="x")
    assert (await parked.log.get(GID)).status is GlobalStatus.FAILED_TO_CONFIRM
