"""The registered participants as one coordinator works with them: the registry (read from
the log every second, so a registration on any coordinator is seen everywhere), each one's
circuit breaker, and the calls this process made to them (added to the log's per-minute
counts every few seconds).

The breaker's state lives in the log, so every coordinator on it holds the same calls back
and only one sends the probe; what opens it is counted here, per process (the calls this
coordinator saw fail), and written as a compare-and-set that only one coordinator wins. The
rules are core.breaker's; this module applies them with this process's clock, made relative
to the log's at each read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from coordinator.core import breaker
from coordinator.core.breaker import (
    Admission,
    BreakerMove,
    BreakerState,
    BreakerView,
    FailureWindow,
    TokenBucket,
    Verdict,
)
from coordinator.core.errors import DatabaseUnavailable
from coordinator.core.records import (
    CallResult,
    CallTally,
    OutboundCall,
    Participant,
    url_under,
)
from coordinator.core.states import Phase
from coordinator.core.tls import TlsFailure
from coordinator.metrics import Metrics
from coordinator.outbound import ParticipantCaller
from coordinator.settings import Settings
from coordinator.txlog.interface import TransactionLog

log = structlog.get_logger(__name__)

# How often the registry and the breakers are read again, and this process's counts added
# to the log's.
REFRESH_S = 1.0
FLUSH_S = 5.0
# Per-minute counts are kept this long (the console shows the last 15 minutes).
TALLIES_KEPT_S = 86_400.0
HEALTH_TIMEOUT_S = 5.0


@dataclass
class _Known:
    """One participant as this process knows it: the registry's row, when it was read (this
    process's clock), and what only this process counts."""

    row: Participant
    read_at: float
    retry_in_s: float | None  # at read_at, by the log's clock
    probe_expires_in_s: float | None
    since_recovery_s: float | None
    window: FailureWindow
    bucket: TokenBucket = field(default_factory=TokenBucket)
    probe_in_flight: bool = False


@dataclass
class _Tally:
    calls: int = 0
    errors: int = 0
    latency_ms_sum: float = 0.0
    latency_ms_max: float = 0.0


class Participants:
    def __init__(
        self,
        txlog: TransactionLog,
        caller: ParticipantCaller,
        settings: Settings,
        metrics: Metrics,
        owner: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.log = txlog
        self.caller = caller
        self.settings = settings
        self.policy = settings.breaker_policy
        self.metrics = metrics
        self.owner = owner
        self._clock = clock
        self._rng = rng or random.Random()
        self._known: dict[str, _Known] = {}
        self._coordinators = 1
        self._tallies: dict[tuple[str, Phase], _Tally] = {}
        self._loaded = False
        # One read at a time, so that an older snapshot never lands after a newer one.
        self._reading = asyncio.Lock()
        # Participants this process is asking the log for the probe of (one ask at a time),
        # and its health probes in flight.
        self._taking: set[str] = set()
        self._probes: dict[str, asyncio.Task[None]] = {}

    # --- the registry ----------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the registry and the breakers again."""
        async with self._reading:
            registry = await self.log.participants()
            now = self._clock()
            known = {}
            for row in registry.participants:
                before = self._known.get(row.name)
                # Failures counted before the breaker last moved (here or in another
                # coordinator) say nothing about the participant now.
                same_stay = before is not None and before.row.breaker_since == row.breaker_since
                known[row.name] = _Known(
                    row=row,
                    read_at=now,
                    retry_in_s=_until(registry.read_at, row.breaker_retry_at),
                    probe_expires_in_s=_until(registry.read_at, row.probe_expires_at),
                    since_recovery_s=_ago(registry.read_at, row.ramp_started_at),
                    window=(
                        before.window
                        if before is not None and same_stay
                        else FailureWindow(self.policy)
                    ),
                    bucket=before.bucket if before else TokenBucket(),
                    probe_in_flight=bool(
                        before and before.probe_in_flight and row.probe_owner == self.owner
                    ),
                )
            self._known = known
            self._coordinators = max(1, registry.live_coordinators)
            self._loaded = True

    async def ensure_loaded(self) -> None:
        if not self._loaded:
            await self.refresh()

    def get(self, name: str) -> Participant | None:
        known = self._known.get(name)
        return known.row if known else None

    def all(self) -> list[Participant]:
        return [known.row for known in self._known.values()]

    def owner_of(self, urls: Iterable[str]) -> str | None:
        """The registered participant a branch given by URLs calls: the one whose base URL
        every URL is under (the longest such base), else one registered with the same
        confirm or cancel URL; None if none is."""
        urls = [u for u in urls if u]
        if not urls:
            return None
        best: tuple[int, str] | None = None
        for name, known in self._known.items():
            base = known.row.base_url
            if not base or (best is not None and len(base) <= best[0]):
                continue
            if all(url_under(url, base) for url in urls):
                best = (len(base), name)
        if best is not None:
            return best[1]
        for name, known in sorted(self._known.items()):
            if {known.row.confirm_url, known.row.cancel_url} & set(urls):
                return name
        return None

    def forget(self, name: str) -> None:
        self._known.pop(name, None)

    # --- the breaker -------------------------------------------------------------------

    def view(self, name: str) -> BreakerView | None:
        known = self._known.get(name)
        if known is None:
            return None
        elapsed = self._clock() - known.read_at
        row = known.row
        return BreakerView(
            state=row.breaker_state,
            reason=row.breaker_reason,
            retry_in_s=None if known.retry_in_s is None else known.retry_in_s - elapsed,
            probe_owner=row.probe_owner,
            probe_expired=(
                known.probe_expires_in_s is not None and known.probe_expires_in_s - elapsed < 0
            ),
            since_recovery_s=(
                None if known.since_recovery_s is None else known.since_recovery_s + elapsed
            ),
            has_health_url=row.health_url is not None,
        )

    async def admit(self, name: str | None, phase: Phase) -> Admission:
        """Whether a call of ``phase`` to participant ``name`` may go out now."""
        if name is None or not self.settings.breaker:
            return _SEND
        if not self._loaded:  # a process without the background refresh (tcc recover --once)
            with contextlib.suppress(DatabaseUnavailable):
                await self.refresh()
        view = self.view(name)
        if view is None:
            return _SEND
        known = self._known[name]
        decided = breaker.admit(
            view, phase, owner=self.owner, probe_in_flight=known.probe_in_flight
        )
        if decided.verdict is Verdict.SEND:
            return self._within_ramp(name, known, view, phase)
        if decided.verdict is Verdict.TAKE_PROBE:
            return await self._take_probe(name, phase, decided)
        if decided.verdict is Verdict.PROBE:
            known.probe_in_flight = True
            return decided
        return self._held(name, phase, decided)

    async def _take_probe(self, name: str, phase: Phase, due: Admission) -> Admission:
        """Ask the log for the probe (one ask at a time in this process: the calls held
        behind it wait for the next look); the call is the probe if it is granted."""
        if name in self._taking:
            return self._held(name, phase, Admission(Verdict.HOLD, due.reason, 1.0))
        self._taking.add(name)
        try:
            taken = await self._move(breaker.take_probe(name, self.owner, self.policy))
        finally:
            self._taking.discard(name)
        known = self._known.get(name)
        if not taken or known is None:
            return self._held(name, phase, Admission(Verdict.HOLD, due.reason, 1.0))
        known.probe_in_flight = True
        log.info("breaker_probe", participant=name, probe="call")
        return Admission(Verdict.PROBE, due.reason, stay=known.row.breaker_since)

    def _within_ramp(self, name: str, known: _Known, view: BreakerView, phase: Phase) -> Admission:
        """Closed: send it, unless it recovered lately and this process has used its share
        of the ramp's rate (a try is new work, not backlog: it is never held by the ramp)."""
        sent = Admission(Verdict.SEND, stay=known.row.breaker_since)
        since = view.since_recovery_s
        rate = None if since is None else self.policy.ramp_rate(since)
        if rate is None or phase is Phase.TRY:
            return sent
        wait = known.bucket.take(self._clock(), rate / self._coordinators)
        if wait <= 0:
            return sent
        # (no rate in the words: the timeline's entry for held rounds collapses repeats)
        reason = "ramping up after a recovery"
        # Back within what is left of the ramp: its rate is made for the backlog to fit.
        left = max(self.policy.ramp_s - (since or 0.0), 0.0)
        return self._held(name, phase, Admission(Verdict.HOLD, reason, wait), spread_s=left)

    def _held(
        self, name: str, phase: Phase, held: Admission, spread_s: float | None = None
    ) -> Admission:
        """A held call: a try fails now; a phase-two call comes back after ``held``'s
        wait, spread over ``spread_s`` (by default the whole ramp: the backlog does not all
        come back at the end of the open time)."""
        self.metrics.call_held(name, phase.value)
        if phase is Phase.TRY:
            return held
        over = self.policy.ramp_s if spread_s is None else spread_s
        later = breaker.spread(held.retry_in_s, over, self._rng.random())
        return Admission(Verdict.HOLD, held.reason, later)

    async def report(
        self, name: str | None, phase: Phase, result: CallResult, admission: Admission
    ) -> None:
        """Count a call that went out, and move the breaker if it calls for it."""
        if name is None:
            return
        failed = breaker.counts_as_failure(result.http_status)
        tally = self._tallies.setdefault((name, phase), _Tally())
        tally.calls += 1
        tally.errors += int(failed)
        tally.latency_ms_sum += result.latency_ms
        tally.latency_ms_max = max(tally.latency_ms_max, result.latency_ms)
        known = self._known.get(name)
        if known is None or not self.settings.breaker:
            return
        if result.tls_failure is TlsFailure.CONFIGURATION:
            # This coordinator's own TLS files, not the participant: its breaker, which
            # every coordinator shares, is not moved by them.
            return
        now = self._clock()
        if admission.verdict is Verdict.PROBE:
            known.probe_in_flight = False
            await self._probe_answered(name, known, failed, result)
            return
        if admission.stay != known.row.breaker_since:
            return  # sent before the breaker last moved: its answer is old news
        known.window.record(failed, now)
        if known.row.breaker_state is not BreakerState.CLOSED or not failed:
            return
        why = known.window.trips(now)
        if why is None:
            return
        view = self.view(name)
        ramping = view is not None and view.ramping(self.policy)
        trip = breaker.trip(name, why, known.row.breaker_opens, self.policy, ramping=ramping)
        if await self._move(trip):
            known.window.clear()

    async def _probe_answered(
        self, name: str, known: _Known, failed: bool, result: CallResult
    ) -> None:
        if failed:
            why = f"probe failed: {result.error or f'HTTP {result.http_status}'}"
            move = breaker.still_down(name, self.owner, why, known.row.breaker_opens, self.policy)
        else:
            move = breaker.recovered(name, self.owner)
        await self._move(move)

    async def reset(self, name: str) -> Participant | None:
        """An operator closes the breaker (calls resume, ramping up)."""
        return await self._apply(breaker.reset(name))

    async def _move(self, move: BreakerMove) -> bool:
        try:
            return await self._apply(move) is not None
        except DatabaseUnavailable as exc:
            log.warning("breaker_move_failed", participant=move.name, error=str(exc))
            return False

    async def _apply(self, move: BreakerMove) -> Participant | None:
        moved = await self.log.move_breaker(move)
        if moved is None:
            await self.refresh()  # someone else moved it first: learn what they did
            return None
        self.metrics.breaker_moved(move.name, move.event.value)
        level = log.warning if move.target is not BreakerState.CLOSED else log.info
        level(
            f"breaker_{move.event.value}",
            participant=move.name,
            state=move.target.value,
            reason=move.reason,
            open_for_s=move.open_for_s,
        )
        await self.refresh()
        return moved

    # --- background: health probes, counts -------------------------------------------

    async def watch(self) -> int:
        """One pass: read the breakers again, and start a probe of the health URL of each
        participant whose breaker is due one (in the background: a slow health URL does not
        hold up the next pass); how many were started."""
        await self.refresh()
        if not self.settings.breaker:
            return 0
        started = 0
        for name, known in list(self._known.items()):
            view = self.view(name)
            health = known.row.health_url
            if view is None or health is None or not view.probe_due or name in self._probes:
                continue
            task = asyncio.create_task(self._probe_health(name, health), name=f"probe:{name}")
            self._probes[name] = task
            task.add_done_callback(functools.partial(self._probe_ended, name))
            started += 1
        return started

    def _probe_ended(self, name: str, _: asyncio.Task[None]) -> None:
        self._probes.pop(name, None)

    async def probes_done(self) -> None:
        """Wait for the health probes in flight."""
        if self._probes:
            await asyncio.wait(list(self._probes.values()))

    async def stop_probes(self) -> None:
        """Shutting down: the health probes in flight are cut short (the probe lapses and
        another coordinator takes it)."""
        for task in self._probes.values():
            task.cancel()
        await self.probes_done()

    async def _probe_health(self, name: str, url: str) -> None:
        if not await self._move(breaker.take_probe(name, self.owner, self.policy)):
            return
        known = self._known.get(name)
        if known is None:
            return
        log.info("breaker_probe", participant=name, probe="health")
        timeout = known.row.call_timeout_s or HEALTH_TIMEOUT_S
        probe = OutboundCall("GET", url, {}, tls_profile=known.row.tls_profile)
        result = await self.caller.send(probe, timeout)
        if result.tls_failure is not None:
            self.metrics.tls_failed(name, result.tls_failure)
        failed = result.http_status is None or not 200 <= result.http_status < 300
        await self._probe_answered(name, known, failed, result)

    async def flush(self) -> int:
        """Add this process's counts since the last flush to the log's; how many rows."""
        if not self._tallies:
            return 0
        taken, self._tallies = self._tallies, {}
        tallies = [
            CallTally(name, phase, t.calls, t.errors, t.latency_ms_sum, t.latency_ms_max)
            for (name, phase), t in taken.items()
        ]
        try:
            await self.log.add_call_tallies(tallies)
        except DatabaseUnavailable:
            for (name, phase), t in taken.items():  # kept for the next flush
                again = self._tallies.setdefault((name, phase), _Tally())
                again.calls += t.calls
                again.errors += t.errors
                again.latency_ms_sum += t.latency_ms_sum
                again.latency_ms_max = max(again.latency_ms_max, t.latency_ms_max)
            raise
        return len(tallies)


_SEND = Admission(Verdict.SEND)


def _until(now: datetime, moment: datetime | None) -> float | None:
    return None if moment is None else (moment - now).total_seconds()


def _ago(now: datetime, moment: datetime | None) -> float | None:
    return None if moment is None else (now - moment).total_seconds()
