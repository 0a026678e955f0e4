"""What only the in-memory log has: its clock, exact boundaries in time (which a real clock
cannot hit), being importable without a database driver, and the schema's CHECKs that no
call of the contract can break."""

from __future__ import annotations

import itertools
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from coordinator.core.errors import InvalidInput
from coordinator.core.records import NewTransaction
from coordinator.core.states import Decision, Refusal
from coordinator.txlog.memory import InMemoryLog, ManualClock, _checked

START = datetime(2030, 1, 1, tzinfo=UTC)


def new_txn(gid: str, timeout_s: float = 60.0) -> NewTransaction:
    return NewTransaction(
        gid=gid,
        service=None,
        metadata={},
        timeout_s=timeout_s,
        call_timeout_s=None,
        request_hash=gid,
    )


def test_manual_clock__moves_only_when_advanced() -> None:
    clock = ManualClock(START)
    assert clock.now() == START
    assert clock.now() == START
    assert clock.advance(1.5) == START + timedelta(seconds=1.5)
    assert clock.now() == START + timedelta(seconds=1.5)


def test_manual_clock__without_a_start__starts_at_the_current_time_in_utc() -> None:
    before = datetime.now(UTC)
    now = ManualClock().now()
    assert before <= now <= datetime.now(UTC)
    assert now.tzinfo is UTC


def test_manual_clock__naive_starts_and_moving_back__are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        ManualClock(datetime(2030, 1, 1))  # naive
    with pytest.raises(ValueError, match="forward"):
        ManualClock(START).advance(-1)


async def test_in_memory_log__event_times__increase_while_the_clock_stands_still() -> None:
    log = InMemoryLog(ManualClock(START))
    for gid in ("a", "b", "c"):
        await log.begin(new_txn(gid))
    events = [e for gid in ("a", "b", "c") for e in (await log.detail(gid)).events]
    assert all(x.at < y.at for x, y in itertools.pairwise(events))
    assert events[0].at == START


async def test_in_memory_log__exactly_at_the_deadline__the_deadline_has_passed() -> None:
    clock = ManualClock(START)
    log = InMemoryLog(clock)
    await log.begin(new_txn("g", timeout_s=10))
    clock.advance(9.999999)
    assert await log.claim_due("o", 10, 30) == []
    clock.advance(0.000001)
    refused = await log.decide("g", Decision.CONFIRM, reason=None, owner="o", lease_ttl_s=30)
    assert refused.judgement.refusal is Refusal.DEADLINE_PASSED
    [(lease, _, _)] = await log.claim_due("o", 10, 30)
    # Exactly when the lease lapses, another coordinator may take the transaction.
    clock.advance(30)
    [(taken, _, _)] = await log.claim_due("other", 10, 30)
    assert taken.token != lease.token


async def test_in_memory_log__without_a_clock__makes_its_own() -> None:
    log = InMemoryLog()
    txn = (await log.begin(new_txn("g")))[0].transaction
    assert txn.created_at == log.clock.now()
    assert await log.readiness() == []
    await log.close()


def test_in_memory_log__imports_no_database_or_http_library() -> None:
    probe = (
        "import sys, coordinator.txlog.memory;"
        " print(sorted(m for m in ('asyncpg', 'aiohttp') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# --- the schema's CHECKs that no call of the contract can break -------------------------


# A row of each table that holds every CHECK.
VALID_ROWS: dict[str, dict[str, object]] = {
    "tcc_transactions": {
        "gid": "g",
        "status": "trying",
        "timeout_s": 1.0,
        "call_timeout_s": None,
        "kind": "tcc",
    },
    "tcc_branches": {"branch_id": "b", "status": "tried"},
    "tcc_events": {"repeats": 1},
    "tcc_alerts": {"kind": "parked", "gid": "g", "participant": None},
    "tcc_participants": {
        "name": "stock",
        "call_timeout_s": None,
        "tls_profile": None,
        "breaker_state": "closed",
        "breaker_opens": 0,
    },
}


@pytest.mark.parametrize(
    ("table", "change", "constraint"),
    [
        ("tcc_transactions", {"status": "paused"}, "tcc_transactions_status_check"),
        ("tcc_transactions", {"kind": "xa"}, "tcc_transactions_kind_check"),
        ("tcc_branches", {"status": "half_tried"}, "tcc_branches_status_check"),
        ("tcc_events", {"repeats": 0}, "tcc_events_repeats_check"),
        ("tcc_alerts", {"kind": "bored"}, "tcc_alerts_kind_check"),
        ("tcc_alerts", {"gid": None}, "tcc_alerts_subject_check"),
        ("tcc_alerts", {"participant": "stock"}, "tcc_alerts_subject_check"),
        ("tcc_participants", {"breaker_state": "ajar"}, "tcc_participants_breaker_state_check"),
        ("tcc_participants", {"name": "a b"}, "tcc_participants_name_check"),
        ("tcc_participants", {"breaker_opens": -1}, "tcc_participants_breaker_opens_check"),
        ("tcc_participants", {"tls_profile": "../x"}, "tcc_participants_tls_profile_check"),
        ("tcc_participants", {"tls_profile": "default"}, "tcc_participants_tls_profile_check"),
    ],
)
def test_in_memory_log__a_row_breaking_a_check__is_refused_as_postgres_refuses_it(
    table: str, change: dict[str, object], constraint: str
) -> None:
    valid = SimpleNamespace(**VALID_ROWS[table])
    assert _checked(table, valid) is valid
    with pytest.raises(InvalidInput, match=f'violates check constraint "{constraint}"'):
        _checked(table, SimpleNamespace(**(VALID_ROWS[table] | change)))
