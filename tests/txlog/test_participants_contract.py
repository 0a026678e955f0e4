"""The registry and the breakers in the log, on both logs: a registration replaced keeps its
breaker, every breaker move is a compare-and-set that one caller wins (an opening raises its
alert once), probes are due by the log's clock and lapse, call counts add up per minute, and
a round held by a breaker counts no round."""

from __future__ import annotations

import asyncio
import dataclasses

from coordinator.core import breaker, writes
from coordinator.core.breaker import BreakerPolicy, BreakerState
from coordinator.core.records import CallTally, NewParticipant
from coordinator.core.states import AlertKind, Decision, EventKind, GlobalStatus, Phase
from coordinator.txlog.interface import TransactionLog
from tests.txlog.conftest import LogTime
from tests.txlog.test_contract import confirming, new_branch, new_txn

POLICY = BreakerPolicy(open_s=10.0, max_open_s=40.0, probe_ttl_s=30.0)


def stock(**changes: object) -> NewParticipant:
    new = NewParticipant.of(
        "stock",
        base_url="http://127.0.0.1:9/stock",
        health_url="http://127.0.0.1:9/stock/health",
        call_timeout_s=2.0,
        owner_service="svc",
        registered_by="svc",
    )
    return dataclasses.replace(new, **changes)  # type: ignore[arg-type]


async def test_register__new_then_replaced__keeps_the_breaker(store: TransactionLog) -> None:
    written = await store.register_participant(stock())
    assert written is not None
    first, created = written
    assert created
    assert first.confirm_url == "http://127.0.0.1:9/stock/confirm"
    assert first.breaker_state is BreakerState.CLOSED
    assert await store.move_breaker(breaker.trip("stock", "down", 0, POLICY)) is not None

    rewritten = await store.register_participant(
        stock(confirm_url="http://127.0.0.1:9/v2/confirm", call_timeout_s=None)
    )
    assert rewritten is not None
    again, created = rewritten
    assert not created
    assert again.confirm_url == "http://127.0.0.1:9/v2/confirm"
    assert again.call_timeout_s is None
    assert again.breaker_state is BreakerState.OPEN  # kept
    assert again.created_at == first.created_at
    assert await store.participant("stock") == again


async def test_participants__listed_by_name__with_the_clock_and_the_live_coordinators(
    store: TransactionLog,
) -> None:
    await store.register_participant(stock(name="zinc"))
    await store.register_participant(stock(name="apple"))
    await store.coordinator_seen("c1", 0, 0)
    await store.coordinator_seen("c2", 0, 0)
    await store.coordinator_stopped("c2")
    registry = await store.participants()
    assert [p.name for p in registry.participants] == ["apple", "zinc"]
    assert registry.live_coordinators == 1
    assert registry.read_at is not None


async def test_remove__once(store: TransactionLog) -> None:
    await store.register_participant(stock())
    assert await store.remove_participant("stock")
    assert not await store.remove_participant("stock")
    assert await store.participant("stock") is None
    assert (await store.participants()).participants == []


async def test_trip__one_of_two_concurrent_trips_wins__and_raises_one_alert(
    store: TransactionLog,
) -> None:
    await store.register_participant(stock())
    moves = [breaker.trip("stock", f"down {i}", 0, POLICY) for i in range(2)]
    results = await asyncio.gather(*(store.move_breaker(m) for m in moves))
    won = [r for r in results if r is not None]
    assert len(won) == 1
    assert won[0].breaker_state is BreakerState.OPEN
    assert won[0].breaker_opens == 1
    assert won[0].breaker_retry_at is not None
    assert round((won[0].breaker_retry_at - won[0].breaker_since).total_seconds()) == 10
    alerts = await store.claim_alerts("me", 10, 30)
    assert [(a.kind, a.participant, a.gid) for a in alerts] == [
        (AlertKind.BREAKER_OPEN, "stock", None)
    ]
    assert alerts[0].body["participant"] == "stock"


async def test_probe__only_once_due__one_holder__taken_over_when_it_lapses(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.register_participant(stock())
    await store.move_breaker(breaker.trip("stock", "down", 0, POLICY))
    assert await store.move_breaker(breaker.take_probe("stock", "a", POLICY)) is None  # not due
    await log_time.jump(11)
    probing = await store.move_breaker(breaker.take_probe("stock", "a", POLICY))
    assert probing is not None
    assert (probing.breaker_state, probing.probe_owner) == (BreakerState.HALF_OPEN, "a")
    assert await store.move_breaker(breaker.take_probe("stock", "b", POLICY)) is None
    assert await store.move_breaker(breaker.recovered("stock", "b")) is None  # not its probe
    await log_time.jump(31)  # "a" vanished with its probe
    taken = await store.move_breaker(breaker.take_probe("stock", "b", POLICY))
    assert taken is not None
    assert taken.probe_owner == "b"


async def test_probe__answered__recovers_and_ramps__or_reopens_for_longer(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.register_participant(stock())
    await store.move_breaker(breaker.trip("stock", "down", 0, POLICY))
    await log_time.jump(11)
    await store.move_breaker(breaker.take_probe("stock", "a", POLICY))
    reopened = await store.move_breaker(breaker.still_down("stock", "a", "probe failed", 1, POLICY))
    assert reopened is not None
    assert (reopened.breaker_state, reopened.breaker_opens) == (BreakerState.OPEN, 2)
    assert reopened.breaker_retry_at is not None
    assert round((reopened.breaker_retry_at - reopened.breaker_since).total_seconds()) == 20
    assert reopened.breaker_reason == "probe failed"
    await log_time.jump(21)
    await store.move_breaker(breaker.take_probe("stock", "a", POLICY))
    closed = await store.move_breaker(breaker.recovered("stock", "a"))
    assert closed is not None
    assert closed.breaker_state is BreakerState.CLOSED
    # (the count of openings is kept through the ramp: a trip then doubles the open time)
    assert (closed.breaker_opens, closed.probe_owner) == (2, None)
    assert closed.ramp_started_at == closed.breaker_since
    # Only one alert: probes failing again do not raise more.
    assert len(await store.claim_alerts("me", 10, 30)) == 1


async def test_reset__closes_from_any_state(store: TransactionLog) -> None:
    await store.register_participant(stock())
    await store.move_breaker(breaker.trip("stock", "down", 0, POLICY))
    reset = await store.move_breaker(breaker.reset("stock"))
    assert reset is not None
    assert reset.breaker_state is BreakerState.CLOSED
    assert await store.move_breaker(breaker.reset("nobody")) is None


async def test_call_tallies__add_up_by_phase_and_minute__and_are_pruned(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.register_participant(stock())
    await store.add_call_tallies(
        [
            CallTally("stock", Phase.CONFIRM, 3, 1, 30.0, 20.0),
            CallTally("stock", Phase.TRY, 2, 0, 4.0, 3.0),
        ]
    )
    await store.add_call_tallies([CallTally("stock", Phase.CONFIRM, 1, 1, 50.0, 50.0)])
    [usage] = await store.participant_usage(["stock"], 900)
    by_phase = {p.phase: p for p in usage.phases}
    assert [p.phase for p in usage.phases] == [Phase.TRY, Phase.CONFIRM]
    assert (by_phase[Phase.CONFIRM].calls, by_phase[Phase.CONFIRM].errors) == (4, 2)
    assert by_phase[Phase.CONFIRM].latency_ms_avg == 20.0
    assert by_phase[Phase.CONFIRM].latency_ms_max == 50.0
    assert len(usage.calls_by_minute) == 15
    assert usage.calls_by_minute[-1] == 6
    await log_time.jump(3600)
    [later] = await store.participant_usage(["stock"], 900)
    assert later.phases == []
    assert sum(later.calls_by_minute) == 0
    assert await store.prune_call_tallies(1800) == 2


async def test_usage__counts_the_transactions_waiting_on_each_participant(
    store: TransactionLog,
) -> None:
    await store.register_participant(stock())
    on_stock = dataclasses.replace(new_branch("b", with_try=False), participant="stock")
    other = new_branch("c", with_try=False)
    await store.begin(new_txn("g1", branches=[on_stock, other]))
    await store.decide("g1", Decision.CONFIRM, reason=None, owner="a", lease_ttl_s=30)
    await store.begin(new_txn("g2", branches=[on_stock]))  # still trying: not waiting
    detail = await store.detail("g1")
    assert {b.branch_id: b.participant for b in detail.branches} == {"b": "stock", "c": None}
    [usage] = await store.participant_usage(["stock"], 900)
    assert usage.waiting == 1


async def test_hold_round__lets_the_lease_go__and_counts_no_round(store: TransactionLog) -> None:
    lease = await confirming(store, "g")
    write = writes.hold_round(Decision.CONFIRM, ["stock"], "circuit open: down", 7.0)
    held = await store.postpone(lease, write)
    assert held is not None
    assert held.status is GlobalStatus.CONFIRMING
    assert held.phase_attempts == 0
    assert held.lease_owner is None
    assert held.next_attempt_at is not None
    assert round((held.next_attempt_at - held.updated_at).total_seconds()) == 7
    again = await store.claim_due("a", 10, 30)
    assert again == []  # not due for 7 s
    events = (await store.detail("g")).events
    assert events[-1].kind is EventKind.HELD_BY_BREAKER
    assert events[-1].detail["participants"] == ["stock"]


async def test_register__another_services_participant__only_with_replace_any(
    store: TransactionLog,
) -> None:
    await store.register_participant(stock(owner_service="shop"))
    bank = stock(owner_service="bank", confirm_url="http://127.0.0.1:9/steal")
    assert await store.register_participant(bank, replace_any=False) is None
    kept = await store.participant("stock")
    assert kept is not None
    assert (kept.owner_service, kept.confirm_url) == ("shop", "http://127.0.0.1:9/stock/confirm")
    # An admin's registration that names no owner keeps the one it has.
    written = await store.register_participant(stock(owner_service=None), replace_any=True)
    assert written is not None
    assert written[0].owner_service == "shop"
    # Ownerless, it is nobody's to replace but an admin's.
    await store.register_participant(stock(name="free", owner_service=None))
    assert await store.register_participant(stock(name="free"), replace_any=False) is None
    assert not await store.remove_participant("stock", owner="bank")
    assert await store.remove_participant("stock", owner="shop")
