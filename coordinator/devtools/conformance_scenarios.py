"""The scenarios `tcc conformance` runs, TCC's and a saga step's, each on a gid of its own
(a Trial, conformance_trial.py), in order; the last one reads the replies of the others.
Every reply is read the coordinator's way (conformance_probe.py); what to fix is worded in
conformance_advice.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from coordinator.core.states import Phase, TransactionKind, TryVerdict
from coordinator.devtools.conformance_advice import (
    CONCURRENT_FIX,
    ONCE_FIX,
    REPEAT_FIX,
    error_in,
    forward_advice,
    not_done,
    suspension_fix,
)
from coordinator.devtools.conformance_probe import Probe, Reply
from coordinator.devtools.conformance_trial import Finding, Scenario, Trial
from coordinator.dialects.base import CallOutcome

# Identical confirms (actions) sent at once by the concurrency scenario.
DUPLICATES = 5
# How much longer than --timeout a try the coordinator would have given up on is waited
# for, to see what it leaves once it ends.
LATE_TRY_LIMIT_S = 60.0


# --- TCC ----------------------------------------------------------------------------


async def try_then_confirm(t: Trial) -> None:
    if not await t.forward():
        return
    await t.expect(
        "after the try",
        held=True,
        applied=0,
        advice="a successful try must hold what its confirm will use, and apply nothing yet",
    )
    confirm = await t.call(Phase.CONFIRM)
    if not confirm.ok:
        t.fail(not_done(confirm, "Once its try succeeded, a confirm must take effect."))
        return
    await t.expect(
        "after confirm",
        held=False,
        applied=1,
        advice="confirm must turn what the try held into the real change, once",
    )


async def try_then_cancel(t: Trial) -> None:
    if not await t.forward():
        return
    await t.expect(
        "after the try", held=True, applied=0, advice="a successful try must hold something"
    )
    cancel = await t.call(Phase.CANCEL)
    if not cancel.ok:
        t.fail(not_done(cancel, "A cancel must release what its try held, and answer 2xx."))
        return
    await t.expect(
        "after cancel",
        held=False,
        applied=0,
        undone=1,
        advice="cancel must release what the try held, once, and apply nothing",
    )


async def repeated_confirm(t: Trial) -> None:
    await _repeated(t, Phase.CONFIRM)


async def repeated_cancel(t: Trial) -> None:
    await _repeated(t, Phase.CANCEL)


async def _repeated(t: Trial, phase: Phase) -> None:
    if not await t.forward():
        return
    first = await t.call(phase)
    if not first.ok:
        t.fail(not_done(first, f"The first {phase.value} after a successful try must succeed."))
        return
    again = await t.call(phase)
    if not again.ok:
        t.fail(not_done(again, REPEAT_FIX))
    forward_done = phase in (Phase.CONFIRM, Phase.ACTION)
    if forward_done:
        await t.expect(
            f"after both {phase.value}s",
            held=False,
            applied=1,
            advice=f"the repeated {phase.value} took effect again: {ONCE_FIX}",
            unseen=f"whether the repeated {phase.value} took effect again",
        )
    else:
        await t.expect(
            f"after both {phase.value}s",
            held=False,
            undone=1,
            advice=f"the repeated {phase.value} gave back twice: {ONCE_FIX}",
            unseen=f"whether the repeated {phase.value} gave back twice",
        )


async def cancel_without_try(t: Trial) -> None:
    await _undo_first(t, Phase.CANCEL, "try")


async def _undo_first(t: Trial, undo: Phase, forward: str) -> None:
    reply = await t.call(undo)
    if not reply.ok:
        t.fail(
            not_done(
                reply,
                f"With no {forward} there is nothing to undo: record that the {undo.value} ran"
                f" (so that a late {forward} changes nothing) and answer 2xx.",
            )
        )
        return
    await t.expect(
        f"after the {undo.value}",
        held=False,
        applied=0,
        undone=0,
        advice=(
            f"with no {forward} there is nothing to give back or apply: undo only what the"
            f" {forward} recorded, found by gid and branch_id"
        ),
    )


async def try_after_cancel(t: Trial) -> None:
    await _late_forward(t, Phase.CANCEL, Phase.TRY)


async def _late_forward(t: Trial, undo: Phase, forward: Phase) -> None:
    first = await t.call(undo)
    if not first.ok:
        t.not_observable(
            f"the {undo.value} sent first did not succeed (see the scenario with no"
            f" {forward.value}), so nothing could hold the late {forward.value} back"
        )
        return
    late = await t.call(forward)
    fix = suspension_fix(forward.value, undo.value, t.gid)
    if t.checking:
        await t.expect(f"after the late {forward.value}", held=False, applied=0, advice=fix)
        return
    status = late.result.http_status
    if status is not None and 400 <= status < 500:
        t.note(f"by its reply ({status}) the late {forward.value} did nothing")
    else:
        t.not_observable(
            f"the late {forward.value} answered {late.head}: whether it changed anything only"
            " the check URL can show (a 2xx may be right: DTM's barrier answers a suspended"
            f" {forward.value} so and does nothing)"
        )


async def concurrent_confirms(t: Trial) -> None:
    if await t.forward():
        await _concurrent(t, Phase.CONFIRM)


async def _concurrent(t: Trial, phase: Phase) -> None:
    replies = await t.at_once(phase, DUPLICATES)
    failures = [r for r in replies if r.reading is CallOutcome.FAILURE]
    if failures and len(failures) == len(replies) and phase is Phase.ACTION:
        t.fail(forward_advice(failures[0]))  # every one refused: the payload, not the race
        return
    for reply in failures:
        t.fail(not_done(reply, f"A duplicate {phase.value} must be answered as the first."))
    if not all(r.ok for r in replies):
        t.note(f"not every {phase.value} was done: the coordinator would send it again")
        again = await t.call(phase)
        if not again.ok:
            t.fail(not_done(again, REPEAT_FIX))
    await t.expect(
        f"after the {phase.value}s",
        held=False,
        applied=1,
        advice=f"{DUPLICATES} {phase.value}s at once took effect more than once: {CONCURRENT_FIX}",
        unseen=f"whether the {phase.value}s at once took effect once",
    )


async def confirm_after_slow_try(t: Trial) -> None:
    timeout_s = t.probe.target.timeout_s
    pending = t.start(Phase.TRY, timeout_s + LATE_TRY_LIMIT_S)
    done, _ = await asyncio.wait({pending}, timeout=timeout_s)
    if not done:
        await _try_too_slow(t, pending, timeout_s)
        return
    reply = t.record(pending.result())
    if not reply.ok:
        t.fail(forward_advice(reply))
        return
    # The coordinator confirms the moment the try's answer is in; so does this.
    confirm = await t.call(Phase.CONFIRM)
    if not confirm.ok:
        t.fail(not_done(confirm, "Once its try answered 2xx, a confirm must take effect."))
        return
    await t.expect(
        "after confirm",
        held=False,
        applied=1,
        advice=(
            "the confirm sent right behind the try's answer did not find the try's work:"
            " answer a try only once its work is committed"
        ),
    )
    if reply.result.latency_ms < timeout_s * 1000 / 2:
        t.not_observable(
            f"the try answered in {reply.result.latency_ms:.0f} ms, under half of --timeout"
            f" ({timeout_s:g}s): the tool cannot make a participant slow, so a slow try was not"
            " seen. Make its try slow (a payload it takes long over, or a short --timeout) and"
            " run this scenario again: --only confirm_after_slow_try"
        )


async def _try_too_slow(t: Trial, pending: asyncio.Task[Reply], timeout_s: float) -> None:
    """No answer in time: the coordinator counts the try failed and cancels it, while the
    try may still be running. The tool keeps the try's connection open to see it end."""
    t.note(
        f"the try did not answer within --timeout ({timeout_s:g}s): the coordinator would count"
        " it failed and cancel it; the try's connection is kept open to see when it ends"
    )
    cancel = await t.call(Phase.CANCEL)
    late = t.record(await pending)
    if not cancel.ok:
        t.note("the cancel was not done: the coordinator would send it again")
        cancel = await t.call(Phase.CANCEL)
    if not cancel.ok:
        t.fail(not_done(cancel, "A cancel must succeed, also once its late try has ended."))
        return
    if late.timed_out:
        t.not_observable(
            f"the try had still not answered {LATE_TRY_LIMIT_S:g}s after --timeout: what it"
            " leaves when it ends was not seen"
        )
        return
    t.note(f"the try ended {late.result.latency_ms:.0f} ms after it was sent, after its cancel")
    await t.expect(
        "once the late try ended",
        held=False,
        applied=0,
        advice=(
            "the try, still running when its cancel came, reserved after the cancel had"
            " answered, and no cancel will come again to release it: the try's barrier row and"
            " its change must commit in one database transaction (participants/barrier.py"
            " inside the handler's), so that a cancel arriving meanwhile waits for the try and"
            f" then releases what it holds. What it holds now is left: release it by hand (gid"
            f" {t.gid})"
        ),
        unseen="whether the try, ending after its cancel, left anything held",
    )


async def malformed_try(t: Trial) -> None:
    reply = await t.malformed(Phase.TRY)
    if reply.reading is TryVerdict.REFUSED:
        return
    status = reply.result.http_status
    if status is not None and 200 <= status < 300:
        t.fail(
            f"a try nobody could read was answered {status}, which the coordinator takes for"
            " a reservation and goes on to confirm: answer a 4xx (400, or 409, which both"
            " dialects read as a refusal) when the body or the query cannot be read"
        )
    else:
        t.fail(
            f"a try nobody could read was answered {reply.head}: answer a 4xx (the caller's"
            " mistake, a refusal), not a 5xx, which says the participant itself failed"
        )


async def error_bodies(t: Trial) -> None:
    if not t.earlier:
        t.not_observable("no replies to look at: run it with the other scenarios")
        return
    flagged = [(r, why) for r in t.earlier if _is_2xx(r) and (why := error_in(r)) is not None]
    for reply, why in flagged:
        t.note(f"{reply.describe()} ({why})")
        t.fail(
            f"a {reply.result.http_status} {reply.phase.value} reply reads as a failure"
            f" ({why}). In the v1 dialect the coordinator takes any 2xx for success whatever"
            " its body says; in dtm, FAILURE in a body is a failure whatever its status."
            " Answer a failure with its status code: 4xx when the business says no, 5xx"
            " when the participant could not do its work; keep 2xx bodies free of errors"
        )
    if not flagged:
        t.note(f"looked at {len(t.earlier)} replies of the scenarios above: none says it failed")


def _is_2xx(reply: Reply) -> bool:
    status = reply.result.http_status
    return status is not None and 200 <= status < 300


# --- sagas --------------------------------------------------------------------------


async def action_then_compensate(t: Trial) -> None:
    if not await t.forward():
        return
    await t.expect("after the action", applied=1, advice="the action must take effect, once")
    compensate = await t.call(Phase.COMPENSATE)
    if not compensate.ok:
        t.fail(not_done(compensate, "A compensation must undo its action and answer 2xx."))
        return
    await t.expect(
        "after compensate",
        applied=1,
        undone=1,
        advice="the compensation must undo the action, once",
    )


async def repeated_action(t: Trial) -> None:
    if not await t.forward():
        return
    again = await t.call(Phase.ACTION)
    if not again.ok:
        t.fail(not_done(again, REPEAT_FIX))
    await t.expect(
        "after both actions",
        applied=1,
        advice=f"the repeated action took effect again: {ONCE_FIX}",
        unseen="whether the repeated action took effect again",
    )


async def repeated_compensate(t: Trial) -> None:
    await _repeated(t, Phase.COMPENSATE)


async def compensate_without_action(t: Trial) -> None:
    await _undo_first(t, Phase.COMPENSATE, "action")


async def action_after_compensate(t: Trial) -> None:
    await _late_forward(t, Phase.COMPENSATE, Phase.ACTION)


async def concurrent_actions(t: Trial) -> None:
    await _concurrent(t, Phase.ACTION)  # the first action itself, sent several times at once


async def malformed_action(t: Trial) -> None:
    reply = await t.malformed(Phase.ACTION)
    if reply.reading is CallOutcome.FAILURE:
        return
    t.fail(
        f"an action nobody could read was answered {reply.head}, which the coordinator reads"
        f" as {reply.reading.value}: refuse it for good instead (409 is read so by both dialects;"
        " v1 takes any 4xx but 408, 425 and 429), so the saga compensates at once rather than"
        " counting the step done or retrying it in vain"
    )


ERROR_BODIES = Scenario(
    "error_bodies",
    "replies that say what they mean",
    "No 2xx reply of the scenarios above says it failed (an error field, ok or success"
    " false, a failing status word, FAILURE): the v1 dialect takes any 2xx for success, and"
    " the dtm dialect any FAILURE in a body for a failure.",
    error_bodies,
)

TCC = (
    Scenario(
        "try_then_confirm",
        "try then confirm",
        "The try answers 2xx and the confirm answers 2xx. Check URL: held after the try;"
        " applied once and nothing held after confirm.",
        try_then_confirm,
    ),
    Scenario(
        "try_then_cancel",
        "try then cancel",
        "The try answers 2xx and the cancel answers 2xx. Check URL: held after the try;"
        " after cancel nothing held or applied, given back once.",
        try_then_cancel,
    ),
    Scenario(
        "repeated_confirm",
        "repeated confirm (idempotence)",
        "Try, confirm, then the same confirm again (the coordinator repeats a call whose"
        " answer it did not hear): both answer 2xx, and the repeat changes nothing (check"
        " URL: applied once).",
        repeated_confirm,
    ),
    Scenario(
        "repeated_cancel",
        "repeated cancel (idempotence)",
        "Try, cancel, then the same cancel again: both answer 2xx, and the repeat changes"
        " nothing (check URL: nothing held, given back once).",
        repeated_cancel,
    ),
    Scenario(
        "cancel_without_try",
        "cancel with no try (empty compensation)",
        "A cancel for a try that never arrived (the coordinator cancels a branch whose try"
        " was lost, refused or timed out) answers 2xx (v1: 404 and 410 too) and changes"
        " nothing (check URL: nothing held, applied or given back).",
        cancel_without_try,
    ),
    Scenario(
        "try_after_cancel",
        "try after its cancel (suspension)",
        "The cancel comes first (2xx), then its try, late: the try must reserve nothing, since"
        " no cancel will come again to release it. Check URL: nothing held or applied;"
        " without it only the try's reply can say so (a 4xx).",
        try_after_cancel,
    ),
    Scenario(
        "concurrent_confirms",
        "concurrent duplicate confirms",
        f"Try, then {DUPLICATES} identical confirms at once (two coordinators, or a retry"
        " overtaking a slow first call): each answers 2xx or an error the coordinator"
        " retries, and then 2xx; the confirm takes effect once (check URL).",
        concurrent_confirms,
    ),
    Scenario(
        "confirm_after_slow_try",
        "confirm after a slow try",
        "The try is given up to --timeout; the confirm follows the moment it answers, as"
        " the coordinator's does, and must find the try's work done (2xx; check URL: applied"
        " once). A try with no answer in time is cancelled, and must then reserve nothing."
        " The tool cannot slow a participant down: a fast try leaves this not observable.",
        confirm_after_slow_try,
    ),
    Scenario(
        "malformed_try",
        "status codes: a call it cannot read",
        "A try whose body is no JSON and whose query names no gid is answered 4xx: a 2xx"
        " would be taken for a reservation, a 5xx says the participant itself failed.",
        malformed_try,
    ),
    ERROR_BODIES,
)

SAGA = (
    Scenario(
        "action_then_compensate",
        "action then compensate",
        "The action answers 2xx, then its compensation answers 2xx. Check URL: applied once"
        " after the action, undone once after the compensation.",
        action_then_compensate,
    ),
    Scenario(
        "repeated_action",
        "repeated action (idempotence)",
        "The same action twice (the coordinator repeats one whose answer it did not hear):"
        " both answer 2xx and the repeat changes nothing (check URL: applied once).",
        repeated_action,
    ),
    Scenario(
        "repeated_compensate",
        "repeated compensate (idempotence)",
        "The action, then its compensation twice: both answer 2xx and the repeat changes"
        " nothing (check URL: undone once).",
        repeated_compensate,
    ),
    Scenario(
        "compensate_without_action",
        "compensate with no action (empty compensation)",
        "A saga compensates every step that may have started, so a compensation may come for"
        " an action that never arrived: it answers 2xx (v1: 404 and 410 too) and changes"
        " nothing (check URL: nothing applied or undone).",
        compensate_without_action,
    ),
    Scenario(
        "action_after_compensate",
        "action after its compensate (suspension)",
        "The compensation comes first (2xx), then its action, late: the action must change"
        " nothing. Check URL: nothing applied; without it only the action's reply can say so"
        " (a 4xx).",
        action_after_compensate,
    ),
    Scenario(
        "concurrent_actions",
        "concurrent duplicate actions",
        f"{DUPLICATES} identical actions at once: each answers 2xx or an error the coordinator"
        " retries (not a failure for good, which would compensate a step that was done), and"
        " the action takes effect once (check URL).",
        concurrent_actions,
    ),
    Scenario(
        "malformed_action",
        "status codes: a call it cannot read",
        "An action whose body is no JSON and whose query names no gid is refused for good"
        " (v1: a 4xx but 408, 425 and 429; dtm: 409): a 2xx would count the step done, a 5xx"
        " is retried in vain.",
        malformed_action,
    ),
    ERROR_BODIES,
)

SCENARIOS = {TransactionKind.TCC: TCC, TransactionKind.SAGA: SAGA}


async def run_all(
    probe: Probe, scenarios: tuple[Scenario, ...], new_gid: Callable[[], str]
) -> list[Finding]:
    """Each scenario in turn, on a fresh gid; later ones may look at earlier replies."""
    findings: list[Finding] = []
    seen: list[Reply] = []
    for scenario in scenarios:
        trial = Trial(probe, new_gid(), list(seen))
        await scenario.play(trial)
        seen.extend(trial.replies)
        findings.append(trial.finding(scenario))
    return findings
