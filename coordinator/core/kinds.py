"""The three kinds of transaction and what sets them apart, as pure data and functions.

- **tcc**: every branch is tried, then all are confirmed or all cancelled.
- **saga**: the steps' actions run in order (or as a graph of steps, or all at once); when an
  action fails for good, every step that may have started is compensated, in reverse order.
- **msg**: a reliable message; its steps are delivered at least once, in order, once the
  message is submitted. A prepared message not submitted in time is asked about
  (``query_prepared``); it never compensates anything.

All three share the log's statuses (core.states): a saga or a message is decided to go
forward (``confirming``: actions or deliveries run), a saga may change course to compensate
(``cancelling``), and each ends ``confirmed``/``cancelled`` or parks for an operator. The
words people see for each kind's statuses and phases are here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.core.states import (
    BranchStatus,
    CancelReason,
    Decision,
    GlobalStatus,
    Phase,
    TransactionKind,
)

__all__ = ["StepPlan", "TransactionKind", "check_graph", "phase_of"]

# Options a saga or message keeps with its transaction (besides a dialect's own).
CONCURRENT_OPTION = "concurrent"  # steps need not wait for the ones before them
AFTER_OPTION = "after"  # branch id -> the branch ids it waits for (a graph of steps)
QUERY_URL_OPTION = "query_url"  # msg: asked whether a prepared message should go out
RETRY_LIMIT_OPTION = "retry_limit"  # saga: forward rounds before it compensates instead
FORWARD_TIMEOUT_OPTION = "forward_timeout"  # saga: its deadline bounds the forward phase
PREPARED_OPTION = "prepared"  # msg: held for its submit (else it was to go out at once)

# Why a prepared message was aborted when its service, asked, said no.
QUERY_REFUSED_REASON = CancelReason.QUERY_REFUSED.text("its service answered FAILURE when asked")

# How long a prepared message waits for its submit before it is asked about (DTM's default).
DEFAULT_PREPARED_TIMEOUT_S = 35.0


def phase_of(kind: TransactionKind, decision: Decision) -> Phase:
    """The phase a decision runs for this kind: confirm/cancel for TCC; a saga's actions
    or compensations; a message's deliveries (a cancelled message calls nobody)."""
    if kind is TransactionKind.TCC:
        return Phase.CONFIRM if decision is Decision.CONFIRM else Phase.CANCEL
    return Phase.ACTION if decision is Decision.CONFIRM else Phase.COMPENSATE


def compensates(kind: TransactionKind) -> bool:
    """Whether a cancelled transaction of this kind calls its branches."""
    return kind is not TransactionKind.MSG


def fails_forward(kind: TransactionKind) -> bool:
    """Whether a participant's FAILURE in the forward phase changes course (a saga's action
    refused: compensate). A message's delivery is retried whatever the answer."""
    return kind is TransactionKind.SAGA


# --- the order of steps ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepPlan:
    """In which order a saga's or message's steps run: one after another (``order``), all at
    once (``concurrent``), or each once the steps it waits for are done (``after``)."""

    order: tuple[str, ...]
    concurrent: bool
    after: Mapping[str, frozenset[str]]

    @classmethod
    def of(cls, order: Sequence[str], options: Mapping[str, Any]) -> StepPlan:
        raw_after = options.get(AFTER_OPTION) or {}
        after = {str(k): frozenset(str(x) for x in v) for k, v in dict(raw_after).items()}
        concurrent = bool(options.get(CONCURRENT_OPTION)) or bool(after)
        return cls(tuple(order), concurrent, after)

    def _ready(self, step: str, done: set[str]) -> bool:
        return self.after.get(step, frozenset()) <= done

    def runnable(self, done: Iterable[str]) -> list[str]:
        """The steps whose action may run now: in order, the first one not done; otherwise
        every one not done whose prerequisites are."""
        finished = set(done)
        if not self.concurrent:
            first = next((s for s in self.order if s not in finished), None)
            return [] if first is None else [first]
        return [s for s in self.order if s not in finished and self._ready(s, finished)]

    def may_have_started(self, done: Iterable[str]) -> list[str]:
        """The steps to compensate when the saga fails: every one done, and every one that
        was runnable (its action may have reached the participant even if no answer was
        logged). In order of the steps."""
        finished = set(done)
        runnable = set(self.runnable(finished))
        return [s for s in self.order if s in finished or s in runnable]

    def compensable(self, to_compensate: Iterable[str], compensated: Iterable[str]) -> list[str]:
        """Which compensations may run now, in reverse: in order, the last not yet
        compensated; otherwise each whose dependents (among those to compensate) are."""
        wanted = [s for s in self.order if s in set(to_compensate)]
        undone = set(compensated)
        left = [s for s in wanted if s not in undone]
        if not left:
            return []
        if not self.concurrent:
            return [left[-1]]
        waiting = set(left)
        return [
            s
            for s in reversed(left)
            if not any(s in self.after.get(other, frozenset()) for other in waiting - {s})
        ]


def check_graph(order: Sequence[str], after: Mapping[str, Iterable[str]]) -> str | None:
    """Why a graph of steps cannot run (an unknown step, a step waiting for itself, a
    cycle), or None. Linear in the steps and their edges (Kahn's order)."""
    known = set(order)
    waiting_for: dict[str, int] = dict.fromkeys(order, 0)
    freed_by: dict[str, list[str]] = {step: [] for step in order}
    for step, waits_for in after.items():
        if step not in known:
            return f"after: no step {step!r}"
        for other in set(waits_for):
            if other not in known:
                return f"after.{step}: no step {other!r}"
            if other == step:
                return f"after.{step}: a step cannot wait for itself"
            waiting_for[step] += 1
            freed_by[other].append(step)
    ready = [step for step, n in waiting_for.items() if n == 0]
    ran = 0
    while ready:
        step = ready.pop()
        ran += 1
        for freed in freed_by[step]:
            waiting_for[freed] -= 1
            if waiting_for[freed] == 0:
                ready.append(freed)
    if ran < len(known):
        stuck = sorted(step for step, n in waiting_for.items() if n > 0)
        return f"after: the steps {', '.join(stuck)} wait for each other in a cycle"
    return None


# --- words for people ---------------------------------------------------------------------

_STATUS_WORDS: Mapping[TransactionKind, Mapping[GlobalStatus, str]] = {
    TransactionKind.SAGA: {
        GlobalStatus.TRYING: "submitting",
        GlobalStatus.CONFIRMING: "running actions",
        GlobalStatus.CONFIRMED: "succeeded",
        GlobalStatus.CANCELLING: "compensating",
        GlobalStatus.CANCELLED: "compensated",
        GlobalStatus.FAILED_TO_CONFIRM: "actions parked",
        GlobalStatus.FAILED_TO_CANCEL: "compensations parked",
    },
    TransactionKind.MSG: {
        GlobalStatus.TRYING: "prepared",
        GlobalStatus.CONFIRMING: "submitted",
        GlobalStatus.CONFIRMED: "delivered",
        GlobalStatus.CANCELLING: "aborting",
        GlobalStatus.CANCELLED: "aborted",
        GlobalStatus.FAILED_TO_CONFIRM: "delivery parked",
        GlobalStatus.FAILED_TO_CANCEL: "abort parked",
    },
}

_BRANCH_WORDS: Mapping[TransactionKind, Mapping[BranchStatus, str]] = {
    TransactionKind.SAGA: {
        BranchStatus.REGISTERED: "to run",
        BranchStatus.TRIED: "to run",
        BranchStatus.TRY_FAILED: "action failed",
        BranchStatus.CONFIRMED: "action done",
        BranchStatus.CANCELLED: "compensated",
    },
    TransactionKind.MSG: {
        BranchStatus.REGISTERED: "to deliver",
        BranchStatus.TRIED: "to deliver",
        BranchStatus.TRY_FAILED: "refused",
        BranchStatus.CONFIRMED: "delivered",
        BranchStatus.CANCELLED: "not sent",
    },
}


def status_word(kind: TransactionKind, status: GlobalStatus) -> str | None:
    """What a status means for this kind, where its own word differs (None for TCC)."""
    return _STATUS_WORDS.get(kind, {}).get(status)


def branch_word(kind: TransactionKind, status: BranchStatus) -> str | None:
    return _BRANCH_WORDS.get(kind, {}).get(status)
