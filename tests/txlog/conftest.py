"""One contract, two logs: every test of this package runs on PostgresLog and on InMemoryLog.

A test that needs time to pass asks ``log_time``: on the in-memory log that moves its clock;
on Postgres ``sleep`` really sleeps (for the short waits the original tests made) and ``jump``
moves every stored time back instead (what passing time looks like to the SQL, which only
ever compares stored times with now()), so a test may skip hours without waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import pytest

from coordinator.txlog.interface import TransactionLog
from coordinator.txlog.memory import InMemoryLog, ManualClock
from coordinator.txlog.postgres import PostgresLog

# Every stored time, table by table: moving them all back is the same as moving now() on.
_TIMES = {
    "tcc_transactions": (
        "deadline",
        "created_at",
        "updated_at",
        "decided_at",
        "finished_at",
        "phase_started_at",
        "next_attempt_at",
        "lease_expires_at",
    ),
    "tcc_branches": ("next_retry_at", "created_at", "updated_at"),
    "tcc_events": ("at", "last_at"),
    "tcc_alerts": (
        "phase_started_at",
        "created_at",
        "next_attempt_at",
        "delivered_at",
        "given_up_at",
        "lease_expires_at",
    ),
    "tcc_console_sessions": ("created_at", "last_seen_at", "expires_at", "revoked_at"),
    "tcc_coordinators": ("started_at", "last_seen_at", "stopped_at", "last_claim_at"),
    "tcc_participants": (
        "created_at",
        "updated_at",
        "breaker_since",
        "breaker_retry_at",
        "probe_expires_at",
        "ramp_started_at",
    ),
    "tcc_participant_minutes": ("minute",),
}


class LogTime(Protocol):
    async def sleep(self, seconds: float) -> None:
        """Let a short time pass (the Postgres log: a real sleep)."""
        ...

    async def jump(self, seconds: float) -> None:
        """Let any time pass at once."""
        ...


class MovedClock:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock

    async def sleep(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def jump(self, seconds: float) -> None:
        self.clock.advance(seconds)


class ShiftedTimes:
    def __init__(self, log: PostgresLog) -> None:
        self.log = log

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def jump(self, seconds: float) -> None:
        async with self.log.connection() as conn, conn.transaction():
            for table, columns in _TIMES.items():
                moved = ", ".join(f"{c} = {c} - $1::interval" for c in columns)
                await conn.execute(f"UPDATE {table} SET {moved}", timedelta(seconds=seconds))


@dataclass(frozen=True)
class Subject:
    log: TransactionLog
    time: LogTime


@pytest.fixture
async def postgres_log(database_url: str) -> AsyncIterator[PostgresLog]:
    txlog = await PostgresLog.connect(database_url, 1, 10)
    yield txlog
    await txlog.close()


@pytest.fixture(params=["postgres", "memory"])
def subject(request: pytest.FixtureRequest) -> Subject:
    """The log under test; Postgres is only started for the postgres runs."""
    if request.param == "memory":
        clock = ManualClock(datetime(2030, 1, 1, tzinfo=UTC))
        return Subject(InMemoryLog(clock), MovedClock(clock))
    postgres: PostgresLog = request.getfixturevalue("postgres_log")
    return Subject(postgres, ShiftedTimes(postgres))


@pytest.fixture
def store(subject: Subject) -> TransactionLog:
    return subject.log


@pytest.fixture
def log_time(subject: Subject) -> LogTime:
    return subject.time
