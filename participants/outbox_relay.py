"""The outbox relay: hands the messages a service committed to its outbox to the coordinator.

    app.cleanup_ctx.append(database(dsn, "orders", MIGRATIONS))  # opens app[POOL]
    app.cleanup_ctx.append(
        relay_in_background(POOL, coordinator_url, dsn=dsn, schema="orders", service="order")
    )

A pass takes a small batch of due rows, oldest first, with ``FOR UPDATE SKIP LOCKED`` (so two
replicas of a service never hand off one row at once), sends each with ``POST /v1/messages``
and marks it in the same database transaction: handed off on a 2xx; refused when the
coordinator says it never will take it (400, 409, 413, 422), for an operator (the row stays);
otherwise (no answer, 503, anything else) due again after a capped, jittered backoff. A relay
killed before its marks commit leaves the rows pending: the next pass sends them again, with
the same gid and body, which the coordinator answers as the message it already has.

The relay wakes when a row is added: ``outbox.add`` notifies (delivered at commit, never for a
rollback) and the relay LISTENs on a dedicated connection. A periodic scan is the fallback
(a notification missed while the listening connection was down, a row added by hand). Rows
handed off longer ago than the retention are pruned, a batch per statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import asyncpg
import structlog
from aiohttp import web

from participants import outbox
from participants.barrier import Connection
from participants.barrier_purge import describe, parse_duration
from participants.client import CoordinatorClient, CoordinatorError, Unavailable

log = structlog.get_logger(__name__)

KEEP_ENV = "TCC_OUTBOX_KEEP_FOR"
_OFF = frozenset({"off", "never", "none"})
# What the coordinator answers for a message it will never take as it is.
REFUSED_STATUSES = frozenset({400, 409, 413, 422})


@dataclass(frozen=True, slots=True)
class RelaySettings:
    batch: int = 10  # rows per pass
    scan_every_s: float = 5.0  # a pass at least this often, notified or not
    retry_initial_s: float = 0.5  # the first hand-off that fails waits about this long
    retry_max_s: float = 30.0  # and no hand-off waits longer
    handoff_timeout_s: float = 10.0  # one POST /v1/messages
    keep_for_s: float | None = 7 * 86400.0  # handed-off rows are pruned after; None: never
    prune_every_s: float = 3600.0
    prune_batch: int = 1000
    listen_check_s: float = 5.0  # how often the listening connection is checked alive

    def __post_init__(self) -> None:
        if self.batch < 1 or self.prune_batch < 1:
            raise ValueError("batch and prune_batch must be at least 1")
        for name in ("scan_every_s", "retry_initial_s", "handoff_timeout_s", "prune_every_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than zero")
        if not self.retry_max_s >= self.retry_initial_s:
            raise ValueError("retry_max_s must be at least retry_initial_s")
        if self.keep_for_s is not None and not self.keep_for_s >= 0:
            raise ValueError("keep_for_s must not be negative")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **given: Any) -> RelaySettings:
        """TCC_OUTBOX_KEEP_FOR: how long handed-off rows are kept (default 7d; off: always)."""
        env = dict(os.environ) if env is None else env
        keep = env.get(KEEP_ENV, "").strip()
        if keep.lower() in _OFF:
            return cls(keep_for_s=None, **given)
        if keep:
            try:
                return cls(keep_for_s=parse_duration(keep), **given)
            except ValueError as exc:
                raise ValueError(f"{KEEP_ENV}: {exc}") from None
        return cls(**given)

    def backoff_s(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failed hand-off: doubling from retry_initial_s,
        capped at retry_max_s, the upper half jittered so relays do not retry in step."""
        doubled: float = self.retry_initial_s * 2.0 ** min(attempts - 1, 30)
        ceiling = min(self.retry_max_s, doubled)
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class Relay:
    """Hands off the outbox reached through ``pool``; counts what it did."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        client: CoordinatorClient,
        settings: RelaySettings | None = None,
        *,
        dsn: str | None = None,
        schema: str | None = None,
    ) -> None:
        self.pool = pool
        self.client = client
        self.settings = settings or RelaySettings()
        self.dsn = dsn  # for the LISTEN connection; without it the relay only scans
        self.schema = schema
        self.handed_off = 0
        self.retried = 0
        self.refused = 0
        self.passes = 0
        self.listening = asyncio.Event()  # set while the LISTEN connection is up
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run_once(self) -> int:
        """One pass: take a batch of due rows, hand each off, mark it; returns how many rows
        were taken. Raises what the database raised (nothing is marked then)."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await outbox.take_due(conn, self.settings.batch)
            if rows:
                results = await asyncio.gather(*(self._hand_off(row) for row in rows))
                done = [row.id for row, error in zip(rows, results, strict=True) if error is None]
                if done:
                    await outbox.mark_handed_off(conn, done)
                for row, error in zip(rows, results, strict=True):
                    if error is not None:
                        await self._record_failure(conn, row, error)
        self.passes += 1
        return len(rows)

    async def _hand_off(self, row: outbox.Pending) -> CoordinatorError | None:
        try:
            async with asyncio.timeout(self.settings.handoff_timeout_s):
                state = await self.client.post_message(row.request)
        except TimeoutError:
            return Unavailable(None, f"no answer within {self.settings.handoff_timeout_s:g}s")
        except CoordinatorError as exc:
            return exc
        self.handed_off += 1
        log.info("outbox_handed_off", gid=row.gid, status=state.status, attempts=row.attempts + 1)
        return None

    async def _record_failure(
        self, conn: Connection, row: outbox.Pending, error: CoordinatorError
    ) -> None:
        text = describe(error)
        if error.status in REFUSED_STATUSES:
            self.refused += 1
            await outbox.mark_refused(conn, row.id, text)
            log.error("outbox_handoff_refused", gid=row.gid, http_status=error.status, error=text)
            return
        self.retried += 1
        wait_s = self.settings.backoff_s(row.attempts + 1)
        await outbox.mark_retry(conn, row.id, wait_s, text)
        log.warning(
            "outbox_handoff_failed",
            gid=row.gid,
            http_status=error.status,
            error=text,
            attempts=row.attempts + 1,
            retry_in_s=round(wait_s, 3),
        )

    async def _wait_s(self) -> float:
        """Until the next pass: the next row due, or the periodic scan, whichever is first."""
        async with self.pool.acquire() as conn:
            due = await outbox.next_due_in(conn)
        scan = self.settings.scan_every_s
        return scan if due is None else min(scan, max(due, 0.01))

    async def prune_once(self) -> int:
        keep = self.settings.keep_for_s
        if keep is None:
            return 0
        total = 0
        while True:
            async with self.pool.acquire() as conn:
                deleted = await outbox.prune_batch(conn, keep, self.settings.prune_batch)
            total += deleted
            if deleted < self.settings.prune_batch:
                break
            await asyncio.sleep(0.05)
        log.info("outbox_pruned", deleted=total, keep_for_s=keep)
        return total

    async def run_forever(self) -> NoReturn:
        """Passes until cancelled; the relay outlives its database and its coordinator."""
        loop = asyncio.get_running_loop()
        listener = asyncio.create_task(self._listen_forever(), name="tcc-outbox-listen")
        next_prune = loop.time()
        failures = 0
        log.info("outbox_relay_started", schema=self.schema, listen=self.dsn is not None)
        try:
            while True:
                self._wake.clear()  # a row added during the pass below wakes the next wait
                try:
                    taken = await self.run_once()
                    if taken == self.settings.batch:
                        continue  # more may be due now
                    if loop.time() >= next_prune:
                        next_prune = loop.time() + self.settings.prune_every_s
                        await self.prune_once()
                    wait_s = await self._wait_s()
                    failures = 0
                except Exception as exc:  # a database outage: try again, never end
                    failures += 1
                    wait_s = self.settings.backoff_s(failures)
                    log.warning("outbox_relay_failed", error=describe(exc), retry_in_s=wait_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait_s)
        finally:
            listener.cancel()
            await asyncio.wait([listener])

    async def _listen_forever(self) -> None:
        if self.dsn is None:
            return
        failures = 0
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10)
                await conn.add_listener(outbox.CHANNEL, self._notified)
                self.listening.set()
                failures = 0
                self.wake()  # rows may have been added while nobody listened
                while True:
                    await asyncio.sleep(self.settings.listen_check_s)
                    async with asyncio.timeout(self.settings.listen_check_s):
                        await conn.fetchval("SELECT 1")
            except Exception as exc:
                failures += 1
                log.warning("outbox_listen_failed", error=describe(exc))
            finally:
                self.listening.clear()
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(self.settings.backoff_s(failures))

    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        if self.schema is None or payload == self.schema:
            self.wake()


@contextlib.asynccontextmanager
async def running(relay: Relay) -> AsyncIterator[Relay]:
    """The relay as a task for the life of the block; cancelled and awaited on leaving."""
    task = asyncio.create_task(relay.run_forever(), name="tcc-outbox-relay")
    try:
        yield relay
    finally:
        task.cancel()
        await asyncio.wait([task])


RELAY = web.AppKey("outbox_relay", Relay)


def relay_in_background(
    pool_key: web.AppKey[asyncpg.Pool],
    coordinator_url: str,
    *,
    dsn: str | None = None,
    schema: str | None = None,
    service: str | None = None,
    api_key: str | None = None,
    settings: RelaySettings | None = None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx running the relay on ``app[pool_key]`` (kept at ``app[RELAY]``).

    Append it after the cleanup_ctx that opens the pool: aiohttp cleans up in reverse order,
    so the relay stops before the pool closes. ``dsn`` and ``schema`` give it the LISTEN
    connection that wakes it when a row is added in that schema.
    """
    chosen = settings or RelaySettings.from_env()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with CoordinatorClient(
            coordinator_url, service=service, api_key=api_key, timeout_s=chosen.handoff_timeout_s
        ) as client:
            app[RELAY] = Relay(app[pool_key], client, chosen, dsn=dsn, schema=schema)
            async with running(app[RELAY]):
                yield

    return lifecycle
