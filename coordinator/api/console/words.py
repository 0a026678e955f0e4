"""The words a page uses for each kind of transaction (tcc, saga, msg): a status with the
kind's own word beside it, a branch as a saga's or a message's step, its URLs by what they
do, why a saga changed course, what a prepared message's service answered, and a line of
the timeline in plain words. The kinds' words themselves come from core.kinds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coordinator.core.kinds import (
    AFTER_OPTION,
    CONCURRENT_OPTION,
    FORWARD_TIMEOUT_OPTION,
    RETRY_LIMIT_OPTION,
    StepPlan,
    branch_word,
    status_word,
)
from coordinator.core.records import Branch, Event
from coordinator.core.states import (
    BranchStatus,
    CancelReason,
    Decision,
    EventKind,
    GlobalStatus,
    TransactionKind,
)

KINDS = tuple(TransactionKind)

# What each kind is called on a page: the type column shows the kind's value (tcc, saga,
# msg); a page's heading says what it is.
NOUNS: Mapping[TransactionKind, str] = {
    TransactionKind.TCC: "Transaction",
    TransactionKind.SAGA: "Saga",
    TransactionKind.MSG: "Message",
}


def noun(kind: Any) -> str:
    """What a page's heading calls a transaction of this kind."""
    found = kind_of(kind)
    return NOUNS[found] if found is not None else "Transaction"


def kind_of(value: Any) -> TransactionKind | None:
    """A kind from a record's field or a page's parameter (None when it is none of them)."""
    if isinstance(value, TransactionKind):
        return value
    try:
        return TransactionKind(str(value))
    except ValueError:
        return None


def kind_word(status: Any, kind: Any) -> str | None:
    """The kind's own word for a transaction's or a branch's status, where it has one (a
    TCC transaction has none: its statuses are its words)."""
    found = kind_of(kind)
    if found is None:
        return None
    if isinstance(status, BranchStatus):
        return branch_word(found, status)
    if isinstance(status, GlobalStatus):
        return status_word(found, status)
    return None


def has_steps(kind: Any) -> bool:
    return kind_of(kind) in (TransactionKind.SAGA, TransactionKind.MSG)


def step_urls(kind: TransactionKind, branch: Branch) -> list[tuple[str, str]]:
    """A branch's URLs, each named by what it does for this kind; empty ones left out (a
    message's step has no compensation)."""
    if kind is TransactionKind.SAGA:
        named = [("action", branch.confirm_url), ("compensate", branch.cancel_url)]
    elif kind is TransactionKind.MSG:
        named = [("delivery URL", branch.confirm_url)]
    else:
        named = [
            ("try", branch.try_url or ""),
            ("confirm", branch.confirm_url),
            ("cancel", branch.cancel_url),
        ]
    return [(label, url) for label, url in named if url]


def step_order(kind: TransactionKind, options: Mapping[str, Any]) -> str | None:
    """How a saga's or message's steps run: in order, all at once, or as a graph."""
    if kind is TransactionKind.TCC:
        return None
    if options.get(AFTER_OPTION):
        return "as a graph"
    if options.get(CONCURRENT_OPTION):
        return "all at once"
    return "in order"


def waits_for(options: Mapping[str, Any]) -> dict[str, list[str]]:
    """The steps each step of a graph waits for, by branch id."""
    plan = StepPlan.of((), options)
    return {step: sorted(before) for step, before in plan.after.items() if before}


def retry_limit(options: Mapping[str, Any]) -> int | None:
    limit = options.get(RETRY_LIMIT_OPTION)
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


def bounded_forward(options: Mapping[str, Any]) -> bool:
    """Whether a saga's deadline bounds its actions (it compensates once it has passed)."""
    return bool(options.get(FORWARD_TIMEOUT_OPTION))


def decision_label(kind: TransactionKind, decision: Decision | None) -> str:
    """What the page calls the moment a transaction was decided."""
    if kind is TransactionKind.SAGA:
        return "Submitted"  # a course change later does not move when it was decided
    if kind is TransactionKind.MSG:
        return "Aborted" if decision is Decision.CANCEL else "Submitted"
    return f"Decided: {decision.value}" if decision else "Decided"


def reason_words(kind: TransactionKind, reason: str | None) -> str | None:
    """Why a saga compensates or a message was aborted, in words (the stored reason, e.g.
    ``try_failed: b``, stays beside them); None where the stored reason says it already."""
    if not reason or kind is TransactionKind.TCC:
        return None
    code, _, detail = reason.partition(": ")
    if kind is TransactionKind.SAGA:
        if code in (CancelReason.ACTION_FAILED, CancelReason.TRY_FAILED):
            return f"the action of step {detail} failed" if detail else "an action failed"
        if code == CancelReason.TIMEOUT:
            return f"its deadline passed ({detail})" if detail else "its deadline passed"
        if code == CancelReason.RETRY_LIMIT:
            return f"its retry limit was reached ({detail})" if detail else None
    if kind is TransactionKind.MSG:
        if code == CancelReason.QUERY_REFUSED:
            return "its service, asked, said it must not go out"
        if code == CancelReason.TIMEOUT:
            return "it was not submitted in time"
    return None


# What a prepared message's service answered when asked (the query_prepared entry's answer:
# a dialect's CallOutcome). A yes or a no decides it; only the others are entries.
QUERY_ANSWERS: Mapping[str, str] = {
    "ongoing": "not yet; asked again at the normal interval",
    "retry": "no usable answer; asked again later, backing off",
    "done": "yes: deliver it",
    "failure": "no: abort it",
}


def _called(event: Event, what: str, done: str, kept: str) -> str:
    if event.detail.get("done") is True:
        return done
    if event.detail.get("failed") is True:
        return kept
    return f"{what} not done; called again"


def event_note(kind: TransactionKind | None, event: Event) -> str | None:
    """A timeline entry of a saga or message in plain words (None for TCC's entries, whose
    names say it, and for entries that need no more)."""
    if kind is TransactionKind.TCC:
        return None
    k = event.kind
    if k is EventKind.ACTION_CALL:
        if kind is TransactionKind.MSG:
            return _called(event, "delivery", "delivered", "delivery refused; called again")
        return _called(event, "action", "action done", "action refused (FAILURE): compensating")
    if k is EventKind.COMPENSATE_CALL:
        return _called(event, "compensation", "compensated", "compensation not done; called again")
    if k is EventKind.COURSE_CHANGED:
        reason = event.detail.get("reason")
        text = reason if isinstance(reason, str) else None
        why = reason_words(TransactionKind.SAGA, text) or text
        return f"actions stopped, compensating: {why}" if why else "actions stopped, compensating"
    if k is EventKind.QUERY_PREPARED:
        answer = event.detail.get("answer")
        said = QUERY_ANSWERS.get(answer, str(answer)) if isinstance(answer, str) else "?"
        return f"its service was asked whether to deliver it: {said}"
    if kind is None:
        return None
    if k is EventKind.DECISION:
        decided = event.detail.get("decision")
        if kind is TransactionKind.SAGA:
            return "run the actions" if decided == Decision.CONFIRM else "cancel before any action"
        return (
            "submitted: deliver it" if decided == Decision.CONFIRM else "aborted: never delivered"
        )
    if k in (
        EventKind.CONFIRMED,
        EventKind.CANCELLED,
        EventKind.FAILED_TO_CONFIRM,
        EventKind.FAILED_TO_CANCEL,
    ):
        return status_word(kind, GlobalStatus(k.value))
    return None
