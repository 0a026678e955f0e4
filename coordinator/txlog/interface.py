"""The transaction log as the engine sees it: domain operations, each one atomic.

Two implementations keep the same contract (tests/txlog runs one suite on both):
PostgresLog, the real one, and InMemoryLog, a twin with a clock the caller moves, for unit
tests of the engine and for users testing code that talks to the coordinator. Every time
(deadlines, retry times, lease expiry) comes from the log's clock, never the host's.
"""

from __future__ import annotations

from typing import Protocol

from coordinator.core.apikeys import Scope
from coordinator.core.breaker import BreakerMove
from coordinator.core.records import (
    Alert,
    Backlog,
    Branch,
    CallRecord,
    CallTally,
    Claim,
    ConsoleSession,
    DecideResult,
    Event,
    Lease,
    ListFilter,
    NewBranch,
    NewParticipant,
    NewSession,
    NewTransaction,
    OptionsUpdate,
    Overview,
    Participant,
    ParticipantUsage,
    Registry,
    RoundContext,
    Transaction,
    TransactionDetail,
    TryRecord,
    Written,
)
from coordinator.core.states import Decision, GlobalStatus, TransactionKind, TryVerdict
from coordinator.core.writes import CallWrite, CourseChange, Postpone

# Timeline entries returned with a transaction; the rest is paged.
DEFAULT_EVENTS_PAGE = 200
# The overview lists the coordinators seen this recently (stopped ones too, for a while).
COORDINATORS_SHOWN_FOR_S = 900.0
# A coordinator counts as running if its last recovery scan was this recent (the breaker's
# ramp shares its rate between them).
LIVE_COORDINATOR_S = 30.0


class TransactionLog(Protocol):
    async def close(self) -> None: ...

    async def readiness(self) -> list[str]:
        """What keeps the log from serving (e.g. migrations not applied); empty when ready.
        Raises DatabaseUnavailable when it cannot be reached."""
        ...

    # --- begin, register, try -----------------------------------------------------

    async def begin(self, new: NewTransaction) -> tuple[TransactionDetail, bool]:
        """Log a transaction with its branches (durably: participants are called next); an
        identical repeat returns the original (created False); a gid taken by any other
        request raises TakenGid."""
        ...

    async def register_branch(
        self, gid: str, new: NewBranch, max_branches: int
    ) -> tuple[Branch, bool]:
        """Add a branch while trying (NotTrying otherwise); an identical repeat is a no-op."""
        ...

    async def claim_stale_try(
        self, gid: str, branch_id: str, stale_after_s: float
    ) -> Branch | None:
        """The branch, if its try never got an answer logged and is older than a call can
        take (so it may be run again); at most one caller gets it."""
        ...

    async def record_try(
        self, gid: str, branch_id: str, verdict: TryVerdict, call: CallRecord
    ) -> tuple[Branch, bool]:
        """Store a try's outcome: the branch as the log now holds it, and whether this
        answer was recorded (False: the branch had moved on, e.g. cancelled)."""
        ...

    # --- decisions and operator actions -------------------------------------------

    async def decide_after_tries(
        self, gid: str, tries: list[TryRecord], *, owner: str, lease_ttl_s: float
    ) -> tuple[DecideResult, Written | None]:
        """Auto mode in one durable write: log the tries' answers, then decide. Cancel (the
        first failed try, or the deadline) or confirm (every try recorded as tried, no other
        branch in the way); the decider gets the lease. When neither rule applies, or the
        transaction is no longer trying, nothing is decided (the judgement says why not) and
        the caller takes the general path. ``Written`` is None when nothing was decided."""
        ...

    async def decide(
        self,
        gid: str,
        decision: Decision,
        *,
        reason: str | None,
        owner: str,
        lease_ttl_s: float,
        options: OptionsUpdate | None = None,
        actor: str | None = None,
        kind: TransactionKind = TransactionKind.TCC,
    ) -> DecideResult:
        """Take the decision if the protocol allows it, with ``options`` set in the same
        database transaction; durable when this returns. The decider gets the lease.
        ``actor``: the operator who decided, recorded with the decision."""
        ...

    async def retry_parked(
        self,
        gid: str,
        *,
        actor: str,
        owner: str | None,
        lease_ttl_s: float,
        reason: str | None = None,
    ) -> tuple[Transaction, Lease | None]:
        """Send a failed_to_* transaction back into phase two with a fresh retry budget."""
        ...

    async def resolve_parked(
        self, gid: str, *, actor: str, note: str, branch_id: str | None = None
    ) -> Transaction:
        """An operator finished a parked transaction's stuck branches by hand: mark them
        done, and the transaction. With ``branch_id``, that branch only; the transaction is
        done once no branch waits any more."""
        ...

    # --- leases and phase two -------------------------------------------------------

    async def claim_due(self, owner: str, limit: int, lease_ttl_s: float) -> list[Claim]:
        """Leases on active transactions whose deadline or retry time has come and that
        nobody holds; coordinators claiming together split the work."""
        ...

    async def renew_lease(self, lease: Lease, lease_ttl_s: float) -> bool: ...

    async def release_lease(self, lease: Lease) -> None: ...

    async def round_context(self, lease: Lease, give_up_after_s: float) -> RoundContext | None:
        """The transaction and its branches under the lease; None if the lease was lost."""
        ...

    async def record_phase_call(self, lease: Lease, answer: CallWrite) -> bool:
        """Store one phase-two reply (core.writes.phase_call); False (and nothing written)
        if the lease was lost."""
        ...

    async def change_course(self, lease: Lease, write: CourseChange) -> Transaction | None:
        """A saga stops its actions and compensates (core.writes.course_change); the lease
        is kept. None if the lease was lost or the transaction is elsewhere."""
        ...

    async def postpone(
        self, lease: Lease, write: Postpone, call: CallRecord | None = None
    ) -> Transaction | None:
        """A prepared message asked about again later (core.writes.postpone_query), noting
        the answer ``call``; the lease is let go. None if it was lost."""
        ...

    async def finish_done_round(
        self, lease: Lease, decision: Decision, calls: list[tuple[str, CallRecord]], owner: str
    ) -> Written | None:
        """A round in which every call came back done, in one write: each call's outcome,
        the final status, the events. Redoable, so its commit need not wait for the disk (a
        crash before it reaches the disk means those calls are sent again). None if the lease
        was lost."""
        ...

    async def finish_round(
        self,
        lease: Lease,
        decision: Decision,
        outcome: GlobalStatus,
        retry_in_s: float,
        pending: list[str],
        owner: str,
        alert_after_rounds: int | None = None,
    ) -> Transaction | None:
        """End a round (final, parked, or the next retry) and let the lease go; None if
        the lease was lost. With ``alert_after_rounds`` set (alerts are on), an alert is
        raised in the same write when the round parks the transaction, or when it is the
        ``alert_after_rounds``-th of this stay in phase two (0: parking only)."""
        ...

    # --- alerts -----------------------------------------------------------------------

    async def claim_alerts(self, owner: str, limit: int, lease_ttl_s: float) -> list[Alert]:
        """Due alerts nobody else holds, now held by ``owner`` until the lease lapses."""
        ...

    async def alert_delivered(self, alert_id: int, owner: str) -> bool:
        """Mark a claimed alert delivered; False if ``owner`` no longer holds it."""
        ...

    async def alert_failed(
        self, alert_id: int, owner: str, error: str, retry_in_s: float | None
    ) -> bool:
        """A delivery failed: try again in ``retry_in_s``, or (None) give it up."""
        ...

    # --- retention --------------------------------------------------------------------

    async def prune(self, older_than_s: float, batch: int) -> int:
        """Delete up to ``batch`` finished transactions (confirmed, cancelled) that began and
        ended more than ``older_than_s`` ago, with their branches and timeline, and as many
        delivered or given-up alerts; how many transactions went. Never a parked or
        unfinished one."""
        ...

    async def count_prunable(self, older_than_s: float) -> int:
        """How many transactions `prune` would delete (for a dry run)."""
        ...

    # --- coordinators -----------------------------------------------------------------

    async def coordinator_seen(self, owner: str, claimed: int, taken_over: int) -> None:
        """Note a recovery scan of ``owner``: alive now, and what the scan claimed."""
        ...

    async def coordinator_stopped(self, owner: str) -> None:
        """``owner`` shut down cleanly."""
        ...

    async def prune_coordinators(self, unseen_for_s: float) -> int:
        """Forget coordinators not seen for that long; how many."""
        ...

    # --- participants ----------------------------------------------------------------

    async def register_participant(
        self, new: NewParticipant, *, replace_any: bool = True
    ) -> tuple[Participant, bool] | None:
        """Register a participant, or replace its registration (its breaker is kept; its
        owner too when ``new`` names none); the participant as the log now holds it, and
        whether it is new. None (nothing written) when it belongs to another service than
        ``new.owner_service`` and ``replace_any`` is false."""
        ...

    async def remove_participant(self, name: str, *, owner: str | None = None) -> bool:
        """Take it out of the registry (only if ``owner``'s, when given); False if nothing
        was removed."""
        ...

    async def participants(self) -> Registry:
        """Every registered participant by name, with the log's clock when they were read
        and how many coordinators run (seen in the last LIVE_COORDINATOR_S)."""
        ...

    async def participant(self, name: str) -> Participant | None: ...

    async def move_breaker(self, move: BreakerMove) -> Participant | None:
        """Apply one breaker move if the row is still as the move expects (with its alert,
        when it raises one); the participant after it, or None if it did not apply."""
        ...

    async def add_call_tallies(self, tallies: list[CallTally]) -> None:
        """Add a coordinator's counts since its last flush to the current minute's."""
        ...

    async def participant_usage(self, names: list[str], window_s: float) -> list[ParticipantUsage]:
        """Each named participant's calls over the last ``window_s`` seconds (all
        coordinators) and the transactions waiting on it."""
        ...

    async def prune_call_tallies(self, older_than_s: float) -> int:
        """Forget per-minute call counts older than that; how many rows went."""
        ...

    # --- console sessions ----------------------------------------------------------

    async def open_session(self, new: NewSession) -> None:
        """Keep a console login; it lasts ``new.ttl_s`` by the log's clock."""
        ...

    async def session_is_live(self, session_id: str) -> bool:
        """Whether the session is neither revoked nor expired (and note it was seen)."""
        ...

    async def revoke_sessions(
        self, by: str, *, id_prefix: str | None = None, key_name: str | None = None
    ) -> int:
        """End live sessions: the one whose id begins with ``id_prefix``, or those of
        ``key_name``, or (neither given) all; how many."""
        ...

    async def revoke_sessions_of_other_keys(
        self, by: str, keys: list[tuple[str, Scope, str]]
    ) -> int:
        """End the live sessions of any key not among ``keys`` (name, scope, digest)."""
        ...

    async def list_sessions(self, *, include_ended: bool, limit: int) -> list[ConsoleSession]:
        """Sessions, newest first; live ones only unless ``include_ended``."""
        ...

    async def prune_sessions(self, ended_for_s: float) -> int:
        """Delete sessions that ended (expired or revoked) that long ago; how many."""
        ...

    # --- reads ------------------------------------------------------------------------

    async def get(self, gid: str) -> Transaction: ...

    async def detail(
        self, gid: str, events_limit: int = DEFAULT_EVENTS_PAGE
    ) -> TransactionDetail: ...

    async def events(self, gid: str, after_id: int, limit: int) -> tuple[list[Event], bool]:
        """A page of the timeline after event ``after_id``, and whether more follow."""
        ...

    async def list(self, flt: ListFilter) -> list[Transaction]: ...

    async def backlog(self) -> Backlog:
        """How many transactions are unfinished, by status, and the oldest one's age: the
        metrics' gauges, read at every scrape, so cheap (the status index)."""
        ...

    async def overview(self, window_s: float, attention_limit: int) -> Overview:
        """Counts of what is open, the window's outcomes minute by minute, and the
        transactions that need attention (at most ``attention_limit`` of each kind)."""
        ...
