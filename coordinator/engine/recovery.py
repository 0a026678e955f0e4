"""The background loop every coordinator runs: time out, resume and retry due transactions."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from coordinator.core.errors import DatabaseUnavailable
from coordinator.core.records import Lease
from coordinator.engine.driver import PhaseDriver, RoundEnd

log = structlog.get_logger(__name__)


class Recovery:
    def __init__(self, driver: PhaseDriver) -> None:
        self.driver = driver
        self.settings = driver.settings
        self._stopping = asyncio.Event()

    async def run_once(self, wait: bool = False) -> list[Lease]:
        """Claim what is due and start on it; with ``wait``, until those rounds end. Each
        scan is noted in the log, so that the console shows which coordinators are alive
        and what they claim."""
        room = self.settings.recovery_batch - self.driver.active_drives
        claimed = (
            await self.driver.log.claim_due(self.driver.owner, room, self.settings.lease_ttl_s)
            if room > 0
            else []
        )
        taken_over = sum(claim.took_over for claim in claimed)
        await self.driver.log.coordinator_seen(self.driver.owner, len(claimed), taken_over)
        tasks: list[asyncio.Task[RoundEnd]] = []
        for lease, status, took_over in claimed:
            with structlog.contextvars.bound_contextvars(gid=lease.gid):
                log.info("recovery_claimed", status=status.value, took_over=took_over)
                self.driver.metrics.recovery_claimed(status, took_over=took_over)
                try:
                    task = await self.driver.resume(lease, status)
                except Exception as exc:
                    # Hand this one back at once; the rest of the batch goes on.
                    log.warning("recovery_resume_failed", error=str(exc))
                    with contextlib.suppress(Exception):
                        await self.driver.log.release_lease(lease)
                    continue
            if task is not None:
                tasks.append(task)
        if wait and tasks:
            await asyncio.wait(tasks)
        return [claim.lease for claim in claimed]

    async def run_forever(self) -> None:
        interval = self.settings.recovery_interval_s
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except DatabaseUnavailable as exc:
                log.warning("recovery_scan_failed", error=str(exc))
            except Exception:
                log.exception("recovery_scan_crashed")
            # Sleep, but wake at once when asked to stop.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)

    def stop(self) -> None:
        self._stopping.set()

    async def note_stopped(self) -> None:
        """Tell the log this coordinator has shut down (the console shows it stopped)."""
        try:
            await self.driver.log.coordinator_stopped(self.driver.owner)
        except DatabaseUnavailable as exc:
            log.warning("coordinator_stop_not_noted", error=str(exc))
