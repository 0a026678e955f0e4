"""What each change to the log writes (coordinator/core/writes.py): worked out from the rules
in states.py, and the same rules the SQL's guards and the in-memory twin apply."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.core import states, writes
from coordinator.core.errors import Conflict, LimitExceeded, NotTrying
from coordinator.core.records import CallRecord, NewBranch, NewTransaction, TryRecord
from coordinator.core.states import (
    BranchStatus,
    BranchView,
    Decision,
    EventKind,
    GlobalStatus,
    InvalidTransition,
    Phase,
    TryVerdict,
    Verdict,
)

G = GlobalStatus
B = BranchStatus
OK = CallRecord(200, None, 1.0)
NO = CallRecord(409, "no", 1.0)

branch_views = st.builds(BranchView, st.text(max_size=3), st.sampled_from(list(B)), st.booleans())


@given(
    st.sampled_from(list(Decision)),
    st.sampled_from(list(G)),
    st.booleans(),
    st.lists(branch_views, max_size=4),
)
def test_a_decisions_guard__allows_exactly_what_judge_decision_decides(
    requested: Decision, status: G, deadline_passed: bool, branches: list[BranchView]
) -> None:
    # decide_judged applies the write's move and guard; the log explains a refusal with
    # judge_decision. They must agree, or a decision would be refused for no reason given.
    write = writes.decision(requested, reason="r", owner="o")
    allowed = write.move.allows(status) and write.guard.holds(deadline_passed, branches)
    judged = states.judge_decision(requested, status, deadline_passed, branches)
    assert allowed == (judged.verdict is Verdict.DECIDE)


def test_undecided_statuses__are_exactly_those_carrying_no_decision() -> None:
    assert {s for s in G if states.decision_of(s) is None} == states.UNDECIDED_STATUSES
    assert set(G) - states.FINAL_STATUSES == states.UNFINISHED_STATUSES


def test_a_decision__moves_from_undecided_to_its_phase_and_says_who_and_why() -> None:
    cancel = writes.decision(Decision.CANCEL, reason="client", owner="o", actor="ops")
    assert cancel.move == writes.Move(G.CANCELLING, frozenset({G.TRYING}))
    assert (cancel.cancel_reason, cancel.guard) == ("client", states.NO_GUARD)
    assert cancel.entry.kind is EventKind.DECISION
    assert cancel.entry.detail == {
        "decision": "cancel",
        "reason": "client",
        "by": "o",
        "actor": "ops",
    }
    confirm = writes.decision(Decision.CONFIRM, reason="ignored", owner="o")
    assert (confirm.move.target, confirm.cancel_reason) == (G.CONFIRMING, None)
    assert confirm.guard == states.CONFIRM_GUARD
    assert confirm.entry.detail == {"decision": "confirm", "reason": "ignored", "by": "o"}


def tried(*ids: str) -> list[TryRecord]:
    return [TryRecord(i, TryVerdict.TRIED, OK) for i in ids]


def view(branch_id: str, status: B, runs_try: bool = True) -> BranchView:
    return BranchView(branch_id, status, runs_try)


def test_auto_decision__a_failed_try__cancels_naming_the_first_even_past_the_deadline() -> None:
    tries = [
        *tried("a"),
        TryRecord("b", TryVerdict.REFUSED, NO),
        TryRecord("c", TryVerdict.FAILED, NO),
    ]
    auto = writes.decision_after_tries("g", tries, "o")
    chosen = auto.choose(G.TRYING, True, [view("a", B.TRIED)], tries_recorded=False)
    assert chosen is auto.first
    assert (chosen.move.target, chosen.cancel_reason) == (G.CANCELLING, "try_failed: b")


def test_auto_decision__all_tried__confirms_while_the_deadline_is_ahead() -> None:
    auto = writes.decision_after_tries("g", tried("a", "b"), "o")
    after = [view("a", B.TRIED), view("b", B.TRIED), view("c", B.REGISTERED, runs_try=False)]
    assert auto.choose(G.TRYING, False, after, tries_recorded=True) is auto.first
    assert auto.first.move.target is G.CONFIRMING
    timed_out = auto.choose(G.TRYING, True, after, tries_recorded=True)
    assert timed_out is auto.on_timeout
    assert (timed_out.move.target, timed_out.cancel_reason) == (G.CANCELLING, "timeout")


@pytest.mark.parametrize(
    ("status", "branches", "recorded"),
    [
        (G.TRYING, [view("a", B.TRIED), view("x", B.REGISTERED)], True),  # x's try pending
        (G.TRYING, [view("a", B.TRIED), view("x", B.TRY_FAILED)], True),  # x failed
        (G.TRYING, [view("a", B.TRIED)], False),  # a's answer was not the one recorded
        (G.CANCELLING, [view("a", B.TRIED)], True),  # decided meanwhile
        (G.CONFIRMED, [view("a", B.CONFIRMED)], True),
    ],
)
def test_auto_decision__anything_else__decides_nothing(
    status: G, branches: list[BranchView], recorded: bool
) -> None:
    auto = writes.decision_after_tries("g", tried("a"), "o")
    assert auto.choose(status, False, branches, tries_recorded=recorded) is None
    judged = writes.undecided(status)
    assert judged.verdict is Verdict.REFUSE
    assert (judged.refusal is states.Refusal.NOT_TRYING) == (status is not G.TRYING)


def test_a_try_answer__moves_a_registered_branch_once_and_logs_a_late_one() -> None:
    good = writes.try_answer(TryRecord("a", TryVerdict.TRIED, OK)).rule
    bad = writes.try_answer(TryRecord("a", TryVerdict.REFUSED, NO)).rule
    assert (good.target, bad.target) == (B.TRIED, B.TRY_FAILED)
    assert good.sources == bad.sources == {B.REGISTERED}
    assert [good.takes(s) for s in (B.REGISTERED, B.TRIED, B.CANCELLED)] == [True, False, False]
    assert (good.entry.kind, good.entry.phase) == (EventKind.TRY_RESULT, Phase.TRY)
    assert good.detail(True) == {"verdict": "tried", "late": False}
    assert good.detail(False) == {"verdict": "tried", "late": True}


@pytest.mark.parametrize("decision", list(Decision))
def test_a_phase_call__moves_the_branch_when_done_and_repeats_an_identical_failure(
    decision: Decision,
) -> None:
    done = writes.phase_call(decision, "b", True, OK).rule
    failed = writes.phase_call(decision, "b", False, NO).rule
    target = states.branch_done_status(decision)
    assert (done.target, failed.target) == (target, None)
    assert done.sources == failed.sources == set(map(B, states.branch_sources_of(target)))
    assert (done.entry.repeatable, failed.entry.repeatable) == (False, True)
    assert done.entry.kind is states.call_event(states.phase_of(decision))
    assert done.detail(True) == done.detail(False) == {"done": True}
    # One record per rule: a batch sends each once, however many calls share it.
    assert writes.phase_call(decision, "other", True, NO).rule is done
    round_ = writes.done_round(decision, [("a", OK), ("b", NO)], "o")
    assert round_.rule is done
    assert [(c.branch_id, c.call, c.rule) for c in round_.call_writes()] == [
        ("a", OK, done),
        ("b", NO, done),
    ]
    assert round_.end is writes.done_round(decision, [], "o").end


def test_the_branch_moves__are_the_branch_table() -> None:
    pairs = set(writes.branch_moves())
    assert pairs == {(s, t) for s, targets in states.BRANCH_TRANSITIONS.items() for t in targets}
    for target in B:
        assert writes.branch_move(target).sources == {s for s, t in pairs if t is target}


def test_a_round_end__another_round__keeps_the_phase_and_collapses_identical_rounds() -> None:
    end = writes.round_end(
        Decision.CONFIRM, G.CONFIRMING, owner="o", retry_in_s=5.0, pending=["b2", "b1"]
    )
    assert end.move == writes.Move(G.CONFIRMING, frozenset({G.CONFIRMING}))
    assert (end.retry_in_s, end.finishes, end.pending) == (5.0, False, ("b1", "b2"))
    assert end.entry.kind is EventKind.RETRY_SCHEDULED
    assert end.entry.repeatable
    assert end.detail(7) == {"pending": ["b1", "b2"], "by": "o"}  # no round number


@pytest.mark.parametrize(
    ("decision", "outcome", "finishes"),
    [
        (Decision.CONFIRM, G.CONFIRMED, True),
        (Decision.CONFIRM, G.FAILED_TO_CONFIRM, False),
        (Decision.CANCEL, G.CANCELLED, True),
        (Decision.CANCEL, G.FAILED_TO_CANCEL, False),
    ],
)
def test_a_round_end__final_or_parked__ends_the_phase_counting_its_rounds(
    decision: Decision, outcome: G, finishes: bool
) -> None:
    end = writes.round_end(decision, outcome, owner="o", alert_after_rounds=0)
    assert end.move.sources == {states.phase_status(decision)}
    assert (end.retry_in_s, end.finishes, end.pending) == (None, finishes, ())
    assert end.entry.kind is EventKind(outcome.value)
    assert end.detail(3) == {"rounds": 3, "by": "o"}
    assert (end.alert is not None) == (outcome in states.PARKED_STATUSES)


@pytest.mark.parametrize("outcome", [G.TRYING, G.CANCELLING, G.CANCELLED])
def test_a_round_end__outside_its_phase__is_refused(outcome: G) -> None:
    with pytest.raises(InvalidTransition):
        writes.round_end(Decision.CONFIRM, outcome, owner="o")


@pytest.mark.parametrize("status", [G.TRYING, G.CONFIRMING, G.CONFIRMED, G.CANCELLED])
def test_operator_actions__on_a_transaction_not_parked__are_refused(status: G) -> None:
    with pytest.raises(Conflict, match="can be retried"):
        writes.retry_parked(status, actor="ops", reason=None)
    with pytest.raises(Conflict, match="can be resolved"):
        writes.resolve_parked(status, actor="ops", note="n", branch_id=None)


def test_operator_actions__on_a_parked_transaction__move_it_back_or_finish_it() -> None:
    retry = writes.retry_parked(G.FAILED_TO_CANCEL, actor="ops", reason="fixed")
    assert retry.move == writes.Move(G.CANCELLING, frozenset({G.FAILED_TO_CANCEL}))
    assert retry.entry.detail == {"from": "failed_to_cancel", "actor": "ops", "reason": "fixed"}
    resolve = writes.resolve_parked(G.FAILED_TO_CONFIRM, actor="ops", note="by hand", branch_id="b")
    assert resolve.branches.target is B.CONFIRMED
    assert resolve.finish == writes.Move(G.CONFIRMED, frozenset({G.FAILED_TO_CONFIRM}))
    assert resolve.last_error == states.resolved_by_hand("by hand")
    assert resolve.detail(["b"], finished=True) == {
        "actor": "ops",
        "note": "by hand",
        "branches": ["b"],
        "finished": True,
    }
    assert str(resolve.already_done()) == "branch 'b' is already confirmed"


def new_branch(branch_id: str, name: str = "n", try_url: str | None = "http://t") -> NewBranch:
    return NewBranch(branch_id, name, try_url, "http://c", "http://x", None, "h")


def test_a_begin__registers_each_branch_id_once_as_first_given() -> None:
    given = [new_branch("a", "first"), new_branch("b", try_url=None), new_branch("a", "again")]
    new = NewTransaction("g", "svc", {}, 30, None, "h", branches=given)
    begin = writes.begin(new)
    assert begin.status is G.TRYING
    assert begin.entry.detail == {"timeout_s": 30, "service": "svc"}
    assert [(b.branch.branch_id, b.branch.name) for b in begin.branches] == [
        ("a", "first"),
        ("b", "n"),
    ]
    assert {b.status for b in begin.branches} == {B.REGISTERED}
    assert [b.entry.detail["coordinator_runs_try"] for b in begin.branches] == [True, False]


def test_a_registration__is_refused_outside_trying_past_the_deadline_and_at_the_limit() -> None:
    write = writes.register(new_branch("b"), max_branches=2)
    assert isinstance(write.refusal(G.CONFIRMING, False, 0), NotTrying)
    assert isinstance(write.refusal(G.TRYING, True, 0), Conflict)
    assert isinstance(write.refusal(G.TRYING, False, 2), LimitExceeded)
    assert write.refusal(G.TRYING, False, 1) is None


def test_a_stale_try__may_run_again_only_while_trying_and_unanswered() -> None:
    stale = writes.STALE_TRY
    assert stale.applies(G.TRYING, view("b", B.REGISTERED))
    assert not stale.applies(G.TRYING, view("b", B.REGISTERED, runs_try=False))
    assert not stale.applies(G.TRYING, view("b", B.TRIED))
    assert not stale.applies(G.CANCELLING, view("b", B.REGISTERED))
