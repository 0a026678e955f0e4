"""A circuit breaker per registered participant, as pure rules: when it opens, how long it
stays open, who may probe, how fast calls resume; and the compare-and-set moves the log
applies (the log decides nothing: it writes what a move says, if the row is still as the
move expects).

States: CLOSED (calls go out; once recovered, at a rate that ramps up over ``ramp_s``),
OPEN (phase-two calls wait, new tries fail at once; after ``open_for`` a probe may go),
HALF_OPEN (one coordinator sends one probe: the health URL, or one real call).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from coordinator.core.states import Phase


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker opens and how a participant is let back in (TCC_BREAKER_*)."""

    failures: int = 5  # consecutive failed calls that open it (0: never by count)
    error_rate: float = 0.5  # or this share of failed calls over the window ...
    window_s: float = 30.0
    min_calls: int = 20  # ... once the window holds at least this many calls
    open_s: float = 10.0  # the first stay open; each next one twice as long ...
    max_open_s: float = 300.0  # ... up to this
    ramp_s: float = 30.0  # after a recovery calls resume at a rate that grows for this long
    ramp_start_per_s: float = 5.0  # starting from this many calls a second (all coordinators)
    probe_ttl_s: float = 30.0  # a probe's holder that vanished is replaced after this

    def open_for(self, opens_before: int) -> float:
        """How long a breaker opened for the (opens_before + 1)-th time stays open."""
        doubled: float = self.open_s * 2.0 ** min(opens_before, 30)
        return min(doubled, self.max_open_s)

    def ramp_rate(self, since_recovery_s: float) -> float | None:
        """Calls a second allowed ``since_recovery_s`` after a recovery (None: no limit any
        more). Doubles five times over the ramp, then the limit goes."""
        if since_recovery_s >= self.ramp_s or since_recovery_s < 0:
            return None
        return self.ramp_start_per_s * 2 ** (5 * since_recovery_s / self.ramp_s)


def counts_as_failure(http_status: int | None) -> bool:
    """A call the breaker counts against its participant: no answer (refused, reset, timed
    out), an error of its own (5xx), or "too many requests". A 4xx refusal is an answer."""
    return http_status is None or http_status >= 500 or http_status == 429


class FailureWindow:
    """One process's recent calls to a participant: consecutive failures, and calls and
    failures per second over the window. Time is passed in (seconds, any monotonic clock)."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.consecutive = 0
        # (second, calls, failures), oldest first
        self._seconds: collections.deque[list[int]] = collections.deque()

    def record(self, failed: bool, now: float) -> None:
        self.consecutive = self.consecutive + 1 if failed else 0
        second = int(now)
        if self._seconds and self._seconds[-1][0] == second:
            bucket = self._seconds[-1]
        else:
            bucket = [second, 0, 0]
            self._seconds.append(bucket)
        bucket[1] += 1
        bucket[2] += int(failed)
        self._forget(now)

    def _forget(self, now: float) -> None:
        horizon = now - self.policy.window_s
        while self._seconds and self._seconds[0][0] < horizon:
            self._seconds.popleft()

    def totals(self, now: float) -> tuple[int, int]:
        """Calls and failures in the window."""
        self._forget(now)
        return sum(b[1] for b in self._seconds), sum(b[2] for b in self._seconds)

    def trips(self, now: float) -> str | None:
        """Why the breaker should open now, or None."""
        p = self.policy
        if p.failures and self.consecutive >= p.failures:
            return f"{self.consecutive} calls failed in a row"
        calls, failures = self.totals(now)
        if p.min_calls and calls >= p.min_calls and failures / calls >= p.error_rate:
            return f"{failures} of {calls} calls failed in the last {p.window_s:g} s"
        return None

    def clear(self) -> None:
        self.consecutive = 0
        self._seconds.clear()


class TokenBucket:
    """Calls allowed at a varying rate: one token a call, at most one second's worth kept."""

    def __init__(self) -> None:
        self._tokens = 1.0
        self._at: float | None = None

    def take(self, now: float, rate: float) -> float:
        """Take a token: 0.0 if one was there, else the seconds until one will be."""
        if self._at is not None:
            self._tokens = min(max(rate, 1.0), self._tokens + (now - self._at) * rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / rate


# --- what a call may do now ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BreakerView:
    """A participant's breaker as one coordinator last read it, its times made relative to
    the database clock at that read."""

    state: BreakerState
    reason: str | None
    retry_in_s: float | None  # open: until a probe may go
    probe_owner: str | None
    probe_expired: bool
    since_recovery_s: float | None  # closed after a recovery: how long ago
    has_health_url: bool

    @property
    def probe_due(self) -> bool:
        """Whether a probe may be taken now: the open time is over, or the probe out has
        lapsed (its holder vanished)."""
        if self.state is BreakerState.OPEN:
            return (self.retry_in_s or 0.0) <= 0
        return self.state is BreakerState.HALF_OPEN and self.probe_expired

    def ramping(self, policy: BreakerPolicy) -> bool:
        """Closed after a recovery, within the ramp."""
        since = self.since_recovery_s
        return self.state is BreakerState.CLOSED and since is not None and since < policy.ramp_s


class Verdict(StrEnum):
    SEND = "send"
    PROBE = "probe"  # send it: its answer closes or reopens the breaker
    TAKE_PROBE = "take_probe"  # ask the log for the probe; send it as the probe if granted
    HOLD = "hold"  # do not send it now


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: Verdict
    reason: str | None = None  # why it is held (shown in the timeline and a try's error)
    retry_in_s: float = 0.0  # when to ask again
    # Which stay of the breaker in its state admitted it (its breaker_since): the answer of a
    # call sent before the breaker last moved says nothing about the participant now.
    stay: datetime | None = None


def admit(view: BreakerView, phase: Phase, *, owner: str, probe_in_flight: bool) -> Admission:
    """What a call of ``phase`` may do under the breaker (the ramp's rate is applied by the
    caller with a TokenBucket). A try is never a probe: it is new work, and fails fast while
    the participant is not known to be back."""
    if view.state is BreakerState.CLOSED:
        return Admission(Verdict.SEND)
    why = f"circuit open: {view.reason}" if view.reason else "circuit open"
    if phase is Phase.TRY:
        return Admission(Verdict.HOLD, why, view.retry_in_s or 0.0)
    if view.probe_due and not view.has_health_url:
        return Admission(Verdict.TAKE_PROBE, why, 0.0)
    if view.state is BreakerState.OPEN:
        return Admission(Verdict.HOLD, why, max(view.retry_in_s or 0.0, 0.0))
    # Half-open: its one probe is out (or being taken).
    mine = view.probe_owner == owner
    if mine and not probe_in_flight and not view.has_health_url:
        return Admission(Verdict.PROBE, why)
    return Admission(Verdict.HOLD, f"{why}; a probe is out", 1.0)


# --- the moves the log applies ---------------------------------------------------------


class BreakerEvent(StrEnum):
    TRIPPED = "tripped"  # closed -> open
    PROBING = "probing"  # open (due) or half-open (its prober gone) -> half-open
    RECOVERED = "recovered"  # half-open -> closed, ramping up
    STILL_DOWN = "still_down"  # half-open -> open again, for longer
    RESET = "reset"  # an operator closed it


@dataclass(frozen=True, slots=True)
class BreakerMove:
    """One compare-and-set on a participant's breaker: from ``sources`` (and, when given,
    only if it opened ``opens_seen`` times, only when due, only for the probe's holder) to
    ``target`` with what that state keeps."""

    event: BreakerEvent
    name: str
    sources: tuple[BreakerState, ...]
    target: BreakerState
    reason: str | None = None
    open_for_s: float | None = None  # open: when a probe may go
    opens: int | None = None  # the count it moves to (None: unchanged)
    opens_seen: int | None = None  # guard: only if the count is still this
    when_due: bool = False  # guard: only once the open time is over or the probe lapsed
    holder: str | None = None  # guard: only the probe's holder
    probe_owner: str | None = None
    probe_ttl_s: float | None = None
    ramps: bool = False  # closed after a recovery: calls ramp up from now
    alert: bool = False  # raise a breaker_open alert with it

    @property
    def source_words(self) -> list[str]:
        return [s.value for s in self.sources]

    def alert_body(self) -> dict[str, object]:
        """What a breaker_open alert says."""
        return {
            "kind": "breaker_open",
            "participant": self.name,
            "reason": self.reason,
            "open_for_s": self.open_for_s,
            "what_happens": "phase-two calls to it wait, new tries to it fail at once;"
            " a probe goes out when the open time is over",
        }


def trip(
    name: str, reason: str, opens_seen: int, policy: BreakerPolicy, *, ramping: bool = False
) -> BreakerMove:
    """Open a closed breaker (only if it opened ``opens_seen`` times, as its tripper saw).
    One that trips again while its calls are still ramping up after a recovery stays open
    twice as long as last time (a participant whose health URL answers while its real calls
    fail does not flap every few seconds); a settled one starts again from the first time."""
    opens_before = opens_seen if ramping else 0
    return BreakerMove(
        BreakerEvent.TRIPPED,
        name,
        (BreakerState.CLOSED,),
        BreakerState.OPEN,
        reason=reason,
        open_for_s=policy.open_for(opens_before),
        opens=opens_before + 1,
        opens_seen=opens_seen,
        alert=True,
    )


def take_probe(name: str, owner: str, policy: BreakerPolicy) -> BreakerMove:
    return BreakerMove(
        BreakerEvent.PROBING,
        name,
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        BreakerState.HALF_OPEN,
        when_due=True,
        probe_owner=owner,
        probe_ttl_s=policy.probe_ttl_s,
    )


def recovered(name: str, owner: str) -> BreakerMove:
    """The probe answered: closed, ramping up (the count of openings is kept until the ramp
    is over, see trip)."""
    return BreakerMove(
        BreakerEvent.RECOVERED,
        name,
        (BreakerState.HALF_OPEN,),
        BreakerState.CLOSED,
        holder=owner,
        ramps=True,
    )


def still_down(
    name: str, owner: str, reason: str, opens_before: int, policy: BreakerPolicy
) -> BreakerMove:
    return BreakerMove(
        BreakerEvent.STILL_DOWN,
        name,
        (BreakerState.HALF_OPEN,),
        BreakerState.OPEN,
        reason=reason,
        open_for_s=policy.open_for(opens_before),
        opens=opens_before + 1,
        holder=owner,
    )


def reset(name: str) -> BreakerMove:
    """An operator closes the breaker: calls go out at once, ramping up."""
    return BreakerMove(
        BreakerEvent.RESET,
        name,
        tuple(BreakerState),
        BreakerState.CLOSED,
        opens=0,
        ramps=True,
    )


def spread(retry_in_s: float, over_s: float, unit: float) -> float:
    """When a held call should be tried again: after ``retry_in_s``, spread over ``over_s``
    by ``unit`` (0..1, random), so that the backlog does not come back in one instant."""
    return max(retry_in_s, 0.0) + unit * over_s + 0.05
