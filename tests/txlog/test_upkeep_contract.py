"""The log's part in alerts and retention, on both logs: an alert is raised in the write that
parks a transaction (or reaches the alerting round), once, and held by one deliverer at a
time; pruning deletes old finished transactions only, batch by batch."""

from __future__ import annotations

import pytest

from coordinator.core.errors import NotFound
from coordinator.core.records import Lease, ListFilter
from coordinator.core.states import AlertKind, Decision, GlobalStatus
from coordinator.core.writes import phase_call
from coordinator.txlog.interface import TransactionLog
from coordinator.txlog.memory import InMemoryLog
from coordinator.txlog.postgres import PostgresLog
from tests.txlog.conftest import LogTime
from tests.txlog.test_contract import FAIL, OK, confirming, new_branch, new_txn

DAY = 86_400.0


async def park(store: TransactionLog, gid: str, alert_after_rounds: int | None = 0) -> None:
    """Confirm ``gid`` (branches ``done`` and ``stuck``) and park it after one round."""
    lease = await confirming(store, gid, ("done", "stuck"))
    assert await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "done", True, OK))
    assert await store.record_phase_call(lease, phase_call(Decision.CONFIRM, "stuck", False, FAIL))
    parked = await store.finish_round(
        lease,
        Decision.CONFIRM,
        GlobalStatus.FAILED_TO_CONFIRM,
        1.0,
        ["stuck"],
        "a",
        alert_after_rounds,
    )
    assert parked is not None


async def retry_round(
    store: TransactionLog, log_time: LogTime, gid: str, alert_after_rounds: int | None
) -> None:
    """One more failed round of a confirming transaction, taken as recovery would."""
    await log_time.jump(5)
    claims = [c for c in await store.claim_due("a", 100, 30) if c.lease.gid == gid]
    assert len(claims) == 1
    ended = await store.finish_round(
        claims[0].lease,
        Decision.CONFIRM,
        GlobalStatus.CONFIRMING,
        1.0,
        ["b"],
        "a",
        alert_after_rounds,
    )
    assert ended is not None


async def test_alert__parked__raised_once_with_the_failing_branch(store: TransactionLog) -> None:
    await park(store, "g")
    alerts = await store.claim_alerts("me", 10, 30)
    assert len(alerts) == 1
    alert = alerts[0]
    assert (alert.gid, alert.kind, alert.attempts) == ("g", AlertKind.PARKED, 0)
    assert alert.body["status"] == "failed_to_confirm"
    assert alert.body["reason"] == "confirm"
    assert alert.body["failing_branch"]["branch_id"] == "stuck"
    assert alert.body["failing_branch"]["last_error"] == "HTTP 500"
    assert alert.body["failing_branch"]["attempts"] == 1
    assert [b["branch_id"] for b in alert.body["failing_branches"]] == ["stuck"]
    assert alert.age_s >= 0


async def test_alert__alerts_off__nothing_raised(store: TransactionLog) -> None:
    await park(store, "g", alert_after_rounds=None)
    assert await store.claim_alerts("me", 10, 30) == []


async def test_alert__held_by_one__not_claimed_by_another_until_the_lease_lapses(
    store: TransactionLog, log_time: LogTime
) -> None:
    await park(store, "g")
    assert len(await store.claim_alerts("one", 10, 30)) == 1
    assert await store.claim_alerts("two", 10, 30) == []
    await log_time.jump(31)
    again = await store.claim_alerts("two", 10, 30)
    assert [a.gid for a in again] == ["g"]
    # The first holder lost it: what it reports changes nothing.
    assert not await store.alert_delivered(again[0].id, "one")
    assert await store.alert_delivered(again[0].id, "two")


async def test_alert__delivered__never_claimed_again(
    store: TransactionLog, log_time: LogTime
) -> None:
    await park(store, "g")
    (alert,) = await store.claim_alerts("me", 10, 30)
    assert await store.alert_delivered(alert.id, "me")
    await log_time.jump(3600)
    assert await store.claim_alerts("me", 10, 30) == []


async def test_alert__failed__due_again_after_its_backoff_and_counted(
    store: TransactionLog, log_time: LogTime
) -> None:
    await park(store, "g")
    (alert,) = await store.claim_alerts("me", 10, 30)
    assert await store.alert_failed(alert.id, "me", "HTTP 503", 60.0)
    assert await store.claim_alerts("me", 10, 30) == []
    await log_time.jump(61)
    (again,) = await store.claim_alerts("me", 10, 30)
    assert (again.id, again.attempts) == (alert.id, 1)


async def test_alert__given_up__never_claimed_again(
    store: TransactionLog, log_time: LogTime
) -> None:
    await park(store, "g")
    (alert,) = await store.claim_alerts("me", 10, 30)
    assert await store.alert_failed(alert.id, "me", "HTTP 503", None)
    await log_time.jump(DAY)
    assert await store.claim_alerts("me", 10, 30) == []


async def test_alert__retrying__raised_at_the_configured_round_only(
    store: TransactionLog, log_time: LogTime
) -> None:
    lease = await confirming(store, "g")
    first = await store.finish_round(
        lease, Decision.CONFIRM, GlobalStatus.CONFIRMING, 1.0, ["b"], "a", 3
    )
    assert first is not None
    assert await store.claim_alerts("me", 10, 30) == []
    await retry_round(store, log_time, "g", 3)
    assert await store.claim_alerts("me", 10, 30) == []
    await retry_round(store, log_time, "g", 3)  # the third round
    (alert,) = await store.claim_alerts("me", 10, 30)
    assert (alert.kind, alert.body["rounds"], alert.body["status"]) == (
        AlertKind.RETRYING,
        3,
        "confirming",
    )
    assert await store.alert_delivered(alert.id, "me")
    await retry_round(store, log_time, "g", 3)
    assert await store.claim_alerts("me", 10, 30) == []


async def test_alert__parking_only__no_alert_for_rounds(
    store: TransactionLog, log_time: LogTime
) -> None:
    lease = await confirming(store, "g")
    assert await store.finish_round(
        lease, Decision.CONFIRM, GlobalStatus.CONFIRMING, 1.0, ["b"], "a", 0
    )
    await retry_round(store, log_time, "g", 0)
    assert await store.claim_alerts("me", 10, 30) == []


async def test_alert__parked_again_after_an_operator_retry__a_new_alert(
    store: TransactionLog, log_time: LogTime
) -> None:
    await park(store, "g")
    (alert,) = await store.claim_alerts("me", 10, 30)
    assert await store.alert_delivered(alert.id, "me")
    await log_time.jump(60)
    _, lease = await store.retry_parked("g", actor="ops", owner="a", lease_ttl_s=30)
    assert isinstance(lease, Lease)
    assert await store.finish_round(
        lease, Decision.CONFIRM, GlobalStatus.FAILED_TO_CONFIRM, 1.0, ["stuck"], "a", 0
    )
    (second,) = await store.claim_alerts("me", 10, 30)
    assert second.id != alert.id
    assert second.kind is AlertKind.PARKED


# --- retention ---------------------------------------------------------------------------


async def finished(store: TransactionLog, gid: str) -> None:
    lease = await confirming(store, gid)
    assert await store.finish_done_round(lease, Decision.CONFIRM, [("b", OK)], "a")


async def test_prune__old_finished_go_with_their_branches_and_timeline(
    store: TransactionLog, log_time: LogTime
) -> None:
    for n in range(5):
        await finished(store, f"old-{n}")
    await park(store, "parked")
    await confirming(store, "confirming")
    await store.begin(new_txn("trying", timeout_s=30 * DAY, branches=[new_branch("b")]))
    await log_time.jump(31 * DAY)
    await finished(store, "recent")

    assert await store.count_prunable(30 * DAY) == 5
    assert await store.prune(30 * DAY, 2) == 2
    assert await store.prune(30 * DAY, 2) == 2
    assert await store.prune(30 * DAY, 2) == 1
    assert await store.prune(30 * DAY, 2) == 0
    assert await store.count_prunable(30 * DAY) == 0

    left = {t.gid for t in await store.list(ListFilter(limit=1000))}
    assert left == {"parked", "confirming", "trying", "recent"}
    for n in range(5):
        with pytest.raises(NotFound):
            await store.detail(f"old-{n}")
        with pytest.raises(NotFound):  # no timeline left either
            await store.events(f"old-{n}", 0, 10)


async def test_prune__finished_recently_though_begun_long_ago__kept(
    store: TransactionLog, log_time: LogTime
) -> None:
    await confirming(store, "slow")
    await log_time.jump(40 * DAY)
    (claim,) = await store.claim_due("a", 10, 30)
    assert await store.finish_done_round(claim.lease, Decision.CONFIRM, [("b", OK)], "a")
    assert await store.count_prunable(30 * DAY) == 0
    assert await store.prune(30 * DAY, 100) == 0


async def test_prune__resolved_parked_one__is_finished_and_pruned(
    store: TransactionLog, log_time: LogTime
) -> None:
    await park(store, "g")
    await store.resolve_parked("g", actor="ops", note="fixed by hand")
    await log_time.jump(31 * DAY)
    assert await store.prune(30 * DAY, 100) == 1


async def stored_alerts(store: TransactionLog) -> int:
    """How many alerts the log holds, delivered or not (each log's own way of counting)."""
    if isinstance(store, PostgresLog):
        async with store.connection() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM tcc_alerts"))
    assert isinstance(store, InMemoryLog)
    return len(store._alerts)


async def test_prune__settled_old_alerts_go__pending_ones_stay(
    store: TransactionLog, log_time: LogTime
) -> None:
    await park(store, "delivered")
    await park(store, "pending")
    alerts = {a.gid: a for a in await store.claim_alerts("me", 10, 30)}
    assert await store.alert_delivered(alerts["delivered"].id, "me")
    assert await store.alert_failed(alerts["pending"].id, "me", "HTTP 503", 1.0)
    await log_time.jump(31 * DAY)

    assert await store.prune(30 * DAY, 100) == 0  # parked transactions are never pruned
    assert await stored_alerts(store) == 1
    (left,) = await store.claim_alerts("me", 10, 30)
    assert left.gid == "pending"
