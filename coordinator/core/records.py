"""The records of the transaction log and of the calls around it, each declared once.

A record's fields carry their documentation (``doc``) and whether the API shows them; the
log maps rows to records by these fields (``from_row``) and the API builds its response
models from them (coordinator.api.schemas), so a field is added in one place plus its
migration.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

from coordinator.core.apikeys import Scope
from coordinator.core.breaker import BreakerState
from coordinator.core.errors import InvalidInput
from coordinator.core.states import (
    AlertKind,
    BranchStatus,
    BranchView,
    Decision,
    EventKind,
    GlobalStatus,
    Judgement,
    Phase,
    TransactionKind,
    TryVerdict,
)
from coordinator.core.tls import TlsFailure, check_profile_name


def doc(text: str, *, shown: bool = True, default: Any = dataclasses.MISSING) -> Any:
    """A field with its description; ``shown=False`` keeps it out of API responses."""
    return dataclasses.field(default=default, metadata={"doc": text, "shown": shown})


@dataclass(frozen=True, slots=True)
class Transaction:
    gid: str = doc("The global transaction id")
    status: GlobalStatus = doc("Where the transaction is in the protocol")
    dialect: str = doc("The protocol it came in through: tcc (/v1) or dtm")
    service: str | None = doc("The service that began it (owns it)")
    metadata: dict[str, Any] = doc("Free JSON the client attached at begin")
    timeout_s: float = doc("Seconds from begin to the deadline")
    call_timeout_s: float | None = doc("Timeout of each participant call, if set")
    deadline: datetime = doc("After this (database clock) a trying transaction is cancelled")
    cancel_reason: str | None = doc("Why it was cancelled: client, timeout, try_failed: <branch>")
    created_at: datetime = doc("When it began")
    updated_at: datetime = doc("Last change")
    decided_at: datetime | None = doc("When confirm or cancel was decided")
    finished_at: datetime | None = doc("When it ended (confirmed, cancelled or resolved)")
    phase_attempts: int = doc("Phase-two rounds made so far")
    next_attempt_at: datetime | None = doc(
        "When the coordinator looks at it next (deadline, or next round)", shown=False
    )
    lease_owner: str | None = doc("The coordinator working on it now", shown=False)
    lease_expires_at: datetime | None = doc("When that claim lapses", shown=False)
    options: dict[str, Any] = doc("Per-transaction protocol options (e.g. DTM's)")
    traceparent: str | None = doc(
        "W3C trace context of its begin: every span and participant call of the transaction"
        " is in this trace"
    )
    tracestate: str | None = doc("W3C tracestate that came with it", shown=False)
    kind: TransactionKind = doc(
        "tcc, saga (actions, then compensations if one fails) or msg (a reliable message)",
        default=TransactionKind.TCC,
    )


@dataclass(frozen=True, slots=True)
class Branch:
    gid: str = doc("The transaction", shown=False)
    branch_id: str = doc("Unique within the transaction")
    position: int = doc("Registration order", shown=False)
    name: str = doc("Human name")
    try_url: str | None = doc("Set when the coordinator runs the try")
    confirm_url: str = doc("Called to confirm")
    cancel_url: str = doc("Called to cancel")
    payload: Any = doc("Sent to every phase of the branch")
    status: BranchStatus = doc("Where the branch is")
    attempts: int = doc("Calls made to the participant")
    last_http_status: int | None = doc("Status of the last call")
    last_error: str | None = doc("Error of the last call, if it failed")
    last_latency_ms: float | None = doc("Latency of the last call")
    next_retry_at: datetime | None = doc("Next phase-two call, while one is due")
    created_at: datetime = doc("When it was registered")
    updated_at: datetime = doc("Last change")
    data: str | None = doc("DTM dialect: the body of confirm/cancel calls")
    participant: str | None = doc(
        "The registered participant it calls (named, or found by its URLs)", default=None
    )

    @property
    def view(self) -> BranchView:
        return BranchView(
            self.branch_id, self.status, coordinator_runs_try=self.try_url is not None
        )


@dataclass(frozen=True, slots=True)
class Event:
    id: int = doc("Position in the timeline")
    at: datetime = doc("When it happened (the first time, for repeats)")
    kind: EventKind = doc("What happened")
    branch_id: str | None = doc("The branch it concerns")
    phase: Phase | None = doc("try, confirm or cancel, for calls")
    http_status: int | None = doc("The participant's status code, for calls")
    latency_ms: float | None = doc("Call latency (of the last repeat)")
    error: str | None = doc("Why the call failed")
    detail: dict[str, Any] = doc("More about it (decision, reason, who, ...)")
    repeats: int = doc("How many identical events in a row this one stands for")
    last_at: datetime | None = doc("When the last repeat happened (repeats > 1)")


# Any record of this module declared as a dataclass (a row maps to it by field names).
RECORD = typing.TypeVar("RECORD")


class Row(Protocol):
    """A database row, or any mapping by field name."""

    def __getitem__(self, key: str, /) -> Any: ...


_CONVERTERS: dict[type[Any], tuple[tuple[str, Callable[[Any], Any] | None], ...]] = {}


def _converters(kind: type[Any]) -> tuple[tuple[str, Callable[[Any], Any] | None], ...]:
    """Per field: its name, and the enum that turns a stored text into a member (if any)."""
    if kind in _CONVERTERS:
        return _CONVERTERS[kind]
    hints = typing.get_type_hints(kind)
    out: list[tuple[str, Callable[[Any], Any] | None]] = []
    for f in dataclasses.fields(kind):
        enum_type = next(
            (
                t
                for t in (hints[f.name], *typing.get_args(hints[f.name]))
                if isinstance(t, type) and issubclass(t, enum.Enum)
            ),
            None,
        )
        out.append((f.name, enum_type))
    _CONVERTERS[kind] = tuple(out)
    return _CONVERTERS[kind]


def from_row(kind: type[RECORD], row: Row) -> RECORD:
    """A record from a row (or any mapping) holding at least its fields."""
    values = {}
    for name, convert in _converters(kind):
        value = row[name]
        values[name] = convert(value) if convert is not None and value is not None else value
    return kind(**values)


# What metrics call the participant of a branch nobody registered (so no participant has it).
UNREGISTERED = "unregistered"


def url_under(url: str, base: str) -> bool:
    """Whether ``url`` is ``base`` or below it (a path or a query further on)."""
    base = base.rstrip("/")
    return url == base or url.startswith((base + "/", base + "?"))


def urls_given(**named: str | None) -> dict[str, str]:
    """The URLs that are set, by field name."""
    return {field: url for field, url in named.items() if url}


def shown_fields(kind: type[Any]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(kind) if f.metadata.get("shown", True)]


@dataclass(frozen=True, slots=True)
class TransactionDetail:
    """A transaction with everything an admin wants to see about it."""

    transaction: Transaction
    branches: list[Branch]
    events: list[Event]  # the first page of the timeline
    more_events: bool = False


# --- what clients ask for ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewBranch:
    """A branch as a client registers it."""

    branch_id: str
    name: str
    try_url: str | None
    confirm_url: str
    cancel_url: str
    payload: Any
    request_hash: str
    data: str | None = None
    # The registered participant it calls. Named by the client, its URLs given as "" are
    # the participant's (with_participant); else found by its URLs.
    participant: str | None = None

    def with_participant(self, registered: Participant) -> NewBranch:
        """The branch with the URLs it left to its participant filled in ("": take the
        registered one; a try_url of None stays None: the client runs its own try)."""
        try_url = self.try_url
        if try_url == "":
            if registered.try_url is None:
                raise InvalidInput(
                    f"participant {registered.name!r} was registered without a try URL, so the"
                    " coordinator cannot run its try: register it with one (or a base URL),"
                    " or run the try yourself and register the branch"
                )
            try_url = registered.try_url
        filled = dataclasses.replace(
            self,
            participant=registered.name,
            try_url=try_url,
            confirm_url=self.confirm_url or registered.confirm_url,
            cancel_url=self.cancel_url or registered.cancel_url,
        )
        # A URL given beside the name must be the participant's own: its breaker and its
        # counts may only answer for calls made to it.
        own = set(registered.urls.values())
        for field, url in filled.urls.items():
            if url not in own and not (registered.base_url and url_under(url, registered.base_url)):
                raise InvalidInput(
                    f"{field}: {url} is not a URL of participant {registered.name!r} (leave it"
                    " out to use the registered one, or name no participant)"
                )
        return filled

    @property
    def urls(self) -> dict[str, str]:
        """The participant URLs by field name (no try_url when the client runs the try; a
        message's steps have no compensation: an empty cancel_url)."""
        return urls_given(
            try_url=self.try_url, confirm_url=self.confirm_url, cancel_url=self.cancel_url
        )


@dataclass(frozen=True, slots=True)
class Participant:
    """A registered participant, with its circuit breaker as the log holds it."""

    name: str = doc("Its name, which branches may give instead of URLs")
    base_url: str | None = doc("Registered as a base URL: <base>/try, /confirm, /cancel")
    try_url: str | None = doc("Called to try (none: its callers run their tries themselves)")
    confirm_url: str = doc("Called to confirm")
    cancel_url: str = doc("Called to cancel")
    health_url: str | None = doc("GET answers 2xx when it is up: the breaker's probe")
    call_timeout_s: float | None = doc("Timeout of each call to it (else the transaction's)")
    tls_profile: str | None = doc(
        "The coordinators' TLS profile its https calls use (else by host rule, or the default)"
    )
    owner_service: str | None = doc("The service that owns it")
    registered_by: str | None = doc("The API key that registered it last")
    created_at: datetime = doc("When it was first registered")
    updated_at: datetime = doc("When it was registered last")
    breaker_state: BreakerState = doc("closed: calls go out; open: they wait; half_open: probing")
    breaker_since: datetime = doc("When the breaker entered that state")
    breaker_reason: str | None = doc("Why it opened last")
    breaker_retry_at: datetime | None = doc("Open: when a probe may go")
    breaker_opens: int = doc("Times it opened since it last recovered")
    probe_owner: str | None = doc("Half-open: the coordinator probing", shown=False)
    probe_expires_at: datetime | None = doc("Until when that probe is its", shown=False)
    ramp_started_at: datetime | None = doc("Closed after recovering: calls ramp up from then")

    @property
    def urls(self) -> dict[str, str]:
        return urls_given(
            try_url=self.try_url, confirm_url=self.confirm_url, cancel_url=self.cancel_url
        )


@dataclass(frozen=True, slots=True)
class Registry:
    """The registered participants as read at one moment of the log's clock."""

    participants: list[Participant]
    read_at: datetime
    live_coordinators: int  # coordinators seen running lately (at least this one, once scanned)


@dataclass(frozen=True, slots=True)
class NewParticipant:
    """A participant as a service registers it, its phase URLs resolved (see of())."""

    name: str
    base_url: str | None
    try_url: str | None
    confirm_url: str
    cancel_url: str
    health_url: str | None
    call_timeout_s: float | None
    tls_profile: str | None
    owner_service: str | None
    registered_by: str | None

    @classmethod
    def of(
        cls,
        name: str,
        *,
        base_url: str | None = None,
        try_url: str | None = None,
        confirm_url: str | None = None,
        cancel_url: str | None = None,
        health_url: str | None = None,
        call_timeout_s: float | None = None,
        tls_profile: str | None = None,
        owner_service: str | None = None,
        registered_by: str | None = None,
    ) -> NewParticipant:
        """A base URL gives each phase URL it is not given: <base>/try, /confirm, /cancel.
        Without one, confirm and cancel URLs are needed (a try URL only if the coordinator
        is to run its tries)."""
        if name == UNREGISTERED:
            raise InvalidInput(
                f"{UNREGISTERED!r} is what metrics call participants nobody registered:"
                " choose another name"
            )
        if call_timeout_s is not None and not (
            math.isfinite(call_timeout_s) and call_timeout_s > 0
        ):
            raise InvalidInput("call_timeout_s must be a positive number of seconds")
        if tls_profile is not None:
            try:
                check_profile_name(tls_profile)
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
        if base_url is not None:
            base = base_url.rstrip("/")
            try_url = try_url or f"{base}/{Phase.TRY.value}"
            confirm_url = confirm_url or f"{base}/{Phase.CONFIRM.value}"
            cancel_url = cancel_url or f"{base}/{Phase.CANCEL.value}"
        if not confirm_url or not cancel_url:
            raise InvalidInput(
                "a participant needs a base_url, or its confirm_url and cancel_url (and a"
                " try_url if the coordinator runs its tries)"
            )
        return cls(
            name=name,
            base_url=base_url,
            try_url=try_url,
            confirm_url=confirm_url,
            cancel_url=cancel_url,
            health_url=health_url,
            call_timeout_s=call_timeout_s,
            tls_profile=tls_profile,
            owner_service=owner_service,
            registered_by=registered_by,
        )

    @property
    def urls(self) -> dict[str, str]:
        return urls_given(
            base_url=self.base_url,
            try_url=self.try_url,
            confirm_url=self.confirm_url,
            cancel_url=self.cancel_url,
            health_url=self.health_url,
        )


@dataclass(frozen=True, slots=True)
class CallTally:
    """Calls to one participant in one phase that a coordinator saw since its last flush."""

    participant: str
    phase: Phase
    calls: int
    errors: int
    latency_ms_sum: float
    latency_ms_max: float


@dataclass(frozen=True, slots=True)
class PhaseUsage:
    """Calls to a participant in one phase over a window, from every coordinator."""

    phase: Phase
    calls: int
    errors: int
    latency_ms_avg: float | None
    latency_ms_max: float | None


@dataclass(frozen=True, slots=True)
class ParticipantUsage:
    """What the Participants page shows beside the registry: the window's calls by phase and
    minute, and the unfinished transactions with a branch still to call on it."""

    name: str
    phases: list[PhaseUsage]
    calls_by_minute: list[int]  # oldest first, one per minute of the window
    waiting: int


class MinuteOfCalls(NamedTuple):
    """One row of the per-minute call counts, as the log holds it."""

    participant: str
    minute: datetime
    phase: Phase
    calls: int
    errors: int
    latency_ms_sum: float
    latency_ms_max: float


def participant_usage(
    names: Iterable[str],
    minutes: Iterable[MinuteOfCalls],
    waiting: Mapping[str, int],
    now: datetime,
    window_s: float,
) -> list[ParticipantUsage]:
    """Each named participant's calls over the window (by phase, and per minute, oldest
    first, the current minute last) and what waits on it; both logs answer with this."""
    current = now.replace(second=0, microsecond=0)
    count = max(1, round(window_s / 60))
    first = current - timedelta(minutes=count - 1)
    rows: dict[str, list[MinuteOfCalls]] = {}
    for row in minutes:
        if first <= row.minute <= current:
            rows.setdefault(row.participant, []).append(row)
    usages = []
    for name in names:
        mine = rows.get(name, [])
        per_minute = [0] * count
        by_phase: dict[Phase, list[MinuteOfCalls]] = {}
        for row in mine:
            per_minute[int((row.minute - first).total_seconds() // 60)] += row.calls
            by_phase.setdefault(row.phase, []).append(row)
        phases = []
        for phase, of_phase in sorted(
            by_phase.items(), key=lambda item: list(Phase).index(item[0])
        ):
            calls = sum(r.calls for r in of_phase)
            phases.append(
                PhaseUsage(
                    phase=phase,
                    calls=calls,
                    errors=sum(r.errors for r in of_phase),
                    latency_ms_avg=(
                        round(sum(r.latency_ms_sum for r in of_phase) / calls, 3) if calls else None
                    ),
                    latency_ms_max=max(r.latency_ms_max for r in of_phase) if calls else None,
                )
            )
        usages.append(ParticipantUsage(name, phases, per_minute, waiting.get(name, 0)))
    return usages


@dataclass(frozen=True, slots=True)
class NewTransaction:
    gid: str
    service: str | None
    metadata: dict[str, Any]
    timeout_s: float
    call_timeout_s: float | None
    request_hash: str
    dialect: str = "tcc"
    kind: TransactionKind = TransactionKind.TCC
    branches: list[NewBranch] = dataclasses.field(default_factory=list)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The W3C trace context of the begin's span, kept so that every later span and call joins it.
    traceparent: str | None = None
    tracestate: str | None = None


@dataclass(frozen=True, slots=True)
class OptionsUpdate:
    """Protocol options given again with a decision (DTM's submit): set in the same
    database transaction as the decision, only while the transaction is trying."""

    options: dict[str, Any]
    call_timeout_s: float | None


@dataclass(frozen=True, slots=True)
class ListFilter:
    statuses: tuple[GlobalStatus, ...] | None = None
    service: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    after: tuple[datetime, str] | None = None  # cursor: last (created_at, gid) seen
    limit: int = 50
    dialect: str | None = None
    kind: TransactionKind | None = None
    gid_prefix: str | None = None


@dataclass(frozen=True, slots=True)
class MinuteTally:
    """Transactions begun in one minute, by where they are now."""

    minute: datetime
    begun: int
    confirmed: int
    cancelled: int
    parked: int


def minute_tallies(
    counts: dict[datetime, dict[GlobalStatus, int]], now: datetime, window_s: float
) -> list[MinuteTally]:
    """Every minute of the window, oldest first (empty ones too), from counts of the
    transactions begun in each minute by their status now."""
    start = (now - timedelta(seconds=window_s)).replace(second=0, microsecond=0)
    tallies = []
    minute = start
    while minute <= now:
        by_status = counts.get(minute, {})
        tallies.append(
            MinuteTally(
                minute=minute,
                begun=sum(by_status.values()),
                confirmed=by_status.get(GlobalStatus.CONFIRMED, 0),
                cancelled=by_status.get(GlobalStatus.CANCELLED, 0),
                parked=by_status.get(GlobalStatus.FAILED_TO_CONFIRM, 0)
                + by_status.get(GlobalStatus.FAILED_TO_CANCEL, 0),
            )
        )
        minute += timedelta(minutes=1)
    return tallies


@dataclass(frozen=True, slots=True)
class Backlog:
    """What the log holds unfinished now (the metrics' gauges, read at scrape time)."""

    unfinished: dict[GlobalStatus, int]
    oldest_unfinished_age_s: float | None  # None: nothing is unfinished


@dataclass(frozen=True, slots=True)
class Overview:
    """What an operator wants to see first: what is open, what is stuck, how it goes."""

    unfinished: dict[GlobalStatus, int]  # every transaction not final, by status
    recent: dict[GlobalStatus, int]  # begun within the window, by status now
    per_minute: list[MinuteTally]  # the window, minute by minute, oldest first
    parked: list[Transaction]  # failed_to_*: waiting for an operator
    retrying_long: list[Transaction]  # in phase two for over a minute or several rounds
    oldest_unfinished: list[Transaction]
    near_deadline: list[Transaction]  # trying, the deadline close
    window_s: float
    generated_at: datetime
    # Per parked gid listed: its first branch still waiting (why it is parked).
    parked_branches: dict[str, Branch] = dataclasses.field(default_factory=dict)
    coordinators: list[CoordinatorSeen] = dataclasses.field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CoordinatorSeen:
    """A coordinator process as the log knows it: noted at each of its recovery scans."""

    owner: str = doc("The process: host:pid:a random id of its start")
    started_at: datetime = doc("When it first scanned")
    last_seen_at: datetime = doc("Its latest recovery scan")
    stopped_at: datetime | None = doc("When it shut down cleanly (none: it runs, or was killed)")
    scans: int = doc("Recovery scans made")
    claimed: int = doc("Transactions its recovery claimed since it started")
    taken_over: int = doc("Of those, claimed after another process let the lease lapse")
    last_claim_at: datetime | None = doc("When its recovery last claimed something")
    leases_held: int = doc("Transactions it holds a live lease on now")
    seen_ago_s: float = doc("Seconds since its latest scan, by the log's clock")


# --- console sessions --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewSession:
    """A console login, as the log keeps it (the cookie's secret id only as a digest)."""

    id: str  # SHA-256 (hex) of the session id the cookie carries
    key_name: str
    scope: Scope
    key_digest: str  # which configured key opened it
    remote: str | None
    ttl_s: float


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    id: str
    key_name: str
    scope: Scope
    key_digest: str
    remote: str | None
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None


# --- phase two -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lease:
    """A claim on one transaction's phase-two work; writes are fenced by its token."""

    gid: str
    token: str


@dataclass(frozen=True, slots=True)
class DecideResult:
    transaction: Transaction  # as it was when judged (or after the decision, if taken)
    judgement: Judgement
    lease: Lease | None  # set when this call took the decision
    branches: list[Branch] = dataclasses.field(default_factory=list)  # as judged


class Claim(NamedTuple):
    """A transaction recovery claimed: its lease, its status then, and whether another
    coordinator held it and let its lease lapse (crashed or cut off)."""

    lease: Lease
    status: GlobalStatus
    took_over: bool


@dataclass(frozen=True, slots=True)
class RoundContext:
    transaction: Transaction
    branches: list[Branch]
    budget_spent: bool
    deadline_passed: bool = False  # by the log's clock (a saga's forward phase ends then)


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert waiting to be delivered to TCC_ALERT_WEBHOOK, as claimed from the log."""

    id: int
    gid: str | None  # the transaction it is about, or
    participant: str | None  # the participant (its breaker opened)
    kind: AlertKind
    body: dict[str, Any]  # what the receiver gets (see alert_body)
    attempts: int  # deliveries tried so far
    age_s: float  # since it was raised (database clock)


def alert_body(kind: AlertKind, txn: Transaction, branches: list[Branch]) -> dict[str, Any]:
    """What an alert says: the transaction, and each branch still waiting in phase two
    with its last error and attempts (the first of them is the one to look at)."""
    done = {BranchStatus.CONFIRMED, BranchStatus.CANCELLED, BranchStatus.TRY_FAILED}
    failing = [
        {
            "branch_id": b.branch_id,
            "name": b.name,
            "status": b.status.value,
            "attempts": b.attempts,
            "last_http_status": b.last_http_status,
            "last_error": b.last_error,
        }
        for b in sorted(branches, key=lambda b: b.position)
        if b.status not in done
    ]
    return {
        "kind": kind.value,
        "gid": txn.gid,
        "status": txn.status.value,
        # Why phase two runs: the cancel reason, or the decision to confirm.
        "reason": txn.cancel_reason or Decision.CONFIRM.value,
        "service": txn.service,
        "dialect": txn.dialect,
        "type": txn.kind.value,
        "rounds": txn.phase_attempts,
        "decided_at": txn.decided_at.isoformat() if txn.decided_at else None,
        "failing_branch": failing[0] if failing else None,
        "failing_branches": failing,
    }


@dataclass(frozen=True, slots=True)
class Written:
    """What one write left in the log, handed back so that nobody reads it again: the
    transaction and its branches after the write, and the events it added, in order."""

    transaction: Transaction
    branches: list[Branch]
    events: list[Event]


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One participant call as the timeline keeps it."""

    http_status: int | None
    error: str | None
    latency_ms: float


@dataclass(frozen=True, slots=True)
class TryRecord:
    """A try's answer, to be logged."""

    branch_id: str
    verdict: TryVerdict
    call: CallRecord


@dataclass(frozen=True, slots=True)
class CallResult:
    """One participant call as it came back."""

    http_status: int | None  # None: no HTTP answer at all
    body: Any  # parsed JSON if the log can hold it, else text, capped in size
    error: str | None
    latency_ms: float
    text: str = ""  # the reply as text (capped), for protocols that read words in it
    # Not sent: the participant's circuit breaker held it; ask again in this many seconds.
    held_for_s: float | None = None
    # No answer because TLS failed: why, by kind (the error says it in words).
    tls_failure: TlsFailure | None = None

    @property
    def record(self) -> CallRecord:
        return CallRecord(self.http_status, self.error, self.latency_ms)


@dataclass(frozen=True, slots=True)
class OutboundCall:
    """An HTTP request to a participant, as a dialect shapes it."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None
    params: dict[str, str] | None = None
    # Over https: the TLS profile its registered participant names (None: by host rule,
    # else the default one; see core.tls).
    tls_profile: str | None = None
