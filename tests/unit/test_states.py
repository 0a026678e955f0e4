"""The TCC state machine in coordinator/states.py, checked against the protocol written out here.

The expected tables are spelled out by hand on purpose: deriving them from the module's own
GLOBAL_TRANSITIONS / BRANCH_TRANSITIONS would make the tests agree with any bug in them.
"""

from __future__ import annotations

from itertools import product

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.core.states import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    PARKED_STATUSES,
    PHASE_TWO_STATUSES,
    BranchStatus,
    BranchView,
    Decision,
    GlobalStatus,
    InvalidTransition,
    Judgement,
    Phase,
    TryVerdict,
    Verdict,
    branch_done_status,
    branch_sources_of,
    branches_to_call,
    can_move,
    can_move_branch,
    check_move,
    check_move_branch,
    confirm_refusal,
    decision_after_tries,
    decision_of,
    final_status,
    judge_decision,
    judge_phase_two,
    judge_try,
    parked_status,
    phase_of,
    phase_status,
    round_outcome,
    sources_of,
)

G = GlobalStatus
B = BranchStatus

EXPECTED_GLOBAL_MOVES = {
    (G.TRYING, G.CONFIRMING),
    (G.TRYING, G.CANCELLING),
    (G.CONFIRMING, G.CONFIRMED),
    (G.CONFIRMING, G.FAILED_TO_CONFIRM),
    (G.CANCELLING, G.CANCELLED),
    (G.CANCELLING, G.FAILED_TO_CANCEL),
    (G.FAILED_TO_CONFIRM, G.CONFIRMING),
    (G.FAILED_TO_CANCEL, G.CANCELLING),
    # An operator resolving a parked transaction by hand.
    (G.FAILED_TO_CONFIRM, G.CONFIRMED),
    (G.FAILED_TO_CANCEL, G.CANCELLED),
}
EXPECTED_BRANCH_MOVES = {
    (B.REGISTERED, B.TRIED),
    (B.REGISTERED, B.TRY_FAILED),
    (B.REGISTERED, B.CONFIRMED),
    (B.REGISTERED, B.CANCELLED),
    (B.TRIED, B.CONFIRMED),
    (B.TRIED, B.CANCELLED),
    (B.TRY_FAILED, B.CANCELLED),
}
FORBIDDEN_GLOBAL_MOVES = sorted(set(product(G, G)) - EXPECTED_GLOBAL_MOVES)
FORBIDDEN_BRANCH_MOVES = sorted(set(product(B, B)) - EXPECTED_BRANCH_MOVES)
CONFIRM_SIDE = [G.CONFIRMING, G.CONFIRMED, G.FAILED_TO_CONFIRM]
CANCEL_SIDE = [G.CANCELLING, G.CANCELLED, G.FAILED_TO_CANCEL]


def move_id(pair: tuple[object, object]) -> str:
    return f"{pair[0]}->{pair[1]}"


def branch(branch_id: str, status: BranchStatus, coordinator_runs_try: bool = True) -> BranchView:
    return BranchView(branch_id, status, coordinator_runs_try)


# --- the transition tables --------------------------------------------------------------


def test_statuses__are_exactly_the_protocol_ones() -> None:
    assert {s.value for s in G} == {
        "trying", "confirming", "confirmed", "cancelling", "cancelled",
        "failed_to_confirm", "failed_to_cancel",
    }  # fmt: skip
    assert {s.value for s in B} == {"registered", "tried", "try_failed", "confirmed", "cancelled"}


@pytest.mark.parametrize("move", sorted(EXPECTED_GLOBAL_MOVES), ids=move_id)
def test_global_move__allowed_by_the_protocol__is_accepted(move: tuple[G, G]) -> None:
    assert can_move(*move) is True
    check_move(*move)  # must not raise


@pytest.mark.parametrize("move", FORBIDDEN_GLOBAL_MOVES, ids=move_id)
def test_global_move__forbidden_by_the_protocol__is_rejected(move: tuple[G, G]) -> None:
    assert can_move(*move) is False
    with pytest.raises(InvalidTransition, match="transaction cannot move") as caught:
        check_move(*move)
    assert (caught.value.source, caught.value.target) == move


@pytest.mark.parametrize("move", sorted(EXPECTED_BRANCH_MOVES), ids=move_id)
def test_branch_move__allowed_by_the_protocol__is_accepted(move: tuple[B, B]) -> None:
    assert can_move_branch(*move) is True
    check_move_branch(*move)  # must not raise


@pytest.mark.parametrize("move", FORBIDDEN_BRANCH_MOVES, ids=move_id)
def test_branch_move__forbidden_by_the_protocol__is_rejected(move: tuple[B, B]) -> None:
    assert can_move_branch(*move) is False
    with pytest.raises(InvalidTransition, match="branch cannot move") as caught:
        check_move_branch(*move)
    assert (caught.value.source, caught.value.target) == move


def test_forbidden_move_counts__cover_the_whole_cartesian_product() -> None:
    assert len(FORBIDDEN_GLOBAL_MOVES) == 7 * 7 - 10
    assert len(FORBIDDEN_BRANCH_MOVES) == 5 * 5 - 7


@pytest.mark.parametrize("target", list(G))
def test_sources_of__lists_exactly_the_statuses_allowed_to_move_there(target: G) -> None:
    expected = sorted(s.value for s, t in EXPECTED_GLOBAL_MOVES if t is target)
    assert sources_of(target) == expected


@pytest.mark.parametrize("target", list(B))
def test_branch_sources_of__lists_exactly_the_statuses_allowed_to_move_there(target: B) -> None:
    expected = sorted(s.value for s, t in EXPECTED_BRANCH_MOVES if t is target)
    assert branch_sources_of(target) == expected


def test_sources_of__gives_the_cas_guards_spelled_out() -> None:
    assert sources_of(G.TRYING) == []
    assert sources_of(G.CONFIRMING) == ["failed_to_confirm", "trying"]
    assert sources_of(G.CANCELLED) == ["cancelling", "failed_to_cancel"]
    assert branch_sources_of(B.CANCELLED) == ["registered", "tried", "try_failed"]
    assert branch_sources_of(B.REGISTERED) == []


def test_status_groups__partition_the_global_statuses() -> None:
    assert frozenset({G.CONFIRMED, G.CANCELLED}) == FINAL_STATUSES
    assert frozenset({G.FAILED_TO_CONFIRM, G.FAILED_TO_CANCEL}) == PARKED_STATUSES
    assert frozenset({G.TRYING, G.CONFIRMING, G.CANCELLING}) == ACTIVE_STATUSES
    assert frozenset({G.CONFIRMING, G.CANCELLING}) == PHASE_TWO_STATUSES
    assert set(G) == FINAL_STATUSES | PARKED_STATUSES | ACTIVE_STATUSES


@pytest.mark.parametrize("status", sorted(FINAL_STATUSES))
def test_final_status__has_no_exit(status: G) -> None:
    assert not any(can_move(status, target) for target in G)


# --- decisions and the statuses that record them ----------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [(G.TRYING, None)] + [(s, Decision.CONFIRM) for s in CONFIRM_SIDE]
    + [(s, Decision.CANCEL) for s in CANCEL_SIDE],
)  # fmt: skip
def test_decision_of__names_the_decision_a_status_carries(status: G, expected: Decision) -> None:
    assert decision_of(status) is expected


def test_decision_helpers__map_each_decision_to_its_statuses() -> None:
    assert phase_status(Decision.CONFIRM) is G.CONFIRMING
    assert phase_status(Decision.CANCEL) is G.CANCELLING
    assert final_status(Decision.CONFIRM) is G.CONFIRMED
    assert final_status(Decision.CANCEL) is G.CANCELLED
    assert parked_status(Decision.CONFIRM) is G.FAILED_TO_CONFIRM
    assert parked_status(Decision.CANCEL) is G.FAILED_TO_CANCEL
    assert phase_of(Decision.CONFIRM) is Phase.CONFIRM
    assert phase_of(Decision.CANCEL) is Phase.CANCEL
    assert branch_done_status(Decision.CONFIRM) is B.CONFIRMED
    assert branch_done_status(Decision.CANCEL) is B.CANCELLED


@pytest.mark.parametrize("decision", list(Decision))
def test_decision_lifecycle__uses_only_allowed_moves(decision: Decision) -> None:
    phase, final, parked = phase_status(decision), final_status(decision), parked_status(decision)
    assert can_move(G.TRYING, phase)
    assert can_move(phase, final)
    assert can_move(phase, parked)
    assert can_move(parked, phase)
    assert {decision_of(phase), decision_of(final), decision_of(parked)} == {decision}


@pytest.mark.parametrize(
    ("decision", "all_done", "budget_spent", "expected"),
    [
        (Decision.CONFIRM, True, False, G.CONFIRMED), (Decision.CONFIRM, True, True, G.CONFIRMED),
        (Decision.CONFIRM, False, True, G.FAILED_TO_CONFIRM),
        (Decision.CONFIRM, False, False, G.CONFIRMING),
        (Decision.CANCEL, True, False, G.CANCELLED), (Decision.CANCEL, True, True, G.CANCELLED),
        (Decision.CANCEL, False, True, G.FAILED_TO_CANCEL),
        (Decision.CANCEL, False, False, G.CANCELLING),
    ],
)  # fmt: skip
def test_round_outcome__finishes_parks_or_stays_in_phase_two(
    decision: Decision, all_done: bool, budget_spent: bool, expected: G
) -> None:
    outcome = round_outcome(decision, all_done, budget_spent)
    assert outcome is expected
    assert outcome is phase_status(decision) or can_move(phase_status(decision), outcome)


# --- participant replies ----------------------------------------------------------------


TRIED, REFUSED, FAILED = TryVerdict.TRIED, TryVerdict.REFUSED, TryVerdict.FAILED
TRY_BOUNDARIES = [
    (None, FAILED), (100, FAILED), (199, FAILED), (200, TRIED), (201, TRIED), (299, TRIED),
    (300, FAILED), (399, FAILED), (400, REFUSED), (409, REFUSED), (499, REFUSED),
    (500, FAILED), (599, FAILED), (600, FAILED),
]  # fmt: skip


@pytest.mark.parametrize(("http_status", "expected"), TRY_BOUNDARIES)
def test_judge_try__classifies_the_reply_by_status_class(
    http_status: int | None, expected: TryVerdict
) -> None:
    assert judge_try(http_status) is expected


def test_judge_try__every_code_of_a_class__gets_the_class_verdict() -> None:
    assert {judge_try(code) for code in range(200, 300)} == {TRIED}
    assert {judge_try(code) for code in range(400, 500)} == {REFUSED}
    failing_codes = [*range(100, 200), *range(300, 400), *range(500, 600)]
    assert {judge_try(code) for code in failing_codes} == {FAILED}


@pytest.mark.parametrize("phase", [Phase.CONFIRM, Phase.CANCEL])
@pytest.mark.parametrize("http_status", [200, 204, 299])
def test_judge_phase_two__2xx__is_done_for_both_phases(phase: Phase, http_status: int) -> None:
    assert judge_phase_two(phase, http_status) is True


@pytest.mark.parametrize("http_status", [404, 410])
def test_judge_phase_two__404_or_410__is_done_only_for_cancel(http_status: int) -> None:
    assert judge_phase_two(Phase.CANCEL, http_status) is True
    assert judge_phase_two(Phase.CONFIRM, http_status) is False


@pytest.mark.parametrize("phase", [Phase.CONFIRM, Phase.CANCEL])
@pytest.mark.parametrize("http_status", [None, 100, 199, 300, 400, 409, 411, 499, 500, 503])
def test_judge_phase_two__other_replies__are_not_done(
    phase: Phase, http_status: int | None
) -> None:
    assert judge_phase_two(phase, http_status) is False


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ([], Decision.CONFIRM),
        ([TryVerdict.TRIED], Decision.CONFIRM),
        ([TryVerdict.TRIED, TryVerdict.TRIED], Decision.CONFIRM),
        ([TryVerdict.TRIED, TryVerdict.REFUSED], Decision.CANCEL),
        ([TryVerdict.FAILED, TryVerdict.TRIED], Decision.CANCEL),
        ([TryVerdict.REFUSED], Decision.CANCEL),
    ],
)
def test_decision_after_tries__confirms_only_when_every_try_succeeded(
    verdicts: list[TryVerdict], expected: Decision
) -> None:
    assert decision_after_tries(verdicts) is expected
    assert decision_after_tries(iter(verdicts)) is expected  # a one-shot iterable works too


# --- confirm_refusal and judge_decision -------------------------------------------------


@pytest.mark.parametrize("status", CANCEL_SIDE)
def test_confirm_refusal__on_a_cancelled_transaction__names_the_cancel_reason(status: G) -> None:
    assert confirm_refusal(status, False, [], "participant said no") == (
        "transaction was cancelled (participant said no)"
    )
    assert confirm_refusal(status, False, []) == "transaction was cancelled (unknown reason)"


@pytest.mark.parametrize("status", CONFIRM_SIDE)
def test_confirm_refusal__outside_trying__names_the_status(status: G) -> None:
    assert confirm_refusal(status, False, []) == f"transaction is {status.value}"


def test_confirm_refusal__checks_the_deadline_before_the_branches() -> None:
    branches = [branch("b1", B.TRY_FAILED)]
    assert confirm_refusal(G.TRYING, True, branches) == "the transaction deadline has passed"


def test_confirm_refusal__reports_the_first_offending_branch() -> None:
    branches = [branch("ok", B.TRIED), branch("bad", B.TRY_FAILED), branch("slow", B.REGISTERED)]
    assert confirm_refusal(G.TRYING, False, branches) == "try failed for branch 'bad'"
    assert confirm_refusal(G.TRYING, False, branches[::-1]) == (
        "try of branch 'slow' has not answered yet"
    )


def test_judge_decision__confirm_on_a_healthy_trying_transaction__is_decided() -> None:
    branches = [branch("client", B.REGISTERED, coordinator_runs_try=False), branch("c", B.TRIED)]
    assert judge_decision(Decision.CONFIRM, G.TRYING, False, branches) == Judgement(Verdict.DECIDE)
    assert judge_decision(Decision.CONFIRM, G.TRYING, False, []) == Judgement(Verdict.DECIDE)


@pytest.mark.parametrize(
    ("requested", "status"),
    [(Decision.CONFIRM, s) for s in CONFIRM_SIDE] + [(Decision.CANCEL, s) for s in CANCEL_SIDE],
)
def test_judge_decision__repeating_the_taken_decision__is_already(
    requested: Decision, status: G
) -> None:
    # An idempotent repeat wins even where a fresh decision would be refused.
    bad = [branch("b", B.TRY_FAILED)]
    assert judge_decision(requested, status, True, bad) == Judgement(Verdict.ALREADY)


@pytest.mark.parametrize("status", CANCEL_SIDE)
def test_judge_decision__confirm_after_a_cancel__is_refused_with_the_reason(status: G) -> None:
    judged = judge_decision(Decision.CONFIRM, status, False, [], cancel_reason="deadline")
    assert judged == Judgement(Verdict.REFUSE, "transaction was cancelled (deadline)")
    unknown = judge_decision(Decision.CONFIRM, status, False, [])
    assert unknown == Judgement(Verdict.REFUSE, "transaction was cancelled (unknown reason)")


@pytest.mark.parametrize("status", CONFIRM_SIDE)
def test_judge_decision__cancel_after_a_confirm__is_refused(status: G) -> None:
    judged = judge_decision(Decision.CANCEL, status, False, [])
    assert judged == Judgement(Verdict.REFUSE, f"transaction is already {status.value}")


@pytest.mark.parametrize(
    ("deadline_passed", "branches", "reason"),
    [
        (True, [], "the transaction deadline has passed"),
        (False, [branch("pay", B.TRY_FAILED)], "try failed for branch 'pay'"),
        (False, [branch("pay", B.REGISTERED)], "try of branch 'pay' has not answered yet"),
    ],
)
def test_judge_decision__confirm_while_trying__is_refused_for_each_reason(
    deadline_passed: bool, branches: list[BranchView], reason: str
) -> None:
    judged = judge_decision(Decision.CONFIRM, G.TRYING, deadline_passed, branches)
    assert judged == Judgement(Verdict.REFUSE, reason)


def test_judge_decision__cancel_while_trying__is_always_decided() -> None:
    branches = [branch("a", B.TRY_FAILED), branch("b", B.REGISTERED), branch("c", B.TRIED)]
    assert judge_decision(Decision.CANCEL, G.TRYING, True, branches) == Judgement(Verdict.DECIDE)


def test_branches_to_call__skips_branches_already_done_for_the_decision() -> None:
    branches = [
        branch("a", B.TRIED),
        branch("b", B.CONFIRMED),
        branch("c", B.CANCELLED),
        branch("d", B.REGISTERED, coordinator_runs_try=False),
        branch("e", B.TRY_FAILED),
    ]
    assert branches_to_call(Decision.CONFIRM, branches) == ["a", "c", "d", "e"]
    assert branches_to_call(Decision.CANCEL, branches) == ["a", "b", "d", "e"]
    assert branches_to_call(Decision.CANCEL, []) == []


# --- properties -------------------------------------------------------------------------

branch_views = st.builds(BranchView, st.text(max_size=5), st.sampled_from(list(B)), st.booleans())


@given(st.data())
def test_random_walk_from_trying__stays_on_the_protocol_and_never_flips_decision(
    data: st.DataObject,
) -> None:
    status, decided = G.TRYING, None
    for _ in range(50):
        exits = sorted(t for t in G if can_move(status, t))
        if not exits:
            assert status in FINAL_STATUSES
            break
        target = data.draw(st.sampled_from(exits))
        assert (status, target) in EXPECTED_GLOBAL_MOVES
        assert isinstance(target, GlobalStatus)
        status = target
        assert decision_of(status) is not None  # every move out of trying carries a decision
        if decided is None:
            decided = decision_of(status)
        assert decision_of(status) is decided


@given(st.lists(st.sampled_from(list(B)), max_size=10))
def test_any_branch_path__reaches_at_most_one_of_confirmed_and_cancelled(
    targets: list[BranchStatus],
) -> None:
    status, seen = B.REGISTERED, {B.REGISTERED}
    for target in targets:
        if can_move_branch(status, target):
            assert (status, target) in EXPECTED_BRANCH_MOVES
            status = target
            seen.add(status)
    assert not {B.CONFIRMED, B.CANCELLED} <= seen


@given(
    st.sampled_from(list(Decision)),
    st.sampled_from(list(G)),
    st.booleans(),
    st.lists(branch_views, max_size=4),
    st.one_of(st.none(), st.text(max_size=10)),
)
def test_judge_decision__a_decide_verdict_is_always_a_legal_move(
    requested: Decision,
    status: G,
    deadline_passed: bool,
    branches: list[BranchView],
    cancel_reason: str | None,
) -> None:
    judged = judge_decision(requested, status, deadline_passed, branches, cancel_reason)
    assert (judged.verdict is Verdict.ALREADY) == (decision_of(status) is requested)
    if judged.verdict is Verdict.DECIDE:
        assert judged.reason is None
        assert can_move(status, phase_status(requested))
    if judged.verdict is Verdict.REFUSE:
        assert judged.reason
    if judged.verdict is not Verdict.ALREADY and requested is Decision.CONFIRM:
        assert (judged.verdict is Verdict.DECIDE) == (
            confirm_refusal(status, deadline_passed, branches, cancel_reason) is None
        )


@given(st.lists(st.sampled_from(list(TryVerdict)), max_size=8))
def test_decision_after_tries__cancels_exactly_when_some_try_did_not_succeed(
    verdicts: list[TryVerdict],
) -> None:
    cancelled = decision_after_tries(verdicts) is Decision.CANCEL
    assert cancelled == any(v is not TryVerdict.TRIED for v in verdicts)


@given(st.integers(min_value=-1000, max_value=10_000))
def test_judge_phase_two__for_confirm_is_done_exactly_on_2xx(http_status: int) -> None:
    assert judge_phase_two(Phase.CONFIRM, http_status) == (200 <= http_status <= 299)
    assert judge_try(http_status) is TryVerdict.TRIED or not 200 <= http_status <= 299
