"""DTM's HTTP protocol for TCC, as pure data and functions (no I/O).

The coordinator keeps one log and one state machine; this module only translates:
our statuses to DTM's words, DTM's request options to ours, and DTM-style
participant replies to verdicts.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from coordinator.core.states import BranchStatus, GlobalStatus

SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
ONGOING = "ONGOING"

# Our status -> DTM's. Parked transactions are still unfinished to a DTM client
# (DTM itself would keep retrying them), so they keep their phase's word.
DTM_STATUS: dict[GlobalStatus, str] = {
    GlobalStatus.TRYING: "prepared",
    GlobalStatus.CONFIRMING: "submitted",
    GlobalStatus.FAILED_TO_CONFIRM: "submitted",
    GlobalStatus.CONFIRMED: "succeed",
    GlobalStatus.CANCELLING: "aborting",
    GlobalStatus.FAILED_TO_CANCEL: "aborting",
    GlobalStatus.CANCELLED: "failed",
}


def our_statuses(dtm_status: str) -> tuple[GlobalStatus, ...]:
    """The statuses a DTM status filter stands for; empty for an unknown word."""
    return tuple(s for s, word in DTM_STATUS.items() if word == dtm_status)


def branch_op_status(branch: BranchStatus, op: str) -> str:
    """DTM shows one row per branch and operation: the op that ran is 'succeed'."""
    done = {"confirm": BranchStatus.CONFIRMED, "cancel": BranchStatus.CANCELLED}[op]
    return "succeed" if branch is done else "prepared"


class Reply(StrEnum):
    SUCCESS = "success"
    ONGOING = "ongoing"  # retry later at the normal interval, without backing off
    FAILURE = "failure"  # the participant says it failed; confirm/cancel must still succeed
    ERROR = "error"  # anything else: retry with backoff


def judge_reply(http_status: int | None, text: str) -> Reply:
    """How DTM reads a participant's answer: by status code, and by the words in the body."""
    if http_status is None:
        return Reply.ERROR
    if http_status == 425 or ONGOING in text:
        return Reply.ONGOING
    if http_status == 409 or FAILURE in text:
        return Reply.FAILURE
    if http_status == 200:
        return Reply.SUCCESS
    return Reply.ERROR


# Headers a branch_headers option may not set: they belong to the call itself.
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


def branch_headers(options: dict[str, Any]) -> dict[str, str]:
    headers = options.get("branch_headers") or {}
    return {str(k): str(v) for k, v in headers.items() if str(k).lower() not in RESERVED_HEADERS}


def redacted(options: dict[str, Any]) -> dict[str, Any]:
    """Options as shown to people: header values may be credentials, so only names show."""
    headers = options.get("branch_headers")
    if not headers:
        return options
    return {**options, "branch_headers": dict.fromkeys(headers, "***")}
