"""The coordinator's own protocol (/v1): JSON {gid, branch_id, phase, payload} POSTed to the
branch's URL; 2xx is done, and for cancel or compensate 404/410 too (nothing to undo). A
saga's action refused with a 4xx (but 408, 425 and 429) fails for good, 425 is "still
working on it"; a prepared message's query_url is asked with GET ?gid=: 2xx delivers it,
409 aborts it, anything else asks again later."""

from __future__ import annotations

import json
from typing import Any

from coordinator.core.records import Branch, CallResult, OutboundCall, Transaction
from coordinator.core.retry import RetryPolicy
from coordinator.core.states import Phase, TryVerdict, judge_phase_two, judge_try
from coordinator.dialects.base import CallOutcome, branch_url, protocol_headers

_TOO_EARLY = 425  # the participant is still working on it: ask again at the normal interval
# 4xx answers that say "not now" rather than "no": an action answering them is retried.
_NOT_A_REFUSAL = frozenset({408, 425, 429})


class TccDialect:
    name = "tcc"

    def participant_call(self, txn: Transaction, branch: Branch, phase: Phase) -> OutboundCall:
        body = {
            "gid": txn.gid,
            "branch_id": branch.branch_id,
            "phase": phase.value,
            "payload": branch.payload,
        }
        return OutboundCall(
            "POST",
            branch_url(branch, phase),
            protocol_headers(txn.gid, branch.branch_id, phase),
            body=json.dumps(body).encode(),
        )

    def judge_phase_two(self, phase: Phase, result: CallResult) -> CallOutcome:
        if judge_phase_two(phase, result.http_status):
            return CallOutcome.DONE
        status = result.http_status
        if status == _TOO_EARLY:
            return CallOutcome.ONGOING
        if phase is Phase.ACTION and status is not None and judge_try(status) is TryVerdict.REFUSED:
            return CallOutcome.RETRY if status in _NOT_A_REFUSAL else CallOutcome.FAILURE
        return CallOutcome.RETRY

    def query_call(self, txn: Transaction, url: str) -> OutboundCall:
        return OutboundCall("GET", url, {"X-TCC-Gid": txn.gid}, params={"gid": txn.gid})

    def judge_query(self, result: CallResult) -> CallOutcome:
        status = result.http_status
        if status is not None and 200 <= status < 300:
            return CallOutcome.DONE
        if status == 409:
            return CallOutcome.FAILURE
        return CallOutcome.ONGOING if status == _TOO_EARLY else CallOutcome.RETRY

    def retry_policy(self, base: RetryPolicy, txn: Transaction) -> RetryPolicy:
        return base

    def shown_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return options


DIALECT = TccDialect()
