"""Purging the barrier table on a schedule, from inside the participant service.

Every call a participant handles leaves a row in ``tcc_barrier``; without a purge the table
only grows. A row may go once no call of its transaction can arrive any more: the coordinator
retries confirm and cancel until its give-up time (TCC_GIVE_UP_AFTER_S, a day by default), and
a retry that finds its row gone is taken for a first call (a confirm applied twice, a cancel
that undoes nothing, a late try that reserves what nobody will release). Hence a floor of one
hour, and a default of a week.

    app.cleanup_ctx.append(database(...))  # opens app[POOL]
    app.cleanup_ctx.append(purge_in_background(POOL, Retention(keep_for_s=7 * 86400)))

or, with a pool of your own, ``asyncio.create_task(purge_forever(pool, keep_for_s=7 * 86400))``.

Each pass deletes old rows a small batch at a time, each batch one statement on a connection
borrowed for that batch only (so its row locks last milliseconds and the handlers keep their
connections), with a short pause between batches. A failed pass (database down, table gone) is
logged and tried again at the next one; the task never ends on its own, only when cancelled.
The sample services run it, configured by TCC_BARRIER_KEEP_FOR and TCC_BARRIER_PURGE_EVERY.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import asyncpg
import structlog
from aiohttp import web

from participants import barrier

log = structlog.get_logger(__name__)

MIN_KEEP_S = 3600.0
DEFAULT_KEEP_S = 7 * 86400.0
DEFAULT_EVERY_S = 3600.0
DEFAULT_BATCH = 1000
# Between two batches: the handlers' statements get their turn at the table and the disk.
DEFAULT_PAUSE_S = 0.05
# Waiting for a connection, and for one batch's DELETE: a hung database fails the pass.
BATCH_TIMEOUT_S = 60.0

KEEP_ENV = "TCC_BARRIER_KEEP_FOR"
EVERY_ENV = "TCC_BARRIER_PURGE_EVERY"
_OFF = frozenset({"off", "never", "none"})

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds in a duration written as a number and a unit: 90m, 36h, 7d, 2w (or 30s)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration: write a number and a unit (s, m, h, d or w),"
            " e.g. 90m, 36h, 7d or 2w"
        )
    seconds = float(match[1]) * _UNITS[match[2]]
    if seconds <= 0:
        raise ValueError(f"the duration {text!r} must be longer than zero")
    return seconds


def check_keep_for(keep_for_s: float) -> None:
    """Refuse a retention under an hour, saying why."""
    if not keep_for_s >= MIN_KEEP_S:  # also refuses NaN
        raise ValueError(
            f"barrier rows must be kept at least one hour ({MIN_KEEP_S:g} s), not"
            f" {keep_for_s:g} s: they are how a participant recognises a call it has already"
            " handled, and the coordinator retries confirm and cancel until its give-up time"
            " (TCC_GIVE_UP_AFTER_S, a day by default), so a row purged earlier lets a late"
            " retry be taken for a first call and run the business change again"
        )


@dataclass(frozen=True, slots=True)
class Retention:
    """How long barrier rows are kept and how the purge goes about deleting the rest."""

    keep_for_s: float = DEFAULT_KEEP_S
    every_s: float = DEFAULT_EVERY_S
    batch: int = DEFAULT_BATCH
    pause_s: float = DEFAULT_PAUSE_S
    # Until the first pass; later passes follow every_s after the end of the previous one.
    first_after_s: float = 0.0

    def __post_init__(self) -> None:
        check_keep_for(self.keep_for_s)
        if not self.every_s > 0:
            raise ValueError(f"every_s must be more than zero, not {self.every_s:g}")
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, not {self.batch}")
        if not self.pause_s >= 0:
            raise ValueError(f"pause_s must not be negative, not {self.pause_s:g}")
        if not self.first_after_s >= 0:
            raise ValueError(f"first_after_s must not be negative, not {self.first_after_s:g}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Retention | None:
        """TCC_BARRIER_KEEP_FOR (default 7d; off to never purge) and
        TCC_BARRIER_PURGE_EVERY (default 1h); None when purging is off."""
        env = os.environ if env is None else env
        keep = env.get(KEEP_ENV, "").strip()
        every = env.get(EVERY_ENV, "").strip()
        if keep.lower() in _OFF:
            return None
        try:
            keep_for_s = parse_duration(keep) if keep else DEFAULT_KEEP_S
            check_keep_for(keep_for_s)
        except ValueError as exc:
            raise ValueError(f"{KEEP_ENV}: {exc}") from None
        try:
            every_s = parse_duration(every) if every else DEFAULT_EVERY_S
        except ValueError as exc:
            raise ValueError(f"{EVERY_ENV}: {exc}") from None
        return cls(keep_for_s=keep_for_s, every_s=every_s)


def describe(exc: BaseException) -> str:
    """An exception as one line (database messages may span several)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class BarrierPurger:
    """Purges the barrier table reached through ``pool``, and counts what it did."""

    def __init__(self, pool: asyncpg.Pool, retention: Retention) -> None:
        self.pool = pool
        self.retention = retention
        self.passes = 0  # passes that finished
        self.failures = 0  # passes that failed
        self.deleted = 0  # rows deleted, by all passes (failed ones included)
        self.last_error: str | None = None

    async def run_pass(self) -> int:
        """Delete every row older than the retention, a batch at a time; returns the count.

        Raises what the database raised; the rows deleted until then stay deleted and are
        counted in ``deleted``.
        """
        r = self.retention
        total = 0
        while True:
            async with asyncio.timeout(BATCH_TIMEOUT_S), self.pool.acquire() as conn:
                deleted = await barrier.purge_batch(conn, r.keep_for_s, r.batch)
            total += deleted
            self.deleted += deleted
            if deleted < r.batch:
                return total
            await asyncio.sleep(r.pause_s)

    async def run_forever(self) -> NoReturn:
        """A pass now (or after first_after_s), then one every every_s, until cancelled."""
        r = self.retention
        loop = asyncio.get_running_loop()
        log.info("barrier_purge_scheduled", keep_for_s=r.keep_for_s, every_s=r.every_s)
        await asyncio.sleep(r.first_after_s)
        while True:
            started = loop.time()
            before = self.deleted
            try:
                await self.run_pass()
            except Exception as exc:  # the service must outlive its database
                self.failures += 1
                self.last_error = describe(exc)
                log.warning(
                    "barrier_purge_failed",
                    error=self.last_error,
                    deleted=self.deleted - before,
                    retry_in_s=r.every_s,
                )
            else:
                self.passes += 1
                self.last_error = None
                log.info(
                    "barrier_purged",
                    deleted=self.deleted - before,
                    keep_for_s=r.keep_for_s,
                    took_s=round(loop.time() - started, 3),
                )
            await asyncio.sleep(r.every_s)


def purge_forever(
    pool: asyncpg.Pool,
    keep_for_s: float,
    *,
    every_s: float = DEFAULT_EVERY_S,
    batch: int = DEFAULT_BATCH,
    pause_s: float = DEFAULT_PAUSE_S,
    first_after_s: float = 0.0,
) -> Coroutine[Any, Any, NoReturn]:
    """The purge loop, to run as a task: ``asyncio.create_task(purge_forever(pool, 7 * 86400))``.

    The arguments are checked here, at the call, so a bad one raises ValueError before any
    task exists.
    """
    retention = Retention(
        keep_for_s=keep_for_s,
        every_s=every_s,
        batch=batch,
        pause_s=pause_s,
        first_after_s=first_after_s,
    )
    return BarrierPurger(pool, retention).run_forever()


@contextlib.asynccontextmanager
async def running(pool: asyncpg.Pool, retention: Retention) -> AsyncIterator[BarrierPurger]:
    """The purge loop as a task for the life of the block; cancelled and awaited on leaving."""
    purger = BarrierPurger(pool, retention)
    task = asyncio.create_task(purger.run_forever(), name="tcc-barrier-purge")
    try:
        yield purger
    finally:
        task.cancel()
        await asyncio.wait([task])


def purge_in_background(
    pool_key: web.AppKey[asyncpg.Pool], retention: Retention
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx running the purge loop on ``app[pool_key]``.

    Append it after the cleanup_ctx that opens the pool: aiohttp cleans up in reverse order,
    so the loop is stopped before the pool is closed.
    """

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with running(app[pool_key], retention):
            yield

    return lifecycle
