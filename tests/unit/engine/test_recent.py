"""The memory of recent transactions is bounded by its setting and keeps no metadata."""

from __future__ import annotations

from datetime import UTC, datetime

from coordinator.core.records import Transaction
from coordinator.core.states import GlobalStatus
from coordinator.engine.recent import MAX_KEPT_OPTIONS_BYTES, RecentTransactions

NOW = datetime(2026, 12, 4, tzinfo=UTC)
BIG_METADATA = {f"k{i}": "x" * 150 for i in range(100)}  # about 16 KB, the default maximum


def txn(gid: str, **fields: object) -> Transaction:
    values: dict[str, object] = {
        "gid": gid,
        "status": GlobalStatus.TRYING,
        "dialect": "tcc",
        "service": "shop",
        "metadata": BIG_METADATA,
        "timeout_s": 30.0,
        "call_timeout_s": None,
        "deadline": NOW,
        "cancel_reason": None,
        "created_at": NOW,
        "updated_at": NOW,
        "decided_at": None,
        "finished_at": None,
        "phase_attempts": 0,
        "next_attempt_at": None,
        "lease_owner": None,
        "lease_expires_at": None,
        "options": {},
        "traceparent": None,
        "tracestate": None,
    }
    values.update(fields)
    return Transaction(**values)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_recent__holds_no_more_entries_than_its_setting__oldest_go_first() -> None:
    recent = RecentTransactions(100, clock=Clock())
    for i in range(5_000):
        recent.remember(txn(f"shop:{i}"))
    assert len(recent) == 100
    assert recent.recall("shop:4999") is not None
    assert recent.recall("shop:4899") is None


def test_recent__keeps_a_transaction_without_its_metadata() -> None:
    recent = RecentTransactions(10, clock=Clock())
    recent.remember(txn("shop:1", options={"retry_interval": 5}, traceparent="00-ab-cd-01"))
    kept = recent.recall("shop:1")
    assert kept is not None
    assert kept.metadata == {}
    assert (kept.service, kept.options, kept.traceparent) == (
        "shop",
        {"retry_interval": 5},
        "00-ab-cd-01",
    )


def test_recent__does_not_keep_a_transaction_with_large_options() -> None:
    recent = RecentTransactions(10, clock=Clock())
    recent.remember(txn("shop:1", options={"branch_headers": {"x": "y" * MAX_KEPT_OPTIONS_BYTES}}))
    assert recent.recall("shop:1") is None
    assert len(recent) == 0


def test_recent__entries_age_out__and_are_dropped_when_the_next_one_comes() -> None:
    clock = Clock()
    recent = RecentTransactions(1000, max_age_s=60.0, clock=clock)
    for i in range(500):
        recent.remember(txn(f"shop:{i}"))
    clock.now += 61.0
    assert recent.recall("shop:1") is None
    recent.remember(txn("shop:new"))
    assert len(recent) == 1


def test_recent__a_repeat_moves_to_the_back_of_the_queue() -> None:
    recent = RecentTransactions(2, clock=Clock())
    recent.remember(txn("shop:a"))
    recent.remember(txn("shop:b"))
    recent.remember(txn("shop:a"))
    recent.remember(txn("shop:c"))
    assert recent.recall("shop:a") is not None
    assert recent.recall("shop:b") is None


def test_recent__zero_keeps_nothing() -> None:
    recent = RecentTransactions(0, clock=Clock())
    recent.remember(txn("shop:1"))
    assert recent.recall("shop:1") is None
