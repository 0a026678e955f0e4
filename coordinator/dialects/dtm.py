"""DTM's HTTP protocol for TCC, as pure data and functions (no I/O).

The coordinator keeps one log and one state machine; this dialect only translates: how a
DTM-style participant is called and read, DTM's per-transaction options, and our records
in DTM's words (statuses, the shape of `query` and `all`).
"""

from __future__ import annotations

import base64
import dataclasses
from datetime import datetime
from enum import StrEnum
from typing import Any

from coordinator.core.limits import RETRY_INTERVAL_OPTION
from coordinator.core.records import Branch, CallResult, Event, OutboundCall, Transaction
from coordinator.core.retry import RetryPolicy
from coordinator.core.states import BranchStatus, EventKind, GlobalStatus, Phase, TransactionKind
from coordinator.dialects.base import (
    RESERVED_HEADERS,
    CallOutcome,
    branch_url,
    protocol_headers,
)

SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
ONGOING = "ONGOING"

BRANCH_HEADERS_OPTION = "branch_headers"

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


def dtm_status(status: GlobalStatus) -> str:
    return DTM_STATUS[status]


def our_statuses(word: str) -> tuple[GlobalStatus, ...]:
    """The statuses a DTM status filter stands for; empty for an unknown word."""
    return tuple(s for s, dtm_word in DTM_STATUS.items() if dtm_word == word)


# The rows DTM shows per branch, one per operation, in DTM's order.
_OPS: dict[TransactionKind, tuple[Phase, ...]] = {
    TransactionKind.TCC: (Phase.CANCEL, Phase.CONFIRM),
    TransactionKind.SAGA: (Phase.COMPENSATE, Phase.ACTION),
    TransactionKind.MSG: (Phase.ACTION,),
}


def branch_op_status(branch: BranchStatus, op: Phase, action: str | None = None) -> str:
    """DTM shows one row per branch and operation: the op that ran is 'succeed', a saga's
    action that failed for good 'failed'. ``action``: how a compensated step's action had
    answered ('succeed' or 'failed'; None when it never answered for good)."""
    if op is Phase.ACTION and branch is BranchStatus.TRY_FAILED:
        return "failed"
    if op is Phase.ACTION and branch is BranchStatus.CANCELLED and action is not None:
        return action
    forward = op in (Phase.CONFIRM, Phase.ACTION)
    done = BranchStatus.CONFIRMED if forward else BranchStatus.CANCELLED
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


_OUTCOME = {
    Reply.SUCCESS: CallOutcome.DONE,
    Reply.ONGOING: CallOutcome.ONGOING,
    Reply.FAILURE: CallOutcome.FAILURE,
    Reply.ERROR: CallOutcome.RETRY,
}


def branch_headers(options: dict[str, Any]) -> dict[str, str]:
    headers = options.get(BRANCH_HEADERS_OPTION) or {}
    return {str(k): str(v) for k, v in headers.items() if str(k).lower() not in RESERVED_HEADERS}


def redacted(options: dict[str, Any]) -> dict[str, Any]:
    """Options as shown to people: header values may be credentials, so only names show."""
    headers = options.get(BRANCH_HEADERS_OPTION)
    if not headers:
        return options
    return {**options, BRANCH_HEADERS_OPTION: dict.fromkeys(headers, "***")}


# A retry interval a transaction may carry at most, whatever a row from before the limit
# existed says: beyond it, retry times would leave the range of a timestamp.
_LONGEST_RETRY_INTERVAL_S = 86400.0


class DtmDialect:
    name = "dtm"

    def participant_call(self, txn: Transaction, branch: Branch, phase: Phase) -> OutboundCall:
        """The branch's data string as the body (a GET when there is none), with gid,
        trans_type, branch_id and op as query parameters, and the branch_headers option."""
        params = {"gid": txn.gid, "trans_type": txn.kind.value, "branch_id": branch.branch_id}
        params["op"] = phase.value
        headers = {
            **branch_headers(txn.options),
            **protocol_headers(txn.gid, branch.branch_id, phase),
        }
        # DTM GETs only a TCC branch without data; a saga's or message's steps are POSTed.
        post = bool(branch.data) or txn.kind is not TransactionKind.TCC
        return OutboundCall(
            "POST" if post else "GET",
            branch_url(branch, phase),
            headers,
            body=branch.data.encode() if branch.data else None,
            params=params,
        )

    def judge_phase_two(self, phase: Phase, result: CallResult) -> CallOutcome:
        return _OUTCOME[judge_reply(result.http_status, result.text)]

    def query_call(self, txn: Transaction, url: str) -> OutboundCall:
        """DTM's query_prepared: a GET with gid, trans_type, branch_id 00 and op msg."""
        params = {"gid": txn.gid, "trans_type": txn.kind.value, "branch_id": "00", "op": "msg"}
        headers = {**branch_headers(txn.options), "X-TCC-Gid": txn.gid}
        return OutboundCall("GET", url, headers, params=params)

    def judge_query(self, result: CallResult) -> CallOutcome:
        return _OUTCOME[judge_reply(result.http_status, result.text)]

    def retry_policy(self, base: RetryPolicy, txn: Transaction) -> RetryPolicy:
        """The transaction's retry_interval, when set, is the base of its backoff."""
        interval = txn.options.get(RETRY_INTERVAL_OPTION)
        if not isinstance(interval, int | float) or interval <= 0:
            return base
        interval = min(float(interval), _LONGEST_RETRY_INTERVAL_S)
        return dataclasses.replace(
            base,
            initial_interval=interval,
            maximum_interval=max(base.maximum_interval, interval),
        )

    def shown_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return redacted(options)


DIALECT = DtmDialect()


# --- our records in DTM's words (query and all) --------------------------------------


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def render_transaction(t: Transaction) -> dict[str, Any]:
    return {
        "gid": t.gid,
        "trans_type": t.kind.value,
        "status": dtm_status(t.status),
        "protocol": "http",
        "create_time": _time(t.created_at),
        "update_time": _time(t.updated_at),
        "finish_time": _time(t.finished_at) if t.status is GlobalStatus.CONFIRMED else None,
        "rollback_time": _time(t.finished_at) if t.status is GlobalStatus.CANCELLED else None,
        "rollback_reason": t.cancel_reason or "",
        "next_cron_time": _time(t.next_attempt_at),
        "timeout_to_fail": t.timeout_s,
        "request_timeout": t.call_timeout_s or 0,
        "retry_interval": t.options.get(RETRY_INTERVAL_OPTION, 0),
        "branch_headers": redacted(t.options).get(BRANCH_HEADERS_OPTION) or {},
        "dialect": t.dialect,  # ours: 'dtm' when it came in through this API
    }


def action_outcomes(events: list[Event]) -> dict[str, str]:
    """A saga's steps whose action answered for good, from its timeline: branch id ->
    'succeed' or 'failed' (a compensated step keeps only 'cancelled' as its status)."""
    outcomes = {}
    for e in events:
        if e.kind is EventKind.ACTION_CALL and e.branch_id is not None:
            if e.detail.get("done"):
                outcomes[e.branch_id] = "succeed"
            elif e.detail.get("failed"):
                outcomes[e.branch_id] = "failed"
    return outcomes


def render_branches(
    branches: list[Branch],
    kind: TransactionKind = TransactionKind.TCC,
    actions: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    rows = []
    for b in branches:
        for op in _OPS[kind]:
            status = branch_op_status(b.status, op, (actions or {}).get(b.branch_id))
            rows.append(
                {
                    "gid": b.gid,
                    "branch_id": b.branch_id,
                    "op": op.value,
                    "url": branch_url(b, op),
                    "bin_data": base64.b64encode((b.data or "").encode()).decode(),
                    "status": status,
                    "create_time": _time(b.created_at),
                    "update_time": _time(b.updated_at),
                    "finish_time": _time(b.updated_at) if status == "succeed" else None,
                }
            )
    return rows
