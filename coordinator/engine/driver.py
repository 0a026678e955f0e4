"""Drives transactions through the protocol: participant calls, decisions, phase-two rounds.

The driver owns no state that matters after a crash: every decision and every branch outcome
is in the log before the next step, and phase-two work is done under a lease so that only one
coordinator works on a transaction at a time. How a participant is called and its reply read
is the transaction's dialect's business; the driver only makes the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from coordinator import tracing
from coordinator.core import kinds, states, writes
from coordinator.core.breaker import Verdict
from coordinator.core.errors import DatabaseUnavailable
from coordinator.core.records import (
    Branch,
    CallResult,
    DecideResult,
    Lease,
    OptionsUpdate,
    OutboundCall,
    RoundContext,
    Transaction,
    TryRecord,
    Written,
)
from coordinator.core.retry import RetryPolicy
from coordinator.core.states import (
    BranchStatus,
    Decision,
    GlobalStatus,
    Phase,
    TransactionKind,
    TryReport,
    TryVerdict,
)
from coordinator.dialects.base import CallOutcome
from coordinator.dialects.registry import dialect
from coordinator.engine.participants import Participants
from coordinator.metrics import Metrics
from coordinator.outbound import ParticipantCaller
from coordinator.settings import Settings
from coordinator.txlog.interface import TransactionLog

log = structlog.get_logger(__name__)

# A round whose calls all answer within this time is logged in one write when it ends;
# otherwise each answer is logged as it comes (see _run_round).
BATCH_WINDOW_S = 0.2

# While a request waits for phase two to end in later rounds, it looks at the log this
# often (doubling, up to the most).
SETTLE_POLL_FIRST_S = 0.05
SETTLE_POLL_MAX_S = 0.5

# What a phase-two round ends with: what its last write left when it ended the phase with
# every call done (Written), the transaction after any other round, None if it stopped.
RoundEnd = Written | Transaction | None


def trace_of(txn: Transaction) -> tracing.StoredTrace | None:
    return tracing.stored_of(txn.traceparent, txn.tracestate)


def new_owner_id() -> str:
    """Names this coordinator process in leases; unique per start."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class _Held:
    """A call a breaker held: whose, when it may go, why."""

    participant: str | None
    retry_in_s: float
    reason: str | None


@dataclass(frozen=True, slots=True)
class TryOutcome:
    report: TryReport  # the reply's verdict, or what the log holds if the branch moved on
    verdict: TryVerdict  # how the participant's reply itself was judged
    result: CallResult
    branch: Branch  # as the log holds it after the answer


class PhaseDriver:
    def __init__(
        self,
        txlog: TransactionLog,
        caller: ParticipantCaller,
        settings: Settings,
        metrics: Metrics,
        participants: Participants,
        rng: random.Random | None = None,
    ) -> None:
        self.log = txlog
        self.caller = caller
        self.settings = settings
        self.metrics = metrics
        self.participants = participants
        self.owner = participants.owner
        self._rng = rng or random.Random()
        # Phase-two work running in this process, by gid: requests wait on it.
        self._drives: dict[str, asyncio.Task[RoundEnd]] = {}

    # --- tries ---------------------------------------------------------------------

    async def call_try(self, txn: Transaction, branch: Branch) -> tuple[TryVerdict, CallResult]:
        """Call the branch's try; its answer, not yet logged."""
        with tracing.span(
            "tcc.try", stored=trace_of(txn), gid=txn.gid, branch=branch.branch_id
        ) as try_span:
            call = dialect(txn.dialect).participant_call(txn, branch, Phase.TRY)
            result = await self._send(txn, branch, Phase.TRY, call)
            # A try its participant's breaker held fails at once: nothing was reserved.
            verdict = states.judge_try(result.http_status)
            tracing.annotate(try_span, verdict=verdict.value)
            if verdict is not TryVerdict.TRIED:
                tracing.mark_failed(try_span, f"try {verdict.value}")
        self._observe_call(branch, Phase.TRY, verdict.value, result)
        log.info(
            "try_answered",
            gid=txn.gid,
            branch_id=branch.branch_id,
            verdict=verdict.value,
            http_status=result.http_status,
            latency_ms=result.latency_ms,
            error=result.error,
        )
        return verdict, result

    async def run_try(self, txn: Transaction, branch: Branch) -> TryOutcome:
        """Call the branch's try and log the result."""
        verdict, result = await self.call_try(txn, branch)
        updated, recorded = await self.log.record_try(
            txn.gid, branch.branch_id, verdict, result.record
        )
        report = (
            states.report_of(verdict)
            if recorded
            else states.recorded_try_report(updated.status, updated.last_http_status)
        )
        return TryOutcome(report, verdict, result, updated)

    def call_timeout(self, txn: Transaction, branch: Branch | None = None) -> float:
        """The transaction's call timeout, else its participant's as registered, else the
        server's."""
        registered = (
            self.participants.get(branch.participant) if branch and branch.participant else None
        )
        return (
            txn.call_timeout_s
            or (registered.call_timeout_s if registered else None)
            or self.settings.call_timeout_s
        )

    async def _send(
        self, txn: Transaction, branch: Branch, phase: Phase, call: OutboundCall
    ) -> CallResult:
        """One participant call, in a span of its own whose context the call carries
        (W3C traceparent): the participant's work joins the transaction's trace. Unless
        the participant's circuit breaker holds it: then nothing is sent, and the result
        says so (``held_for_s``)."""
        admission = await self.participants.admit(branch.participant, phase)
        if admission.verdict is Verdict.HOLD:
            return CallResult(
                None, None, f"not sent: {admission.reason}", 0.0, held_for_s=admission.retry_in_s
            )
        with tracing.span(
            f"tcc.call.{phase.value}",
            kind=tracing.SpanKind.CLIENT,
            gid=txn.gid,
            branch=branch.branch_id,
            phase=phase.value,
        ) as call_span:
            registered = self.participants.get(branch.participant) if branch.participant else None
            traced = dataclasses.replace(
                call,
                headers={**call.headers, **tracing.outgoing_headers()},
                tls_profile=registered.tls_profile if registered else None,
            )
            result = await self.caller.send(traced, self.call_timeout(txn, branch))
            tracing.annotate(call_span, http_status=result.http_status)
            if result.tls_failure is not None:
                self.metrics.tls_failed(branch.participant, result.tls_failure)
            if result.error is not None:
                tracing.mark_failed(call_span, result.error)
        await self.participants.report(branch.participant, phase, result, admission)
        return result

    # --- decisions -------------------------------------------------------------------

    async def decide(
        self,
        gid: str,
        decision: Decision,
        *,
        reason: str | None,
        options: OptionsUpdate | None = None,
        actor: str | None = None,
        kind: TransactionKind = TransactionKind.TCC,
    ) -> DecideResult:
        """Log the decision (durably), then start phase two in the background. ``kind``:
        whose guard applies (a message may be submitted past its deadline)."""
        started_ns = time.time_ns()
        result = await self.log.decide(
            gid,
            decision,
            reason=reason,
            owner=self.owner,
            lease_ttl_s=self.settings.lease_ttl_s,
            options=options,
            actor=actor,
            kind=kind,
        )
        # The span is opened once the transaction (and so its trace) is known, back-dated
        # to when the decision was asked for.
        with tracing.span(
            "tcc.decide",
            stored=trace_of(result.transaction),
            start_time_ns=started_ns,
            gid=gid,
            decision=decision.value,
            reason=reason,
            taken=result.lease is not None,
            status=result.transaction.status.value,
        ):
            if result.lease is not None:
                log.info("transaction_decided", gid=gid, decision=decision.value, reason=reason)
                self.metrics.decided(decision.value, reason)
                # The round starts from what the decision saw: nothing is read again.
                context = RoundContext(result.transaction, result.branches, budget_spent=False)
                self.spawn_drive(result.lease, context)
        return result

    async def decide_after_tries(
        self, txn: Transaction, tries: list[TryRecord]
    ) -> tuple[DecideResult, Written | None]:
        """Auto mode: log the tries and the decision they call for in one durable write, then
        run phase two from what that write returned (nothing is read again)."""
        with tracing.span("tcc.decide", stored=trace_of(txn), gid=txn.gid) as decide_span:
            result, written = await self.log.decide_after_tries(
                txn.gid, tries, owner=self.owner, lease_ttl_s=self.settings.lease_ttl_s
            )
            tracing.annotate(
                decide_span,
                taken=result.lease is not None,
                status=result.transaction.status.value,
            )
            if result.lease is not None and written is not None:
                decision = states.decision_of(written.transaction.status)
                assert decision is not None  # a decision was taken
                reason = written.transaction.cancel_reason
                tracing.annotate(decide_span, decision=decision.value, reason=reason)
                log.info("transaction_decided", gid=txn.gid, decision=decision.value, reason=reason)
                self.metrics.decided(decision.value, reason)
                context = RoundContext(written.transaction, written.branches, budget_spent=False)
                self.spawn_drive(result.lease, context)
        return result, written

    async def wait_written(self, gid: str) -> Written | None:
        """Wait (bounded) for this process's phase two on ``gid``; what its last write left,
        when that round ended the phase with every call done, else None."""
        task = self._drives.get(gid)
        if task is None:
            return None
        done, _ = await asyncio.wait({task}, timeout=self.settings.confirm_wait_s)
        if not done or task.cancelled() or task.exception() is not None:
            return None
        ended = task.result()
        return ended if isinstance(ended, Written) else None

    async def wait_settled(self, gid: str) -> Written | None:
        """Wait, up to TCC_CONFIRM_WAIT_S in all, until phase two on ``gid`` is over (final
        or parked), whichever coordinator runs its rounds: first this process's round, then,
        if that one left calls to retry, the log (each later round is recovery's, here or in
        another process). What the last round wrote when this process's first one ended the
        phase, else None (the caller reads the log)."""
        deadline = time.monotonic() + self.settings.confirm_wait_s
        task = self._drives.get(gid)
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=self.settings.confirm_wait_s)
            if done and not task.cancelled() and task.exception() is None:
                ended = task.result()
                if isinstance(ended, Written):
                    return ended
        pause = SETTLE_POLL_FIRST_S
        while (left := deadline - time.monotonic()) > 0:
            txn = await self.log.get(gid)
            if txn.status not in states.PHASE_TWO_STATUSES:
                return None
            await asyncio.sleep(min(pause, left))
            await self.settle(gid, max(deadline - time.monotonic(), 0.0))
            pause = min(pause * 2, SETTLE_POLL_MAX_S)
        return None

    async def settle(self, gid: str, timeout_s: float | None = None) -> None:
        """Wait (bounded) for phase-two work this process runs on ``gid``."""
        task = self._drives.get(gid)
        if task is not None:
            wait = self.settings.confirm_wait_s if timeout_s is None else timeout_s
            await asyncio.wait({task}, timeout=wait)

    async def wait_for(self, gid: str, timeout_s: float | None = None) -> Transaction:
        """settle(), then the transaction as the log holds it."""
        await self.settle(gid, timeout_s)
        return await self.log.get(gid)

    # --- phase two -------------------------------------------------------------------

    def spawn_drive(
        self, lease: Lease, context: RoundContext | None = None
    ) -> asyncio.Task[RoundEnd]:
        """Run a round under ``lease`` in the background; ``context``, when the caller has
        it fresh from its own write, saves reading it again."""
        task = asyncio.create_task(self._drive(lease, context), name=f"drive:{lease.gid}")
        self._drives[lease.gid] = task
        self.metrics.round_started()

        def forget(done: asyncio.Task[RoundEnd]) -> None:
            self.metrics.round_ended()
            if self._drives.get(lease.gid) is done:
                del self._drives[lease.gid]

        task.add_done_callback(forget)
        return task

    @property
    def active_drives(self) -> int:
        return len(self._drives)

    async def resume(self, lease: Lease, status: GlobalStatus) -> asyncio.Task[RoundEnd] | None:
        """Continue a transaction claimed by recovery: one still undecided at its deadline
        is timed out (TCC), asked about (a prepared message) or sent forward (a saga or a
        message whose request died before deciding it); one in phase two gets its next
        round."""
        if status is not GlobalStatus.TRYING:
            return self.spawn_drive(lease)
        txn = await self.log.get(lease.gid)
        if txn.kind is TransactionKind.MSG and txn.options.get(kinds.PREPARED_OPTION):
            task = asyncio.create_task(self._ask(lease, txn), name=f"query:{lease.gid}")
            self._track(lease.gid, task)
            return task
        if txn.kind is TransactionKind.TCC:
            decision, reason = Decision.CANCEL, states.CancelReason.TIMEOUT.text()
        else:
            decision, reason = Decision.CONFIRM, None
        result = await self.decide(lease.gid, decision, reason=reason, kind=txn.kind)
        if result.lease is None:
            # Someone decided it first; our claim is moot.
            await self.log.release_lease(lease)
            return None
        if txn.kind is TransactionKind.TCC:
            self.metrics.timed_out()
        # The decision replaced our claim with a fresh lease and started the drive.
        return self._drives.get(lease.gid)

    def _track(self, gid: str, task: asyncio.Task[RoundEnd]) -> None:
        """Work on ``gid`` that requests and shutdown wait for, like a drive."""
        self._drives[gid] = task

        def forget(done: asyncio.Task[RoundEnd]) -> None:
            if self._drives.get(gid) is done:
                del self._drives[gid]

        task.add_done_callback(forget)

    async def _ask(self, lease: Lease, txn: Transaction) -> RoundEnd:
        """_query_prepared; a failure lets the lease go (or lapse) so that the next scan
        asks again."""
        with structlog.contextvars.bound_contextvars(gid=lease.gid):
            try:
                return await self._query_prepared(lease, txn)
            except DatabaseUnavailable as exc:
                log.warning("query_prepared_interrupted", error=str(exc))
            except asyncio.CancelledError:
                with contextlib.suppress(DatabaseUnavailable):
                    await asyncio.shield(self.log.release_lease(lease))
                raise
            except Exception:
                log.exception("query_prepared_crashed")
                with contextlib.suppress(Exception):
                    await self.log.release_lease(lease)
            return None

    async def _query_prepared(self, lease: Lease, txn: Transaction) -> RoundEnd:
        """A prepared message not submitted in time: ask its service whether it should go
        out. Yes submits it (and its first round runs before this returns), no aborts it,
        anything else asks again later (ONGOING at the normal interval, errors with backoff,
        counted in the log). Without a URL to ask, it is aborted as timed out."""
        url = txn.options.get(kinds.QUERY_URL_OPTION)
        speaks = dialect(txn.dialect)
        result: CallResult | None = None
        if isinstance(url, str) and url:
            with tracing.span("tcc.query_prepared", stored=trace_of(txn), gid=txn.gid):
                async with self._renewing(lease):  # the call may outlast the lease
                    call = speaks.query_call(txn, url)
                    result = await self.caller.send(call, self.call_timeout(txn))
            answer = speaks.judge_query(result)
            reason = None if answer is CallOutcome.DONE else kinds.QUERY_REFUSED_REASON
        else:
            answer = CallOutcome.FAILURE
            reason = states.CancelReason.TIMEOUT.text("prepared, not submitted, nobody to ask")
        log.info(
            "query_prepared_answered",
            answer=answer.value,
            http_status=result.http_status if result else None,
            error=result.error if result else None,
        )
        if answer in (CallOutcome.DONE, CallOutcome.FAILURE):
            decision = Decision.CONFIRM if answer is CallOutcome.DONE else Decision.CANCEL
            decided = await self.decide(lease.gid, decision, reason=reason, kind=txn.kind)
            if decided.lease is None:
                await self.log.release_lease(lease)
                return None
            drive = self._drives.get(lease.gid)
            return (
                await drive if drive is not None and drive is not asyncio.current_task() else None
            )
        policy = self._policy_for(txn)
        delay = (
            policy.initial_interval
            if answer is CallOutcome.ONGOING
            else policy.delay(txn.phase_attempts + 1, self._rng)
        )
        write = writes.postpone_query(answer.value, delay, owner=self.owner)
        return await self.log.postpone(lease, write, result.record if result else None)

    async def _drive(self, lease: Lease, context: RoundContext | None) -> RoundEnd:
        with structlog.contextvars.bound_contextvars(gid=lease.gid):
            try:
                return await self._run_round(lease, context)
            except DatabaseUnavailable as exc:
                # The lease expires by itself; the next scan after the outage continues.
                log.warning("round_interrupted", error=str(exc))
                return None
            except asyncio.CancelledError:
                # Shutting down: hand the transaction to the other coordinators at once.
                with contextlib.suppress(DatabaseUnavailable):
                    await asyncio.shield(self.log.release_lease(lease))
                log.info("lease_released_on_shutdown")
                raise
            except Exception:
                # A bug or an unstorable value: still count the round and back off, so the
                # transaction is retried later and parked once its budget is spent.
                log.exception("round_crashed")
                with contextlib.suppress(Exception):
                    return await self._end_crashed_round(lease)
                return None

    @property
    def _alert_after_rounds(self) -> int | None:
        """What finish_round raises alerts for: nothing without a webhook to send them to."""
        return self.settings.alert_after_rounds if self.settings.alert_webhook else None

    def _policy_for(self, txn: Transaction) -> RetryPolicy:
        return dialect(txn.dialect).retry_policy(self.settings.retry_policy, txn)

    async def _end_crashed_round(self, lease: Lease) -> Transaction | None:
        ctx = await self.log.round_context(lease, self.settings.give_up_after_s)
        decision = states.decision_of(ctx.transaction.status) if ctx else None
        if ctx is None or decision is None:
            await self.log.release_lease(lease)
            return None
        outcome = states.round_outcome(decision, all_done=False, budget_spent=ctx.budget_spent)
        delay = self._policy_for(ctx.transaction).delay(
            ctx.transaction.phase_attempts + 1, self._rng
        )
        pending = states.branches_to_call(decision, [b.view for b in ctx.branches])
        return await self.log.finish_round(
            lease, decision, outcome, delay, pending, self.owner, self._alert_after_rounds
        )

    async def _run_round(self, lease: Lease, context: RoundContext | None) -> RoundEnd:
        ctx = context or await self.log.round_context(lease, self.settings.give_up_after_s)
        if ctx is None:
            log.info("lease_lost_before_round")
            return None
        txn = ctx.transaction
        decision = states.decision_of(txn.status)
        if decision is None or txn.status not in states.PHASE_TWO_STATUSES:
            await self.log.release_lease(lease)
            return txn
        with tracing.span(
            "tcc.round",
            stored=trace_of(txn),
            gid=txn.gid,
            decision=decision.value,
            round=txn.phase_attempts + 1,
            coordinator=self.owner,
        ) as round_span:
            if txn.kind is TransactionKind.TCC:
                ended = await self._call_round(lease, ctx, decision)
            else:
                ended = await self._step_round(lease, ctx, decision)
            if ended is None:
                tracing.mark_failed(round_span, "lease lost")
            else:
                final = ended.transaction if isinstance(ended, Written) else ended
                tracing.annotate(round_span, status=final.status.value)
                if final.status in states.PARKED_STATUSES:
                    tracing.mark_failed(round_span, f"parked: {final.status.value}")
            return ended

    async def _call_round(self, lease: Lease, ctx: RoundContext, decision: Decision) -> RoundEnd:
        txn = ctx.transaction
        to_call = set(states.branches_to_call(decision, [b.view for b in ctx.branches]))
        pending = [b for b in ctx.branches if b.branch_id in to_call]
        async with self._renewing(lease):
            calls = [asyncio.create_task(self._call_phase_two(txn, decision, b)) for b in pending]
            # Calls never raise, so every call has ended before the lease is let go.
            _, slow = await asyncio.wait(calls, timeout=BATCH_WINDOW_S) if calls else ((), ())
            if not slow:
                results = [c.result() for c in calls]
                if all(outcome is CallOutcome.DONE for _, outcome in results):
                    return await self._finish_done(lease, decision, pending, results)
            replies = await self._record_as_they_come(lease, txn, decision, pending, calls)
        not_done = [
            (b.branch_id, r)
            for b, r in zip(pending, replies, strict=True)
            if r is not CallOutcome.DONE
        ]
        held = {
            b.branch_id: _Held(b.participant, result.held_for_s, result.error)
            for b, (result, _) in zip(pending, (c.result() for c in calls), strict=True)
            if result.held_for_s is not None
        }
        return await self._end_round(
            lease,
            txn,
            decision,
            [b for b, _ in not_done],
            [r for _, r in not_done],
            ctx.budget_spent,
            held,
        )

    async def _end_round(
        self,
        lease: Lease,
        txn: Transaction,
        decision: Decision,
        pending: list[str],
        outcomes: list[CallOutcome],
        budget_spent: bool,
        held: dict[str, _Held] | None = None,
    ) -> RoundEnd:
        """End a round whose ``pending`` calls answered ``outcomes`` (none: the phase is
        over): finished, parked once the budget is spent, or the next round scheduled. A
        round in which nothing failed but calls were held by breakers is no round at all:
        it is looked at again when they may go. (One in which a call failed as well is a
        round: it may park the transaction once its budget is spent, for an operator.)"""
        if pending and held and all(o is CallOutcome.HELD for o in outcomes):
            return await self._hold(lease, txn, decision, list(held.values()))
        outcome = states.round_outcome(decision, not pending, budget_spent)
        policy = self._policy_for(txn)
        if pending and all(o is CallOutcome.ONGOING for o in outcomes):
            # "Still working on it" is no failure: come back at the normal interval.
            delay = policy.initial_interval
        else:
            delay = policy.delay(txn.phase_attempts + 1, self._rng) if pending else 0.0
        finished = await self.log.finish_round(
            lease, decision, outcome, delay, pending, self.owner, self._alert_after_rounds
        )
        if finished is None:
            log.warning("lease_lost_during_round")
            return None
        self._report_round(outcome, decision, finished, pending, delay)
        return finished

    async def _hold(
        self, lease: Lease, txn: Transaction, decision: Decision, held: list[_Held]
    ) -> Transaction | None:
        retry_in = min(h.retry_in_s for h in held)
        reason = held[0].reason or "held by a circuit breaker"
        names = [h.participant or "" for h in held]
        write = writes.hold_round(decision, names, reason, retry_in)
        kept = await self.log.postpone(lease, write)
        if kept is None:
            log.warning("lease_lost_during_round")
            return None
        log.info("round_held", participants=sorted(set(names)), retry_in_s=round(retry_in, 3))
        return kept

    def _report_round(
        self,
        outcome: GlobalStatus,
        decision: Decision,
        finished: Transaction,
        still_pending: list[str],
        delay: float,
    ) -> None:
        if outcome is not states.phase_status(decision):
            took = (finished.updated_at - finished.created_at).total_seconds()
            self.metrics.ended(outcome, finished.dialect, took, finished.kind)
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

    def _observe_call(self, branch: Branch, phase: Phase, outcome: str, result: CallResult) -> None:
        if result.held_for_s is None:  # (held calls have their own counter)
            self.metrics.participant_call(
                branch.participant, phase.value, outcome, result.latency_ms / 1000
            )

    async def _record_as_they_come(
        self,
        lease: Lease,
        txn: Transaction,
        decision: Decision,
        pending: list[Branch],
        calls: list[asyncio.Task[tuple[CallResult, CallOutcome]]],
    ) -> list[CallOutcome]:
        """Log each call as soon as it has answered, so that a crash while a slow one is
        still out resends only that one; what each answer means for the round."""

        async def record_when_answered(
            call: asyncio.Task[tuple[CallResult, CallOutcome]], branch: Branch
        ) -> CallOutcome:
            result, outcome = await call
            recorded, _ = await self._record_phase_call(
                lease, txn, decision, branch, result, outcome
            )
            return recorded

        return list(
            await asyncio.gather(
                *(record_when_answered(c, b) for c, b in zip(calls, pending, strict=True))
            )
        )

    async def _finish_done(
        self,
        lease: Lease,
        decision: Decision,
        pending: list[Branch],
        results: list[tuple[CallResult, CallOutcome]],
    ) -> RoundEnd:
        """Every call came back done: one write ends the phase."""
        calls = [
            (b.branch_id, result.record) for b, (result, _) in zip(pending, results, strict=True)
        ]
        written = await self.log.finish_done_round(lease, decision, calls, self.owner)
        if written is None:
            log.warning("lease_lost_during_round")
            return None
        final = written.transaction
        self._report_round(final.status, decision, final, [], 0.0)
        return written

    async def _call_phase_two(
        self, txn: Transaction, decision: Decision, branch: Branch
    ) -> tuple[CallResult, CallOutcome]:
        """One phase-two call in the transaction's dialect, and what its reply means."""
        phase = kinds.phase_of(txn.kind, decision)
        speaks = dialect(txn.dialect)
        call = speaks.participant_call(txn, branch, phase)
        result = await self._send(txn, branch, phase, call)
        if result.held_for_s is not None:
            return result, CallOutcome.HELD
        outcome = speaks.judge_phase_two(phase, result)
        self._observe_call(branch, phase, outcome.value, result)
        return result, outcome

    async def _record_phase_call(
        self,
        lease: Lease,
        txn: Transaction,
        decision: Decision,
        branch: Branch,
        result: CallResult,
        outcome: CallOutcome,
    ) -> tuple[CallOutcome, BranchStatus | None]:
        """Log one call of a round that did not end the phase, and say what to do next and
        where the write moved the branch (None: nowhere, or nothing was written)."""
        phase = kinds.phase_of(txn.kind, decision)
        if outcome is CallOutcome.HELD:
            return outcome, None  # nothing was sent, so nothing to log
        done = outcome is CallOutcome.DONE
        # A saga's action answering FAILURE fails its step for good (the saga compensates).
        failed = outcome is CallOutcome.FAILURE and self._fails_forward(txn, decision)
        answer = writes.phase_call(
            decision, branch.branch_id, done, result.record, txn.kind, failed=failed
        )
        with structlog.contextvars.bound_contextvars(branch_id=branch.branch_id, phase=phase.value):
            try:
                recorded = await self.log.record_phase_call(lease, answer)
            except Exception as exc:  # the round ends when every call has; this one failed
                log.warning("phase_call_not_recorded", error=str(exc))
                return CallOutcome.RETRY, None
            if done:
                log.info(f"branch_{phase.value}_done", http_status=result.http_status)
            elif failed:
                log.warning("action_failed", http_status=result.http_status, error=result.error)
            else:
                # A participant saying confirm/cancel *failed* breaks TCC's contract: loudly.
                level = log.error if outcome is CallOutcome.FAILURE else log.warning
                level(
                    "phase_call_failed",
                    http_status=result.http_status,
                    error=result.error,
                    latency_ms=result.latency_ms,
                    ongoing=outcome is CallOutcome.ONGOING,
                )
        if not recorded:
            return CallOutcome.RETRY, None
        return outcome, answer.rule.target

    # --- sagas and messages: steps in order -----------------------------------------

    async def _step_round(self, lease: Lease, ctx: RoundContext, decision: Decision) -> RoundEnd:
        """A saga's or message's round: each step is called as soon as it may run and each
        answer logged as it comes, until no step may run now. Then the phase has ended (every
        step done), or the round ends with a retry of the steps that must be called again,
        or, in a saga, an action failed for good, its deadline passed or its retry limit was
        reached: it changes course and compensates, in reverse, every step that may have
        started (in the same round, under the same lease)."""
        txn = ctx.transaction
        ordered = sorted(ctx.branches, key=lambda b: b.position)
        plan = kinds.StepPlan.of([b.branch_id for b in ordered], txn.options)
        by_id = {b.branch_id: b for b in ordered}
        status = {b.branch_id: b.status for b in ordered}
        budget_spent = ctx.budget_spent
        course_change = self._forward_stop(txn, ctx.deadline_passed)
        if course_change is not None and not self._steps_to_call(txn, plan, decision, status):
            course_change = None  # every action is done: the deadline came too late to matter
        async with self._renewing(lease):
            while True:
                failed = [b for b, s in status.items() if s is BranchStatus.TRY_FAILED]
                if course_change is None and failed and self._fails_forward(txn, decision):
                    # (an action's failure logged by a round that ended before changing course)
                    course_change = states.CancelReason.ACTION_FAILED.text(failed[0])
                if course_change is not None:
                    changed = await self._change_course(lease, txn, course_change)
                    if changed is None:
                        return None
                    txn, decision, budget_spent = changed, Decision.CANCEL, False
                    course_change = None
                held: dict[str, _Held] = {}
                later, failed_now = await self._run_steps(
                    lease, txn, plan, decision, by_id, status, held
                )
                if failed_now is not None:
                    course_change = states.CancelReason.ACTION_FAILED.text(failed_now)
                    continue
                # (a round whose only unfinished steps were held sent nothing: no round spent)
                sent = any(o is not CallOutcome.HELD for _, o in later)
                if sent and (limit := self._retry_limit_reached(txn, decision)) is not None:
                    course_change = limit
                    continue
                return await self._end_round(
                    lease,
                    txn,
                    decision,
                    [b for b, _ in later],
                    [o for _, o in later],
                    budget_spent,
                    held,
                )

    @staticmethod
    def _fails_forward(txn: Transaction, decision: Decision) -> bool:
        return decision is Decision.CONFIRM and kinds.fails_forward(txn.kind)

    async def _run_steps(
        self,
        lease: Lease,
        txn: Transaction,
        plan: kinds.StepPlan,
        decision: Decision,
        by_id: dict[str, Branch],
        status: dict[str, BranchStatus],
        held: dict[str, _Held],
    ) -> tuple[list[tuple[str, CallOutcome]], str | None]:
        """Call every step that may run, each as soon as it may (a step freed by a quick one
        does not wait for a slow one), logging each answer as it comes (``status`` follows
        the log), until none may run now. The steps to call again in a later round with
        their answers, and the step whose action failed for good (a saga), if one did: then
        no further step is started and those in flight are waited for."""
        later: list[tuple[str, CallOutcome]] = []
        failed: str | None = None
        in_flight: dict[asyncio.Task[tuple[CallResult, CallOutcome]], str] = {}
        try:
            while True:
                if failed is None:
                    busy = set(in_flight.values()) | {b for b, _ in later}
                    for step in self._steps_to_call(txn, plan, decision, status):
                        if step not in busy:
                            call = self._call_phase_two(txn, decision, by_id[step])
                            in_flight[asyncio.create_task(call)] = step
                if not in_flight:
                    return later, failed
                answered, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in answered:
                    step = in_flight.pop(task)
                    result, outcome = task.result()
                    if result.held_for_s is not None:
                        held[step] = _Held(by_id[step].participant, result.held_for_s, result.error)
                    recorded, moved_to = await self._record_phase_call(
                        lease, txn, decision, by_id[step], result, outcome
                    )
                    status[step] = moved_to or status[step]
                    if recorded is CallOutcome.DONE:
                        continue
                    if status[step] is BranchStatus.TRY_FAILED and self._fails_forward(
                        txn, decision
                    ):
                        failed = failed or step
                    else:
                        later.append((step, recorded))
        finally:
            for task in in_flight:  # only when cut short (shutting down)
                task.cancel()

    @staticmethod
    def _steps_to_call(
        txn: Transaction,
        plan: kinds.StepPlan,
        decision: Decision,
        status: dict[str, BranchStatus],
    ) -> list[str]:
        """The steps to call now: the actions (deliveries) that may run, or the
        compensations that may run, in reverse order; a message compensates nothing."""
        acted = [b for b, s in status.items() if s is BranchStatus.CONFIRMED]
        if decision is Decision.CONFIRM:
            return plan.runnable(acted)
        if not kinds.compensates(txn.kind):
            return []
        undone = [b for b, s in status.items() if s is BranchStatus.CANCELLED]
        return plan.compensable(plan.may_have_started(acted), undone)

    @staticmethod
    def _forward_stop(txn: Transaction, deadline_passed: bool) -> str | None:
        """Why a saga stops its actions before this round: its deadline (when it bounds the
        forward phase, as DTM's timeout_to_fail does) has passed."""
        if (
            txn.kind is TransactionKind.SAGA
            and txn.status is GlobalStatus.CONFIRMING
            and deadline_passed
            and txn.options.get(kinds.FORWARD_TIMEOUT_OPTION)
        ):
            return states.CancelReason.TIMEOUT.text(f"the actions ran past {txn.timeout_s:g} s")
        return None

    @staticmethod
    def _retry_limit_reached(txn: Transaction, decision: Decision) -> str | None:
        """A saga whose actions have had retry_limit rounds compensates instead of another."""
        limit = txn.options.get(kinds.RETRY_LIMIT_OPTION)
        if (
            txn.kind is not TransactionKind.SAGA
            or decision is not Decision.CONFIRM
            or not isinstance(limit, int)
            or txn.phase_attempts + 1 < limit
        ):
            return None
        return states.CancelReason.RETRY_LIMIT.text(f"{limit} rounds")

    async def _change_course(
        self, lease: Lease, txn: Transaction, reason: str
    ) -> Transaction | None:
        changed = await self.log.change_course(
            lease, writes.course_change(reason, owner=self.owner)
        )
        if changed is None:
            log.warning("lease_lost_during_round")
            return None
        log.info("saga_compensates", gid=txn.gid, reason=reason)
        self.metrics.decided(Decision.CANCEL.value, reason)
        return changed

    @contextlib.asynccontextmanager
    async def _renewing(self, lease: Lease) -> AsyncIterator[None]:
        """Keep the lease alive while calls are in flight."""
        ttl = self.settings.lease_ttl_s

        async def renew() -> None:
            while True:
                await asyncio.sleep(ttl / 3)
                try:
                    if not await self.log.renew_lease(lease, ttl):
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
