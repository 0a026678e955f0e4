"""Assembles a running coordinator from its parts, and takes it apart again in order.

The HTTP app, `tcc recover` and the admin commands all run the same assembly; tests build
one from an in-memory log and a scripted participant caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog

from coordinator import tracing
from coordinator.core.urlpolicy import ParticipantPolicy
from coordinator.engine.consoles import SessionBook
from coordinator.engine.driver import PhaseDriver, new_owner_id
from coordinator.engine.participants import Participants
from coordinator.engine.recovery import Recovery
from coordinator.engine.service import Coordinator
from coordinator.engine.upkeep import Upkeep
from coordinator.metrics import Metrics
from coordinator.outbound import HttpCaller, ParticipantCaller, http_session
from coordinator.settings import Settings
from coordinator.tlsfiles import ParticipantTls
from coordinator.txlog import migrator
from coordinator.txlog.interface import TransactionLog
from coordinator.txlog.postgres import PostgresLog

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    settings: Settings
    log: TransactionLog
    driver: PhaseDriver
    coordinator: Coordinator
    recovery: Recovery
    upkeep: Upkeep
    sessions: SessionBook
    participants: Participants

    @classmethod
    def build(
        cls,
        settings: Settings,
        txlog: TransactionLog,
        caller: ParticipantCaller,
        *,
        owner: str | None = None,
        alert_caller: ParticipantCaller | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Runtime:
        """``rng`` draws the retry jitter: tests pass one to know the delays. ``clock``:
        the seconds the breakers' local counts go by (tests move one with the log's).
        ``alert_caller``: delivers alerts (default: ``caller``)."""
        metrics = Metrics()
        policy = ParticipantPolicy.from_config(settings.participant_allow)
        participants = Participants(
            txlog, caller, settings, metrics, owner or new_owner_id(), clock=clock, rng=rng
        )
        driver = PhaseDriver(txlog, caller, settings, metrics, participants, rng=rng)
        coordinator = Coordinator(txlog, driver, settings, policy, metrics)
        upkeep = Upkeep(txlog, alert_caller or caller, settings, metrics, participants, rng=rng)
        return cls(
            settings,
            txlog,
            driver,
            coordinator,
            Recovery(driver),
            upkeep,
            SessionBook(txlog),
            participants,
        )

    async def stop(self) -> None:
        """Claim no more work, let rounds finish within the grace time (then hand them
        back), and close the log."""
        self.recovery.stop()
        self.upkeep.stop()
        await self.driver.shutdown(self.settings.shutdown_grace_s)


@contextlib.asynccontextmanager
async def running(
    settings: Settings, database_url: str, *, recovery: bool = True
) -> AsyncIterator[Runtime]:
    """A coordinator on Postgres with real participant calls; recovery and upkeep (alerts,
    retention) run in the background unless ``recovery`` is False (admin commands)."""
    # Before the database: TLS files that cannot be used stop a serving coordinator's start
    # in one line (an admin command calls no participant: it need not read them).
    tls = ParticipantTls.from_settings(settings)
    if recovery:
        tls.load_all()
    if settings.migrate:
        await migrator.migrate(database_url)
    txlog = await PostgresLog.connect(database_url, settings.pool_min_size, settings.pool_max_size)
    policy = ParticipantPolicy.from_config(settings.participant_allow)
    session = http_session(policy, settings.max_participant_connections)
    try:
        caller = HttpCaller(session, settings.max_response_bytes, policy, tls)
        # Alerts go to a webhook, not a participant: the system's trust store, and no
        # client certificate of the participants' (docs/operations.md#alerts).
        alert_caller = HttpCaller(session, settings.max_response_bytes, policy)
        runtime = Runtime.build(settings, txlog, caller, alert_caller=alert_caller)
        tls.report_certificates(runtime.driver.metrics.client_certificate_loaded)
        tracing.configure_export(settings.otlp_endpoint, runtime.driver.owner)
        # Recovery, alert delivery and retention: the background work of a serving
        # coordinator (an admin command's does none of it). Every profile's TLS files are
        # looked at now and then (the certificates' expiry metric follows rotations).
        background = [asyncio.create_task(runtime.recovery.run_forever(), name="recovery")]
        tls_upkeep = asyncio.create_task(tls.keep_fresh(), name="tls-files")
        if recovery:
            background.append(asyncio.create_task(runtime.upkeep.run_forever(), name="upkeep"))
        else:
            runtime.recovery.stop()
            tls_upkeep.cancel()
        log.info("coordinator_started", owner=runtime.driver.owner, recovery=recovery)
        try:
            yield runtime
        finally:
            runtime.recovery.stop()
            runtime.upkeep.stop()
            tls_upkeep.cancel()
            for task in [*background, tls_upkeep]:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await runtime.driver.shutdown(settings.shutdown_grace_s)
            if recovery:
                await runtime.recovery.note_stopped()
            log.info("coordinator_stopped", owner=runtime.driver.owner)
    finally:
        await session.close()
        await txlog.close()
        tracing.shutdown()
