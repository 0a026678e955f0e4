"""Alert delivery and retention on the in-memory log: the clock is moved, never waited for."""

from __future__ import annotations

import hashlib
import hmac
import json

from coordinator.core import breaker
from coordinator.core.apikeys import INSECURE
from coordinator.core.records import CallRecord, ListFilter, NewParticipant
from coordinator.core.states import Decision, GlobalStatus, Phase
from coordinator.core.writes import phase_call
from coordinator.engine.runtime import Runtime
from coordinator.engine.upkeep import ALERT_ID_HEADER, SIGNATURE_HEADER
from coordinator.txlog.memory import InMemoryLog, ManualClock
from tests.txlog.test_contract import new_branch, new_txn
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

HOOK = "http://127.0.0.1:9002/alerts"
SECRET = "a-secret-of-some-length"
DAY = 86_400.0


def alerting(make_runtime: MakeRuntime, caller: ScriptedCaller, **overrides: object) -> Runtime:
    return make_runtime(
        caller,
        rng=CeilingDraws(),
        alert_webhook=HOOK,
        alert_secret=SECRET,
        **overrides,
    )


async def park(txlog: InMemoryLog, gid: str) -> None:
    await txlog.begin(new_txn(gid, branches=[new_branch("b", with_try=False)]))
    decided = await txlog.decide(gid, Decision.CONFIRM, reason=None, owner="x", lease_ttl_s=30)
    assert decided.lease is not None
    fail = CallRecord(503, "HTTP 503: down", 2.0)
    assert await txlog.record_phase_call(
        decided.lease, phase_call(Decision.CONFIRM, "b", False, fail)
    )
    assert await txlog.finish_round(
        decided.lease, Decision.CONFIRM, GlobalStatus.FAILED_TO_CONFIRM, 1.0, ["b"], "x", 0
    )


def delivered(runtime: Runtime, outcome: str) -> float:
    value = runtime.upkeep.metrics.registry.get_sample_value(
        "tcc_alerts_total", {"outcome": outcome}
    )
    return value or 0.0


async def test_deliver__signed_body_with_the_failing_branch(
    make_runtime: MakeRuntime, caller: ScriptedCaller, txlog: InMemoryLog
) -> None:
    runtime = alerting(make_runtime, caller)
    await park(txlog, "g")

    assert await runtime.upkeep.deliver_due() == 1

    (call,) = caller.made(None, HOOK)
    assert call.method == "POST"
    assert call.body is not None
    expected = "sha256=" + hmac.new(SECRET.encode(), call.body, hashlib.sha256).hexdigest()
    assert call.headers[SIGNATURE_HEADER] == expected
    body = json.loads(call.body)
    assert call.headers[ALERT_ID_HEADER] == str(body["alert_id"])
    assert body["kind"] == "parked"
    assert (body["gid"], body["status"]) == ("g", "failed_to_confirm")
    assert body["failing_branch"]["branch_id"] == "b"
    assert body["failing_branch"]["last_error"] == "HTTP 503: down"
    assert body["failing_branch"]["attempts"] == 1
    assert delivered(runtime, "delivered") == 1
    # Delivered once: nothing left to send.
    assert await runtime.upkeep.deliver_due() == 0
    assert len(caller.made(None, HOOK)) == 1


async def test_deliver__receiver_fails__retried_after_its_backoff(
    make_runtime: MakeRuntime, caller: ScriptedCaller, txlog: InMemoryLog, clock: ManualClock
) -> None:
    runtime = alerting(make_runtime, caller)
    caller.script(HOOK, None, reply(500), reply(502), reply(200))
    await park(txlog, "g")

    assert await runtime.upkeep.deliver_due() == 0
    assert await runtime.upkeep.deliver_due() == 0  # not due again yet
    assert len(caller.made(None, HOOK)) == 1
    clock.advance(1.0)  # the first backoff (its ceiling, with these draws)
    assert await runtime.upkeep.deliver_due() == 0
    clock.advance(1.9)
    assert await runtime.upkeep.deliver_due() == 0  # the second backoff is 2 s
    clock.advance(0.1)
    assert await runtime.upkeep.deliver_due() == 1
    ids = {c.headers[ALERT_ID_HEADER] for c in caller.made(None, HOOK)}
    assert len(caller.made(None, HOOK)) == 3
    assert len(ids) == 1  # the same alert each time: the receiver can drop repeats
    assert (delivered(runtime, "failed"), delivered(runtime, "delivered")) == (2, 1)


async def test_deliver__failing_past_the_give_up_time__given_up_and_counted(
    make_runtime: MakeRuntime, caller: ScriptedCaller, txlog: InMemoryLog, clock: ManualClock
) -> None:
    runtime = alerting(make_runtime, caller, alert_give_up_after_s=60.0)
    caller.script(HOOK, None, reply(None))
    await park(txlog, "g")
    for _ in range(20):
        await runtime.upkeep.deliver_due()
        clock.advance(30.0)
    assert delivered(runtime, "given_up") == 1
    made = len(caller.made(None, HOOK))
    clock.advance(DAY)
    assert await runtime.upkeep.deliver_due() == 0
    assert len(caller.made(None, HOOK)) == made


async def parked_by_the_driver(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    """Confirm fails until the budget is spent: the driver's last round parks the
    transaction (GID)."""
    caller.script(url("a", Phase.CONFIRM), Phase.CONFIRM, reply(503, "down"))
    await runtime.coordinator.begin(begin_request(branch("a"), auto=True), INSECURE)
    for _ in range(2):
        clock.advance(30)
        await runtime.recovery.run_once(wait=True)
    assert (await runtime.log.get(GID)).status is GlobalStatus.FAILED_TO_CONFIRM


async def test_driver_parks__with_a_webhook__the_alert_is_raised_and_sent(
    make_runtime: MakeRuntime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    runtime = alerting(make_runtime, caller, give_up_after_s=60)
    await parked_by_the_driver(runtime, caller, clock)
    assert await runtime.upkeep.deliver_due() == 1
    (call,) = caller.made(None, HOOK)
    assert call.body is not None
    assert json.loads(call.body)["failing_branch"]["last_error"] == "HTTP 503: down"


async def test_driver_parks__no_webhook__nothing_raised_nor_sent(
    make_runtime: MakeRuntime, caller: ScriptedCaller, txlog: InMemoryLog, clock: ManualClock
) -> None:
    runtime = make_runtime(caller, give_up_after_s=60)
    await parked_by_the_driver(runtime, caller, clock)
    assert await runtime.upkeep.deliver_due() == 0
    assert await txlog.claim_alerts("anyone", 10, 30) == []
    assert caller.made(None) == []


async def test_prune__retention__old_finished_deleted_and_counted(
    make_runtime: MakeRuntime, caller: ScriptedCaller, txlog: InMemoryLog, clock: ManualClock
) -> None:
    runtime = make_runtime(caller, retention_days=30)
    for n in range(3):
        await txlog.begin(new_txn(f"g{n}", branches=[new_branch("b", with_try=False)]))
        decided = await txlog.decide(
            f"g{n}", Decision.CANCEL, reason="client", owner="x", lease_ttl_s=30
        )
        assert decided.lease is not None
        ok = CallRecord(200, None, 1.0)
        assert await txlog.finish_done_round(decided.lease, Decision.CANCEL, [("b", ok)], "x")
    await park(txlog, "parked")
    clock.advance(31 * DAY)

    assert await runtime.upkeep.prune(30 * DAY) == 3
    assert {t.gid for t in await txlog.list(ListFilter(limit=100))} == {"parked"}
    pruned = runtime.upkeep.metrics.registry.get_sample_value("tcc_pruned_transactions_total")
    assert pruned == 3


async def test_breaker_open_alert__delivered_like_any_other__about_the_participant(
    make_runtime: MakeRuntime, caller: ScriptedCaller, txlog: InMemoryLog
) -> None:
    runtime = alerting(make_runtime, caller)
    new = NewParticipant.of("stock", base_url="http://127.0.0.1:9001/stock")
    await runtime.coordinator.register_participant(new, INSECURE)
    policy = runtime.settings.breaker_policy
    await txlog.move_breaker(breaker.trip("stock", "5 calls failed in a row", 0, policy))
    assert await runtime.upkeep.deliver_due() == 1
    [sent] = caller.made(None, HOOK)
    assert sent.body is not None
    body = json.loads(sent.body)
    assert body["kind"] == "breaker_open"
    assert body["participant"] == "stock"
    assert body["reason"] == "5 calls failed in a row"
    assert "gid" not in body
    assert await runtime.upkeep.deliver_due() == 0  # once
