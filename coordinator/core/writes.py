"""What each change to the transaction log writes, worked out from the rules in states.py
before anything is written.

Each function here returns a frozen record: the statuses a row moves to and may move from,
the guards a decision needs, the timeline entries with their details. PostgresLog passes
its fields as the named parameters of the change's statement in txlog/sql/queries.sql, and
InMemoryLog applies the same record to its rows with the same guards (the methods below
that take a row's state: ``Move.allows``, ``CallRule.takes``, ``states.Guard.holds``,
``AutoDecision.choose``). Neither chooses a status, an event kind or a rule of its own.
The records are shared (the same arguments give the same one) and never changed.

A new kind of transaction brings its statuses and moves to states.py and its writes here;
the statements stay as they are, since they only apply what they are given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any, Generic, TypeVar

from coordinator.core import kinds, states
from coordinator.core.errors import Conflict, CoordinatorError, LimitExceeded, NotTrying
from coordinator.core.records import CallRecord, NewBranch, NewTransaction, TryRecord
from coordinator.core.states import (
    BranchStatus,
    BranchView,
    CancelReason,
    Decision,
    DueAlert,
    EventKind,
    GlobalStatus,
    Guard,
    Judgement,
    Phase,
    Refusal,
    TransactionKind,
    TryVerdict,
    Verdict,
)

Status = TypeVar("Status", GlobalStatus, BranchStatus)


@dataclass(frozen=True, slots=True)
class Move(Generic[Status]):
    """A compare-and-set: to ``target``, only from one of ``sources``."""

    target: Status
    sources: frozenset[Status]

    def allows(self, status: Status) -> bool:
        return status in self.sources


@cache
def branch_move(
    target: BranchStatus, kind: TransactionKind = TransactionKind.TCC
) -> Move[BranchStatus]:
    """A branch's move to ``target`` from wherever the kind's branch table allows."""
    sources = states.branch_sources_of(target, kind)
    return Move(target, frozenset(BranchStatus(s) for s in sources))


def branch_moves() -> list[tuple[BranchStatus, BranchStatus]]:
    """Every move of the branch table as (from, to): the guard of the batched statements,
    in which each branch has a target of its own."""
    return sorted((s, t) for s, targets in states.BRANCH_TRANSITIONS.items() for t in targets)


@dataclass(frozen=True, slots=True)
class Entry:
    """A line of a transaction's timeline, as a write adds it. ``repeatable``: one identical
    to the branch's latest entry only counts as one more repeat of it."""

    kind: EventKind
    detail: Mapping[str, Any] = field(default_factory=dict)
    phase: Phase | None = None
    repeatable: bool = False


# --- begin and register ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewBranchWrite:
    """A branch as it is registered: its status and its timeline entry."""

    branch: NewBranch
    status: BranchStatus
    entry: Entry


@dataclass(frozen=True, slots=True)
class Registration:
    """How a branch is registered: in ``status``, with an entry of ``kind`` that says its
    name and whether the coordinator runs its try."""

    status: BranchStatus
    kind: EventKind

    def of(self, new: NewBranch) -> NewBranchWrite:
        detail = {"name": new.name, "coordinator_runs_try": new.try_url is not None}
        return NewBranchWrite(new, self.status, Entry(self.kind, detail))


REGISTRATION = Registration(BranchStatus.REGISTERED, EventKind.BRANCH_REGISTERED)


@dataclass(frozen=True, slots=True)
class BeginWrite:
    """A new transaction in ``status`` until its deadline, with its branches, each
    registered as ``registration`` says."""

    new: NewTransaction
    status: GlobalStatus
    entry: Entry
    registration: Registration
    branches: tuple[NewBranchWrite, ...]


def begin(new: NewTransaction) -> BeginWrite:
    """A branch id given twice in one begin is registered once, as the first said."""
    firsts: dict[str, NewBranch] = {}
    for branch in new.branches:
        firsts.setdefault(branch.branch_id, branch)
    detail = {"timeout_s": new.timeout_s, "service": new.service}
    return BeginWrite(
        new,
        GlobalStatus.TRYING,
        Entry(EventKind.BEGIN, detail),
        REGISTRATION,
        tuple(REGISTRATION.of(b) for b in firsts.values()),
    )


@dataclass(frozen=True, slots=True)
class RegisterWrite:
    """A branch added to a transaction: only while its status is one of ``open_in``,
    before its deadline, and below ``max_branches``."""

    branch: NewBranchWrite
    open_in: frozenset[GlobalStatus]
    max_branches: int

    def refusal(
        self, status: GlobalStatus, deadline_passed: bool, branches: int
    ) -> CoordinatorError | None:
        """Why the branch cannot be added now, or None."""
        if status not in self.open_in:
            return NotTrying(status)
        if deadline_passed:
            return Conflict("the transaction deadline has passed")
        if branches >= self.max_branches:
            return LimitExceeded(f"a transaction may have at most {self.max_branches} branches")
        return None


def register(new: NewBranch, max_branches: int) -> RegisterWrite:
    return RegisterWrite(REGISTRATION.of(new), states.UNDECIDED_STATUSES, max_branches)


@dataclass(frozen=True, slots=True)
class StaleTry:
    """A try that never got an answer logged may run again (once it is older than a call can
    take): while the transaction is in ``open_in``, its branch in ``pending_in`` with a try
    the coordinator runs."""

    open_in: frozenset[GlobalStatus]
    pending_in: frozenset[BranchStatus]

    def applies(self, status: GlobalStatus, branch: BranchView) -> bool:
        return (
            status in self.open_in
            and branch.coordinator_runs_try
            and branch.status in self.pending_in
        )


STALE_TRY = StaleTry(states.UNDECIDED_STATUSES, states.TRY_PENDING_STATUSES)


# --- participant calls ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallRule:
    """What a participant's answer of one kind does to its branch. A branch in one of
    ``sources`` takes it: the call is counted (attempts, HTTP status, error, latency) and the
    branch moves to ``target`` (None: it stays). The timeline gets ``entry`` either way, with
    ``late_detail`` in place of its detail when the branch did not take it."""

    target: BranchStatus | None
    sources: frozenset[BranchStatus]
    entry: Entry
    late_detail: Mapping[str, Any]

    def takes(self, status: BranchStatus) -> bool:
        return status in self.sources

    def detail(self, taken: bool) -> Mapping[str, Any]:
        return self.entry.detail if taken else self.late_detail


@dataclass(frozen=True, slots=True)
class CallWrite:
    """One participant's answer on one branch, and what it does."""

    branch_id: str
    call: CallRecord
    rule: CallRule


@cache
def _try_rule(verdict: TryVerdict) -> CallRule:
    target = BranchStatus.TRIED if verdict is TryVerdict.TRIED else BranchStatus.TRY_FAILED
    return CallRule(
        target,
        branch_move(target).sources,
        Entry(EventKind.TRY_RESULT, {"verdict": verdict.value, "late": False}, Phase.TRY),
        {"verdict": verdict.value, "late": True},
    )


def try_answer(record: TryRecord) -> CallWrite:
    """A try's answer: the branch is tried or its try failed, once (a later answer is only
    logged, as late)."""
    return CallWrite(record.branch_id, record.call, _try_rule(record.verdict))


@cache
def _phase_call_rule(decision: Decision, done: bool, kind: TransactionKind) -> CallRule:
    """(Always called with all three arguments, so that the cache hands out one record.)"""
    done_move = branch_move(states.branch_done_status(decision), kind)
    phase = kinds.phase_of(kind, decision)
    detail = {"done": done}
    entry = Entry(states.call_event(phase), detail, phase, repeatable=not done)
    return CallRule(done_move.target if done else None, done_move.sources, entry, detail)


@cache
def _action_failed_rule() -> CallRule:
    """A saga's action answered FAILURE: the step failed for good (the saga compensates)."""
    failed = branch_move(BranchStatus.TRY_FAILED, TransactionKind.SAGA)
    detail = {"done": False, "failed": True}
    entry = Entry(EventKind.ACTION_CALL, detail, Phase.ACTION)
    return CallRule(failed.target, failed.sources & {BranchStatus.REGISTERED}, entry, detail)


def phase_call(
    decision: Decision,
    branch_id: str,
    done: bool,
    call: CallRecord,
    kind: TransactionKind = TransactionKind.TCC,
    *,
    failed: bool = False,
) -> CallWrite:
    """A phase-two call's answer (confirm or cancel; a saga's action or compensation, a
    message's delivery): the branch is done if ``done``; a failure only counts the call, and
    an identical failure repeats the branch's latest entry. ``failed``: a saga's action
    answered FAILURE, so its step failed for good."""
    if failed:
        if not (kinds.fails_forward(kind) and decision is Decision.CONFIRM):
            raise ValueError(f"only a saga's action fails for good, not a {kind.value} call")
        return CallWrite(branch_id, call, _action_failed_rule())
    return CallWrite(branch_id, call, _phase_call_rule(decision, done, kind))


# --- decisions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecisionWrite:
    """A decision: the transaction moves to the status that records it, from an undecided
    one, if ``guard`` holds; the decider takes the lease."""

    decision: Decision
    move: Move[GlobalStatus]
    cancel_reason: str | None
    guard: Guard
    entry: Entry


def decision(
    decided: Decision,
    *,
    reason: str | None,
    owner: str,
    actor: str | None = None,
    kind: TransactionKind = TransactionKind.TCC,
) -> DecisionWrite:
    """``reason`` is kept only with a cancel; ``actor``: the operator who decided; ``kind``:
    whose guard applies. (The same arguments give the same record: a batch sends each
    distinct one once.)"""
    return _decision(decided, reason, owner, actor, kind)


@lru_cache(maxsize=1024)
def _decision(
    decided: Decision, reason: str | None, owner: str, actor: str | None, kind: TransactionKind
) -> DecisionWrite:
    target = states.phase_status(decided)
    sources = frozenset(GlobalStatus(s) for s in states.sources_of(target))
    detail: dict[str, Any] = {"decision": decided.value, "reason": reason, "by": owner}
    if actor is not None:
        detail["actor"] = actor
    return DecisionWrite(
        decided,
        Move(target, sources & states.UNDECIDED_STATUSES),
        reason if decided is Decision.CANCEL else None,
        states.guard_of(decided, kind),
        Entry(EventKind.DECISION, detail),
    )


@dataclass(frozen=True, slots=True)
class AutoDecision:
    """Auto mode for one transaction, in one write: its tries' answers, then ``first`` (a
    cancel naming the first failed try, or a confirm) if its guard holds, else
    ``on_timeout`` if the deadline has passed, else nothing (the caller goes on)."""

    gid: str
    tries: tuple[CallWrite, ...]
    first: DecisionWrite
    on_timeout: DecisionWrite

    def choose(
        self,
        status: GlobalStatus,
        deadline_passed: bool,
        branches: Iterable[BranchView],
        tries_recorded: bool,
    ) -> DecisionWrite | None:
        """The decision to write, given the transaction and its branches after the tries."""
        if not self.first.move.allows(status):
            return None
        if self.first.guard.holds(deadline_passed, branches, tries_recorded):
            return self.first
        return self.on_timeout if deadline_passed else None


def undecided(status: GlobalStatus) -> Judgement:
    """Why an AutoDecision took no decision: the transaction had left the undecided
    statuses, or a rule beyond the fast path's (a try not recorded, another branch in the
    way) applies, which the general path judges."""
    if status not in states.UNDECIDED_STATUSES:
        return Judgement(Verdict.REFUSE, f"transaction is {status.value}", Refusal.NOT_TRYING)
    return Judgement(Verdict.REFUSE, "not every try was recorded as tried", Refusal.TRY_PENDING)


def decision_after_tries(gid: str, tries: Iterable[TryRecord], owner: str) -> AutoDecision:
    """Confirm when every try succeeded (states.decision_after_tries), else cancel naming
    the first that did not."""
    records = tuple(tries)
    if states.decision_after_tries(t.verdict for t in records) is Decision.CONFIRM:
        first = decision(Decision.CONFIRM, reason=None, owner=owner)
    else:
        failed = next(t.branch_id for t in records if t.verdict is not TryVerdict.TRIED)
        reason = CancelReason.TRY_FAILED.text(failed)
        first = decision(Decision.CANCEL, reason=reason, owner=owner)
    on_timeout = decision(Decision.CANCEL, reason=CancelReason.TIMEOUT.text(), owner=owner)
    return AutoDecision(gid, tuple(try_answer(t) for t in records), first, on_timeout)


# --- phase two ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoundEnd:
    """The end of a phase-two round: the transaction moves from its phase status to
    ``move.target`` and lets its lease go. ``retry_in_s``: the next round is due then (None:
    no next round); ``finishes``: it has ended; ``pending``: the branches the next round
    calls (their next retry time is set). The entry gets ``"rounds"`` (how many the stay
    took) when ``counts_rounds``; ``alert``: what the round may raise."""

    move: Move[GlobalStatus]
    retry_in_s: float | None
    finishes: bool
    pending: tuple[str, ...]
    entry: Entry
    counts_rounds: bool
    alert: DueAlert | None = None

    def detail(self, rounds: int) -> dict[str, Any]:
        counted = {"rounds": rounds} if self.counts_rounds else {}
        return {**counted, **self.entry.detail}


def round_end(
    decided: Decision,
    outcome: GlobalStatus,
    *,
    owner: str,
    retry_in_s: float = 0.0,
    pending: Iterable[str] = (),
    alert_after_rounds: int | None = None,
) -> RoundEnd:
    """Where a round of ``decided``'s phase ends: ``outcome`` is the phase status itself
    (another round in ``retry_in_s``, calling ``pending``), or the end the phase may move to
    (InvalidTransition otherwise)."""
    phase_status = states.phase_status(decided)
    alert = states.alert_due(outcome, phase_status, alert_after_rounds)
    from_phase = Move(outcome, frozenset({phase_status}))
    if outcome is phase_status:
        waiting = tuple(sorted(pending))
        # No round number in the entry: identical rounds collapse into one.
        entry = Entry(
            EventKind.RETRY_SCHEDULED, {"pending": list(waiting), "by": owner}, repeatable=True
        )
        return RoundEnd(from_phase, retry_in_s, False, waiting, entry, False, alert)
    states.check_move(phase_status, outcome)
    entry = Entry(states.outcome_event(outcome), {"by": owner})
    finishes = outcome in states.FINAL_STATUSES
    return RoundEnd(from_phase, None, finishes, (), entry, True, alert)


@dataclass(frozen=True, slots=True)
class DoneRound:
    """A round in which every call came back done: each call's answer, all of one ``rule``,
    then the ``end``."""

    calls: tuple[tuple[str, CallRecord], ...]
    rule: CallRule
    end: RoundEnd

    def call_writes(self) -> list[CallWrite]:
        return [CallWrite(branch_id, call, self.rule) for branch_id, call in self.calls]


def done_round(decided: Decision, calls: Iterable[tuple[str, CallRecord]], owner: str) -> DoneRound:
    rule = _phase_call_rule(decided, True, TransactionKind.TCC)
    return DoneRound(tuple(calls), rule, _done_end(decided, owner))


@lru_cache(maxsize=64)
def _done_end(decided: Decision, owner: str) -> RoundEnd:
    return round_end(decided, states.final_status(decided), owner=owner)


# --- sagas and messages ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CourseChange:
    """A saga stops its actions and compensates: the transaction moves (under the lease,
    which it keeps) from running its actions to compensating, with ``cancel_reason``; the
    compensations get a fresh retry budget."""

    move: Move[GlobalStatus]
    cancel_reason: str
    entry: Entry


def course_change(reason: str, *, owner: str) -> CourseChange:
    target = GlobalStatus.CANCELLING
    table = states.global_transitions(TransactionKind.SAGA)
    sources = frozenset(s for s in states.PHASE_TWO_STATUSES if target in table[s])
    return CourseChange(
        Move(target, sources),
        reason,
        Entry(EventKind.COURSE_CHANGED, {"reason": reason, "by": owner}),
    )


@dataclass(frozen=True, slots=True)
class Postpone:
    """A prepared message whose service could not say yet whether it should go out: it
    stays as it is (``move``: only from there), asked again in ``retry_in_s``; the lease is
    let go. The timeline notes the answer (repeats collapse)."""

    move: Move[GlobalStatus]
    retry_in_s: float
    entry: Entry
    counts_round: bool = True  # counted in phase_attempts (the backoff's count)


def postpone_query(answer: str, retry_in_s: float, *, owner: str) -> Postpone:
    stay = Move(GlobalStatus.TRYING, states.UNDECIDED_STATUSES)
    detail = {"answer": answer, "by": owner}
    return Postpone(stay, retry_in_s, Entry(EventKind.QUERY_PREPARED, detail, repeatable=True))


def hold_round(
    decision: Decision, participants: Iterable[str], reason: str, retry_in_s: float
) -> Postpone:
    """A round whose every call waits behind its participant's open circuit: nothing was
    sent, so no round is counted (the backoff and the retry budget are for failures, and
    nothing failed); it is looked at again in ``retry_in_s``. The timeline says so once
    (repeats collapse)."""
    phase_status = states.phase_status(decision)
    stay = Move(phase_status, frozenset({phase_status}))
    # (no coordinator in it: the same hold seen by any of them is one entry, repeated)
    detail = {"participants": sorted(set(participants)), "reason": reason}
    entry = Entry(EventKind.HELD_BY_BREAKER, detail, repeatable=True)
    return Postpone(stay, retry_in_s, entry, counts_round=False)


# A transaction in phase two or parked waits on each branch not yet in its decision's done
# status: (transaction status, done status) pairs (the Participants page's "waiting").
WAITING: tuple[tuple[GlobalStatus, BranchStatus], ...] = tuple(
    (status, states.branch_done_status(decided))
    for status in sorted(states.PHASE_TWO_STATUSES | states.PARKED_STATUSES)
    if (decided := states.decision_of(status)) is not None
)


# --- operator actions -----------------------------------------------------------------


def parked_decision(status: GlobalStatus, verb: str) -> Decision:
    """The decision of a transaction an operator acts on, which must be parked."""
    decided = states.decision_of(status)
    if status not in states.PARKED_STATUSES or decided is None:
        raise Conflict(
            f"only failed_to_confirm and failed_to_cancel transactions can be {verb};"
            f" this one is {status.value}"
        )
    return decided


@dataclass(frozen=True, slots=True)
class RetryParked:
    """A parked transaction sent back into phase two with a fresh retry budget."""

    move: Move[GlobalStatus]
    entry: Entry


def retry_parked(status: GlobalStatus, *, actor: str, reason: str | None) -> RetryParked:
    """Raises Conflict when the transaction is not parked."""
    target = states.phase_status(parked_decision(status, "retried"))
    states.check_move(status, target)
    detail = {"from": status.value, "actor": actor}
    if reason is not None:
        detail["reason"] = reason
    return RetryParked(Move(target, frozenset({status})), Entry(EventKind.ADMIN_RETRY, detail))


@dataclass(frozen=True, slots=True)
class ResolveParked:
    """An operator finished a parked transaction's branches by hand (all, or ``only``):
    they move to done with ``last_error`` saying so; the transaction makes ``finish`` once
    no branch can still move there. The log adds to the entry's detail which branches it
    resolved (``"branches"``) and whether the transaction finished (``"finished"``)."""

    branches: Move[BranchStatus]
    last_error: str
    only: str | None
    finish: Move[GlobalStatus]
    entry: Entry

    def already_done(self) -> Conflict:
        return Conflict(f"branch {self.only!r} is already {self.branches.target.value}")

    def detail(self, resolved: list[str], finished: bool) -> dict[str, Any]:
        return {**self.entry.detail, "branches": resolved, "finished": finished}


def resolve_parked(
    status: GlobalStatus,
    *,
    actor: str,
    note: str,
    branch_id: str | None,
    kind: TransactionKind = TransactionKind.TCC,
) -> ResolveParked:
    """Raises Conflict when the transaction is not parked."""
    decided = parked_decision(status, "resolved")
    final = states.final_status(decided)
    states.check_move(status, final)
    return ResolveParked(
        branch_move(states.branch_done_status(decided), kind),
        states.resolved_by_hand(note),
        branch_id,
        Move(final, frozenset({status})),
        Entry(EventKind.ADMIN_RESOLVED, {"actor": actor, "note": note}),
    )
