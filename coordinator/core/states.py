"""The TCC protocol as pure data and functions: no I/O, no clock, no database.

Everything the coordinator decides goes through here. What each change to the log writes
is worked out from these tables and sets in core/writes.py, and both logs apply that
(the SQL as compare-and-set guards, ``WHERE status = ANY(:sources)``), so the rules
cannot drift between Python, the database and the in-memory twin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class GlobalStatus(StrEnum):
    TRYING = "trying"
    CONFIRMING = "confirming"
    CONFIRMED = "confirmed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    FAILED_TO_CONFIRM = "failed_to_confirm"
    FAILED_TO_CANCEL = "failed_to_cancel"


class BranchStatus(StrEnum):
    REGISTERED = "registered"
    TRIED = "tried"
    TRY_FAILED = "try_failed"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"


class Phase(StrEnum):
    TRY = "try"
    CONFIRM = "confirm"
    CANCEL = "cancel"
    ACTION = "action"  # a saga's step, or a message's delivery
    COMPENSATE = "compensate"  # a saga's step undone


class TransactionKind(StrEnum):
    """Which protocol a transaction follows (core.kinds says what sets them apart)."""

    TCC = "tcc"
    SAGA = "saga"
    MSG = "msg"


class Decision(StrEnum):
    CONFIRM = "confirm"
    CANCEL = "cancel"


class EventKind(StrEnum):
    """What a line of a transaction's timeline records."""

    BEGIN = "begin"
    BRANCH_REGISTERED = "branch_registered"
    TRY_RESULT = "try_result"
    DECISION = "decision"
    CONFIRM_CALL = "confirm_call"
    CANCEL_CALL = "cancel_call"
    ACTION_CALL = "action_call"
    COMPENSATE_CALL = "compensate_call"
    COURSE_CHANGED = "course_changed"  # a saga's actions stopped: it compensates now
    QUERY_PREPARED = "query_prepared"  # a prepared message's service was asked about it
    HELD_BY_BREAKER = "held_by_breaker"  # phase-two calls wait: a participant's circuit is open
    RETRY_SCHEDULED = "retry_scheduled"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"
    FAILED_TO_CONFIRM = "failed_to_confirm"
    FAILED_TO_CANCEL = "failed_to_cancel"
    ADMIN_RETRY = "admin_retry"
    ADMIN_RESOLVED = "admin_resolved"


class AlertKind(StrEnum):
    """Why an alert was raised (TCC_ALERT_WEBHOOK)."""

    PARKED = "parked"  # failed_to_confirm / failed_to_cancel: an operator must act
    RETRYING = "retrying"  # still in phase two after TCC_ALERT_AFTER_ROUNDS rounds
    BREAKER_OPEN = "breaker_open"  # a participant's circuit opened: its calls wait


@dataclass(frozen=True, slots=True)
class DueAlert:
    """An alert a round's end may raise (see alert_due)."""

    kind: AlertKind
    at_round: int | None = None  # retrying: raised when the stay reaches this round

    def raised_after(self, rounds: int) -> bool:
        return self.at_round is None or rounds == self.at_round


def alert_due(
    outcome: GlobalStatus, phase_status: GlobalStatus, alert_after_rounds: int | None
) -> DueAlert | None:
    """What a round ending in ``outcome`` may alert about: parking always, a further round
    once the stay reaches ``alert_after_rounds`` (0: never); None when alerts are off."""
    if alert_after_rounds is None:
        return None
    if outcome in PARKED_STATUSES:
        return DueAlert(AlertKind.PARKED)
    if outcome is phase_status and alert_after_rounds > 0:
        return DueAlert(AlertKind.RETRYING, alert_after_rounds)
    return None


class InvalidTransition(Exception):
    """A status change the protocol forbids."""

    def __init__(self, kind: str, source: str, target: str) -> None:
        super().__init__(f"{kind} cannot move from {source!r} to {target!r}")
        self.source = source
        self.target = target


GLOBAL_TRANSITIONS: Mapping[GlobalStatus, frozenset[GlobalStatus]] = {
    GlobalStatus.TRYING: frozenset({GlobalStatus.CONFIRMING, GlobalStatus.CANCELLING}),
    GlobalStatus.CONFIRMING: frozenset({GlobalStatus.CONFIRMED, GlobalStatus.FAILED_TO_CONFIRM}),
    GlobalStatus.CANCELLING: frozenset({GlobalStatus.CANCELLED, GlobalStatus.FAILED_TO_CANCEL}),
    # Parked for an operator: an admin retry moves them back into phase two, or the
    # operator, having finished the stuck branches by hand, resolves them as done.
    GlobalStatus.FAILED_TO_CONFIRM: frozenset({GlobalStatus.CONFIRMING, GlobalStatus.CONFIRMED}),
    GlobalStatus.FAILED_TO_CANCEL: frozenset({GlobalStatus.CANCELLING, GlobalStatus.CANCELLED}),
    GlobalStatus.CONFIRMED: frozenset(),
    GlobalStatus.CANCELLED: frozenset(),
}

BRANCH_TRANSITIONS: Mapping[BranchStatus, frozenset[BranchStatus]] = {
    # A branch registered without a coordinator-run try (the client tried it
    # itself) may be confirmed straight away; any branch may be cancelled, even
    # one whose try never ran or never answered (an empty compensation).
    BranchStatus.REGISTERED: frozenset(
        {
            BranchStatus.TRIED,
            BranchStatus.TRY_FAILED,
            BranchStatus.CONFIRMED,
            BranchStatus.CANCELLED,
        }
    ),
    BranchStatus.TRIED: frozenset({BranchStatus.CONFIRMED, BranchStatus.CANCELLED}),
    BranchStatus.TRY_FAILED: frozenset({BranchStatus.CANCELLED}),
    BranchStatus.CONFIRMED: frozenset(),
    BranchStatus.CANCELLED: frozenset(),
}

# A saga may change course: a failed action (or its timeout, or its retry limit) stops the
# actions and the compensations start; and a step whose action was done is compensated.
SAGA_GLOBAL_TRANSITIONS: Mapping[GlobalStatus, frozenset[GlobalStatus]] = {
    **GLOBAL_TRANSITIONS,
    GlobalStatus.CONFIRMING: GLOBAL_TRANSITIONS[GlobalStatus.CONFIRMING]
    | {GlobalStatus.CANCELLING},
}
SAGA_BRANCH_TRANSITIONS: Mapping[BranchStatus, frozenset[BranchStatus]] = {
    **BRANCH_TRANSITIONS,
    BranchStatus.CONFIRMED: frozenset({BranchStatus.CANCELLED}),
}


def global_transitions(kind: TransactionKind) -> Mapping[GlobalStatus, frozenset[GlobalStatus]]:
    return SAGA_GLOBAL_TRANSITIONS if kind is TransactionKind.SAGA else GLOBAL_TRANSITIONS


def branch_transitions(kind: TransactionKind) -> Mapping[BranchStatus, frozenset[BranchStatus]]:
    return SAGA_BRANCH_TRANSITIONS if kind is TransactionKind.SAGA else BRANCH_TRANSITIONS


FINAL_STATUSES = frozenset({GlobalStatus.CONFIRMED, GlobalStatus.CANCELLED})
PARKED_STATUSES = frozenset({GlobalStatus.FAILED_TO_CONFIRM, GlobalStatus.FAILED_TO_CANCEL})
# Not decided yet: branches may still be registered and tried, and a decision taken.
UNDECIDED_STATUSES = frozenset({GlobalStatus.TRYING})
PHASE_TWO_STATUSES = frozenset({GlobalStatus.CONFIRMING, GlobalStatus.CANCELLING})
# What the coordinator works on by itself (a deadline or a round due): recovery claims these.
ACTIVE_STATUSES = UNDECIDED_STATUSES | PHASE_TWO_STATUSES
UNFINISHED_STATUSES = ACTIVE_STATUSES | PARKED_STATUSES
# A branch is done once its phase-two call succeeded (or an operator said it was done).
# A branch in one of these has its try still to answer, when the coordinator runs the try:
# a confirm waits for it, and a try that never got an answer logged may be run again.
TRY_PENDING_STATUSES = frozenset({BranchStatus.REGISTERED})
# A branch in one of these keeps the transaction from being confirmed.
BLOCKS_CONFIRM_STATUSES = frozenset({BranchStatus.TRY_FAILED})

# What a branch finished by hand says in place of its last error, before the operator's note.
RESOLVED_BY_HAND = "resolved by an operator: "


def resolved_by_hand(note: str) -> str:
    return RESOLVED_BY_HAND + note


def can_move(source: GlobalStatus, target: GlobalStatus) -> bool:
    return target in GLOBAL_TRANSITIONS[source]


def can_move_branch(source: BranchStatus, target: BranchStatus) -> bool:
    return target in BRANCH_TRANSITIONS[source]


def check_move(source: GlobalStatus, target: GlobalStatus) -> None:
    if not can_move(source, target):
        raise InvalidTransition("transaction", source, target)


def check_move_branch(source: BranchStatus, target: BranchStatus) -> None:
    if not can_move_branch(source, target):
        raise InvalidTransition("branch", source, target)


def sources_of(target: GlobalStatus) -> list[str]:
    """Statuses a transaction may be in for a move to ``target``: the CAS guard."""
    return sorted(s.value for s, targets in GLOBAL_TRANSITIONS.items() if target in targets)


def branch_sources_of(
    target: BranchStatus, kind: TransactionKind = TransactionKind.TCC
) -> list[str]:
    table = branch_transitions(kind)
    return sorted(s.value for s, targets in table.items() if target in targets)


# --- decisions ---------------------------------------------------------------


def phase_status(decision: Decision) -> GlobalStatus:
    """The global status that records a decision: durable before phase two starts."""
    return GlobalStatus.CONFIRMING if decision is Decision.CONFIRM else GlobalStatus.CANCELLING


def final_status(decision: Decision) -> GlobalStatus:
    return GlobalStatus.CONFIRMED if decision is Decision.CONFIRM else GlobalStatus.CANCELLED


def parked_status(decision: Decision) -> GlobalStatus:
    if decision is Decision.CONFIRM:
        return GlobalStatus.FAILED_TO_CONFIRM
    return GlobalStatus.FAILED_TO_CANCEL


def decision_of(status: GlobalStatus) -> Decision | None:
    """Which decision a status carries, or None while still trying."""
    return _DECISION_OF.get(status)


_DECISION_OF: Mapping[GlobalStatus, Decision] = {
    status: decision
    for decision in Decision
    for status in (phase_status(decision), final_status(decision), parked_status(decision))
}


def phase_of(decision: Decision) -> Phase:
    return Phase.CONFIRM if decision is Decision.CONFIRM else Phase.CANCEL


def call_event(phase: Phase) -> EventKind:
    return _CALL_EVENTS[phase]


_CALL_EVENTS: Mapping[Phase, EventKind] = {
    Phase.TRY: EventKind.TRY_RESULT,
    Phase.CONFIRM: EventKind.CONFIRM_CALL,
    Phase.CANCEL: EventKind.CANCEL_CALL,
    Phase.ACTION: EventKind.ACTION_CALL,
    Phase.COMPENSATE: EventKind.COMPENSATE_CALL,
}


def outcome_event(status: GlobalStatus) -> EventKind:
    """The timeline entry for a round that ended the phase (finished or parked)."""
    return EventKind(status.value)


def branch_done_status(decision: Decision) -> BranchStatus:
    return BranchStatus.CONFIRMED if decision is Decision.CONFIRM else BranchStatus.CANCELLED


def done_while_parked() -> list[tuple[GlobalStatus, BranchStatus]]:
    """Per parked status, the status of a branch that does not keep it waiting (a saga's step
    whose action was done still waits while its compensation is what fails)."""
    pairs = [(parked_status(d), branch_done_status(d)) for d in Decision]
    return sorted(pairs)


class CancelReason(StrEnum):
    """Why a transaction was cancelled; stored as the kind, then ": detail" where there is one."""

    CLIENT = "client"  # the client cancelled (DTM's abort may add its rollback_reason)
    TIMEOUT = "timeout"  # the deadline passed while it was trying
    TRY_FAILED = "try_failed"  # a try was refused or failed (detail: the branch)
    CONFIRM_REFUSED = "confirm_refused"  # auto mode could not confirm (detail: why)
    OPERATOR = "operator"  # an operator cancelled it (detail: their reason)
    ACTION_FAILED = "action_failed"  # a saga's action answered FAILURE (detail: the step)
    RETRY_LIMIT = "retry_limit"  # a saga's actions had their rounds (detail: how many)
    QUERY_REFUSED = "query_refused"  # a prepared message's service said it must not go out

    def text(self, detail: str | None = None) -> str:
        return f"{self.value}: {detail}" if detail else self.value


class Refusal(StrEnum):
    """Why a decision cannot be taken now."""

    CANCELLED = "cancelled"  # confirm asked of a cancelled transaction
    DECIDED_OTHERWISE = "decided_otherwise"  # cancel asked of a confirming one
    NOT_TRYING = "not_trying"
    DEADLINE_PASSED = "deadline_passed"
    TRY_FAILED = "try_failed"
    TRY_PENDING = "try_pending"


@dataclass(frozen=True, slots=True)
class BranchView:
    """What the protocol needs to know about a branch to judge a confirm."""

    branch_id: str
    status: BranchStatus
    coordinator_runs_try: bool


@dataclass(frozen=True, slots=True)
class Guard:
    """What a decision needs beyond the transaction's status: the deadline ahead (if
    ``deadline_ahead``), every try of the same write recorded (if ``tries_recorded``), and
    no branch in ``blocking`` nor, with a try the coordinator runs, in ``try_pending``."""

    deadline_ahead: bool = False
    tries_recorded: bool = False
    blocking: frozenset[BranchStatus] = frozenset()
    try_pending: frozenset[BranchStatus] = frozenset()

    def in_the_way(self, branches: Iterable[BranchView]) -> tuple[Refusal, BranchView] | None:
        """The first branch that keeps the decision from being taken, and why."""
        for branch in branches:
            if branch.status in self.blocking:
                return Refusal.TRY_FAILED, branch
            if branch.coordinator_runs_try and branch.status in self.try_pending:
                return Refusal.TRY_PENDING, branch
        return None

    def holds(
        self, deadline_passed: bool, branches: Iterable[BranchView], tries_recorded: bool = True
    ) -> bool:
        if self.deadline_ahead and deadline_passed:
            return False
        if self.tries_recorded and not tries_recorded:
            return False
        return self.in_the_way(branches) is None


NO_GUARD = Guard()
CONFIRM_GUARD = Guard(
    deadline_ahead=True,
    tries_recorded=True,
    blocking=BLOCKS_CONFIRM_STATUSES,
    try_pending=TRY_PENDING_STATUSES,
)


# A saga or a message has no tries: its decision to go forward needs nothing. A prepared
# message may be submitted after its deadline too (the deadline only says when its service is
# asked about it), and a saga found undecided by recovery (its request died between logging
# it and deciding it) is sent forward, as its client asked.
FORWARD_GUARD = Guard()


def guard_of(decision: Decision, kind: TransactionKind = TransactionKind.TCC) -> Guard:
    if decision is Decision.CANCEL:
        return NO_GUARD
    return CONFIRM_GUARD if kind is TransactionKind.TCC else FORWARD_GUARD


def confirm_refusal_of(
    status: GlobalStatus,
    deadline_passed: bool,
    branches: Iterable[BranchView],
    cancel_reason: str | None = None,
    kind: TransactionKind = TransactionKind.TCC,
) -> tuple[Refusal, str] | None:
    """Why a confirm must be refused now (the kind and the words), or None if it may confirm.

    Only a transaction that is still trying can be decided; callers handle the
    idempotent repeats (already confirming/confirmed) before asking.
    """
    if status not in UNDECIDED_STATUSES:
        if decision_of(status) is Decision.CANCEL:
            reason = cancel_reason or "unknown reason"
            return Refusal.CANCELLED, f"transaction was cancelled ({reason})"
        return Refusal.NOT_TRYING, f"transaction is {status.value}"
    guard = guard_of(Decision.CONFIRM, kind)
    if guard.deadline_ahead and deadline_passed:
        return Refusal.DEADLINE_PASSED, "the transaction deadline has passed"
    found = guard.in_the_way(branches)
    if found is None:
        return None
    refusal, branch = found
    if refusal is Refusal.TRY_FAILED:
        return refusal, f"try failed for branch {branch.branch_id!r}"
    return refusal, f"try of branch {branch.branch_id!r} has not answered yet"


def confirm_refusal(
    status: GlobalStatus,
    deadline_passed: bool,
    branches: Iterable[BranchView],
    cancel_reason: str | None = None,
) -> str | None:
    """The words of confirm_refusal_of, for people."""
    found = confirm_refusal_of(status, deadline_passed, branches, cancel_reason)
    return found[1] if found else None


def branches_to_call(decision: Decision, branches: Iterable[BranchView]) -> list[str]:
    """Branches that still need their phase-two call for this decision."""
    done = branch_done_status(decision)
    return [b.branch_id for b in branches if b.status is not done]


# --- participant replies -----------------------------------------------------


class TryVerdict(StrEnum):
    TRIED = "tried"
    REFUSED = "refused"  # 4xx: the business said no; final
    FAILED = "failed"  # 5xx, timeout, connection error


def judge_try(http_status: int | None) -> TryVerdict:
    """Classify a try reply; ``None`` means no HTTP answer (timeout, refused connection)."""
    if http_status is None:
        return TryVerdict.FAILED
    if 200 <= http_status < 300:
        return TryVerdict.TRIED
    if 400 <= http_status < 500:
        return TryVerdict.REFUSED
    return TryVerdict.FAILED


class TryReport(StrEnum):
    """What a client is told about a branch's try: a fresh verdict, or what the log holds."""

    TRIED = "tried"
    REFUSED = "refused"
    FAILED = "failed"
    PENDING = "pending"  # the try has not answered (or its answer was never logged)
    CANCELLED = "cancelled"  # the branch was cancelled; a late answer changes nothing


def report_of(verdict: TryVerdict) -> TryReport:
    return TryReport(verdict.value)


def recorded_try_report(status: BranchStatus, last_http_status: int | None) -> TryReport:
    """What a repeated (or late) try should report, from what the log holds for the branch."""
    if status is BranchStatus.REGISTERED:
        return TryReport.PENDING
    if status is BranchStatus.TRY_FAILED:
        return report_of(judge_try(last_http_status))
    if status is BranchStatus.CANCELLED:
        return TryReport.CANCELLED
    return TryReport.TRIED


def judge_phase_two(phase: Phase, http_status: int | None) -> bool:
    """True when a confirm/cancel reply means the branch is done."""
    if http_status is None:
        return False
    if 200 <= http_status < 300:
        return True
    # Nothing to compensate: the participant never saw the try (or the action).
    return phase in (Phase.CANCEL, Phase.COMPENSATE) and http_status in (404, 410)


def decision_after_tries(verdicts: Iterable[TryVerdict]) -> Decision:
    """The decision the coordinator takes itself when it runs all tries (auto mode)."""
    return Decision.CONFIRM if all(v is TryVerdict.TRIED for v in verdicts) else Decision.CANCEL


class Verdict(StrEnum):
    DECIDE = "decide"  # take the decision now
    ALREADY = "already"  # the same decision was taken before: an idempotent repeat
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    reason: str | None = None  # for people
    refusal: Refusal | None = field(default=None, compare=False)  # for code


def judge_decision(
    requested: Decision,
    status: GlobalStatus,
    deadline_passed: bool,
    branches: Iterable[BranchView],
    cancel_reason: str | None = None,
    kind: TransactionKind = TransactionKind.TCC,
) -> Judgement:
    """May ``requested`` be taken on a transaction in this state?"""
    current = decision_of(status)
    if current is requested:
        return Judgement(Verdict.ALREADY)
    if current is Decision.CANCEL:
        reason = f"transaction was cancelled ({cancel_reason or 'unknown reason'})"
        return Judgement(Verdict.REFUSE, reason, Refusal.CANCELLED)
    if current is not None:
        reason = f"transaction is already {status.value}"
        return Judgement(Verdict.REFUSE, reason, Refusal.DECIDED_OTHERWISE)
    if requested is Decision.CONFIRM:
        refused = confirm_refusal_of(status, deadline_passed, branches, cancel_reason, kind)
        if refused is not None:
            return Judgement(Verdict.REFUSE, refused[1], refused[0])
    return Judgement(Verdict.DECIDE)


def round_outcome(decision: Decision, all_done: bool, budget_spent: bool) -> GlobalStatus:
    """Where a phase-two round leaves the transaction."""
    if all_done:
        return final_status(decision)
    if budget_spent:
        return parked_status(decision)
    return phase_status(decision)
