"""What the pages show, worked out from the service's records: which actions a
transaction's state allows, why a transaction is parked and what can be done about it,
which branches were finished by hand, the timeline's rows, the throughput chart's geometry,
the attention lists."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from coordinator.api.console import words
from coordinator.core.kinds import branch_word
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
    TransactionKind,
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
    """One operator action on the page: a form posting one field to a /v1 endpoint (or
    none, for an endpoint that takes no words: closing a participant's breaker)."""

    label: str
    url: str
    field: str | None  # the body field that carries the operator's words: reason or note
    prompt: str | None  # the text field's label
    explanation: str
    confirm: str | None = None  # asked before posting, for what cannot be undone


def transaction_actions(txn: Transaction) -> list[Action]:
    """What the transaction's state allows an operator to do with it as a whole. The
    server judges again when asked: a page may be stale."""
    if txn.status is GlobalStatus.TRYING:
        return [_cancel_action(txn)]
    decision = decision_of(txn.status)
    if txn.status not in PARKED_STATUSES or decision is None:
        return []
    done = branch_done_status(decision)
    outcome = branch_word(txn.kind, done) or done.value
    part = "step" if words.has_steps(txn.kind) else "branch"
    # "was compensated", "was delivered"; a saga's step "had its action done".
    was = "had its action done" if outcome == "action done" else f"was {outcome}"
    label = "actions done" if outcome == "action done" else outcome
    return [
        Action(
            "Retry",
            api_url(txn.gid, "retry"),
            "reason",
            "Reason for retrying",
            (
                "Sends it back into phase two with a fresh retry budget and runs a round now."
                if txn.kind is TransactionKind.TCC
                else f"{_retry_means(txn.kind, decision).capitalize()}; a round runs now."
            ),
        ),
        Action(
            f"Mark all {label} by hand",
            api_url(txn.gid, "resolve"),
            "note",
            "What was done by hand",
            f"Records that every unfinished {part} {was} by hand: the coordinator"
            " will not call them again.",
            confirm=f"Mark every unfinished {part} of {txn.gid} {outcome} by hand?",
        ),
    ]


def _cancel_action(txn: Transaction) -> Action:
    """Cancelling a transaction that is still trying: a prepared message is aborted."""
    url = api_url(txn.gid, "cancel")
    if txn.kind is TransactionKind.MSG:
        return Action(
            "Abort",
            url,
            "reason",
            "Reason for aborting",
            "Decides abort now: the message is never delivered (none of its steps is called).",
            confirm=f"Abort {txn.gid}? The message will never be delivered.",
        )
    if txn.kind is TransactionKind.SAGA:
        return Action(
            "Cancel",
            url,
            "reason",
            "Reason for cancelling",
            "Decides cancel now, before its actions run.",
            confirm=f"Cancel {txn.gid}? Its actions will not run.",
        )
    return Action(
        "Cancel",
        url,
        "reason",
        "Reason for cancelling",
        "Decides cancel now: every branch is sent cancel.",
        confirm=f"Cancel {txn.gid}? Every branch will be sent cancel.",
    )


def _retry_means(kind: TransactionKind, decision: Decision) -> str:
    """What a retry of a parked transaction does, for this kind and the calls that failed."""
    if kind is TransactionKind.SAGA:
        calls = "actions" if decision is Decision.CONFIRM else "compensations"
        return f"the {calls} not done yet run again with a fresh retry budget"
    if kind is TransactionKind.MSG:
        return "the deliveries not done yet run again with a fresh retry budget"
    return "back into phase two with a fresh retry budget"


def branch_action(txn: Transaction, branch: Branch) -> Action | None:
    """Marking one branch of a parked transaction done by hand, if it is not done."""
    decision = decision_of(txn.status)
    if txn.status not in PARKED_STATUSES or decision is None:
        return None
    done = branch_done_status(decision)
    if branch.status is done:
        return None
    outcome = branch_word(txn.kind, done) or done.value
    part = "step" if words.has_steps(txn.kind) else "branch"
    was = "had its action done" if outcome == "action done" else f"was {outcome}"
    return Action(
        f"Mark {outcome} by hand",
        api_url(txn.gid, "branches", branch.branch_id, "resolve"),
        "note",
        f"What was done by hand for {branch.branch_id}",
        f"Records that {part} {branch.branch_id} {was} by hand; a retry calls only the others.",
        confirm=f"Mark {part} {branch.branch_id} of {txn.gid} {outcome} by hand?",
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
    outcome: str  # what resolving by hand declares: confirmed or cancelled (a step's word)
    stuck: list[Branch]  # the branches that are not done
    since: datetime
    since_event: int | None  # the timeline's park event, when it is on the page
    rounds: int
    retry_command: str
    resolve_command: str
    resolve_branch_command: str | None  # for the first stuck branch
    # What kept failing, as the panel's sentence begins ("Confirm kept failing for 2
    # branches", "Compensation of step a kept failing"), and what each way out does.
    what_failed: str = ""
    retry_means: str = ""
    resolve_means: str = ""


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
    outcome = branch_word(txn.kind, done) or done.value
    return Parked(
        phase=decision.value,
        outcome=outcome,
        stuck=stuck,
        since=park.at if park else txn.updated_at,
        since_event=park.id if park else None,
        rounds=txn.phase_attempts,
        retry_command=f'tcc retry {txn.gid} --reason "…"',
        resolve_command=f'tcc resolve {txn.gid} --note "…"',
        resolve_branch_command=(
            f'tcc resolve {txn.gid} --branch {first} --note "…"' if len(stuck) > 1 else None
        ),
        what_failed=_what_failed(txn.kind, decision, stuck),
        retry_means=_retry_means(txn.kind, decision),
        resolve_means=_resolve_means(txn.kind, decision, outcome),
    )


def _what_failed(kind: TransactionKind, decision: Decision, stuck: list[Branch]) -> str:
    if kind is TransactionKind.TCC:
        text = decision.value.capitalize() + " kept failing"
        if stuck:
            text += f" for {len(stuck)} branch{'es' if len(stuck) > 1 else ''}"
        return text
    # The steps that were called and failed; a step after them in order never ran.
    failing = [b for b in stuck if b.attempts > 0] or stuck
    ids = ", ".join(b.branch_id for b in failing)
    many = len(failing) > 1
    if kind is TransactionKind.SAGA and decision is Decision.CONFIRM:
        calls = "The actions" if many else "The action"
    elif kind is TransactionKind.SAGA:
        calls = "Compensations" if many else "Compensation"
    elif decision is Decision.CONFIRM:
        calls = "Deliveries" if many else "Delivery"
    else:
        return "Abort kept failing"
    if not failing:
        return f"{calls} kept failing"
    return f"{calls} of step{'s' if many else ''} {ids} kept failing"


def _resolve_means(kind: TransactionKind, decision: Decision, outcome: str) -> str:
    if kind is TransactionKind.SAGA and decision is Decision.CONFIRM:
        work = "once you have done the steps' actions by hand in the participants' data"
    elif kind is TransactionKind.SAGA:
        work = "once you have undone the steps by hand in the participants' data"
    elif kind is TransactionKind.MSG:
        work = "once the receivers have had the message another way"
    else:
        work = "once you have finished the work in the participant's data yourself"
    part = "steps" if kind is not TransactionKind.TCC else "branches"
    return f"{work}: the {part} are marked {outcome} and never called again"


# --- the timeline ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimelineRow:
    event: Event
    seq: int | None  # 1 for the transaction's first event; None when not known
    since_begin_s: float | None  # seconds since the transaction began
    new_day: bool  # the first row, or the date changed since the row before
    note: str | None = None  # a saga's or message's entry in plain words


def timeline_rows(
    events: list[Event],
    first_seq: int | None,
    begun_at: datetime | None,
    kind: TransactionKind | None = None,
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
                note=words.event_note(kind, event),
            )
        )
        day = today
    return rows


def later_events_url(
    gid: str,
    events: list[Event],
    first_seq: int | None,
    begun_at: datetime | None,
    kind: TransactionKind | None = None,
) -> str:
    """The next page of a timeline: after its last event, numbered on from this page's,
    timed from the same beginning, in the words of the same kind."""
    query = f"after={events[-1].id}"
    if first_seq is not None:
        query += f"&seq={first_seq + len(events)}"
    if begun_at is not None:
        query += f"&begun={round(begun_at.timestamp() * 1000)}"
    if kind is not None and kind is not TransactionKind.TCC:
        query += f"&kind={kind.value}"
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
            "Confirm or cancel (a saga's actions or compensations, a message's deliveries)"
            " kept failing past the retry budget: retry once the participant is fixed, or"
            " resolve by hand. Each waits on the branch shown.",
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
