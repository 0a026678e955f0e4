"""Sagas and messages in the core (coordinator/core/kinds.py and their writes in
core/writes.py): the order steps run and are compensated in, which graphs of steps can run,
the phases each kind calls, and what a failed action, a course change and a postponed
question write. Pure functions: no log, no clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.core import kinds, states, writes
from coordinator.core.kinds import StepPlan, check_graph, phase_of
from coordinator.core.records import CallRecord
from coordinator.core.states import (
    BranchStatus,
    Decision,
    EventKind,
    GlobalStatus,
    Phase,
    Refusal,
    TransactionKind,
    Verdict,
)

B = BranchStatus
G = GlobalStatus
K = TransactionKind
OK = CallRecord(200, None, 1.0)
NO = CallRecord(409, "HTTP 409: no", 1.0)

IN_ORDER = StepPlan.of(["a", "b", "c"], {})
ALL_AT_ONCE = StepPlan.of(["a", "b", "c"], {"concurrent": True})
# a, then b and c (each waits for a), then d (waits for both).
DIAMOND = StepPlan.of(["a", "b", "c", "d"], {"after": {"b": ["a"], "c": ["a"], "d": ["b", "c"]}})


# --- StepPlan.of ------------------------------------------------------------------------


def test_of__without_options__runs_the_steps_in_order() -> None:
    assert StepPlan(("a", "b", "c"), False, {}) == IN_ORDER


def test_of__concurrent__runs_them_at_once() -> None:
    assert ALL_AT_ONCE.concurrent
    assert ALL_AT_ONCE.after == {}


def test_of__a_graph__is_concurrent_and_keeps_the_prerequisites_as_sets() -> None:
    plan = StepPlan.of(["a", "b"], {"concurrent": False, "after": {"b": ["a", "a"]}})
    assert plan.concurrent  # a graph decides the order itself
    assert plan.after == {"b": frozenset({"a"})}


def test_of__an_empty_graph__is_the_same_as_none() -> None:
    assert StepPlan.of(["a", "b"], {"after": {}}) == StepPlan(("a", "b"), False, {})
    assert StepPlan.of(["a", "b"], {"after": None}) == StepPlan(("a", "b"), False, {})


# --- runnable ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("done", "runnable"),
    [
        ([], ["a"]),
        (["a"], ["b"]),
        (["a", "b"], ["c"]),
        (["a", "b", "c"], []),
        # The first step not done, whatever else is: one at a time, in order.
        (["b"], ["a"]),
        (["a", "c"], ["b"]),
    ],
)
def test_runnable__in_order__is_the_first_step_not_done(
    done: list[str], runnable: list[str]
) -> None:
    assert IN_ORDER.runnable(done) == runnable


@pytest.mark.parametrize(
    ("done", "runnable"),
    [([], ["a", "b", "c"]), (["b"], ["a", "c"]), (["a", "b", "c"], [])],
)
def test_runnable__concurrent__is_every_step_not_done(done: list[str], runnable: list[str]) -> None:
    assert ALL_AT_ONCE.runnable(done) == runnable


@pytest.mark.parametrize(
    ("done", "runnable"),
    [
        ([], ["a"]),
        (["a"], ["b", "c"]),
        (["a", "b"], ["c"]),  # d still waits for c
        (["a", "c"], ["b"]),
        (["a", "b", "c"], ["d"]),
        (["a", "b", "c", "d"], []),
    ],
)
def test_runnable__a_diamond__runs_a_step_once_all_it_waits_for_are_done(
    done: list[str], runnable: list[str]
) -> None:
    assert DIAMOND.runnable(done) == runnable


def test_runnable__a_graph_with_independent_steps__runs_them_at_once_with_the_roots() -> None:
    plan = StepPlan.of(["a", "b", "x"], {"after": {"b": ["a"]}})
    assert plan.runnable([]) == ["a", "x"]
    assert plan.runnable(["x"]) == ["a"]
    assert plan.runnable(["a"]) == ["b", "x"]


def test_runnable__takes_any_iterable_of_done_steps() -> None:
    assert IN_ORDER.runnable(iter(["a"])) == ["b"]
    assert DIAMOND.runnable(s for s in "abc") == ["d"]


# --- may_have_started ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "done", "started"),
    [
        # In order: every step done, and the one that was running when the saga failed.
        (IN_ORDER, [], ["a"]),
        (IN_ORDER, ["a"], ["a", "b"]),
        (IN_ORDER, ["a", "b"], ["a", "b", "c"]),
        (IN_ORDER, ["a", "b", "c"], ["a", "b", "c"]),
        # At once: all of them were called.
        (ALL_AT_ONCE, [], ["a", "b", "c"]),
        (ALL_AT_ONCE, ["c"], ["a", "b", "c"]),
        # A graph: those done and those whose prerequisites were, not the ones still waiting.
        (DIAMOND, [], ["a"]),
        (DIAMOND, ["a"], ["a", "b", "c"]),
        (DIAMOND, ["a", "b"], ["a", "b", "c"]),
        (DIAMOND, ["a", "b", "c"], ["a", "b", "c", "d"]),
    ],
)
def test_may_have_started__is_every_step_done_or_runnable_in_the_order_of_the_steps(
    plan: StepPlan, done: list[str], started: list[str]
) -> None:
    assert plan.may_have_started(done) == started


# --- compensable --------------------------------------------------------------------------


def test_compensable__in_order__undoes_the_last_one_first_one_at_a_time() -> None:
    to_undo = ["a", "b", "c"]
    assert IN_ORDER.compensable(to_undo, []) == ["c"]
    assert IN_ORDER.compensable(to_undo, ["c"]) == ["b"]
    assert IN_ORDER.compensable(to_undo, ["c", "b"]) == ["a"]
    assert IN_ORDER.compensable(to_undo, ["a", "b", "c"]) == []


def test_compensable__only_the_steps_to_compensate__never_one_that_did_not_start() -> None:
    assert IN_ORDER.compensable(["a", "b"], []) == ["b"]
    assert IN_ORDER.compensable(["a", "b"], ["b"]) == ["a"]
    assert IN_ORDER.compensable([], []) == []


def test_compensable__takes_the_steps_in_the_plans_order_whatever_order_they_are_given() -> None:
    assert IN_ORDER.compensable(["c", "a", "b"], []) == ["c"]


def test_compensable__concurrent__undoes_every_step_left_at_once_in_reverse() -> None:
    assert ALL_AT_ONCE.compensable(["a", "b", "c"], []) == ["c", "b", "a"]
    assert ALL_AT_ONCE.compensable(["a", "b", "c"], ["b"]) == ["c", "a"]


def test_compensable__a_diamond__undoes_a_step_after_every_step_that_waited_for_it() -> None:
    to_undo = ["a", "b", "c", "d"]
    assert DIAMOND.compensable(to_undo, []) == ["d"]
    assert DIAMOND.compensable(to_undo, ["d"]) == ["c", "b"]
    assert DIAMOND.compensable(to_undo, ["d", "b"]) == ["c"]  # a waits for c too
    assert DIAMOND.compensable(to_undo, ["d", "b", "c"]) == ["a"]
    assert DIAMOND.compensable(to_undo, to_undo) == []


def test_compensable__a_diamond_that_failed_before_d__does_not_wait_for_d() -> None:
    # d never started: only a, b and c are compensated, b and c first.
    assert DIAMOND.compensable(["a", "b", "c"], []) == ["c", "b"]
    assert DIAMOND.compensable(["a", "b", "c"], ["b", "c"]) == ["a"]


def graphs() -> st.SearchStrategy[tuple[list[str], dict[str, list[str]]]]:
    """Random graphs without cycles: a step waits only for steps before it."""

    @st.composite
    def build(draw: st.DrawFn) -> tuple[list[str], dict[str, list[str]]]:
        n = draw(st.integers(1, 7))
        order = [f"s{i}" for i in range(n)]
        after: dict[str, list[str]] = {}
        for i, step in enumerate(order):
            waits = draw(st.lists(st.sampled_from(order[:i]), unique=True) if i else st.just([]))
            if waits:
                after[step] = waits
        return order, after

    return build()


@given(graphs())
def test_a_graph_run_to_the_end_and_compensated__keeps_every_prerequisite_in_order(
    graph: tuple[list[str], dict[str, list[str]]],
) -> None:
    order, after = graph
    assert check_graph(order, after) is None
    plan = StepPlan.of(order, {"after": after})
    ran: list[str] = []
    while ready := plan.runnable(ran):
        ran.extend(ready)
    assert sorted(ran) == sorted(order)
    for step, waits in after.items():
        assert all(ran.index(w) < ran.index(step) for w in waits)
    undone: list[str] = []
    while ready := plan.compensable(order, undone):
        undone.extend(ready)
    assert sorted(undone) == sorted(order)
    for step, waits in after.items():
        assert all(undone.index(w) > undone.index(step) for w in waits)


# --- check_graph ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "after",
    [{}, {"b": ["a"]}, {"b": ["a"], "c": ["a"], "d": ["b", "c"]}, {"d": ["a", "b", "c"]}],
)
def test_check_graph__a_graph_that_runs__is_fine(after: dict[str, list[str]]) -> None:
    assert check_graph(["a", "b", "c", "d"], after) is None


def test_check_graph__a_step_nobody_named__is_refused_naming_it() -> None:
    assert check_graph(["a", "b"], {"x": ["a"]}) == "after: no step 'x'"


def test_check_graph__waiting_for_an_unknown_step__is_refused_naming_both() -> None:
    assert check_graph(["a", "b"], {"b": ["a", "nope"]}) == "after.b: no step 'nope'"


def test_check_graph__a_step_waiting_for_itself__is_refused() -> None:
    assert check_graph(["a", "b"], {"b": ["b"]}) == "after.b: a step cannot wait for itself"


def test_check_graph__two_steps_waiting_for_each_other__is_a_cycle_naming_them() -> None:
    assert check_graph(["a", "b"], {"a": ["b"], "b": ["a"]}) == (
        "after: the steps a, b wait for each other in a cycle"
    )


def test_check_graph__a_longer_cycle_behind_a_step_that_runs__names_the_steps_stuck() -> None:
    problem = check_graph(["start", "x", "y", "z"], {"x": ["start", "z"], "y": ["x"], "z": ["y"]})
    assert problem == "after: the steps x, y, z wait for each other in a cycle"


def test_check_graph__takes_any_iterables_of_prerequisites() -> None:
    assert check_graph(("a", "b"), {"b": ("a",)}) is None
    assert check_graph(["a", "b"], {"b": frozenset({"a"})}) is None


# --- phases, words, what each kind does ------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "decision", "phase"),
    [
        (K.TCC, Decision.CONFIRM, Phase.CONFIRM),
        (K.TCC, Decision.CANCEL, Phase.CANCEL),
        (K.SAGA, Decision.CONFIRM, Phase.ACTION),
        (K.SAGA, Decision.CANCEL, Phase.COMPENSATE),
        (K.MSG, Decision.CONFIRM, Phase.ACTION),
        (K.MSG, Decision.CANCEL, Phase.COMPENSATE),
    ],
)
def test_phase_of__each_kind_and_decision(kind: K, decision: Decision, phase: Phase) -> None:
    assert phase_of(kind, decision) is phase


def test_the_phases_of_sagas_and_messages__have_timeline_entries_of_their_own() -> None:
    assert states.call_event(Phase.ACTION) is EventKind.ACTION_CALL
    assert states.call_event(Phase.COMPENSATE) is EventKind.COMPENSATE_CALL


def test_phase_of__tcc__agrees_with_the_tcc_only_phase_of_in_states() -> None:
    for decision in Decision:
        assert phase_of(K.TCC, decision) is states.phase_of(decision)


def test_only_a_message_calls_nobody_when_cancelled_and_only_a_saga_fails_forward() -> None:
    assert [k for k in K if not kinds.compensates(k)] == [K.MSG]
    assert [k for k in K if kinds.fails_forward(k)] == [K.SAGA]


def test_words__every_status_of_a_saga_and_a_message_has_one_and_tcc_none() -> None:
    for kind in (K.SAGA, K.MSG):
        assert all(kinds.status_word(kind, s) for s in G)
        assert all(kinds.branch_word(kind, s) for s in B)
    assert all(kinds.status_word(K.TCC, s) is None for s in G)
    assert all(kinds.branch_word(K.TCC, s) is None for s in B)
    assert kinds.status_word(K.SAGA, G.CANCELLING) == "compensating"
    assert kinds.status_word(K.MSG, G.TRYING) == "prepared"
    assert kinds.branch_word(K.SAGA, B.TRY_FAILED) == "action failed"


# --- a saga's transitions ------------------------------------------------------------------


def test_a_saga__may_change_course_from_its_actions_to_compensations_and_tcc_may_not() -> None:
    assert G.CANCELLING in states.global_transitions(K.SAGA)[G.CONFIRMING]
    assert G.CANCELLING not in states.global_transitions(K.TCC)[G.CONFIRMING]
    assert G.CANCELLING not in states.global_transitions(K.MSG)[G.CONFIRMING]
    # Otherwise the tables are TCC's.
    for status in G:
        if status is not G.CONFIRMING:
            assert states.global_transitions(K.SAGA)[status] == states.GLOBAL_TRANSITIONS[status]


def test_a_saga__may_compensate_a_step_whose_action_was_done_and_tcc_may_not() -> None:
    assert B.CONFIRMED.value in states.branch_sources_of(B.CANCELLED, K.SAGA)
    assert B.CONFIRMED.value not in states.branch_sources_of(B.CANCELLED, K.TCC)
    assert B.CONFIRMED.value not in states.branch_sources_of(B.CANCELLED, K.MSG)


# --- phase_call for sagas and messages -------------------------------------------------------


def test_phase_call__a_failed_action__moves_the_step_from_registered_to_try_failed() -> None:
    write = writes.phase_call(Decision.CONFIRM, "b", False, NO, K.SAGA, failed=True)
    assert (write.branch_id, write.call) == ("b", NO)
    rule = write.rule
    assert rule.target is B.TRY_FAILED
    assert rule.sources == frozenset({B.REGISTERED})
    assert rule.takes(B.REGISTERED)
    # A step already done (or compensated) is not failed by a late answer.
    assert not any(rule.takes(s) for s in (B.CONFIRMED, B.CANCELLED, B.TRY_FAILED, B.TRIED))
    assert rule.entry.kind is EventKind.ACTION_CALL
    assert rule.entry.phase is Phase.ACTION
    assert rule.entry.detail == {"done": False, "failed": True}
    assert not rule.entry.repeatable  # a step fails once: never folded into a repeat


def test_phase_call__failed__is_only_for_a_sagas_action() -> None:
    for kind, decision in [
        (K.TCC, Decision.CONFIRM),
        (K.MSG, Decision.CONFIRM),
        (K.SAGA, Decision.CANCEL),
        (K.TCC, Decision.CANCEL),
    ]:
        with pytest.raises(ValueError, match="only a saga's action fails for good"):
            writes.phase_call(decision, "b", False, NO, kind, failed=True)


def test_phase_call__a_compensation_done__may_cancel_a_step_whose_action_was_done() -> None:
    saga = writes.phase_call(Decision.CANCEL, "b", True, OK, K.SAGA).rule
    assert saga.target is B.CANCELLED
    assert saga.takes(B.CONFIRMED)
    assert saga.takes(B.TRY_FAILED)
    assert saga.takes(B.REGISTERED)
    assert not saga.takes(B.CANCELLED)
    assert (saga.entry.kind, saga.entry.phase) == (EventKind.COMPENSATE_CALL, Phase.COMPENSATE)


def test_phase_call__a_tcc_cancel__never_cancels_a_confirmed_branch() -> None:
    tcc = writes.phase_call(Decision.CANCEL, "b", True, OK, K.TCC).rule
    assert tcc.target is B.CANCELLED
    assert not tcc.takes(B.CONFIRMED)
    assert (tcc.entry.kind, tcc.entry.phase) == (EventKind.CANCEL_CALL, Phase.CANCEL)


def test_phase_call__an_action_or_delivery_done__confirms_the_step() -> None:
    for kind in (K.SAGA, K.MSG):
        rule = writes.phase_call(Decision.CONFIRM, "b", True, OK, kind).rule
        assert rule.target is B.CONFIRMED
        assert rule.takes(B.REGISTERED)
        assert not rule.takes(B.CONFIRMED)
        assert (rule.entry.kind, rule.entry.phase) == (EventKind.ACTION_CALL, Phase.ACTION)
        assert rule.entry.detail == {"done": True}
        assert not rule.entry.repeatable


def test_phase_call__a_call_not_done__moves_nothing_and_repeats_fold() -> None:
    for kind, decision in [(K.SAGA, Decision.CONFIRM), (K.SAGA, Decision.CANCEL)]:
        rule = writes.phase_call(decision, "b", False, CallRecord(503, "x", 1.0), kind).rule
        assert rule.target is None
        assert rule.entry.repeatable
        assert rule.entry.detail == {"done": False}


def test_phase_call__the_same_arguments__share_one_rule() -> None:
    one = writes.phase_call(Decision.CANCEL, "a", True, OK, K.SAGA).rule
    two = writes.phase_call(Decision.CANCEL, "b", True, NO, K.SAGA).rule
    assert one is two
    assert one is not writes.phase_call(Decision.CANCEL, "a", True, OK, K.TCC).rule


# --- course_change and postpone_query ------------------------------------------------------


def test_course_change__moves_a_saga_running_its_actions_to_compensating_with_the_reason() -> None:
    change = writes.course_change("action_failed: b", owner="c1")
    assert change.move.target is G.CANCELLING
    assert change.move.sources == frozenset({G.CONFIRMING})
    assert not any(change.move.allows(s) for s in G if s is not G.CONFIRMING)
    assert change.cancel_reason == "action_failed: b"
    assert change.entry.kind is EventKind.COURSE_CHANGED
    assert change.entry.detail == {"reason": "action_failed: b", "by": "c1"}
    assert change.entry.phase is None
    assert not change.entry.repeatable


def test_postpone_query__keeps_a_prepared_message_prepared_and_says_the_answer() -> None:
    later = writes.postpone_query("retry", 2.5, owner="c1")
    assert later.move.target is G.TRYING
    assert later.move.sources == frozenset({G.TRYING})
    assert later.retry_in_s == 2.5
    assert later.entry.kind is EventKind.QUERY_PREPARED
    assert later.entry.detail == {"answer": "retry", "by": "c1"}
    assert later.entry.repeatable  # the same answer again only counts a repeat


def test_query_refused_reason__is_of_the_kind_query_refused() -> None:
    assert kinds.QUERY_REFUSED_REASON.startswith("query_refused: ")


# --- a message's guard ----------------------------------------------------------------------


def test_guard_of__a_message_submit__has_no_deadline_and_no_try_to_wait_for() -> None:
    guard = states.guard_of(Decision.CONFIRM, K.MSG)
    assert guard == states.FORWARD_GUARD
    assert not guard.deadline_ahead
    assert guard.holds(deadline_passed=True, branches=[], tries_recorded=False)
    assert states.guard_of(Decision.CANCEL, K.MSG) == states.NO_GUARD


def test_guard_of__tcc_keeps_the_confirm_guard_with_its_deadline__a_saga_goes_forward_anyway() -> (
    None
):
    guard = states.guard_of(Decision.CONFIRM, K.TCC)
    assert guard == states.CONFIRM_GUARD
    assert not guard.holds(deadline_passed=True, branches=[])
    # A saga found undecided by recovery past its deadline is sent forward, as asked.
    assert states.guard_of(Decision.CONFIRM, K.SAGA) == states.FORWARD_GUARD


def test_judge_decision__a_message_past_its_deadline__may_still_be_submitted() -> None:
    msg = states.judge_decision(Decision.CONFIRM, G.TRYING, True, [], kind=K.MSG)
    assert msg.verdict is Verdict.DECIDE
    tcc = states.judge_decision(Decision.CONFIRM, G.TRYING, True, [], kind=K.TCC)
    assert (tcc.verdict, tcc.refusal) == (Verdict.REFUSE, Refusal.DEADLINE_PASSED)


def test_decision_write__of_a_message__carries_its_guard() -> None:
    msg = writes.decision(Decision.CONFIRM, reason=None, owner="o", kind=K.MSG)
    assert msg.guard == states.FORWARD_GUARD
    assert msg.move.allows(G.TRYING)
    tcc = writes.decision(Decision.CONFIRM, reason=None, owner="o")
    assert tcc.guard == states.CONFIRM_GUARD
