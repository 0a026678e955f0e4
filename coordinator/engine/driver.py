"""Drives transactions through the protocol: tries, decisions and phase-two rounds.

The engine owns no state that matters after a crash: every decision and every
branch outcome is in the log before the next step, and phase-two work is done
under a lease so that only one coordinator works on a transaction at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog

from coordinator.core import states
from coordinator.core.errors import Conflict, DatabaseUnavailable
from coordinator.core.limits import RETRY_INTERVAL_OPTION
from coordinator.core.records import (
    Branch,
    Lease,
    NewBranch,
    NewTransaction,
    Transaction,
)
from coordinator.core.retry import RetryPolicy
from coordinator.core.states import Decision, GlobalStatus, Phase, TryReport, TryVerdict, Verdict
from coordinator.dialects import dtm as dtm_protocol
from coordinator.metrics import Metrics
from coordinator.outbound import CallResult, ParticipantCaller
from coordinator.settings import Settings
from coordinator.txlog.postgres import CallRecord, DecideResult, Store

log = structlog.get_logger(__name__)


def new_owner_id() -> str:
    """Names this coordinator process in leases; unique per start."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class CallOutcome(StrEnum):
    DONE = "done"
    ONGOING = "ongoing"  # the participant is still working on it: retry at the normal interval
    RETRY = "retry"  # failed or no answer: retry with backoff


_DTM_OUTCOME = {
    dtm_protocol.Reply.SUCCESS: CallOutcome.DONE,
    dtm_protocol.Reply.ONGOING: CallOutcome.ONGOING,
    dtm_protocol.Reply.FAILURE: CallOutcome.RETRY,
    dtm_protocol.Reply.ERROR: CallOutcome.RETRY,
}


@dataclass(frozen=True, slots=True)
class TryOutcome:
    report: TryReport  # the reply's verdict, or what the log holds if the branch moved on
    verdict: TryVerdict  # how the participant's reply itself was judged
    result: CallResult
    branch: Branch  # as the log holds it after the answer


def _record(result: CallResult) -> CallRecord:
    return CallRecord(result.http_status, result.error, result.latency_ms)


class Engine:
    def __init__(
        self,
        store: Store,
        caller: ParticipantCaller,
        settings: Settings,
        owner: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.caller = caller
        self.settings = settings
        self.policy = settings.retry_policy
        self.limits = settings.limits
        self.owner = owner or new_owner_id()
        self._rng = rng or random.Random()
        # Phase-two work running in this process, by gid: requests wait on it.
        self._drives: dict[str, asyncio.Task[Transaction | None]] = {}
        self.metrics = Metrics()

    # --- begin, register, try ------------------------------------------------------

    async def begin(self, new: NewTransaction) -> tuple[Transaction, bool]:
        self.limits.check_transaction(new)
        txn, created = await self.store.begin(new)
        if created:
            log.info("transaction_begun", gid=new.gid, timeout_s=new.timeout_s)
            self.metrics.count(
                "tcc_transactions_begun_total", "Transactions begun", dialect=new.dialect
            )
        return txn, created

    async def run_auto(self, txn: Transaction, branches: list[Branch]) -> Transaction:
        """Run every try in parallel, decide, and wait (bounded) for phase two."""
        outcomes = await asyncio.gather(
            *(self.try_branch(txn, b, cancel_on_failure=False) for b in branches)
        )
        decision = states.decision_after_tries(o.verdict for o in outcomes)
        failed = next(
            (
                b.branch_id
                for b, o in zip(branches, outcomes, strict=True)
                if o.verdict is not TryVerdict.TRIED
            ),
            None,
        )
        reason = f"try_failed: {failed}" if failed else None
        result = await self.decide(txn.gid, decision, reason=reason)
        if result.judgement.verdict is Verdict.REFUSE and decision is Decision.CONFIRM:
            # E.g. the deadline passed while the tries ran: cancel now, not at the next scan.
            refusal = result.judgement.reason
            why = "timeout" if refusal == states.DEADLINE_PASSED else f"confirm_refused: {refusal}"
            await self.decide(txn.gid, Decision.CANCEL, reason=why)
        return await self.wait_for(txn.gid)

    async def register(self, gid: str, new: NewBranch) -> tuple[Branch, bool]:
        self.limits.check_branch(new)
        branch, created = await self.store.register_branch(gid, new, self.settings.max_branches)
        if created:
            log.info("branch_registered", gid=gid, branch_id=new.branch_id)
        return branch, created

    async def try_branch(
        self, txn: Transaction, branch: Branch, *, cancel_on_failure: bool = True
    ) -> TryOutcome:
        """Call the branch's try and log the result; a failed try cancels the transaction."""
        assert branch.try_url is not None
        with structlog.contextvars.bound_contextvars(
            gid=txn.gid, branch_id=branch.branch_id, phase=Phase.TRY.value
        ):
            result = await self.caller.call(
                branch.try_url,
                gid=txn.gid,
                branch_id=branch.branch_id,
                phase=Phase.TRY,
                payload=branch.payload,
                timeout_s=self._call_timeout(txn),
            )
            verdict = states.judge_try(result.http_status)
            self._observe_call(Phase.TRY, verdict.value, result)
            updated, recorded = await self.store.record_try(
                txn.gid, branch.branch_id, verdict, _record(result)
            )
            log.info(
                "try_answered",
                verdict=verdict.value,
                http_status=result.http_status,
                latency_ms=result.latency_ms,
                error=result.error,
            )
            if verdict is not TryVerdict.TRIED and recorded and cancel_on_failure:
                await self.decide(
                    txn.gid, Decision.CANCEL, reason=f"try_failed: {branch.branch_id}"
                )
        report = (
            states.report_of(verdict)
            if recorded
            else states.recorded_try_report(updated.status, updated.last_http_status)
        )
        return TryOutcome(report, verdict, result, updated)

    async def retry_stale_try(self, txn: Transaction, branch: Branch) -> TryOutcome | None:
        """Run a try again if its first run never got an answer logged (e.g. the
        coordinator that made the call died); None when it is not stale."""
        stale_after_s = self._call_timeout(txn) + 1.0
        claimed = await self.store.claim_stale_try(txn.gid, branch.branch_id, stale_after_s)
        if claimed is None:
            return None
        log.info("try_rerun", gid=txn.gid, branch_id=branch.branch_id)
        return await self.try_branch(txn, claimed)

    def _call_timeout(self, txn: Transaction) -> float:
        return txn.call_timeout_s or self.settings.call_timeout_s

    # --- decisions -------------------------------------------------------------

    async def decide(self, gid: str, decision: Decision, *, reason: str | None) -> DecideResult:
        """Log the decision (durably), then start phase two in the background."""
        result = await self.store.decide(
            gid, decision, reason=reason, owner=self.owner, lease_ttl_s=self.settings.lease_ttl_s
        )
        if result.lease is not None:
            log.info("transaction_decided", gid=gid, decision=decision.value, reason=reason)
            self.metrics.count("tcc_decisions_total", "Decisions taken", decision=decision.value)
            self._spawn_drive(result.lease)
        return result

    async def set_options(
        self, gid: str, options: dict[str, Any], call_timeout_s: float | None
    ) -> None:
        """Protocol options given again when deciding (DTM's submit), within the limits."""
        self.limits.check_options(call_timeout_s, options)
        await self.store.set_options(gid, options, call_timeout_s)

    async def confirm(self, gid: str) -> Transaction:
        return await self._decide_and_wait(gid, Decision.CONFIRM, None)

    async def cancel(self, gid: str, reason: str = "client") -> Transaction:
        return await self._decide_and_wait(gid, Decision.CANCEL, reason)

    async def _decide_and_wait(
        self, gid: str, decision: Decision, reason: str | None
    ) -> Transaction:
        result = await self.decide(gid, decision, reason=reason)
        if result.judgement.verdict is Verdict.REFUSE:
            raise Conflict(result.judgement.reason or "refused")
        return await self.wait_for(gid)

    async def retry(self, gid: str, actor: str) -> Transaction:
        """Operator retry of a parked transaction; this process runs the first round."""
        txn, lease = await self.store.retry_parked(
            gid, actor=actor, owner=self.owner, lease_ttl_s=self.settings.lease_ttl_s
        )
        log.warning(
            "transaction_retried_by_operator", gid=gid, actor=actor, status=txn.status.value
        )
        if lease is not None:
            self._spawn_drive(lease)
        return await self.wait_for(gid)

    async def wait_for(self, gid: str, timeout_s: float | None = None) -> Transaction:
        """Wait (bounded) for phase-two work this process runs on ``gid``; the current state."""
        task = self._drives.get(gid)
        if task is not None:
            wait = self.settings.confirm_wait_s if timeout_s is None else timeout_s
            await asyncio.wait({task}, timeout=wait)
        return await self.store.get(gid)

    # --- phase two -------------------------------------------------------------------

    def _spawn_drive(self, lease: Lease) -> asyncio.Task[Transaction | None]:
        task = asyncio.create_task(self._drive(lease), name=f"drive:{lease.gid}")
        self._drives[lease.gid] = task

        def forget(done: asyncio.Task[Transaction | None]) -> None:
            if self._drives.get(lease.gid) is done:
                del self._drives[lease.gid]

        task.add_done_callback(forget)
        return task

    @property
    def active_drives(self) -> int:
        return len(self._drives)

    async def resume(
        self, lease: Lease, status: GlobalStatus
    ) -> asyncio.Task[Transaction | None] | None:
        """Continue a transaction claimed by recovery: time it out, or run its next round."""
        if status is GlobalStatus.TRYING:
            result = await self.decide(lease.gid, Decision.CANCEL, reason="timeout")
            if result.lease is None:
                # Someone decided it first; our claim is moot.
                await self.store.release_lease(lease)
                return None
            # The decision replaced our claim with a fresh lease and started the drive.
            return self._drives.get(lease.gid)
        return self._spawn_drive(lease)

    async def _drive(self, lease: Lease) -> Transaction | None:
        with structlog.contextvars.bound_contextvars(gid=lease.gid):
            try:
                return await self._run_round(lease)
            except DatabaseUnavailable as exc:
                # The lease expires by itself; the next scan after the outage continues.
                log.warning("round_interrupted", error=str(exc))
                return None
            except asyncio.CancelledError:
                # Shutting down: hand the transaction to the other coordinators at once.
                with contextlib.suppress(DatabaseUnavailable):
                    await asyncio.shield(self.store.release_lease(lease))
                log.info("lease_released_on_shutdown")
                raise
            except Exception:
                # A bug or an unstorable value: still count the round and back off, so the
                # transaction is retried later and parked once its budget is spent.
                log.exception("round_crashed")
                with contextlib.suppress(Exception):
                    return await self._end_crashed_round(lease)
                return None

    async def _end_crashed_round(self, lease: Lease) -> Transaction | None:
        ctx = await self.store.round_context(lease, self.policy.give_up_after)
        decision = states.decision_of(ctx.transaction.status) if ctx else None
        if ctx is None or decision is None:
            await self.store.release_lease(lease)
            return None
        outcome = states.round_outcome(decision, all_done=False, budget_spent=ctx.budget_spent)
        delay = self.policy.delay(ctx.transaction.phase_attempts + 1, self._rng)
        pending = states.branches_to_call(decision, [b.view for b in ctx.branches])
        return await self.store.finish_round(lease, decision, outcome, delay, pending, self.owner)

    async def _run_round(self, lease: Lease) -> Transaction | None:
        ctx = await self.store.round_context(lease, self.policy.give_up_after)
        if ctx is None:
            log.info("lease_lost_before_round")
            return None
        txn = ctx.transaction
        decision = states.decision_of(txn.status)
        if decision is None or txn.status not in states.PHASE_TWO_STATUSES:
            await self.store.release_lease(lease)
            return txn
        to_call = set(states.branches_to_call(decision, [b.view for b in ctx.branches]))
        pending = [b for b in ctx.branches if b.branch_id in to_call]
        timeout_s = self._call_timeout(txn)
        async with self._renewing(lease):
            # _phase_call never raises, so every call has ended before the lease is let go.
            replies = await asyncio.gather(
                *(self._phase_call(lease, txn, decision, b, timeout_s) for b in pending)
            )
        still_pending = [
            b.branch_id for b, r in zip(pending, replies, strict=True) if r is not CallOutcome.DONE
        ]
        outcome = states.round_outcome(decision, not still_pending, ctx.budget_spent)
        policy = self._policy_for(txn)
        if still_pending and all(
            r is CallOutcome.ONGOING for r in replies if r is not CallOutcome.DONE
        ):
            # "Still working on it" is no failure: come back at the normal interval.
            delay = policy.initial_interval
        else:
            delay = policy.delay(txn.phase_attempts + 1, self._rng)
        finished = await self.store.finish_round(
            lease, decision, outcome, delay, still_pending, self.owner
        )
        if finished is None:
            log.warning("lease_lost_during_round")
            return None
        if outcome is not states.phase_status(decision):
            self.metrics.count(
                "tcc_transactions_ended_total",
                "Transactions that finished or were parked",
                status=outcome.value,
            )
        if outcome in states.PARKED_STATUSES:
            log.error(
                "transaction_parked",
                status=outcome.value,
                pending=still_pending,
                rounds=finished.phase_attempts,
            )
        elif outcome in states.FINAL_STATUSES:
            log.info("transaction_finished", status=outcome.value, rounds=finished.phase_attempts)
        else:
            log.info(
                "round_retry_scheduled",
                pending=still_pending,
                retry_in_s=round(delay, 3),
                round=finished.phase_attempts,
            )
        return finished

    def _observe_call(self, phase: Phase, outcome: str, result: CallResult) -> None:
        self.metrics.count(
            "tcc_participant_calls_total",
            "Calls to participants",
            phase=phase.value,
            outcome=outcome,
        )
        self.metrics.observe(
            "tcc_participant_call_seconds",
            "Participant call latency",
            result.latency_ms / 1000,
            phase=phase.value,
        )

    def _policy_for(self, txn: Transaction) -> RetryPolicy:
        """The retry policy, with a transaction's own retry_interval (DTM option) as base."""
        interval = txn.options.get(RETRY_INTERVAL_OPTION)
        if isinstance(interval, int | float) and interval > 0:
            # Bounded at begin; bounded here too, for rows logged before the bound existed.
            base = min(float(interval), self.limits.max_retry_interval_s)
            return dataclasses.replace(
                self.policy,
                initial_interval=base,
                maximum_interval=max(self.policy.maximum_interval, base),
            )
        return self.policy

    async def _call_phase_two(
        self, txn: Transaction, branch: Branch, phase: Phase, timeout_s: float
    ) -> tuple[CallResult, CallOutcome]:
        """One confirm/cancel call in the transaction's dialect, and what its reply means."""
        url = branch.confirm_url if phase is Phase.CONFIRM else branch.cancel_url
        if txn.dialect == "dtm":
            result = await self.caller.call_dtm(
                url,
                gid=txn.gid,
                branch_id=branch.branch_id,
                phase=phase,
                data=branch.data,
                extra_headers=dtm_protocol.branch_headers(txn.options),
                timeout_s=timeout_s,
            )
            reply = dtm_protocol.judge_reply(result.http_status, result.text)
            if reply is dtm_protocol.Reply.FAILURE:
                # TCC confirm and cancel must succeed in the end: say so loudly, and retry.
                log.error("participant_answered_failure", http_status=result.http_status)
            return result, _DTM_OUTCOME[reply]
        result = await self.caller.call(
            url,
            gid=txn.gid,
            branch_id=branch.branch_id,
            phase=phase,
            payload=branch.payload,
            timeout_s=timeout_s,
        )
        done = states.judge_phase_two(phase, result.http_status)
        return result, CallOutcome.DONE if done else CallOutcome.RETRY

    async def _phase_call(
        self,
        lease: Lease,
        txn: Transaction,
        decision: Decision,
        branch: Branch,
        timeout_s: float,
    ) -> CallOutcome:
        phase = states.phase_of(decision)
        with structlog.contextvars.bound_contextvars(branch_id=branch.branch_id, phase=phase.value):
            result, outcome = await self._call_phase_two(txn, branch, phase, timeout_s)
            done = outcome is CallOutcome.DONE
            self._observe_call(phase, outcome.value, result)
            try:
                recorded = await self.store.record_phase_call(
                    lease, branch.branch_id, decision, done, _record(result)
                )
            except Exception as exc:  # the round ends when every call has; this one failed
                log.warning("phase_call_not_recorded", error=str(exc))
                return CallOutcome.RETRY
            if done:
                log.info(
                    f"branch_{states.branch_done_status(decision).value}",
                    http_status=result.http_status,
                    latency_ms=result.latency_ms,
                )
            else:
                log.warning(
                    "phase_call_failed",
                    http_status=result.http_status,
                    error=result.error,
                    latency_ms=result.latency_ms,
                    ongoing=outcome is CallOutcome.ONGOING,
                )
        return outcome if recorded else CallOutcome.RETRY

    @contextlib.asynccontextmanager
    async def _renewing(self, lease: Lease) -> AsyncIterator[None]:
        """Keep the lease alive while calls are in flight."""
        ttl = self.settings.lease_ttl_s

        async def renew() -> None:
            while True:
                await asyncio.sleep(ttl / 3)
                try:
                    if not await self.store.renew_lease(lease, ttl):
                        log.warning("lease_taken_over", gid=lease.gid)
                        return
                except DatabaseUnavailable:
                    continue

        renewer = asyncio.create_task(renew(), name=f"renew:{lease.gid}")
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def shutdown(self, grace_s: float) -> None:
        """Let in-flight rounds finish within the grace period, then stop them.

        A round cut short releases its lease (see _drive), so another coordinator
        continues at once; its outcomes so far are logged.
        """
        tasks = list(self._drives.values())
        if not tasks:
            return
        _, still_running = await asyncio.wait(tasks, timeout=grace_s)
        for task in still_running:
            task.cancel()
        if still_running:
            await asyncio.wait(still_running)
