"""The transaction log in memory: PostgresLog's twin, with a clock the caller moves.

For unit tests of the engine, and for users testing code that talks to the coordinator.
Every rule of sql/queries.sql holds here too (the CAS guards, leases and fencing, collapsing
of identical failures, paging and ordering), and tests/txlog runs one contract suite on both
logs so that they cannot drift apart. Time passes only when ManualClock.advance is called:
a test of a day-long retry budget takes no time at all.

Pure Python on purpose (no database driver), so it can ship with the package and be used
wherever the coordinator's engine is.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from coordinator.core import states, writes
from coordinator.core.apikeys import Scope
from coordinator.core.breaker import BreakerMove, BreakerState
from coordinator.core.errors import Conflict, InvalidInput, NotFound, TakenGid
from coordinator.core.records import (
    Alert,
    Backlog,
    Branch,
    CallRecord,
    CallTally,
    Claim,
    ConsoleSession,
    CoordinatorSeen,
    DecideResult,
    Event,
    Lease,
    ListFilter,
    MinuteOfCalls,
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
    alert_body,
    minute_tallies,
    participant_usage,
)
from coordinator.core.states import (
    AlertKind,
    BranchStatus,
    BranchView,
    Decision,
    GlobalStatus,
    Judgement,
    Phase,
    TransactionKind,
    TryVerdict,
    Verdict,
)
from coordinator.core.tls import is_profile_name
from coordinator.core.writes import (
    CallWrite,
    CourseChange,
    DecisionWrite,
    Entry,
    NewBranchWrite,
    Postpone,
    RoundEnd,
)
from coordinator.txlog.interface import (
    COORDINATORS_SHOWN_FOR_S,
    DEFAULT_EVENTS_PAGE,
    LIVE_COORDINATOR_S,
)

if TYPE_CHECKING:
    from coordinator.txlog.interface import TransactionLog

_R = TypeVar("_R")

# The resolution of a Postgres timestamp: the smallest step the timeline can take.
_TICK = timedelta(microseconds=1)


class ManualClock:
    """Aware UTC time that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        if start is None:
            start = datetime.now(UTC)
        elif start.tzinfo is None:
            raise ValueError("the clock needs an aware datetime (e.g. tzinfo=UTC)")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward; returns the new time."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._now += timedelta(seconds=seconds)
        return self._now


# --- stored values --------------------------------------------------------------------


def _stored(value: Any) -> Any:
    """A copy of a JSON value as Postgres would give it back (tuples become lists, keys
    become text), so that a caller changing what it passed changes nothing here. What
    Postgres refuses to store (NaN, non-JSON objects) is refused the same way."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"a value cannot be stored: {exc}") from exc


def _later(moment: datetime, seconds: float) -> datetime:
    """``moment + make_interval(secs => seconds)``; an interval out of range is the caller's
    input, as in Postgres."""
    try:
        return moment + timedelta(seconds=seconds)
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(f"a value cannot be stored: {exc}") from exc


def _later_or_none(moment: datetime, seconds: float | None) -> datetime | None:
    """``moment + make_interval(secs => seconds)`` where NULL seconds give NULL."""
    return None if seconds is None else _later(moment, seconds)


def _row_limit(limit: int) -> int:
    """SQL's LIMIT: a negative one is an error, not "all but the last few"."""
    if limit < 0:
        raise InvalidInput("a value cannot be stored: LIMIT must not be negative")
    return limit


def _aware(moment: datetime) -> datetime:
    # asyncpg reads a naive datetime as local time; compare the same instant here.
    return moment.astimezone(UTC)


def _new_token() -> str:
    return str(uuid.uuid4())


def _double(value: float | None) -> float | None:
    """A double precision column: an int passed in comes back a float, as from Postgres
    (and is shown so by the API: 60.0, not 60)."""
    return None if value is None else float(value)


# Records handed out are fresh copies: Postgres builds new objects from every row read,
# so a caller mutating a returned dict must not reach into the log either.


def _out_transaction(txn: Transaction) -> Transaction:
    return dataclasses.replace(
        txn, metadata=copy.deepcopy(txn.metadata), options=copy.deepcopy(txn.options)
    )


def _out_branch(branch: Branch) -> Branch:
    return dataclasses.replace(branch, payload=copy.deepcopy(branch.payload))


def _out_event(event: Event) -> Event:
    return dataclasses.replace(event, detail=copy.deepcopy(event.detail))


# --- the schema's CHECK constraints ---------------------------------------------------------

# gid and branch_id: ~ '^[A-Za-z0-9._:-]{1,128}$' (Postgres' $ is the end of the text only).
_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SESSION_ID = re.compile(r"[0-9a-f]{64}")


# The words each status CHECK lists: the enum's (tests/unit/test_vocabulary.py).
_WORDS: dict[type[StrEnum], frozenset[str]] = {
    kind: frozenset(kind)
    for kind in (GlobalStatus, BranchStatus, AlertKind, TransactionKind, BreakerState)
}
_CONSOLE_SCOPES = frozenset({Scope.ADMIN, Scope.VIEWER})


def _above_zero(value: float) -> bool:
    """``value > 0`` as Postgres compares a double: NaN sorts above every number."""
    return math.isnan(value) or value > 0


@dataclass(frozen=True, slots=True)
class _Check:
    """One CHECK of migrations/*.sql, by Postgres' name for it, as a test on a row."""

    table: str
    name: str
    holds: Callable[[Any], bool]


# Every CHECK of the schema (tests/integration compares the names with pg_constraint); the
# twin refuses a row that breaks one, before it writes anything, as Postgres refuses it.
CHECKS: tuple[_Check, ...] = (
    _Check(
        "tcc_transactions", "tcc_transactions_gid_check", lambda t: _ID.fullmatch(t.gid) is not None
    ),
    _Check(
        "tcc_transactions",
        "tcc_transactions_status_check",
        lambda t: t.status in _WORDS[GlobalStatus],
    ),
    _Check(
        "tcc_transactions",
        "tcc_transactions_kind_check",
        lambda t: t.kind in _WORDS[TransactionKind],
    ),
    _Check(
        "tcc_transactions", "tcc_transactions_timeout_s_check", lambda t: _above_zero(t.timeout_s)
    ),
    _Check(
        "tcc_transactions",
        "tcc_transactions_call_timeout_s_check",
        lambda t: t.call_timeout_s is None or _above_zero(t.call_timeout_s),
    ),
    _Check(
        "tcc_branches",
        "tcc_branches_branch_id_check",
        lambda b: _ID.fullmatch(b.branch_id) is not None,
    ),
    _Check("tcc_branches", "tcc_branches_status_check", lambda b: b.status in _WORDS[BranchStatus]),
    _Check("tcc_events", "tcc_events_repeats_check", lambda e: e.repeats >= 1),
    _Check("tcc_alerts", "tcc_alerts_kind_check", lambda a: a.kind in _WORDS[AlertKind]),
    _Check(
        "tcc_alerts",
        "tcc_alerts_subject_check",
        lambda a: (a.gid is None) != (a.participant is None),
    ),
    _Check(
        "tcc_participants",
        "tcc_participants_name_check",
        lambda p: _ID.fullmatch(p.name) is not None,
    ),
    _Check(
        "tcc_participants",
        "tcc_participants_call_timeout_s_check",
        lambda p: p.call_timeout_s is None or _above_zero(p.call_timeout_s),
    ),
    _Check(
        "tcc_participants",
        "tcc_participants_tls_profile_check",
        lambda p: p.tls_profile is None or is_profile_name(p.tls_profile),
    ),
    _Check(
        "tcc_participants",
        "tcc_participants_breaker_state_check",
        lambda p: p.breaker_state in _WORDS[BreakerState],
    ),
    _Check(
        "tcc_participants", "tcc_participants_breaker_opens_check", lambda p: p.breaker_opens >= 0
    ),
    _Check(
        "tcc_participant_minutes", "tcc_participant_minutes_calls_check", lambda m: m.calls >= 0
    ),
    _Check(
        "tcc_participant_minutes",
        "tcc_participant_minutes_check",
        lambda m: 0 <= m.errors <= m.calls,
    ),
    _Check(
        "tcc_console_sessions",
        "tcc_console_sessions_id_check",
        lambda s: _SESSION_ID.fullmatch(s.id) is not None,
    ),
    _Check(
        "tcc_console_sessions",
        "tcc_console_sessions_scope_check",
        lambda s: s.scope in _CONSOLE_SCOPES,
    ),
    _Check(
        "tcc_console_sessions",
        "tcc_console_sessions_check",
        lambda s: s.expires_at > s.created_at,
    ),
)


def _checked(table: str, row: _R) -> _R:
    """``row``, if it breaks no CHECK of ``table``; InvalidInput as from Postgres otherwise."""
    for check in CHECKS:
        if check.table == table and not check.holds(row):
            raise InvalidInput(
                f'a value cannot be stored: new row for relation "{table}" violates check'
                f' constraint "{check.name}"'
            )
    return row


def _new_branch(gid: str, position: int, write: NewBranchWrite, now: datetime) -> Branch:
    """A branch as registered (its CHECKs not yet applied)."""
    new = write.branch
    return Branch(
        gid=gid,
        branch_id=new.branch_id,
        position=position,
        name=new.name,
        try_url=new.try_url,
        confirm_url=new.confirm_url,
        cancel_url=new.cancel_url,
        payload=_stored(new.payload),
        status=write.status,
        attempts=0,
        last_http_status=None,
        last_error=None,
        last_latency_ms=None,
        next_retry_at=None,
        created_at=now,
        updated_at=now,
        data=new.data,
        participant=new.participant,
    )


@dataclass(slots=True)
class _TransactionRow:
    """A transaction as stored, with the columns the Transaction record does not carry."""

    record: Transaction
    request_hash: str
    lease_token: str | None = None
    phase_started_at: datetime | None = None

    def update(self, **changes: Any) -> Transaction:
        """Change columns; a change that breaks a CHECK is refused and changes nothing."""
        self.record = _checked("tcc_transactions", dataclasses.replace(self.record, **changes))
        return self.record


@dataclass(slots=True)
class _AlertRow:
    id: int
    gid: str | None
    kind: AlertKind
    body: dict[str, Any]
    created_at: datetime
    next_attempt_at: datetime
    participant: str | None = None
    attempts: int = 0
    last_error: str | None = None
    settled: bool = False  # delivered or given up
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None


@dataclass(slots=True)
class _BranchRow:
    record: Branch
    request_hash: str

    def update(self, **changes: Any) -> Branch:
        """Change columns; a change that breaks a CHECK is refused and changes nothing."""
        self.record = _checked("tcc_branches", dataclasses.replace(self.record, **changes))
        return self.record


class InMemoryLog:
    """The transaction log in memory (see TransactionLog for the contract, and PostgresLog
    with sql/queries.sql for the statements it mirrors). Each write applies what
    core.writes works out, with the guards the SQL applies; each operation holds one lock,
    so each is atomic as a database transaction is; each reads the clock once, as ``now()``
    is fixed for a Postgres transaction."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock or ManualClock()
        self._lock = asyncio.Lock()
        self._transactions: dict[str, _TransactionRow] = {}
        # Per transaction, by branch_id in registration order (which is ``position``).
        self._branches: dict[str, dict[str, _BranchRow]] = {}
        self._events: dict[str, list[Event]] = {}
        self._last_event_id = 0
        self._last_event_at: datetime | None = None
        self._alerts: dict[int, _AlertRow] = {}
        self._last_alert_id = 0
        # (gid, kind, stay in phase two, round): one alert each, as the unique key in SQL.
        self._alert_keys: set[tuple[str, AlertKind, datetime | None, int]] = set()
        self._coordinators: dict[str, CoordinatorSeen] = {}
        self._participants: dict[str, Participant] = {}
        self._call_minutes: dict[tuple[str, datetime, Phase], MinuteOfCalls] = {}
        self._sessions: dict[str, ConsoleSession] = {}

    async def close(self) -> None:
        """Nothing to close; the log lives as long as the object."""

    async def readiness(self) -> list[str]:
        return []

    # --- rows ---------------------------------------------------------------------

    def _row(self, gid: str) -> _TransactionRow:
        row = self._transactions.get(gid)
        if row is None:
            raise NotFound(f"no transaction {gid!r}")
        return row

    def _branch_rows(self, gid: str) -> list[_BranchRow]:
        return list(self._branches.get(gid, {}).values())

    def _views(self, gid: str) -> list[BranchView]:
        return [b.record.view for b in self._branch_rows(gid)]

    def _leased(self, lease: Lease) -> _TransactionRow | None:
        """The transaction if ``lease`` is its current lease (the fencing check). Like the
        SQL, this compares tokens only: a lapsed lease nobody took over still holds."""
        row = self._transactions.get(lease.gid)
        if row is None or row.lease_token is None or row.lease_token != lease.token:
            return None
        return row

    # --- events -------------------------------------------------------------------

    def _event_time(self) -> datetime:
        """Postgres stamps events with clock_timestamp(), which moves on even inside one
        transaction: keep the timeline strictly increasing while the manual clock stands
        still."""
        at = self.clock.now()
        if self._last_event_at is not None and at <= self._last_event_at:
            at = self._last_event_at + _TICK
        self._last_event_at = at
        return at

    def _event(
        self,
        gid: str,
        entry: Entry,
        *,
        branch_id: str | None = None,
        call: CallRecord | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Append ``entry`` to the timeline (with ``detail`` in place of its own, if given);
        a repeatable one identical to the latest one of the same branch (or of the
        transaction itself, without a branch) only counts as one more repeat of it (the
        insert_or_repeat_event rule)."""
        event = Event(
            id=0,  # numbered below, once it is known to be a new row
            at=self._event_time(),
            kind=entry.kind,
            branch_id=branch_id,
            phase=entry.phase,
            http_status=call.http_status if call else None,
            latency_ms=_double(call.latency_ms) if call else None,
            error=call.error if call else None,
            detail=_stored(entry.detail if detail is None else detail),
            repeats=1,
            last_at=None,
        )
        timeline = self._events.setdefault(gid, [])
        if entry.repeatable and self._repeat_latest(timeline, event):
            return
        # Ids increase across the whole log, like the identity column.
        self._last_event_id += 1
        timeline.append(_checked("tcc_events", dataclasses.replace(event, id=self._last_event_id)))

    @staticmethod
    def _repeat_latest(timeline: list[Event], event: Event) -> bool:
        """Count ``event`` as a repeat of its branch's latest event if the two are the same
        failure (kind, phase, HTTP status, error and detail); True when it was."""
        index = next(
            (i for i in reversed(range(len(timeline))) if timeline[i].branch_id == event.branch_id),
            None,
        )
        if index is None:
            return False
        latest = timeline[index]
        same = (latest.kind, latest.phase, latest.http_status, latest.error, latest.detail) == (
            event.kind,
            event.phase,
            event.http_status,
            event.error,
            event.detail,
        )
        if not same:
            return False
        timeline[index] = dataclasses.replace(
            latest, repeats=latest.repeats + 1, last_at=event.at, latency_ms=event.latency_ms
        )
        return True

    # --- begin, register, try -----------------------------------------------------

    async def begin(self, new: NewTransaction) -> tuple[TransactionDetail, bool]:
        """Log a new transaction; a repeat with the same request returns the original."""
        write = writes.begin(new)
        async with self._lock:
            existing = self._transactions.get(new.gid)
            if existing is not None:
                if existing.request_hash != new.request_hash:
                    raise TakenGid(new.gid)
                return self._detail(new.gid, DEFAULT_EVENTS_PAGE), False
            first_event = self._last_event_id
            now = self.clock.now()
            deadline = _later(now, new.timeout_s)
            # Everything that may refuse the input is done before the first write, so that a
            # refused begin leaves nothing behind (as a rolled-back transaction).
            _stored(write.entry.detail)
            txn = Transaction(
                gid=new.gid,
                status=write.status,
                dialect=new.dialect,
                kind=new.kind,
                service=new.service,
                metadata=_stored(new.metadata),
                timeout_s=float(new.timeout_s),
                call_timeout_s=_double(new.call_timeout_s),
                deadline=deadline,
                cancel_reason=None,
                created_at=now,
                updated_at=now,
                decided_at=None,
                finished_at=None,
                phase_attempts=0,
                next_attempt_at=deadline,
                lease_owner=None,
                lease_expires_at=None,
                options=_stored(new.options),
                traceparent=new.traceparent,
                tracestate=new.tracestate,
            )
            _checked("tcc_transactions", txn)
            branches = [
                _checked("tcc_branches", _new_branch(new.gid, position, b, now))
                for position, b in enumerate(write.branches)
            ]
            self._transactions[new.gid] = _TransactionRow(txn, new.request_hash)
            self._branches[new.gid] = {}
            self._event(new.gid, write.entry)
            for branch, branch_write in zip(branches, write.branches, strict=True):
                self._insert_branch(branch, branch_write)
            written = self._written(new.gid, first_event)
            return TransactionDetail(written.transaction, written.branches, written.events), True

    def _insert_branch(self, branch: Branch, write: NewBranchWrite) -> Branch:
        rows = self._branches[branch.gid]
        rows[branch.branch_id] = _BranchRow(branch, write.branch.request_hash)
        self._event(branch.gid, write.entry, branch_id=branch.branch_id)
        return branch

    async def register_branch(
        self, gid: str, new: NewBranch, max_branches: int
    ) -> tuple[Branch, bool]:
        """Add a branch while the transaction is trying; an identical repeat is a no-op."""
        write = writes.register(new, max_branches)
        async with self._lock:
            row = self._row(gid)
            existing = self._branches[gid].get(new.branch_id)
            if existing is not None:
                if existing.request_hash != new.request_hash:
                    raise Conflict(
                        f"branch {new.branch_id!r} is already registered with other values"
                    )
                return _out_branch(existing.record), False
            now = self.clock.now()
            rows = self._branches[gid]
            refused = write.refusal(row.record.status, row.record.deadline <= now, len(rows))
            if refused is not None:
                raise refused
            branch = _checked("tcc_branches", _new_branch(gid, len(rows), write.branch, now))
            return _out_branch(self._insert_branch(branch, write.branch)), True

    async def claim_stale_try(
        self, gid: str, branch_id: str, stale_after_s: float
    ) -> Branch | None:
        """The branch, if its try may be run again; touching updated_at is the CAS that lets
        only one repeat have it."""
        async with self._lock:
            row = self._transactions.get(gid)
            branch_row = self._branches.get(gid, {}).get(branch_id)
            if row is None or branch_row is None:
                return None
            now = self.clock.now()
            branch = branch_row.record
            stale = writes.STALE_TRY.applies(
                row.record.status, branch.view
            ) and branch.updated_at < _later(now, -stale_after_s)
            if not stale:
                return None
            return _out_branch(branch_row.update(updated_at=now))

    async def record_try(
        self, gid: str, branch_id: str, verdict: TryVerdict, call: CallRecord
    ) -> tuple[Branch, bool]:
        """Store a try's outcome; a late answer (the branch moved on) is only logged."""
        write = writes.try_answer(TryRecord(branch_id, verdict, call))
        async with self._lock:
            self._row(gid)
            branch_row = self._branches[gid].get(branch_id)
            if branch_row is None:
                raise NotFound(f"no branch {branch_id!r} in transaction {gid!r}")
            recorded = self._record_call(gid, write, self.clock.now())
            return _out_branch(branch_row.record), recorded

    def _record_call(self, gid: str, write: CallWrite, now: datetime) -> bool:
        """A participant's answer on one branch (every kind of call, as each statement does
        it); True when the branch took it."""
        rule = write.rule
        branch_row = self._branches[gid].get(write.branch_id)
        taken = branch_row is not None and rule.takes(branch_row.record.status)
        if branch_row is not None and taken:
            branch_row.update(
                status=branch_row.record.status if rule.target is None else rule.target,
                attempts=branch_row.record.attempts + 1,
                last_http_status=write.call.http_status,
                last_error=write.call.error,
                last_latency_ms=_double(write.call.latency_ms),
                next_retry_at=None,
                updated_at=now,
            )
        self._event(
            gid, rule.entry, branch_id=write.branch_id, call=write.call, detail=rule.detail(taken)
        )
        return taken

    # --- decisions and operator actions -------------------------------------------

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
        write = writes.decision(decision, reason=reason, owner=owner, actor=actor, kind=kind)
        async with self._lock:
            row = self._row(gid)
            now = self.clock.now()
            txn = row.record
            views = self._views(gid)
            judgement = states.judge_decision(
                decision, txn.status, txn.deadline <= now, views, txn.cancel_reason, kind
            )
            allowed = write.move.allows(txn.status) and write.guard.holds(
                txn.deadline <= now, views
            )
            # The guard the SQL applies and the judgement are the core's, and must agree.
            assert allowed == (judgement.verdict is Verdict.DECIDE), (write, judgement)
            branches = [_out_branch(b.record) for b in self._branch_rows(gid)]
            if not allowed:
                return DecideResult(_out_transaction(txn), judgement, None, branches)
            lease = self._take_decision(row, write, owner, lease_ttl_s, now, options)
            return DecideResult(_out_transaction(row.record), judgement, lease, branches)

    async def decide_after_tries(
        self, gid: str, tries: list[TryRecord], *, owner: str, lease_ttl_s: float
    ) -> tuple[DecideResult, Written | None]:
        """The tries' answers, then the decision, as the decide_after_tries statement."""
        write = writes.decision_after_tries(gid, tries, owner)
        async with self._lock:
            row = self._row(gid)
            now = self.clock.now()
            first_event = self._last_event_id
            recorded = [self._record_call(gid, t, now) for t in write.tries]
            txn = row.record
            chosen = write.choose(txn.status, txn.deadline <= now, self._views(gid), all(recorded))
            if chosen is None:
                return DecideResult(_out_transaction(txn), writes.undecided(txn.status), None), None
            lease = self._take_decision(row, chosen, owner, lease_ttl_s, now)
            written = self._written(gid, first_event)
            return DecideResult(written.transaction, Judgement(Verdict.DECIDE), lease), written

    def _take_decision(
        self,
        row: _TransactionRow,
        write: DecisionWrite,
        owner: str,
        lease_ttl_s: float,
        now: datetime,
        options: OptionsUpdate | None = None,
    ) -> Lease:
        """Write a decision its guard allows (with the options given with it); the decider
        gets the lease."""
        assert write.move.allows(row.record.status)  # the CAS guard
        lease_expires_at = _later(now, lease_ttl_s)  # may refuse the input: before any write
        if options is not None:  # merged key by key (jsonb ||)
            call_timeout_s = options.call_timeout_s
            row.update(
                options={**row.record.options, **_stored(options.options)},
                call_timeout_s=row.record.call_timeout_s
                if call_timeout_s is None
                else _double(call_timeout_s),
            )
        row.lease_token = _new_token()
        row.phase_started_at = now
        row.update(
            status=write.move.target,
            cancel_reason=write.cancel_reason,
            decided_at=now,
            phase_attempts=0,
            next_attempt_at=now,
            updated_at=now,
            lease_owner=owner,
            lease_expires_at=lease_expires_at,
        )
        self._event(row.record.gid, write.entry)
        return Lease(row.record.gid, row.lease_token)

    def _written(self, gid: str, after_event: int) -> Written:
        """The transaction and its branches now, and the events written after an id."""
        return Written(
            _out_transaction(self._row(gid).record),
            [_out_branch(b.record) for b in self._branch_rows(gid)],
            [_out_event(e) for e in self._events.get(gid, []) if e.id > after_event],
        )

    async def retry_parked(
        self,
        gid: str,
        *,
        actor: str,
        owner: str | None,
        lease_ttl_s: float,
        reason: str | None = None,
    ) -> tuple[Transaction, Lease | None]:
        """Back into phase two with a fresh budget; with an owner, under its lease at once,
        without one for the next recovery scan."""
        async with self._lock:
            row = self._row(gid)
            write = writes.retry_parked(row.record.status, actor=actor, reason=reason)
            assert write.move.allows(row.record.status)  # the CAS guard
            now = self.clock.now()
            lease_expires_at = _later(now, lease_ttl_s) if owner is not None else None
            row.lease_token = _new_token() if owner is not None else None
            row.phase_started_at = now
            txn = row.update(
                status=write.move.target,
                next_attempt_at=now,
                updated_at=now,
                phase_attempts=0,
                lease_owner=owner,
                lease_expires_at=lease_expires_at,
            )
            self._event(gid, write.entry)
            lease = Lease(gid, row.lease_token) if row.lease_token is not None else None
            return _out_transaction(txn), lease

    async def resolve_parked(
        self, gid: str, *, actor: str, note: str, branch_id: str | None = None
    ) -> Transaction:
        """An operator finished stuck branches by hand (all, or one): they are marked done,
        and the transaction once none waits, with who and why in the timeline."""
        async with self._lock:
            row = self._row(gid)
            write = writes.resolve_parked(
                row.record.status,
                actor=actor,
                note=note,
                branch_id=branch_id,
                kind=row.record.kind,
            )
            if branch_id is not None:
                only = self._branches[gid].get(branch_id)
                if only is None:
                    raise NotFound(f"no branch {branch_id!r} in transaction {gid!r}")
                if not write.branches.allows(only.record.status):
                    raise write.already_done()
            now = self.clock.now()
            resolved: list[str] = []
            for branch_row in self._branch_rows(gid):
                chosen = branch_id is None or branch_row.record.branch_id == branch_id
                if chosen and write.branches.allows(branch_row.record.status):
                    branch_row.update(
                        status=write.branches.target,
                        last_error=write.last_error,
                        next_retry_at=None,
                        updated_at=now,
                    )
                    resolved.append(branch_row.record.branch_id)
            waiting = any(write.branches.allows(b.record.status) for b in self._branch_rows(gid))
            txn = row.record
            if not waiting:
                assert write.finish.allows(txn.status)  # the CAS guard
                row.lease_token = None
                txn = row.update(
                    status=write.finish.target,
                    finished_at=now,
                    updated_at=now,
                    next_attempt_at=None,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            detail = write.detail(resolved, finished=not waiting)
            self._event(gid, write.entry, branch_id=branch_id, detail=detail)
            return _out_transaction(txn)

    # --- leases and phase two -------------------------------------------------------

    async def claim_due(self, owner: str, limit: int, lease_ttl_s: float) -> list[Claim]:
        """Leases on the active transactions due first whose lease is free or lapsed."""
        async with self._lock:
            now = self.clock.now()
            lease_expires_at = _later(now, lease_ttl_s)
            due = [row for row in self._transactions.values() if self._is_due(row, now)]
            # A stable sort: equal times keep the order the transactions were begun in.
            due.sort(key=lambda row: row.record.next_attempt_at or now)
            claimed: list[Claim] = []
            for row in due[: _row_limit(limit)]:
                took_over = row.record.lease_owner is not None
                row.lease_token = _new_token()
                row.update(lease_owner=owner, lease_expires_at=lease_expires_at)
                lease = Lease(row.record.gid, row.lease_token)
                claimed.append(Claim(lease, row.record.status, took_over))
            return claimed

    @staticmethod
    def _is_due(row: _TransactionRow, now: datetime) -> bool:
        txn = row.record
        return (
            txn.status in states.ACTIVE_STATUSES
            and txn.next_attempt_at is not None
            and txn.next_attempt_at <= now
            and (txn.lease_expires_at is None or txn.lease_expires_at <= now)
        )

    async def renew_lease(self, lease: Lease, lease_ttl_s: float) -> bool:
        async with self._lock:
            row = self._leased(lease)
            if row is None:
                return False
            row.update(lease_expires_at=_later(self.clock.now(), lease_ttl_s))
            return True

    async def release_lease(self, lease: Lease) -> None:
        async with self._lock:
            row = self._leased(lease)
            if row is not None:
                row.lease_token = None
                row.update(lease_owner=None, lease_expires_at=None)

    async def round_context(self, lease: Lease, give_up_after_s: float) -> RoundContext | None:
        """The transaction and its branches under the lease; the budget is spent once
        give_up_after_s has passed since the phase started (by the log's clock)."""
        async with self._lock:
            row = self._leased(lease)
            if row is None:
                return None
            started = row.phase_started_at
            now = self.clock.now()
            spent = started is not None and _later(started, give_up_after_s) <= now
            branches = [_out_branch(b.record) for b in self._branch_rows(lease.gid)]
            deadline_passed = row.record.deadline <= now
            return RoundContext(_out_transaction(row.record), branches, spent, deadline_passed)

    async def record_phase_call(self, lease: Lease, answer: CallWrite) -> bool:
        """Store one phase-two reply. A fenced-out holder writes nothing at all, not even
        the timeline event: the new holder owns this transaction's story now."""
        async with self._lock:
            if self._leased(lease) is None:
                return False
            # Logged even when the branch had nothing left to move, as the SQL does.
            self._record_call(lease.gid, answer, self.clock.now())
            return True

    async def change_course(self, lease: Lease, write: CourseChange) -> Transaction | None:
        async with self._lock:
            row = self._leased(lease)
            if row is None or not write.move.allows(row.record.status):
                return None
            now = self.clock.now()
            row.phase_started_at = now
            txn = row.update(
                status=write.move.target,
                cancel_reason=write.cancel_reason,
                phase_attempts=0,
                next_attempt_at=now,
                updated_at=now,
            )
            self._event(lease.gid, write.entry)
            return _out_transaction(txn)

    async def postpone(
        self, lease: Lease, write: Postpone, call: CallRecord | None = None
    ) -> Transaction | None:
        async with self._lock:
            row = self._leased(lease)
            if row is None or not write.move.allows(row.record.status):
                return None
            now = self.clock.now()
            next_attempt_at = _later(now, write.retry_in_s)  # may refuse: before any write
            row.lease_token = None
            txn = row.update(
                next_attempt_at=next_attempt_at,
                updated_at=now,
                phase_attempts=row.record.phase_attempts + int(write.counts_round),
                lease_owner=None,
                lease_expires_at=None,
            )
            self._event(lease.gid, write.entry, call=call)
            return _out_transaction(txn)

    async def finish_done_round(
        self, lease: Lease, decision: Decision, calls: list[tuple[str, CallRecord]], owner: str
    ) -> Written | None:
        """Every call done: their outcomes and the end of the phase, in one write."""
        write = writes.done_round(decision, calls, owner)
        async with self._lock:
            row = self._leased(lease)
            if row is None:
                return None
            now = self.clock.now()
            first_event = self._last_event_id
            for call in write.call_writes():
                self._record_call(lease.gid, call, now)
            if not write.end.move.allows(row.record.status):
                return None
            self._end_round(row, write.end, now)
            return self._written(lease.gid, first_event)

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
        """End a round (final, parked, or the next retry) and let the lease go; None if the
        lease was lost or the transaction left the decision's phase."""
        end = writes.round_end(
            decision,
            outcome,
            owner=owner,
            retry_in_s=retry_in_s,
            pending=pending,
            alert_after_rounds=alert_after_rounds,
        )
        async with self._lock:
            row = self._leased(lease)
            if row is None or not end.move.allows(row.record.status):
                return None
            return _out_transaction(self._end_round(row, end, self.clock.now()))

    def _end_round(self, row: _TransactionRow, end: RoundEnd, now: datetime) -> Transaction:
        """The end of a round its guard allows, and the alert it raises (finish_round and
        finish_done_rounds)."""
        gid = row.record.gid
        next_attempt_at = _later(now, end.retry_in_s) if end.retry_in_s is not None else None
        row.lease_token = None
        txn = row.update(
            status=end.move.target,
            phase_attempts=row.record.phase_attempts + 1,
            updated_at=now,
            next_attempt_at=next_attempt_at,
            finished_at=now if end.finishes else None,
            lease_owner=None,
            lease_expires_at=None,
        )
        for branch_id in set(end.pending):
            branch_row = self._branches[gid].get(branch_id)
            if branch_row is not None:
                branch_row.update(next_retry_at=next_attempt_at)
        self._event(gid, end.entry, detail=end.detail(txn.phase_attempts))
        if end.alert is not None and end.alert.raised_after(txn.phase_attempts):
            stay = row.phase_started_at or txn.decided_at or txn.created_at
            key = (gid, end.alert.kind, stay, txn.phase_attempts)
            if key not in self._alert_keys:
                branches = [b.record for b in self._branch_rows(gid)]
                alert = _AlertRow(
                    id=self._last_alert_id + 1,
                    gid=gid,
                    kind=end.alert.kind,
                    body=_stored(alert_body(end.alert.kind, txn, branches)),
                    created_at=now,
                    next_attempt_at=now,
                )
                self._alerts[alert.id] = _checked("tcc_alerts", alert)
                self._last_alert_id = alert.id
                self._alert_keys.add(key)
        return txn

    # --- alerts ------------------------------------------------------------------------

    async def claim_alerts(self, owner: str, limit: int, lease_ttl_s: float) -> list[Alert]:
        async with self._lock:
            now = self.clock.now()
            due = sorted(
                (
                    a
                    for a in self._alerts.values()
                    if not a.settled
                    and a.next_attempt_at <= now
                    and (a.lease_expires_at is None or a.lease_expires_at < now)
                ),
                key=lambda a: (a.next_attempt_at, a.id),
            )[: _row_limit(limit)]
            for a in due:
                a.lease_owner, a.lease_expires_at = owner, _later(now, lease_ttl_s)
            return [
                Alert(
                    id=a.id,
                    gid=a.gid,
                    participant=a.participant,
                    kind=a.kind,
                    body=copy.deepcopy(a.body),
                    attempts=a.attempts,
                    age_s=(now - a.created_at).total_seconds(),
                )
                for a in sorted(due, key=lambda a: a.id)
            ]

    def _held_alert(self, alert_id: int, owner: str) -> _AlertRow | None:
        alert = self._alerts.get(alert_id)
        return alert if alert is not None and alert.lease_owner == owner else None

    async def alert_delivered(self, alert_id: int, owner: str) -> bool:
        async with self._lock:
            alert = self._held_alert(alert_id, owner)
            if alert is None:
                return False
            alert.attempts += 1
            alert.settled, alert.last_error = True, None
            alert.lease_owner = alert.lease_expires_at = None
            return True

    async def alert_failed(
        self, alert_id: int, owner: str, error: str, retry_in_s: float | None
    ) -> bool:
        async with self._lock:
            alert = self._held_alert(alert_id, owner)
            if alert is None:
                return False
            alert.attempts += 1
            alert.last_error = error
            if retry_in_s is None:
                alert.settled = True
            else:
                alert.next_attempt_at = _later(self.clock.now(), retry_in_s)
            alert.lease_owner = alert.lease_expires_at = None
            return True

    # --- retention -------------------------------------------------------------------

    def _prunable(self, older_than_s: float) -> list[Transaction]:
        cutoff = _later(self.clock.now(), -older_than_s)
        return sorted(
            (
                row.record
                for row in self._transactions.values()
                if row.record.status in states.FINAL_STATUSES
                and row.record.created_at < cutoff
                and row.record.finished_at is not None
                and row.record.finished_at < cutoff
            ),
            key=lambda txn: txn.created_at,
        )

    async def prune(self, older_than_s: float, batch: int) -> int:
        async with self._lock:
            doomed = self._prunable(older_than_s)[: _row_limit(batch)]
            for txn in doomed:
                del self._transactions[txn.gid]
                self._branches.pop(txn.gid, None)
                self._events.pop(txn.gid, None)
            cutoff = _later(self.clock.now(), -older_than_s)
            old_alerts = [
                a.id for a in self._alerts.values() if a.settled and a.created_at < cutoff
            ]
            for alert_id in sorted(old_alerts)[: _row_limit(batch)]:
                del self._alerts[alert_id]
            return len(doomed)

    async def count_prunable(self, older_than_s: float) -> int:
        async with self._lock:
            return len(self._prunable(older_than_s))

    # --- participants ----------------------------------------------------------------

    async def register_participant(
        self, new: NewParticipant, *, replace_any: bool = True
    ) -> tuple[Participant, bool] | None:
        async with self._lock:
            now = self.clock.now()
            known = self._participants.get(new.name)
            registration = {
                f.name: getattr(new, f.name) for f in dataclasses.fields(NewParticipant)
            }
            if known is None:
                row = Participant(
                    **registration,
                    created_at=now,
                    updated_at=now,
                    breaker_state=BreakerState.CLOSED,
                    breaker_since=now,
                    breaker_reason=None,
                    breaker_retry_at=None,
                    breaker_opens=0,
                    probe_owner=None,
                    probe_expires_at=None,
                    ramp_started_at=None,
                )
            else:
                if not replace_any and known.owner_service != new.owner_service:
                    return None
                registration["owner_service"] = new.owner_service or known.owner_service
                row = dataclasses.replace(known, **registration, updated_at=now)
            self._participants[new.name] = _checked("tcc_participants", row)
            return row, known is None

    async def remove_participant(self, name: str, *, owner: str | None = None) -> bool:
        async with self._lock:
            known = self._participants.get(name)
            if known is None or (owner is not None and known.owner_service != owner):
                return False
            del self._participants[name]
            return True

    async def participants(self) -> Registry:
        async with self._lock:
            now = self.clock.now()
            seen = _later(now, -LIVE_COORDINATOR_S)
            live = sum(
                1
                for c in self._coordinators.values()
                if c.stopped_at is None and c.last_seen_at > seen
            )
            return Registry([self._participants[n] for n in sorted(self._participants)], now, live)

    async def participant(self, name: str) -> Participant | None:
        async with self._lock:
            return self._participants.get(name)

    async def move_breaker(self, move: BreakerMove) -> Participant | None:
        async with self._lock:
            now = self.clock.now()
            row = self._participants.get(move.name)
            if row is None or row.breaker_state not in move.sources:
                return None
            if move.opens_seen is not None and row.breaker_opens != move.opens_seen:
                return None
            if move.holder is not None and row.probe_owner != move.holder:
                return None
            if move.when_due and not (
                (row.breaker_retry_at is not None and row.breaker_retry_at <= now)
                or (row.probe_expires_at is not None and row.probe_expires_at < now)
            ):
                return None
            moved = _checked(
                "tcc_participants",
                dataclasses.replace(
                    row,
                    breaker_state=move.target,
                    breaker_since=now,
                    breaker_reason=move.reason or row.breaker_reason,
                    breaker_retry_at=_later_or_none(now, move.open_for_s),
                    breaker_opens=row.breaker_opens if move.opens is None else move.opens,
                    probe_owner=move.probe_owner,
                    probe_expires_at=_later_or_none(now, move.probe_ttl_s),
                    ramp_started_at=now if move.ramps else None,
                ),
            )
            self._participants[move.name] = moved
            key = (move.name, AlertKind.BREAKER_OPEN, now, 0)
            if move.alert and key not in self._alert_keys:
                alert = _AlertRow(
                    id=self._last_alert_id + 1,
                    gid=None,
                    participant=move.name,
                    kind=AlertKind.BREAKER_OPEN,
                    body=_stored(move.alert_body()),
                    created_at=now,
                    next_attempt_at=now,
                )
                self._alerts[alert.id] = _checked("tcc_alerts", alert)
                self._last_alert_id = alert.id
                self._alert_keys.add(key)
            return moved

    async def add_call_tallies(self, tallies: list[CallTally]) -> None:
        async with self._lock:
            minute = self.clock.now().replace(second=0, microsecond=0)
            for t in tallies:
                key = (t.participant, minute, t.phase)
                known = self._call_minutes.get(key)
                row = MinuteOfCalls(
                    t.participant,
                    minute,
                    t.phase,
                    t.calls + (known.calls if known else 0),
                    t.errors + (known.errors if known else 0),
                    t.latency_ms_sum + (known.latency_ms_sum if known else 0.0),
                    max(t.latency_ms_max, known.latency_ms_max if known else 0.0),
                )
                self._call_minutes[key] = _checked("tcc_participant_minutes", row)

    async def participant_usage(self, names: list[str], window_s: float) -> list[ParticipantUsage]:
        async with self._lock:
            now = self.clock.now()
            waiting: dict[str, set[str]] = {}
            done_in = dict(writes.WAITING)
            for gid, txn_row in self._transactions.items():
                done = done_in.get(txn_row.record.status)
                if done is None:
                    continue
                for b in self._branch_rows(gid):
                    if b.record.participant is not None and b.record.status is not done:
                        waiting.setdefault(b.record.participant, set()).add(gid)
            return participant_usage(
                names,
                list(self._call_minutes.values()),
                {name: len(gids) for name, gids in waiting.items()},
                now,
                window_s,
            )

    async def prune_call_tallies(self, older_than_s: float) -> int:
        async with self._lock:
            cutoff = _later(self.clock.now(), -older_than_s)
            old = [key for key, row in self._call_minutes.items() if row.minute < cutoff]
            for key in old:
                del self._call_minutes[key]
            return len(old)

    # --- coordinators -----------------------------------------------------------------

    async def coordinator_seen(self, owner: str, claimed: int, taken_over: int) -> None:
        async with self._lock:
            now = self.clock.now()
            known = self._coordinators.get(owner)
            if known is None:
                known = CoordinatorSeen(owner, now, now, None, 0, 0, 0, None, 0, 0.0)
            self._coordinators[owner] = dataclasses.replace(
                known,
                last_seen_at=now,
                stopped_at=None,
                scans=known.scans + 1,
                claimed=known.claimed + claimed,
                taken_over=known.taken_over + taken_over,
                last_claim_at=now if claimed else known.last_claim_at,
            )

    async def coordinator_stopped(self, owner: str) -> None:
        async with self._lock:
            known = self._coordinators.get(owner)
            if known is not None:
                now = self.clock.now()
                self._coordinators[owner] = dataclasses.replace(
                    known, stopped_at=now, last_seen_at=now
                )

    async def prune_coordinators(self, unseen_for_s: float) -> int:
        async with self._lock:
            cutoff = _later(self.clock.now(), -unseen_for_s)
            gone = [o for o, c in self._coordinators.items() if c.last_seen_at < cutoff]
            for owner in gone:
                del self._coordinators[owner]
            return len(gone)

    def _coordinators_seen(self, now: datetime, within_s: float) -> list[CoordinatorSeen]:
        """The coordinators_seen query: newest first, with the live leases each holds."""
        since = _later(now, -within_s)
        held: dict[str, int] = {}
        for row in self._transactions.values():
            txn = row.record
            if txn.lease_owner and txn.lease_expires_at and txn.lease_expires_at > now:
                held[txn.lease_owner] = held.get(txn.lease_owner, 0) + 1
        seen = [c for c in self._coordinators.values() if c.last_seen_at > since]
        seen.sort(key=lambda c: c.started_at, reverse=True)
        return [
            dataclasses.replace(
                c,
                leases_held=held.get(c.owner, 0),
                seen_ago_s=(now - c.last_seen_at).total_seconds(),
            )
            for c in seen[:50]
        ]

    # --- console sessions ----------------------------------------------------------

    async def open_session(self, new: NewSession) -> None:
        async with self._lock:
            now = self.clock.now()
            session = ConsoleSession(
                id=new.id,
                key_name=new.key_name,
                scope=new.scope,
                key_digest=new.key_digest,
                remote=new.remote,
                created_at=now,
                last_seen_at=now,
                expires_at=_later(now, new.ttl_s),
                revoked_at=None,
                revoked_by=None,
            )
            _checked("tcc_console_sessions", session)
            if new.id in self._sessions:
                raise Conflict(f"session {new.id[:12]!r} exists")
            self._sessions[new.id] = session

    @staticmethod
    def _session_live(session: ConsoleSession, now: datetime) -> bool:
        return session.revoked_at is None and session.expires_at > now

    async def session_is_live(self, session_id: str) -> bool:
        async with self._lock:
            now = self.clock.now()
            session = self._sessions.get(session_id)
            if session is None or not self._session_live(session, now):
                return False
            if session.last_seen_at < _later(now, -30):
                self._sessions[session_id] = dataclasses.replace(session, last_seen_at=now)
            return True

    async def revoke_sessions(
        self, by: str, *, id_prefix: str | None = None, key_name: str | None = None
    ) -> int:
        return await self._revoke(
            by,
            lambda s: (
                (id_prefix is None or s.id.startswith(id_prefix))
                and (key_name is None or s.key_name == key_name)
            ),
        )

    async def revoke_sessions_of_other_keys(
        self, by: str, keys: list[tuple[str, Scope, str]]
    ) -> int:
        configured = set(keys)
        return await self._revoke(
            by, lambda s: (s.key_name, s.scope, s.key_digest) not in configured
        )

    async def _revoke(self, by: str, chosen: Callable[[ConsoleSession], bool]) -> int:
        async with self._lock:
            now = self.clock.now()
            ended = [s for s in self._sessions.values() if self._session_live(s, now) and chosen(s)]
            for session in ended:
                self._sessions[session.id] = dataclasses.replace(
                    session, revoked_at=now, revoked_by=by
                )
            return len(ended)

    async def list_sessions(self, *, include_ended: bool, limit: int) -> list[ConsoleSession]:
        async with self._lock:
            now = self.clock.now()
            found = [
                s for s in self._sessions.values() if include_ended or self._session_live(s, now)
            ]
        found.sort(key=lambda s: s.created_at, reverse=True)
        return found[: _row_limit(limit)]

    async def prune_sessions(self, ended_for_s: float) -> int:
        async with self._lock:
            cutoff = _later(self.clock.now(), -ended_for_s)
            gone = [
                s.id
                for s in self._sessions.values()
                if min(s.expires_at, s.revoked_at or s.expires_at) < cutoff
            ]
            for session_id in gone:
                del self._sessions[session_id]
            return len(gone)

    # --- reads ------------------------------------------------------------------------

    async def get(self, gid: str) -> Transaction:
        async with self._lock:
            return _out_transaction(self._row(gid).record)

    async def detail(self, gid: str, events_limit: int = DEFAULT_EVENTS_PAGE) -> TransactionDetail:
        async with self._lock:
            return self._detail(gid, events_limit)

    def _detail(self, gid: str, events_limit: int) -> TransactionDetail:
        txn = self._row(gid).record
        branches = [_out_branch(b.record) for b in self._branch_rows(gid)]
        events = self._events_after(gid, 0, events_limit + 1)
        return TransactionDetail(
            _out_transaction(txn),
            branches,
            events[:events_limit],
            more_events=len(events) > events_limit,
        )

    async def events(self, gid: str, after_id: int, limit: int) -> tuple[list[Event], bool]:
        """A page of the timeline after event ``after_id``, and whether more follow."""
        async with self._lock:
            rows = self._events_after(gid, after_id, limit + 1)
            if not rows and gid not in self._transactions:
                raise NotFound(f"no transaction {gid!r}")
        return rows[:limit], len(rows) > limit

    def _events_after(self, gid: str, after_id: int, limit: int) -> list[Event]:
        """Up to ``limit`` events after ``after_id``, oldest first (list_events)."""
        later = [e for e in self._events.get(gid, []) if e.id > after_id]
        return [_out_event(e) for e in later[: _row_limit(limit)]]

    async def list(self, flt: ListFilter) -> list[Transaction]:
        """Newest first (created_at, then gid, both descending); the cursor is the
        (created_at, gid) of the last row already seen. Gids compare by code point, as
        under the C collation."""
        async with self._lock:
            found = [row.record for row in self._transactions.values() if _listed(row.record, flt)]
        found.sort(key=lambda t: (t.created_at, t.gid), reverse=True)
        return [_out_transaction(t) for t in found[: _row_limit(flt.limit)]]

    async def backlog(self) -> Backlog:
        async with self._lock:
            now = self.clock.now()
            unfinished = [row.record for row in self._transactions.values()]
        unfinished = [t for t in unfinished if t.status in states.UNFINISHED_STATUSES]
        counts: dict[GlobalStatus, int] = {}
        for t in unfinished:
            counts[t.status] = counts.get(t.status, 0) + 1
        oldest = min((t.created_at for t in unfinished), default=None)
        age = (now - oldest).total_seconds() if oldest is not None else None
        return Backlog(unfinished=counts, oldest_unfinished_age_s=age)

    async def overview(self, window_s: float, attention_limit: int) -> Overview:
        async with self._lock:
            now = self.clock.now()
            txns = [row.record for row in self._transactions.values()]
        since = _later(now, -window_s)
        unfinished: dict[GlobalStatus, int] = {}
        recent: dict[GlobalStatus, int] = {}
        minutes: dict[datetime, dict[GlobalStatus, int]] = {}
        for t in txns:
            if t.status in states.UNFINISHED_STATUSES:
                unfinished[t.status] = unfinished.get(t.status, 0) + 1
            if t.created_at >= since:
                recent[t.status] = recent.get(t.status, 0) + 1
                by_status = minutes.setdefault(t.created_at.replace(second=0, microsecond=0), {})
                by_status[t.status] = by_status.get(t.status, 0) + 1
        listed = _attention(txns, now, attention_limit)
        async with self._lock:
            coordinators = self._coordinators_seen(now, COORDINATORS_SHOWN_FOR_S)
            done = dict(states.done_while_parked())
            parked_branches = {
                t.gid: _out_branch(min(waiting, key=_failing_first).record)
                for t in listed["parked"]
                if (
                    waiting := [
                        b for b in self._branch_rows(t.gid) if b.record.status is not done[t.status]
                    ]
                )
            }
        return Overview(
            unfinished=unfinished,
            recent=recent,
            per_minute=minute_tallies(minutes, now, window_s),
            parked=[_out_transaction(t) for t in listed["parked"]],
            retrying_long=[_out_transaction(t) for t in listed["retrying_long"]],
            oldest_unfinished=[_out_transaction(t) for t in listed["oldest_unfinished"]],
            near_deadline=[_out_transaction(t) for t in listed["near_deadline"]],
            window_s=window_s,
            generated_at=now,
            parked_branches=parked_branches,
            coordinators=coordinators,
        )


def _attention(txns: list[Transaction], now: datetime, limit: int) -> dict[str, list[Transaction]]:
    """The overview_attention query's four lists."""

    def first(rows: Iterable[Transaction], key: Any) -> list[Transaction]:
        return sorted(rows, key=key)[:limit]

    minute_ago, minute_ahead = _later(now, -60), _later(now, 60)
    return {
        "parked": first((t for t in txns if t.status in states.PARKED_STATUSES), _updated),
        "retrying_long": first(
            (
                t
                for t in txns
                if t.status in states.PHASE_TWO_STATUSES
                and (
                    t.phase_attempts > 3 or (t.decided_at is not None and t.decided_at < minute_ago)
                )
            ),
            lambda t: t.decided_at,
        ),
        "oldest_unfinished": first(
            (t for t in txns if t.status in states.UNFINISHED_STATUSES), lambda t: t.created_at
        ),
        "near_deadline": first(
            (
                t
                for t in txns
                if t.status in states.UNDECIDED_STATUSES
                and t.next_attempt_at is not None
                and t.next_attempt_at < minute_ahead
            ),
            lambda t: t.next_attempt_at,
        ),
    }


def _failing_first(branch: _BranchRow) -> tuple[bool, int]:
    """The order parked_branches picks in: a branch whose last call failed, then position."""
    return branch.record.last_error is None, branch.record.position


def _updated(txn: Transaction) -> datetime:
    return txn.updated_at


def _listed(txn: Transaction, flt: ListFilter) -> bool:
    """The WHERE clause of list_transactions; an empty status tuple filters nothing, as
    PostgresLog passes it as NULL."""
    if flt.statuses and txn.status not in flt.statuses:
        return False
    if flt.service is not None and txn.service != flt.service:
        return False
    if flt.created_from is not None and txn.created_at < _aware(flt.created_from):
        return False
    if flt.created_to is not None and txn.created_at >= _aware(flt.created_to):
        return False
    if flt.dialect is not None and txn.dialect != flt.dialect:
        return False
    if flt.kind is not None and txn.kind is not flt.kind:
        return False
    if flt.gid_prefix is not None and not txn.gid.startswith(flt.gid_prefix):
        return False
    if flt.after is not None:
        after_at, after_gid = flt.after
        return (txn.created_at, txn.gid) < (_aware(after_at), after_gid)
    return True


if TYPE_CHECKING:
    # mypy proves the twin keeps the whole contract.
    _twin: TransactionLog = InMemoryLog()
