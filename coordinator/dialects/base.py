"""What a dialect is: how one protocol family calls participants and reads their replies,
which retry policy a transaction of it follows, and what of its options may be shown.

Dialects are pure (no I/O): they shape an OutboundCall and judge a CallResult; the engine
makes the call. Each module of this package that defines ``DIALECT`` is registered under its
``name`` (see coordinator.dialects.registry), so adding a dialect is adding a module here
(and its routes, if it brings an API of its own).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

from coordinator.core.records import Branch, CallResult, OutboundCall, Transaction
from coordinator.core.retry import RetryPolicy
from coordinator.core.states import Phase


class CallOutcome(StrEnum):
    """What a phase-two reply means for the branch."""

    DONE = "done"
    ONGOING = "ongoing"  # the participant is still working on it: retry at the normal interval
    RETRY = "retry"  # failed or no answer: retry with backoff
    # The participant says confirm/cancel failed. TCC's second phase must succeed in the
    # end, so it is retried with backoff like RETRY, but logged as an error.
    # A saga's action answering FAILURE fails for good: the saga compensates.
    FAILURE = "failure"
    # Not sent: the participant's circuit is open (or ramping up). The driver's, never a
    # reply's judgement: nothing is logged for it and no retry is counted.
    HELD = "held"


# Headers the coordinator sets on every participant call; no option may replace them.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "Host",
        "Content-Type",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Idempotency-Key",
        "X-TCC-Gid",
        "X-TCC-Branch",
        "X-TCC-Phase",
    )
)


def idempotency_key(gid: str, branch_id: str, phase: Phase) -> str:
    return f"{gid}:{branch_id}:{phase.value}"


def protocol_headers(gid: str, branch_id: str, phase: Phase) -> dict[str, str]:
    """Headers every participant call carries, in every dialect."""
    return {
        "Content-Type": "application/json",
        "X-TCC-Gid": gid,
        "X-TCC-Branch": branch_id,
        "X-TCC-Phase": phase.value,
        "Idempotency-Key": idempotency_key(gid, branch_id, phase),
    }


def branch_url(branch: Branch, phase: Phase) -> str:
    """A saga's action (a message's delivery) is kept as the branch's confirm URL, its
    compensation as the cancel URL."""
    if phase is Phase.TRY:
        assert branch.try_url is not None, "only branches with a try_url are tried"
        return branch.try_url
    return branch.confirm_url if phase in (Phase.CONFIRM, Phase.ACTION) else branch.cancel_url


class Dialect(Protocol):
    name: str

    def participant_call(self, txn: Transaction, branch: Branch, phase: Phase) -> OutboundCall:
        """The request that asks the branch's participant to run ``phase``."""
        ...

    def judge_phase_two(self, phase: Phase, result: CallResult) -> CallOutcome:
        """What a phase-two reply means (confirm or cancel; action, compensate)."""
        ...

    def query_call(self, txn: Transaction, url: str) -> OutboundCall:
        """The request that asks a prepared message's service whether it should go out."""
        ...

    def judge_query(self, result: CallResult) -> CallOutcome:
        """Its answer: DONE (deliver it), FAILURE (never), ONGOING or RETRY (ask later)."""
        ...

    def retry_policy(self, base: RetryPolicy, txn: Transaction) -> RetryPolicy:
        """The backoff of this transaction's phase two, from the server's and its options."""
        ...

    def shown_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The transaction's options as people may see them (secrets masked)."""
        ...
