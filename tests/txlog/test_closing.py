"""Closing the Postgres log: the group commits write everything they accepted before the
pools close, refuse what comes after, and leave no task behind."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.core.errors import DatabaseUnavailable, LogClosed
from coordinator.core.records import CallRecord, Lease
from coordinator.core.states import Decision, GlobalStatus
from coordinator.txlog.postgres import PostgresLog
from tests.txlog.test_contract import new_branch, new_txn


async def test_close__writes_the_begins_it_accepted_then_refuses_new_writes(
    database_url: str,
) -> None:
    log = await PostgresLog.connect(database_url, 1, 4)
    begins = [asyncio.create_task(log.begin(new_txn(f"g{i}"))) for i in range(30)]
    await asyncio.sleep(0)  # every begin handed to the group commit
    await log.close()
    assert all(t.done() and t.result()[1] for t in begins)
    with pytest.raises(LogClosed):
        await log.begin(new_txn("late"))
    assert issubclass(LogClosed, DatabaseUnavailable)  # what callers already handle (503)
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("group-commit")] == []

    with pytest.raises(LogClosed):
        await log.finish_done_round(Lease("g0", "token"), Decision.CANCEL, [], "o")
    with pytest.raises(LogClosed):
        await log.decide_after_tries("g0", [], owner="o", lease_ttl_s=30)

    reopened = await PostgresLog.connect(database_url, 1, 2)
    try:
        found = [await reopened.get(f"g{i}") for i in range(30)]
        assert {t.status for t in found} == {GlobalStatus.TRYING}
    finally:
        await reopened.close()


async def test_close__waits_for_a_round_end_already_submitted(database_url: str) -> None:
    log = await PostgresLog.connect(database_url, 1, 4)
    await log.begin(new_txn("g", branches=[new_branch("b", with_try=False)]))
    decided = await log.decide("g", Decision.CONFIRM, reason=None, owner="o", lease_ttl_s=30)
    assert decided.lease is not None
    ending = asyncio.create_task(
        log.finish_done_round(
            decided.lease, Decision.CONFIRM, [("b", CallRecord(200, None, 1.0))], "o"
        )
    )
    await asyncio.sleep(0)
    await log.close()
    written = ending.result()
    assert written is not None
    assert written.transaction.status is GlobalStatus.CONFIRMED
