"""What the storm's participant received, counted: its record read back, calls per second
after a moment, and the most calls a recovering breaker's ramp lets through in a stretch of
time (core.breaker's rate, integrated, with the allowances its token buckets take).

Pure: times are seconds since the epoch on this machine's clock, as the participant wrote
them; the harness puts the log's times on the same clock before it asks.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from coordinator.core.breaker import BreakerPolicy
from coordinator.core.states import Phase
from coordinator.devtools.storm_participant import START

PHASE_TWO = frozenset({Phase.CONFIRM.value, Phase.CANCEL.value})
# A call let through just before a second began may arrive in it: the ramp's bound for a
# second also counts what it let through this long before.
ARRIVAL_SLACK_S = 0.1


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float
    phase: str  # try, confirm, cancel; health (a breaker's probe); start (it began listening)
    gid: str
    branch: str

    @property
    def phase_two(self) -> bool:
        return self.phase in PHASE_TWO


def read_record(path: Path) -> list[Arrival]:
    """The participant's record, oldest first (a torn last line, from a kill in the middle of
    a write, is left out)."""
    arrivals = []
    for raw in path.read_text().splitlines():
        parts = raw.split("\t")
        if len(parts) != 4:
            continue
        try:
            at = float(parts[0])
        except ValueError:
            continue
        arrivals.append(Arrival(at, parts[1], parts[2], parts[3]))
    arrivals.sort(key=lambda a: a.at)
    return arrivals


def starts(arrivals: list[Arrival]) -> list[float]:
    """When the participant began listening, each time it was started."""
    return [a.at for a in arrivals if a.phase == START]


def calls(arrivals: list[Arrival]) -> list[Arrival]:
    """The coordinator's calls: tries, confirms, cancels and health probes."""
    return [a for a in arrivals if a.phase != START]


def by_phase(arrivals: list[Arrival]) -> dict[str, int]:
    counted = Counter(a.phase for a in calls(arrivals))
    return {phase: counted[phase] for phase in sorted(counted)}


def per_second(times: list[float], since: float, seconds: int) -> list[int]:
    """How many of ``times`` fall in each whole second after ``since``, for ``seconds``."""
    counts = [0] * seconds
    for at in times:
        k = math.floor(at - since)
        if 0 <= k < seconds:
            counts[k] += 1
    return counts


def median(values: list[int]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return (ordered[middle - 1] + ordered[middle]) / 2


def ramp_allows(
    policy: BreakerPolicy, coordinators: int, start_s: float, end_s: float
) -> float | None:
    """The most phase-two calls a recovered breaker's ramp lets through between ``start_s``
    and ``end_s`` (seconds since it recovered), all coordinators together; None once the
    stretch reaches past the ramp, when there is no limit any more.

    The ramp's rate (``policy.ramp_rate``: from ramp_start_per_s, doubling five times over
    ramp_s) integrated over the stretch, plus what the coordinators' token buckets may hold
    when it begins: each takes its share of the rate and keeps at most one second's worth
    of it, and at least one call.
    """
    if end_s > policy.ramp_s:
        return None
    if end_s <= 0:
        return 0.0
    start = max(start_s, 0.0)
    growth = 5 * math.log(2) / policy.ramp_s  # the rate is start * e^(growth * t)
    integral = (
        policy.ramp_start_per_s / growth * (math.exp(growth * end_s) - math.exp(growth * start))
    )
    rate_at_end = policy.ramp_start_per_s * math.exp(growth * end_s)
    buckets = coordinators * max(rate_at_end / coordinators, 1.0)
    return integral + buckets


@dataclass(frozen=True, slots=True)
class RampSecond:
    """One second after the participant's return: phase-two calls received, and the most the
    ramp allowed in it (None: no limit then)."""

    second: int
    received: int
    allowed: float | None

    @property
    def within(self) -> bool:
        return self.allowed is None or self.received <= self.allowed


def ramp_seconds(
    phase_two: list[float],
    returned_at: float,
    ramp_started_at: float,
    policy: BreakerPolicy,
    coordinators: int,
    seconds: int,
) -> list[RampSecond]:
    """Each second after the return, from its start, against the ramp that began at
    ``ramp_started_at``: before it nothing is allowed (the breaker was not closed yet); a
    second's bound also counts what the ramp let through ARRIVAL_SLACK_S before it."""
    received = per_second(phase_two, returned_at, seconds)
    offset = returned_at - ramp_started_at
    out = []
    for k, n in enumerate(received):
        start, end = offset + k, offset + k + 1
        allowed = (
            0.0 if end <= 0 else ramp_allows(policy, coordinators, start - ARRIVAL_SLACK_S, end)
        )
        out.append(RampSecond(k, n, None if allowed is None else round(allowed, 1)))
    return out


@dataclass(frozen=True, slots=True)
class RampSoFar:
    """The phase-two calls received from the participant's return until ``until_s`` seconds
    into the ramp, and the most the ramp allowed in all that time."""

    until_s: int
    received: int
    allowed: float

    @property
    def within(self) -> bool:
        return self.received <= self.allowed


def ramp_so_far(
    phase_two: list[float],
    ramp_started_at: float,
    policy: BreakerPolicy,
    coordinators: int,
) -> list[RampSoFar]:
    """Each whole second of the ramp, everything received up to its end against the ramp's
    rate integrated from its start, the buckets counted once. Tighter than second by second,
    where every second gets the buckets' allowance again: coordinators that each took the
    whole rate rather than their share stay within each second's bound (a full bucket is as
    much as a second's rate) but not within this one. Nothing is allowed before the breaker
    closed, and a call arrives after it was let through, so no slack is needed."""
    out = []
    for k in range(1, math.floor(policy.ramp_s) + 1):
        allowed = ramp_allows(policy, coordinators, 0.0, float(k))
        assert allowed is not None  # within the ramp
        received = sum(1 for at in phase_two if at < ramp_started_at + k)
        out.append(RampSoFar(k, received, round(allowed, 1)))
    return out
