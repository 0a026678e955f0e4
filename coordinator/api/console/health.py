"""What the Participants page shows of each registered participant: its health in words (its
circuit breaker's state, a closed one still ramping up after a recovery told apart), its
calls over the window as a row of bars, and closing its breaker, an admin's action."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from urllib.parse import quote

from coordinator.api.console.views import Action
from coordinator.core.breaker import BreakerState
from coordinator.core.records import Participant, ParticipantUsage, PhaseUsage


class Health(StrEnum):
    """A participant's health as the page says it."""

    HEALTHY = "healthy"  # breaker closed
    RECOVERING = "recovering"  # closed after a recovery, its calls still ramping up
    PROBING = "probing"  # half-open: one probe is out
    HELD = "held"  # open: its calls wait


HEALTH_OF: Mapping[BreakerState, Health] = {
    BreakerState.CLOSED: Health.HEALTHY,
    BreakerState.HALF_OPEN: Health.PROBING,
    BreakerState.OPEN: Health.HELD,
}

HEALTH_WORDS: Mapping[Health, str] = {
    Health.HEALTHY: "healthy",
    Health.RECOVERING: "recovering: calls ramping up",
    Health.PROBING: "probing",
    Health.HELD: "calls held",
}

# What each means for the calls to it, under the pill.
HEALTH_MEANS: Mapping[Health, str] = {
    Health.HEALTHY: "Breaker closed: calls go out.",
    Health.RECOVERING: "Breaker closed after a recovery: calls go out at a rate that grows,"
    " so the backlog does not flatten it.",
    Health.PROBING: "Breaker half-open: one probe is out (its health URL, or one real call);"
    " the other calls wait for its answer.",
    Health.HELD: "Breaker open: phase-two calls to it wait, new tries to it fail at once.",
}

# The pill's colours, those of the transactions' statuses (console.css: tone-*).
HEALTH_TONES: Mapping[Health, str] = {
    Health.HEALTHY: "done",
    Health.RECOVERING: "open",
    Health.PROBING: "open",
    Health.HELD: "parked",
}


def participant_api_url(name: str, *rest: str) -> str:
    # Names are a gid's charset: quoting changes nothing, but no URL is built unquoted.
    return "/v1/participants/" + "/".join(quote(p, safe=":") for p in (name, *rest))


def close_breaker(p: Participant) -> Action | None:
    """Closing an open or half-open breaker by hand: its calls go out at once, ramping up.
    The endpoint takes no words (the audit log keeps who); the page asks first."""
    if p.breaker_state is BreakerState.CLOSED:
        return None
    return Action(
        "Close breaker",
        participant_api_url(p.name, "breaker", "reset"),
        None,
        None,
        "Calls to it go out again at once, at a rate that ramps up; if it is still down,"
        " its breaker opens again after the next failures.",
        confirm=f"Close the breaker of {p.name}? Its held calls will go out again.",
    )


# --- the calls over the window, a bar a minute -------------------------------------------

SPARK_HEIGHT = 24.0
SPARK_STEP = 6.0


@dataclass(frozen=True, slots=True)
class SparkBar:
    x: float
    y: float
    height: float
    label: str


@dataclass(frozen=True, slots=True)
class Spark:
    bars: list[SparkBar]
    width: float
    height: float
    bar_width: float
    peak: int


def spark(calls_by_minute: list[int]) -> Spark:
    """One bar a minute, oldest first, the current minute last; scaled to the window's peak
    (a minute with any call is at least a pixel high, so it is never mistaken for none)."""
    peak = max(calls_by_minute, default=0)
    scale = SPARK_HEIGHT / peak if peak else 0.0
    last = len(calls_by_minute) - 1
    bars = []
    for i, calls in enumerate(calls_by_minute):
        height = max(calls * scale, 1.0) if calls else 0.0
        ago = last - i
        when = "this minute" if ago == 0 else f"{ago} min ago"
        label = f"{when}: {calls} call{'s' if calls != 1 else ''}"
        bars.append(
            SparkBar(i * SPARK_STEP, round(SPARK_HEIGHT - height, 2), round(height, 2), label)
        )
    width = max(len(calls_by_minute), 1) * SPARK_STEP
    return Spark(bars, width, SPARK_HEIGHT, SPARK_STEP - 1, peak)


# --- a row of the page ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParticipantRow:
    participant: Participant
    usage: ParticipantUsage
    health: Health
    ramp_ends_at: datetime | None  # recovering: when its rate stops being limited
    probe_due: bool  # held, and its open time is over: the next call or health check probes
    spark: Spark
    action: Action | None

    @property
    def calls(self) -> int:
        return sum(p.calls for p in self.usage.phases)

    @property
    def calls_per_minute(self) -> float:
        return self.calls / max(len(self.usage.calls_by_minute), 1)

    @property
    def error_rate(self) -> float | None:
        calls = self.calls
        return sum(p.errors for p in self.usage.phases) / calls if calls else None

    @property
    def phases(self) -> list[PhaseUsage]:
        return self.usage.phases


def participant_rows(
    found: list[tuple[Participant, ParticipantUsage]], ramp_s: float, now: datetime
) -> list[ParticipantRow]:
    """The page's rows; ``ramp_s`` is how long calls ramp up after a recovery (the breaker
    policy's), ``now`` the moment the page is made."""
    rows = []
    for p, usage in found:
        health = HEALTH_OF[p.breaker_state]
        ramp_ends_at = None
        if health is Health.HEALTHY and p.ramp_started_at is not None:
            ends = p.ramp_started_at + timedelta(seconds=ramp_s)
            if ends > now:
                health, ramp_ends_at = Health.RECOVERING, ends
        retry_at = p.breaker_retry_at
        probe_due = health is Health.HELD and retry_at is not None and retry_at <= now
        rows.append(
            ParticipantRow(
                p,
                usage,
                health,
                ramp_ends_at,
                probe_due,
                spark(usage.calls_by_minute),
                close_breaker(p),
            )
        )
    return rows
