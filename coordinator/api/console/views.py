"""What the pages show, worked out from the service's records: which actions a
transaction's state allows, why a transaction is parked and what can be done about it,
which branches were finished by hand, the timeline's rows, the throughput chart's geometry,
the attention lists."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from coordinator.core.records import (
    Branch,
    Event,
    MinuteTally,
    Overview,
    Transaction,
    TransactionDetail,
)
from coordinator.core.states import (
    PARKED_STATUSES,
    RESOLVED_BY_HAND,
    Decision,
    EventKind,
    GlobalStatus,
    branch_done_status,
    decision_of,
)

# The order the overview counts statuses in: the ones that need people first.
UNFINISHED_ORDER = (
    GlobalStatus.FAILED_TO_CONFIRM,
    GlobalStatus.FAILED_TO_CANCEL,
    GlobalStatus.TRYING,
    GlobalStatus.CONFIRMING,
    GlobalStatus.CANCELLING,
)
RECENT_ORDER = (
    GlobalStatus.CONFIRMED,
    GlobalStatus.CANCELLED,
    *UNFINISHED_ORDER,
)


def _segment(value: str) -> str:
    # Gids and branch ids are [A-Za-z0-9._:-]: quoting changes nothing, but a page never
    # builds a URL from a value it has not quoted.
    return quote(value, safe=":")


def transaction_url(gid: str) -> str:
    return f"/ui/transactions/{_segment(gid)}"


def api_url(gid: str, *rest: str) -> str:
    return "/v1/transactions/" + "/".join(_segment(p) for p in (gid, *rest))


@dataclass(frozen=True, slots=True)
class Action:
    """One operator action on the page: a form posting one field to a /v1 endpoint."""

    label: str
    url: str
    field: str  # the body field that carries the operator's words: reason or note
    prompt: str  # the text field's label
    explanation: str
    confirm: str | None = None  # asked before posting, for what cannot be undone


def transaction_actions(txn: Transaction) -> list[Action]:
    """What the transaction's state allows an operator to do with it as a whole. The
    server judges again when asked: a page may be stale."""
    if txn.status is GlobalStatus.TRYING:
        return [
            Action(
                "Cancel",
                api_url(txn.gid, "cancel"),
                "reason",
                "Reason for cancelling",
                "Decides cancel now: every branch is sent cancel.",
                confirm=f"Cancel {txn.gid}? Every branch will be sent cancel.",
            )
        ]
    if txn.status not in PARKED_STATUSES:
        return []
    outcome = "confirmed" if txn.status is GlobalStatus.FAILED_TO_CONFIRM else "cancelled"
    return [
        Action(
            "Retry",
            api_url(txn.gid, "retry"),
            "reason",
            "Reason for retrying",
            "Sends it back into phase two with a fresh retry budget and runs a round now.",
        ),
        Action(
            f"Mark all {outcome} by hand",
            api_url(txn.gid, "resolve"),
            "note",
            "What was done by hand",
            f"Records that every unfinished branch was {outcome} by hand: the coordinator"
            " will not call them again.",
            confirm=f"Mark every unfinished branch of {txn.gid} {outcome} by hand?",
        ),
    ]


def branch_action(txn: Transaction, branch: Branch) -> Action | None:
    """Marking one branch of a parked transaction done by hand, if it is not done."""
    decision = decision_of(txn.status)
    if txn.status not in PARKED_STATUSES or decision is None:
        return None
    done = branch_done_status(decision)
    if branch.status is done:
        return None
    return Action(
        f"Mark {done.value} by hand",
        api_url(txn.gid, "branches", branch.branch_id, "resolve"),
        "note",
        f"What was done by hand for {branch.branch_id}",
        f"Records that branch {branch.branch_id} was {done.value} by hand; a retry calls only"
        " the others.",
        confirm=f"Mark branch {branch.branch_id} of {txn.gid} {done.value} by hand?",
    )


# --- finished by hand ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ByHand:
    """Branches (or a whole transaction) an operator declared done by hand: who, why, when."""

    note: str
    actor: str | None = None  # None: the resolve event is not on this page of the timeline
    at: datetime | None = None
    event_id: int | None = None


def _by_hand(event: Event) -> ByHand:
    actor = event.detail.get("actor")
    note = event.detail.get("note")
    return ByHand(
        note=note if isinstance(note, str) else "",
        actor=actor if isinstance(actor, str) else None,
        at=event.at,
        event_id=event.id,
    )


def resolved_by_hand(detail: TransactionDetail) -> dict[str, ByHand]:
    """The branches an operator resolved, by branch id: from the timeline's resolve events
    (who and why), else from the mark the log left in the branch's last error (why only)."""
    found: dict[str, ByHand] = {}
    for event in detail.events:
        if event.kind is EventKind.ADMIN_RESOLVED:
            hand = _by_hand(event)
            branches = event.detail.get("branches")
            for branch_id in branches if isinstance(branches, list) else []:
                if isinstance(branch_id, str):
                    found[branch_id] = hand
    for branch in detail.branches:
        error = branch.last_error or ""
        # The mark the log leaves (states.resolved_by_hand) is what is left to go by when
        # the resolve event is on a later page of the timeline.
        if branch.branch_id not in found and error.startswith(RESOLVED_BY_HAND):
            found[branch.branch_id] = ByHand(note=error[len(RESOLVED_BY_HAND) :])
    return found


def transaction_by_hand(detail: TransactionDetail) -> ByHand | None:
    """The operator's resolve that finished a transaction, if that is how it ended and the
    event is on this page."""
    if detail.transaction.finished_at is None:
        return None
    for event in reversed(detail.events):
        if event.kind is EventKind.ADMIN_RESOLVED and event.detail.get("finished") is True:
            return _by_hand(event)
    return None


# --- why a transaction is parked --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parked:
    """Why a failed_to_* transaction waits for an operator, since when, and what they can
    do (with the CLI's words for the same)."""

    phase: str  # the calls that kept failing: confirm or cancel
    outcome: str  # what resolving by hand declares: confirmed or cancelled
    stuck: list[Branch]  # the branches that are not done
    since: datetime
    since_event: int | None  # the timeline's park event, when it is on the page
    rounds: int
    retry_command: str
    resolve_command: str
    resolve_branch_command: str | None  # for the first stuck branch


def parked(detail: TransactionDetail) -> Parked | None:
    txn = detail.transaction
    decision = decision_of(txn.status)
    if txn.status not in PARKED_STATUSES or decision is None:
        return None
    done = branch_done_status(decision)
    stuck = [b for b in detail.branches if b.status is not done]
    park_kind = EventKind(txn.status.value)
    # The last park on the page is this one only if the page holds the whole timeline;
    # otherwise the row's last change is when it was parked (nothing changes it since).
    park = None
    if not detail.more_events:
        park = next((e for e in reversed(detail.events) if e.kind is park_kind), None)
    # Gids and branch ids are [A-Za-z0-9._:-]: nothing a shell would read otherwise.
    first = stuck[0].branch_id if stuck else None
    return Parked(
        phase=decision.value,
        outcome="confirmed" if decision is Decision.CONFIRM else "cancelled",
        stuck=stuck,
        since=park.at if park else txn.updated_at,
        since_event=park.id if park else None,
        rounds=txn.phase_attempts,
        retry_command=f'tcc retry {txn.gid} --reason "…"',
        resolve_command=f'tcc resolve {txn.gid} --note "…"',
        resolve_branch_command=(
            f'tcc resolve {txn.gid} --branch {first} --note "…"' if len(stuck) > 1 else None
        ),
    )


# --- the timeline ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimelineRow:
    event: Event
    seq: int | None  # 1 for the transaction's first event; None when not known
    since_begin_s: float | None  # seconds since the transaction began
    new_day: bool  # the first row, or the date changed since the row before


def timeline_rows(
    events: list[Event], first_seq: int | None, begun_at: datetime | None
) -> list[TimelineRow]:
    rows = []
    day = None
    for i, event in enumerate(events):
        today = event.at.astimezone(UTC).date()
        rows.append(
            TimelineRow(
                event=event,
                seq=None if first_seq is None else first_seq + i,
                since_begin_s=(event.at - begun_at).total_seconds() if begun_at else None,
                new_day=today != day,
            )
        )
        day = today
    return rows


def later_events_url(
    gid: str, events: list[Event], first_seq: int | None, begun_at: datetime | None
) -> str:
    """The next page of a timeline: after its last event, numbered on from this page's,
    timed from the same beginning."""
    query = f"after={events[-1].id}"
    if first_seq is not None:
        query += f"&seq={first_seq + len(events)}"
    if begun_at is not None:
        query += f"&begun={round(begun_at.timestamp() * 1000)}"
    return f"{transaction_url(gid)}/timeline?{query}"


# --- the trace ---------------------------------------------------------------------------

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def trace_id(traceparent: str | None) -> str | None:
    """The 32-hex trace id of a W3C traceparent (00-<trace id>-<span id>-<flags>)."""
    found = _TRACEPARENT.fullmatch(traceparent or "")
    if found is None or found[1] == "0" * 32:
        return None
    return found[1]


def trace_url(template: str | None, trace: str | None) -> str | None:
    """The operator's tracing backend's page for a trace (TCC_TRACE_URL_TEMPLATE), if set.
    The id is hex: put in as it is, it cannot change what the URL points at."""
    if template is None or trace is None:
        return None
    return template.replace("{trace_id}", trace)


# --- the throughput chart ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    kind: str  # confirmed, cancelled, parked, open
    y: float
    height: float
    count: int


@dataclass(frozen=True, slots=True)
class Bar:
    tally: MinuteTally
    x: float
    segments: list[Segment]

    @property
    def label(self) -> str:
        t = self.tally
        open_now = t.begun - t.confirmed - t.cancelled - t.parked
        return (
            f"{t.minute.astimezone(UTC):%H:%M} UTC: {t.begun} begun, {t.confirmed} confirmed,"
            f" {t.cancelled} cancelled, {t.parked} parked, {max(open_now, 0)} open"
        )


@dataclass(frozen=True, slots=True)
class Chart:
    bars: list[Bar]
    width: float
    height: float
    bar_width: float
    peak: int


CHART_HEIGHT = 120.0
BAR_STEP = 12.0


def throughput_chart(minutes: list[MinuteTally]) -> Chart:
    """Stacked bars, one a minute: what became of the transactions begun in it."""
    peak = max((m.begun for m in minutes), default=0)
    scale = CHART_HEIGHT / peak if peak else 0.0
    bars = []
    for i, tally in enumerate(minutes):
        open_now = max(tally.begun - tally.confirmed - tally.cancelled - tally.parked, 0)
        y = CHART_HEIGHT
        segments = []
        for kind, count in (
            ("confirmed", tally.confirmed),
            ("cancelled", tally.cancelled),
            ("parked", tally.parked),
            ("open", open_now),
        ):
            if count:
                height = count * scale
                y -= height
                segments.append(Segment(kind, round(y, 2), round(height, 2), count))
        bars.append(Bar(tally, i * BAR_STEP, segments))
    return Chart(bars, max(len(minutes), 1) * BAR_STEP, CHART_HEIGHT, BAR_STEP - 2, peak)


@dataclass(frozen=True, slots=True)
class AttentionList:
    title: str
    explanation: str
    transactions: list[Transaction]
    empty: str
    # For parked ones: the branch that keeps each waiting, by gid.
    waiting: dict[str, Branch] | None = None


def attention_lists(overview: Overview) -> list[AttentionList]:
    return [
        AttentionList(
            "Parked for an operator",
            "Confirm or cancel kept failing past the retry budget: retry once the participant"
            " is fixed, or resolve by hand. Each waits on the branch shown.",
            overview.parked,
            "Nothing is parked.",
            overview.parked_branches,
        ),
        AttentionList(
            "Retrying for a long time",
            "In phase two for over a minute, or for more than 3 rounds.",
            overview.retrying_long,
            "Nothing has been retrying for long.",
        ),
        AttentionList(
            "Tries near their deadline",
            "Still trying, with the deadline less than a minute away.",
            overview.near_deadline,
            "No try is near its deadline.",
        ),
        AttentionList(
            "Oldest unfinished",
            "The transactions that have been open the longest.",
            overview.oldest_unfinished,
            "Every transaction has finished.",
        ),
    ]
