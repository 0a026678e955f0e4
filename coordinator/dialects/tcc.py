"""The coordinator's own protocol (/v1): JSON {gid, branch_id, phase, payload} POSTed to the
branch's URL; 2xx is done, and for cancel 404/410 too (nothing to compensate)."""

from __future__ import annotations

import json
from typing import Any

from coordinator.core.records import Branch, CallResult, OutboundCall, Transaction
from coordinator.core.retry import RetryPolicy
from coordinator.core.states import Phase, judge_phase_two
from coordinator.dialects.base import CallOutcome, branch_url, protocol_headers


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
        done = judge_phase_two(phase, result.http_status)
        return CallOutcome.DONE if done else CallOutcome.RETRY

    def retry_policy(self, base: RetryPolicy, txn: Transaction) -> RetryPolicy:
        return base

    def shown_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return options


DIALECT = TccDialect()
