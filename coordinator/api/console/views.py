"""What the pages show, worked out from the service's records: which actions a
transaction's state allows, the throughput chart's geometry, the attention lists."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from urllib.parse import quote

from coordinator.core.records import Branch, MinuteTally, Overview, Transaction
from coordinator.core.states import (
    PARKED_STATUSES,
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


def attention_lists(overview: Overview) -> list[AttentionList]:
    return [
        AttentionList(
            "Parked for an operator",
            "Confirm or cancel kept failing past the retry budget: retry, or resolve by hand.",
            overview.parked,
            "Nothing is parked.",
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
