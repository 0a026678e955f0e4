"""What every coordinator does in the background besides recovery: deliver alerts, prune.

Alerts. The log writes an alert in the same database transaction as the change it is about
(a transaction parked, or past TCC_ALERT_AFTER_ROUNDS rounds), so one is made exactly once
whichever coordinator made the change. Delivery claims alerts under a lease (SKIP LOCKED), so
two coordinators never send the same one at once; a coordinator that dies after sending but
before marking it delivered leaves it to be sent again once its lease lapses, with the same
`X-TCC-Alert-Id` for the receiver to drop the repeat. Failed deliveries are retried with capped,
jittered backoff and given up (logged, counted) after TCC_ALERT_GIVE_UP_AFTER_S. Delivery never
holds up a request or a round: it runs here, on its own.

Participants. Every second the registry and the breakers are read again (and the health URL
of a participant whose breaker is due a probe is asked); every few seconds the calls this
process made are added to the log's per-minute counts.

Housekeeping. Console sessions that ended, coordinators gone and per-minute call counts older
than a day are deleted, whatever the retention setting.

Retention. With TCC_RETENTION_DAYS set, finished transactions (confirmed, cancelled) older
than that are deleted with their branches and timeline, a small batch per statement so no lock
is held for long; parked and unfinished ones never are.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import random
from collections.abc import Awaitable, Callable

import orjson
import structlog

from coordinator.core.errors import DatabaseUnavailable
from coordinator.core.records import Alert, OutboundCall
from coordinator.core.retry import RetryPolicy
from coordinator.engine import participants
from coordinator.engine.participants import Participants
from coordinator.metrics import AlertOutcome, Metrics
from coordinator.outbound import ParticipantCaller
from coordinator.settings import Settings
from coordinator.txlog.interface import TransactionLog

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "X-TCC-Signature"
ALERT_ID_HEADER = "X-TCC-Alert-Id"
ALERTS_PER_PASS = 20
ALERT_CALL_TIMEOUT_S = 10.0
PRUNE_BATCH = 500
# Between two batches: other statements get their turn at the rows and the disk.
PRUNE_PAUSE_S = 0.05
PRUNE_EVERY_S = 60.0
# Ended console sessions and gone coordinators are kept this long (for `tcc sessions list
# --all` and the console), then deleted.
FORGET_AFTER_S = 86_400.0


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: HMAC-SHA256 of the exact body sent, hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def alert_payload(alert: Alert) -> bytes:
    """The exact bytes POSTed (and signed): the alert's id, then what the log raised."""
    return orjson.dumps({"alert_id": alert.id, **alert.body})


class Upkeep:
    def __init__(
        self,
        txlog: TransactionLog,
        caller: ParticipantCaller,
        settings: Settings,
        metrics: Metrics,
        participants: Participants,
        rng: random.Random | None = None,
    ) -> None:
        self.log = txlog
        self.caller = caller
        self.settings = settings
        self.metrics = metrics
        self.participants = participants
        self.owner = participants.owner
        self._rng = rng or random.Random()
        self._stopping = asyncio.Event()
        self._alert_retry = RetryPolicy(
            initial_interval=1.0,
            backoff_coefficient=2.0,
            maximum_interval=300.0,
            give_up_after=settings.alert_give_up_after_s,
        )

    def stop(self) -> None:
        self._stopping.set()

    async def run_forever(self) -> None:
        """Deliver alerts and prune, each on its own schedule (a long prune never holds up
        an alert), until stop()."""
        work = []
        if self.settings.alert_webhook:
            work.append(self._every(self.settings.recovery_interval_s, self.deliver_due))
        retention_days = self.settings.retention_days
        if retention_days is not None:
            work.append(self._every(PRUNE_EVERY_S, lambda: self.prune(retention_days * 86400)))
        work.append(self._every(PRUNE_EVERY_S, self.forget_ended))
        # Registry and breakers read again, health probes; this process's call counts.
        work.append(self._every(participants.REFRESH_S, self.participants.watch))
        work.append(self._every(participants.FLUSH_S, self.participants.flush))
        try:
            await asyncio.gather(*work)
        finally:
            await self.participants.stop_probes()
            with contextlib.suppress(DatabaseUnavailable):
                await self.participants.flush()  # the last counts, at shutdown

    async def _every(self, interval_s: float, job: Callable[[], Awaitable[int]]) -> None:
        while not self._stopping.is_set():
            try:
                await job()
            except DatabaseUnavailable as exc:
                log.warning("upkeep_failed", error=str(exc))
            except Exception:  # a bug here must not stop the next pass
                log.exception("upkeep_crashed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval_s)

    # --- alerts ------------------------------------------------------------------

    async def deliver_due(self) -> int:
        """Send the alerts that are due (claimed under a lease); how many were delivered."""
        url = self.settings.alert_webhook
        if not url:
            return 0
        # Held for longer than a delivery can take, so no other coordinator sends it too.
        lease_s = max(self.settings.lease_ttl_s, 3 * ALERT_CALL_TIMEOUT_S)
        alerts = await self.log.claim_alerts(self.owner, ALERTS_PER_PASS, lease_s)
        sent = await asyncio.gather(*(self._deliver(url, a) for a in alerts))
        return sum(sent)

    async def _deliver(self, url: str, alert: Alert) -> bool:
        body = alert_payload(alert)
        headers = {
            "Content-Type": "application/json",
            ALERT_ID_HEADER: str(alert.id),
        }
        secret = self.settings.alert_secret
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret.get_secret_value(), body)
        call = OutboundCall(method="POST", url=url, headers=headers, body=body)
        result = await self.caller.send(call, ALERT_CALL_TIMEOUT_S)
        with structlog.contextvars.bound_contextvars(
            gid=alert.gid, alert_id=alert.id, kind=alert.kind.value
        ):
            if result.http_status is not None and 200 <= result.http_status < 300:
                if not await self.log.alert_delivered(alert.id, self.owner):
                    # Held too long (a stall): another coordinator may send it again.
                    log.warning("alert_lease_lost", attempts=alert.attempts + 1)
                    return False
                self.metrics.alert_delivery(AlertOutcome.DELIVERED)
                log.info("alert_delivered", attempts=alert.attempts + 1)
                return True
            error = result.error or f"HTTP {result.http_status}"
            attempt = alert.attempts + 1
            give_up = alert.age_s >= self._alert_retry.give_up_after
            retry_in = None if give_up else self._alert_retry.delay(attempt, self._rng)
            await self.log.alert_failed(alert.id, self.owner, error, retry_in)
            if give_up:
                self.metrics.alert_delivery(AlertOutcome.GIVEN_UP)
                log.error("alert_given_up", attempts=attempt, error=error)
            else:
                self.metrics.alert_delivery(AlertOutcome.FAILED)
                log.warning("alert_delivery_failed", attempts=attempt, error=error)
            return False

    # --- retention -----------------------------------------------------------------

    async def forget_ended(self) -> int:
        """Whatever retention is set to: console sessions that ended a day ago, and
        coordinators not seen for a day (the log keeps no row per request or per start
        for ever). How many rows went."""
        sessions = await self.log.prune_sessions(FORGET_AFTER_S)
        coordinators = await self.log.prune_coordinators(FORGET_AFTER_S)
        tallies = await self.log.prune_call_tallies(participants.TALLIES_KEPT_S)
        return sessions + coordinators + tallies

    async def prune(self, older_than_s: float) -> int:
        """Delete finished transactions older than that, batch by batch; how many."""
        total = 0
        while not self._stopping.is_set():
            deleted = await self.log.prune(older_than_s, PRUNE_BATCH)
            total += deleted
            if deleted:
                self.metrics.pruned(deleted)
            if deleted < PRUNE_BATCH:
                break
            await asyncio.sleep(PRUNE_PAUSE_S)
        if total:
            log.info("pruned", transactions=total, older_than_days=round(older_than_s / 86400, 3))
        return total
