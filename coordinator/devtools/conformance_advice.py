"""What to fix: the advice `tcc conformance` gives with a failure, and how it tells a 2xx
reply that reads as a failure. Each says what the coordinator makes of the reply, then what
the participant should do instead."""

from __future__ import annotations

from coordinator.core.states import Phase, TryVerdict
from coordinator.devtools.conformance_probe import Reply
from coordinator.dialects.base import CallOutcome
from coordinator.dialects.dtm import FAILURE


def forward_advice(reply: Reply) -> str:
    """Why a try (an action) the scenario needed did not succeed, and what to do."""
    if reply.phase is Phase.TRY:
        if reply.reading is TryVerdict.REFUSED:
            return (
                f"the try was refused ({reply.head}): this scenario needs a try that succeeds;"
                " give a --payload the participant accepts (every scenario sends it)"
            )
        return (
            f"the try failed ({reply.head}): answer a try 2xx once it has reserved and 4xx"
            " when the business says no; a 5xx or no answer is a failure, and the coordinator"
            " cancels the transaction"
        )
    if reply.reading is CallOutcome.FAILURE:
        return (
            f"the action failed for good ({reply.head}): this scenario needs an action that"
            " succeeds; give a --payload the participant accepts (every scenario sends it)"
        )
    return (
        f"the action answered {reply.head}, which the coordinator retries: answer 2xx once the"
        " step is done"
    )


_CONSEQUENCE = {
    CallOutcome.RETRY: (
        "it sends the {phase} again with backoff until it gets a 2xx, and parks the"
        " transaction for an operator when TCC_GIVE_UP_AFTER_S runs out"
    ),
    CallOutcome.ONGOING: "it asks again later, as for a participant still at work",
    CallOutcome.FAILURE: (
        "a {phase} cannot fail for good, so it is retried like an error until it succeeds"
    ),
}


def not_done(reply: Reply, fix: str) -> str:
    """A phase-two call that did not end its phase: what the coordinator makes of it, and
    ``fix``."""
    outcome = CallOutcome(reply.reading)
    consequence = _CONSEQUENCE.get(outcome, "").format(phase=reply.phase.value)
    if reply.phase is Phase.ACTION and outcome is CallOutcome.FAILURE:
        consequence = "the step failed for good, and the saga compensates"
    return (
        f"{reply.phase.value} answered {reply.head}, which the coordinator reads as"
        f" {outcome.value}: {consequence}. {fix}"
    )


def error_in(reply: Reply) -> str | None:
    """Why a 2xx reply reads as a failure, if it does: an error field, a false ok or
    success, a failing status word, or DTM's FAILURE anywhere in it."""
    body, text = reply.result.body, reply.result.text
    if isinstance(body, dict):
        for key in ("error", "errors"):
            if body.get(key):
                return f"its body has {key!r}"
        for key in ("ok", "success"):
            if body.get(key) is False:
                return f"its body says {key}: false"
        for key in ("status", "result"):
            word = body.get(key)
            if isinstance(word, str) and word.lower() in {"error", "fail", "failed", "failure"}:
                return f"its body says {key}: {word}"
    if FAILURE in text:
        return f"its body says {FAILURE}, DTM's word for a failure"
    return None


REPEAT_FIX = (
    "Answer a repeat as the first call was answered (2xx) and change nothing: the coordinator"
    " repeats a call whenever it did not hear the answer (a lost reply, a timeout, a restart)."
)
ONCE_FIX = (
    "keep (gid, branch_id, phase) in the same database transaction as the change and do"
    " nothing when it is there already (participants/barrier.py does this)"
)
CONCURRENT_FIX = (
    "duplicates that arrive together must serialise on one key: insert (gid, branch_id,"
    " phase) under a unique key in the transaction that makes the change, so the second waits"
    " for the first and then finds its row (participants/barrier.py)"
)


def suspension_fix(forward: str, undo: str, gid: str) -> str:
    article = "an" if forward[0] in "aeiou" else "a"
    return (
        f"{article} {forward} that arrives after its {undo} must change nothing, since no"
        f" {undo} will come again to undo it: have {undo} record that it ran for (gid,"
        f" branch_id) even when there was no {forward}, and have {forward} do nothing when it"
        f" finds that record (participants/barrier.py: the {undo} writes the {forward}'s row)."
        f" What this one did is left in place: undo it by hand (gid {gid})"
    )
