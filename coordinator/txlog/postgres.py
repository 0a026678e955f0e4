"""The transaction log in Postgres, in domain words. Every query is in sql/queries.sql."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import asyncpg

from coordinator.core import jsonsafe, states
from coordinator.core.apikeys import Scope
from coordinator.core.errors import (
    Conflict,
    DatabaseUnavailable,
    InvalidInput,
    LimitExceeded,
    NotFound,
    NotTrying,
    TakenGid,
)
from coordinator.core.records import (
    Alert,
    Backlog,
    Branch,
    CallRecord,
    Claim,
    ConsoleSession,
    CoordinatorSeen,
    DecideResult,
    Event,
    Lease,
    ListFilter,
    NewBranch,
    NewSession,
    NewTransaction,
    OptionsUpdate,
    Overview,
    RoundContext,
    Transaction,
    TransactionDetail,
    TryRecord,
    Written,
    alert_body,
    from_row,
    minute_tallies,
)
from coordinator.core.states import (
    AlertKind,
    BranchStatus,
    Decision,
    EventKind,
    GlobalStatus,
    Judgement,
    Phase,
    Refusal,
    TryVerdict,
    Verdict,
)
from coordinator.txlog import migrator
from coordinator.txlog.batching import Batcher
from coordinator.txlog.interface import COORDINATORS_SHOWN_FOR_S, DEFAULT_EVENTS_PAGE
from coordinator.txlog.queries import q

# Errors that mean "the database is not there right now", not "the query is wrong".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    # Seen when the server goes away in the middle of a statement ("cannot switch to state").
    asyncpg.InternalClientError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    TimeoutError,
)


# jsonb in binary form is a version byte (1) before the JSON text. Binary, so that jsonb
# inside composite rows (RETURNING rows handed back whole) decodes too.
_JSONB_VERSION = b"\x01"


def _encode_jsonb(value: Any) -> bytes:
    return _JSONB_VERSION + jsonsafe.dumps(value).encode()


def _decode_jsonb(data: bytes) -> Any:
    return jsonsafe.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        schema="pg_catalog",
        format="binary",
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection needs when it goes back to the pool: nothing. The log never leaves
    session state behind (no SET, LISTEN, advisory lock or open cursor), so asyncpg's default
    reset (four statements, a round trip and a commit per checkout) would be pure cost."""


async def connect_pool(
    dsn: str,
    min_size: int = 2,
    max_size: int = 20,
    server_settings: dict[str, str] | None = None,
) -> asyncpg.Pool:
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            server_settings=server_settings,
            init=_init_connection,
            reset=_keep_session,
            timeout=10,  # connecting; an unreachable database must not hang a request
            command_timeout=60,
        )
    except CONNECTION_ERRORS as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {exc}") from exc
    return pool


# A statement that read the branches from a snapshot older than the row it locked runs again
# (see branch_count in queries.sql); a registration racing a repeat of itself likewise.
_STALE_SNAPSHOT_RETRIES = 5

# The statements are prepared once per connection. Left to itself, Postgres keeps planning
# the hot path's many-CTE statements for each execution's values (a plan per call costs more
# than running it); their plans do not depend on the values, so one generic plan is kept.
_SESSION = {"plan_cache_mode": "force_generic_plan"}
# Writes that are safe to lose in a crash (they are redone) do not wait for the disk.
_NO_FLUSH_WAIT = {"synchronous_commit": "off"}


def _first_of_each(branches: list[NewBranch]) -> list[NewBranch]:
    """A branch id given twice in one begin is registered once, as the first said."""
    seen: dict[str, NewBranch] = {}
    for branch in branches:
        seen.setdefault(branch.branch_id, branch)
    return list(seen.values())


def _transaction(row: asyncpg.Record) -> Transaction:
    return from_row(Transaction, row)


def _branch(row: asyncpg.Record) -> Branch:
    return from_row(Branch, row)


def _event(row: asyncpg.Record) -> Event:
    return from_row(Event, row)


class PostgresLog:
    """Every read and write of the transaction log (see TransactionLog for the contract)."""

    def __init__(self, pool: asyncpg.Pool, lazy_pool: asyncpg.Pool | None = None) -> None:
        self.pool = pool
        # Connections whose commits do not wait for the disk, for the writes that are safe
        # to lose in a crash (they are redone); the same pool when none is given.
        self.lazy_pool = lazy_pool or pool
        # Group commit of the hot path's writes (see batching.py).
        self._begins: Batcher[NewTransaction, TransactionDetail | None] = Batcher(
            self._flush_begins, key=lambda new: new.gid
        )
        self._decisions: Batcher[_AutoDecision, tuple[DecideResult, Written] | None] = Batcher(
            self._flush_decisions, key=lambda item: item.gid
        )
        self._finishes: Batcher[_DoneRound, Written | None] = Batcher(
            self._flush_finishes, key=lambda item: item.lease.gid
        )

    @classmethod
    async def connect(cls, dsn: str, min_size: int = 2, max_size: int = 20) -> PostgresLog:
        pool = await connect_pool(dsn, min_size, max_size, server_settings=_SESSION)
        try:
            lazy = await connect_pool(
                dsn, 1, max(2, max_size // 2), server_settings=_SESSION | _NO_FLUSH_WAIT
            )
        except BaseException:
            await pool.close()
            raise
        return cls(pool, lazy)

    async def close(self) -> None:
        await self.pool.close()
        if self.lazy_pool is not self.pool:
            await self.lazy_pool.close()

    @asynccontextmanager
    async def connection(
        self, *, lazy: bool = False
    ) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        try:
            async with (self.lazy_pool if lazy else self.pool).acquire() as conn:
                yield conn

        except CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(f"database unavailable: {exc}") from exc
        except (asyncpg.DataError, asyncpg.CheckViolationError) as exc:
            # A value the API let through but Postgres cannot store: the client's input.
            raise InvalidInput(f"a value cannot be stored: {exc}") from exc

    @asynccontextmanager
    async def _transaction_block(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.fetchval(q("ping"))

    async def readiness(self) -> list[str]:
        async with self.connection() as conn:
            pending = await migrator.pending_migrations(conn)
        return [f"migration {m.version:04d}_{m.name} not applied" for m in pending]

    # --- events ------------------------------------------------------------

    @staticmethod
    async def _event(
        conn: asyncpg.pool.PoolConnectionProxy,
        gid: str,
        kind: EventKind,
        *,
        branch_id: str | None = None,
        phase: Phase | None = None,
        call: CallRecord | None = None,
        detail: dict[str, Any] | None = None,
        repeatable: bool = False,
    ) -> None:
        """Append to the timeline; a ``repeatable`` event identical to the branch's latest
        one only bumps that one's repeat count."""
        await conn.execute(
            q("insert_or_repeat_event" if repeatable else "insert_event"),
            gid,
            kind.value,
            branch_id,
            phase.value if phase else None,
            call.http_status if call else None,
            call.latency_ms if call else None,
            call.error if call else None,
            detail or {},
        )

    # --- begin and register ---------------------------------------------------

    # --- the hot path, group-committed -----------------------------------------------

    async def begin(self, new: NewTransaction) -> tuple[TransactionDetail, bool]:
        written = await self._begins.submit(new)
        if written is not None:
            return written, True
        async with self.connection() as conn:
            existing_hash = await conn.fetchval(q("transaction_request_hash"), new.gid)
        if existing_hash != new.request_hash:
            raise TakenGid(new.gid)
        return await self.detail(new.gid), False

    async def _flush_begins(
        self, items: list[NewTransaction]
    ) -> list[TransactionDetail | BaseException | None]:
        firsts = [_first_of_each(new.branches) for new in items]
        branches = [(n, pos, b) for n, bs in enumerate(firsts, 1) for pos, b in enumerate(bs)]
        statement = q("begin_transactions")
        args = (
            [new.gid for new in items],
            [new.dialect for new in items],
            [new.service for new in items],
            [new.metadata for new in items],
            [new.request_hash for new in items],
            [float(new.timeout_s) for new in items],
            [new.call_timeout_s for new in items],
            [new.options for new in items],
            [{"timeout_s": new.timeout_s, "service": new.service} for new in items],
            [n for n, _, _ in branches],
            [pos for _, pos, _ in branches],
            [b.branch_id for _, _, b in branches],
            [b.name for _, _, b in branches],
            [b.try_url for _, _, b in branches],
            [b.confirm_url for _, _, b in branches],
            [b.cancel_url for _, _, b in branches],
            [b.payload for _, _, b in branches],
            [b.request_hash for _, _, b in branches],
            [b.data for _, _, b in branches],
            [len(bs) for bs in firsts],
            [new.traceparent for new in items],
            [new.tracestate for new in items],
        )
        rows = await self._batch(statement, args, items, self._flush_begins)
        if not isinstance(rows, list):
            return rows.results
        begun = [_written(row, "txn") for row in rows]
        return [
            None if w is None else TransactionDetail(w.transaction, w.branches, w.events)
            for w in begun
        ]

    async def decide_after_tries(
        self, gid: str, tries: list[TryRecord], *, owner: str, lease_ttl_s: float
    ) -> tuple[DecideResult, Written | None]:
        decided = await self._decisions.submit(_AutoDecision(gid, tuple(tries), owner, lease_ttl_s))
        if decided is None:
            # Nothing decided: say why, from the transaction as it is now.
            txn = await self.get(gid)
            return DecideResult(txn, _undecided(txn.status), None), None
        return decided

    async def _flush_decisions(
        self, items: list[_AutoDecision]
    ) -> list[tuple[DecideResult, Written] | BaseException | None]:
        owner, lease_ttl_s = items[0].owner, items[0].lease_ttl_s
        if any((i.owner, i.lease_ttl_s) != (owner, lease_ttl_s) for i in items):
            # One process, one owner: never seen, but keep each statement's settings single.
            return [r for i in items for r in await self._flush_decisions([i])]
        tries = [(n, t) for n, item in enumerate(items, 1) for t in item.tries]
        args = (
            [i.gid for i in items],
            [i.failed for i in items],
            [n for n, _ in tries],
            [t.branch_id for _, t in tries],
            [t.verdict is TryVerdict.TRIED for _, t in tries],
            [t.call.http_status for _, t in tries],
            [t.call.error for _, t in tries],
            [t.call.latency_ms for _, t in tries],
            [t.verdict.value for _, t in tries],
            owner,
            lease_ttl_s,
        )
        rows = await self._batch(q("decide_after_tries"), args, items, self._flush_decisions)
        if not isinstance(rows, list):
            return rows.results
        return [_decision_of(row) for row in rows]

    async def finish_done_round(
        self, lease: Lease, decision: Decision, calls: list[tuple[str, CallRecord]], owner: str
    ) -> Written | None:
        return await self._finishes.submit(_DoneRound(lease, decision, tuple(calls), owner))

    async def _flush_finishes(
        self, items: list[_DoneRound]
    ) -> list[Written | BaseException | None]:
        owner = items[0].owner
        if any(i.owner != owner for i in items):
            return [r for i in items for r in await self._flush_finishes([i])]
        calls = [(n, c) for n, item in enumerate(items, 1) for c in item.calls]
        args = (
            [i.lease.gid for i in items],
            [i.lease.token for i in items],
            [i.decision.value for i in items],
            [n for n, _ in calls],
            [branch_id for _, (branch_id, _) in calls],
            [c.http_status for _, (_, c) in calls],
            [c.error for _, (_, c) in calls],
            [c.latency_ms for _, (_, c) in calls],
            owner,
            states.branch_sources_of(BranchStatus.CONFIRMED),
            states.branch_sources_of(BranchStatus.CANCELLED),
        )
        rows = await self._batch(
            q("finish_done_rounds"), args, items, self._flush_finishes, lazy=True
        )
        if not isinstance(rows, list):
            return rows.results
        return [_written(row, "finished") for row in rows]

    async def _batch(
        self,
        statement: str,
        args: tuple[Any, ...],
        items: list[_Item],
        one_by_one: Callable[[list[_Item]], Awaitable[list[_Result | BaseException]]],
        *,
        lazy: bool = False,
    ) -> list[asyncpg.Record] | _Separately[_Result]:
        """Run one batched statement. If the database refuses a value in it, only the item
        that carries the value should fail: the items are then written one by one."""
        try:
            async with self.connection(lazy=lazy) as conn:
                return await conn.fetch(statement, *args)
        except InvalidInput as exc:
            if len(items) == 1:
                return _Separately([exc])
        results: list[_Result | BaseException] = []
        for item in items:
            results.extend(await one_by_one([item]))
        return _Separately(results)

    async def _insert_branch(
        self, conn: asyncpg.pool.PoolConnectionProxy, gid: str, new: NewBranch
    ) -> asyncpg.Record | None:
        row = await conn.fetchrow(
            q("insert_branch"),
            gid,
            new.branch_id,
            new.name,
            new.try_url,
            new.confirm_url,
            new.cancel_url,
            new.payload,
            new.request_hash,
            new.data,
        )
        if row is not None:
            await self._event(
                conn,
                gid,
                EventKind.BRANCH_REGISTERED,
                branch_id=new.branch_id,
                detail={"name": new.name, "coordinator_runs_try": new.try_url is not None},
            )
        return row

    async def register_branch(
        self, gid: str, new: NewBranch, max_branches: int
    ) -> tuple[Branch, bool]:
        for _ in range(_STALE_SNAPSHOT_RETRIES):
            try:
                async with self.connection() as conn:
                    row = await conn.fetchrow(
                        q("register_branch"),
                        gid,
                        new.branch_id,
                        new.name,
                        new.try_url,
                        new.confirm_url,
                        new.cancel_url,
                        new.payload,
                        new.request_hash,
                        new.data,
                        max_branches,
                    )
            except asyncpg.UniqueViolationError:
                continue  # registered meanwhile by a repeat: the next snapshot shows it
            assert row is not None  # the statement always returns its one summary row
            return _registration(gid, new, max_branches, row)
        raise DatabaseUnavailable("the transaction kept changing while a branch was registered")

    async def claim_stale_try(
        self, gid: str, branch_id: str, stale_after_s: float
    ) -> Branch | None:
        """The branch, if its try may be run again (see the query); None otherwise."""
        async with self.connection() as conn:
            row = await conn.fetchrow(q("claim_stale_try"), gid, branch_id, stale_after_s)
        return _branch(row) if row is not None else None

    async def record_try(
        self, gid: str, branch_id: str, verdict: TryVerdict, call: CallRecord
    ) -> tuple[Branch, bool]:
        target = BranchStatus.TRIED if verdict is TryVerdict.TRIED else BranchStatus.TRY_FAILED
        async with self.connection() as conn:
            row = await conn.fetchrow(
                q("record_try"),
                gid,
                branch_id,
                target.value,
                call.http_status,
                call.error,
                call.latency_ms,
                states.branch_sources_of(target),
                verdict.value,
            )
        assert row is not None  # the statement always returns its one summary row
        if row["branch"] is None:
            raise NotFound(f"no branch {branch_id!r} in transaction {gid!r}")
        return _branch(row["branch"]), bool(row["recorded"])

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
    ) -> DecideResult:
        target = states.phase_status(decision)
        for _ in range(_STALE_SNAPSHOT_RETRIES):
            async with self.connection() as conn:
                row = await conn.fetchrow(
                    q("decide_judged"),
                    gid,
                    target.value,
                    reason if decision is Decision.CANCEL else None,
                    owner,
                    lease_ttl_s,
                    [GlobalStatus.TRYING.value],  # a decision is taken only while trying
                    options.options if options is not None else None,
                    options.call_timeout_s if options is not None else None,
                    decision is Decision.CONFIRM,
                    actor,
                )
            assert row is not None  # the statement always returns its one summary row
            if row["before"] is None:
                raise NotFound(f"no transaction {gid!r}")
            branches = [_branch(b) for b in row["branches"]]
            if row["decided"] is not None:
                decided = _transaction(row["decided"])
                lease = Lease(gid, str(row["decided"]["lease_token"]))
                return DecideResult(decided, Judgement(Verdict.DECIDE), lease, branches)
            if not row["fresh"]:
                continue  # the branches were read before a registration committed: again
            before = _transaction(row["before"])
            judgement = states.judge_decision(
                decision,
                before.status,
                row["deadline_passed"],
                [b.view for b in branches],
                before.cancel_reason,
            )
            if judgement.verdict is Verdict.DECIDE:  # the SQL's rule and ours disagree
                raise AssertionError(f"decide_judged refused what judge_decision allows: {gid}")
            return DecideResult(before, judgement, None, branches)
        raise DatabaseUnavailable("the transaction kept changing while it was being decided")

    @staticmethod
    async def _lock_parked(
        conn: asyncpg.pool.PoolConnectionProxy, gid: str, verb: str
    ) -> tuple[GlobalStatus, Decision]:
        """Lock a transaction an operator acts on; it must be parked."""
        txn = await conn.fetchrow(q("lock_transaction"), gid)
        if txn is None:
            raise NotFound(f"no transaction {gid!r}")
        status = GlobalStatus(txn["status"])
        decision = states.decision_of(status)
        if status not in states.PARKED_STATUSES or decision is None:
            raise Conflict(
                f"only failed_to_confirm and failed_to_cancel transactions can be {verb};"
                f" this one is {status.value}"
            )
        return status, decision

    async def retry_parked(
        self,
        gid: str,
        *,
        actor: str,
        owner: str | None,
        lease_ttl_s: float,
        reason: str | None = None,
    ) -> tuple[Transaction, Lease | None]:
        """Move a failed_to_* transaction back into phase two (audited in the timeline)."""
        async with self._transaction_block() as conn:
            status, decision = await self._lock_parked(conn, gid, "retried")
            target = states.phase_status(decision)
            states.check_move(status, target)
            row = await conn.fetchrow(
                q("retry_parked"), gid, owner, target.value, lease_ttl_s, status.value
            )
            assert row is not None  # locked and checked above
            detail = {"from": status.value, "actor": actor}
            if reason is not None:
                detail["reason"] = reason
            await self._event(conn, gid, EventKind.ADMIN_RETRY, detail=detail)
            lease = Lease(gid, str(row["lease_token"])) if row["lease_token"] else None
            return _transaction(row), lease

    async def resolve_parked(
        self, gid: str, *, actor: str, note: str, branch_id: str | None = None
    ) -> Transaction:
        """An operator declares branches of a parked transaction done (all, or one): they
        were finished by hand. Audited in the timeline with who and why."""
        async with self._transaction_block() as conn:
            status, decision = await self._lock_parked(conn, gid, "resolved")
            final = states.final_status(decision)
            states.check_move(status, final)
            branch_done = states.branch_done_status(decision)
            sources = states.branch_sources_of(branch_done)
            resolved = await conn.fetch(
                q("resolve_branches"),
                gid,
                branch_done.value,
                states.resolved_by_hand(note),
                sources,
                branch_id,
            )
            if branch_id is not None and not resolved:
                if await conn.fetchval(q("get_branch"), gid, branch_id) is None:
                    raise NotFound(f"no branch {branch_id!r} in transaction {gid!r}")
                raise Conflict(f"branch {branch_id!r} is already {branch_done.value}")
            still_waiting = await conn.fetchval(q("pending_branches"), gid, sources)
            if still_waiting:
                row = await conn.fetchrow(q("get_transaction"), gid)
            else:
                row = await conn.fetchrow(q("resolve_transaction"), gid, final.value, status.value)
            assert row is not None  # locked and checked above
            await self._event(
                conn,
                gid,
                EventKind.ADMIN_RESOLVED,
                branch_id=branch_id,
                detail={
                    "actor": actor,
                    "note": note,
                    "branches": [r["branch_id"] for r in resolved],
                    "finished": not still_waiting,
                },
            )
            return _transaction(row)

    # --- leases and phase two ----------------------------------------------------

    async def claim_due(self, owner: str, limit: int, lease_ttl_s: float) -> list[Claim]:
        async with self.connection() as conn:
            rows = await conn.fetch(q("claim_due"), owner, limit, lease_ttl_s)
        return [
            Claim(Lease(r["gid"], str(r["lease_token"])), GlobalStatus(r["status"]), r["took_over"])
            for r in rows
        ]

    async def renew_lease(self, lease: Lease, lease_ttl_s: float) -> bool:
        async with self.connection() as conn:
            return (
                await conn.fetchval(q("renew_lease"), lease.gid, lease.token, lease_ttl_s)
                is not None
            )

    async def release_lease(self, lease: Lease) -> None:
        async with self.connection() as conn:
            await conn.execute(q("release_lease"), lease.gid, lease.token)

    async def round_context(self, lease: Lease, give_up_after_s: float) -> RoundContext | None:
        """The transaction and its branches, or None if the lease was lost."""
        async with self.connection() as conn:
            row = await conn.fetchrow(q("round_context"), lease.gid, lease.token, give_up_after_s)
            if row is None:
                return None
            branches = [_branch(r) for r in await conn.fetch(q("list_branches"), lease.gid)]
        return RoundContext(_transaction(row), branches, bool(row["budget_spent"]))

    async def record_phase_call(
        self,
        lease: Lease,
        branch_id: str,
        decision: Decision,
        done: bool,
        call: CallRecord,
    ) -> bool:
        """Store one confirm/cancel reply; False if the lease was lost (fenced out).

        A fenced-out coordinator writes nothing at all, not even the timeline event:
        the new lease holder owns this transaction's story now.
        """
        target = states.branch_done_status(decision)
        phase = states.phase_of(decision)
        async with self._transaction_block() as conn:
            row = await conn.fetchrow(
                q("record_phase_call"),
                lease.gid,
                branch_id,
                done,
                target.value,
                call.http_status,
                call.error,
                call.latency_ms,
                lease.token,
                states.branch_sources_of(target),
            )
            assert row is not None  # the statement always returns its one summary row
            if not row["holds_lease"]:
                return False
            await self._event(
                conn,
                lease.gid,
                states.call_event(phase),
                branch_id=branch_id,
                phase=phase,
                call=call,
                detail={"done": done},
                repeatable=not done,
            )
        return True

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
        """End a round and release the lease; None if the lease was lost."""
        phase_status = states.phase_status(decision)
        alert = states.alert_due(outcome, phase_status, alert_after_rounds)
        async with self._transaction_block() as conn:
            row = await conn.fetchrow(
                q("finish_round"),
                lease.gid,
                lease.token,
                outcome.value,
                [phase_status.value],
                retry_in_s,
            )
            if row is None:
                return None
            txn = _transaction(row)
            if outcome is phase_status:
                await conn.execute(
                    q("schedule_branch_retry"), lease.gid, list(pending), txn.next_attempt_at
                )
                # No round number in the detail: identical rounds collapse into one entry
                # whose repeat count says how many there were.
                await self._event(
                    conn,
                    lease.gid,
                    EventKind.RETRY_SCHEDULED,
                    detail={"pending": sorted(pending), "by": owner},
                    repeatable=True,
                )
            else:
                await self._event(
                    conn,
                    lease.gid,
                    states.outcome_event(outcome),
                    detail={"rounds": txn.phase_attempts, "by": owner},
                )
            if alert is not None and alert.raised_after(txn.phase_attempts):
                branches = [_branch(b) for b in await conn.fetch(q("list_branches"), lease.gid)]
                body = alert_body(alert.kind, txn, branches)
                await conn.execute(q("insert_alert"), lease.gid, alert.kind.value, body)
            return txn

    # --- alerts ------------------------------------------------------------------------

    async def claim_alerts(self, owner: str, limit: int, lease_ttl_s: float) -> list[Alert]:
        async with self.connection() as conn:
            rows = await conn.fetch(q("claim_alerts"), owner, limit, lease_ttl_s)
        return [
            Alert(
                id=row["id"],
                gid=row["gid"],
                kind=AlertKind(row["kind"]),
                body=row["body"],
                attempts=row["attempts"],
                age_s=row["age_s"],
            )
            for row in sorted(rows, key=lambda r: r["id"])
        ]

    async def alert_delivered(self, alert_id: int, owner: str) -> bool:
        async with self.connection() as conn:
            status = await conn.execute(q("alert_delivered"), alert_id, owner)
        return bool(status.endswith(" 1"))

    async def alert_failed(
        self, alert_id: int, owner: str, error: str, retry_in_s: float | None
    ) -> bool:
        async with self.connection() as conn:
            status = await conn.execute(
                q("alert_failed"), alert_id, owner, jsonsafe.printable(error), retry_in_s
            )
        return bool(status.endswith(" 1"))

    # --- retention -------------------------------------------------------------------

    async def prune(self, older_than_s: float, batch: int) -> int:
        # Each statement its own short transaction: its row locks last one batch.
        async with self.connection() as conn:
            status = await conn.execute(q("prune_finished"), older_than_s, batch)
            await conn.execute(q("prune_alerts"), older_than_s, batch)
        return int(status.split()[-1])

    async def count_prunable(self, older_than_s: float) -> int:
        async with self.connection() as conn:
            count = await conn.fetchval(q("count_prunable"), older_than_s)
        return int(count)

    # --- coordinators -----------------------------------------------------------------

    async def coordinator_seen(self, owner: str, claimed: int, taken_over: int) -> None:
        # Lost in a crash, it is noted again at the next scan: no need to wait for the disk.
        async with self.connection(lazy=True) as conn:
            await conn.execute(q("coordinator_seen"), owner, claimed, taken_over)

    async def coordinator_stopped(self, owner: str) -> None:
        async with self.connection() as conn:
            await conn.execute(q("coordinator_stopped"), owner)

    async def prune_coordinators(self, unseen_for_s: float) -> int:
        async with self.connection() as conn:
            status = await conn.execute(q("prune_coordinators"), unseen_for_s)
        return int(status.split()[-1])

    # --- console sessions ----------------------------------------------------------

    async def open_session(self, new: NewSession) -> None:
        async with self.connection() as conn:
            await conn.execute(
                q("open_session"),
                new.id,
                new.key_name,
                new.scope.value,
                new.key_digest,
                new.remote,
                new.ttl_s,
            )

    async def session_is_live(self, session_id: str) -> bool:
        async with self.connection() as conn:
            return bool(await conn.fetchval(q("session_is_live"), session_id))

    async def revoke_sessions(
        self, by: str, *, id_prefix: str | None = None, key_name: str | None = None
    ) -> int:
        async with self.connection() as conn:
            ended = await conn.fetchval(q("revoke_sessions"), by, id_prefix, key_name)
        return int(ended)

    async def revoke_sessions_of_other_keys(
        self, by: str, keys: list[tuple[str, Scope, str]]
    ) -> int:
        names, scopes, digests = (
            [name for name, _, _ in keys],
            [scope.value for _, scope, _ in keys],
            [digest for _, _, digest in keys],
        )
        async with self.connection() as conn:
            ended = await conn.fetchval(
                q("revoke_sessions_of_other_keys"), by, names, scopes, digests
            )
        return int(ended)

    async def list_sessions(self, *, include_ended: bool, limit: int) -> list[ConsoleSession]:
        async with self.connection() as conn:
            rows = await conn.fetch(q("list_sessions"), include_ended, limit)
        return [from_row(ConsoleSession, r) for r in rows]

    async def prune_sessions(self, ended_for_s: float) -> int:
        async with self.connection() as conn:
            status = await conn.execute(q("prune_sessions"), ended_for_s)
        return int(status.split()[-1])

    # --- reads -------------------------------------------------------------------

    async def get(self, gid: str) -> Transaction:
        async with self.connection() as conn:
            row = await conn.fetchrow(q("get_transaction"), gid)
        if row is None:
            raise NotFound(f"no transaction {gid!r}")
        return _transaction(row)

    async def detail(self, gid: str, events_limit: int = DEFAULT_EVENTS_PAGE) -> TransactionDetail:
        """The transaction, its branches and the first page of its timeline, all as of one
        moment (one statement)."""
        async with self.connection() as conn:
            row = await conn.fetchrow(q("transaction_detail"), gid, events_limit + 1)
        assert row is not None  # the statement always returns its one summary row
        if row["txn"] is None:
            raise NotFound(f"no transaction {gid!r}")
        events = [_event(e) for e in row["events"]]
        return TransactionDetail(
            _transaction(row["txn"]),
            [_branch(b) for b in row["branches"]],
            events[:events_limit],
            more_events=len(events) > events_limit,
        )

    async def events(self, gid: str, after_id: int, limit: int) -> tuple[list[Event], bool]:
        """A page of the timeline after event ``after_id``, and whether more follow."""
        async with self.connection() as conn:
            rows = await conn.fetch(q("list_events"), gid, after_id, limit + 1)
            if not rows and await conn.fetchval(q("transaction_request_hash"), gid) is None:
                raise NotFound(f"no transaction {gid!r}")
        return [_event(e) for e in rows[:limit]], len(rows) > limit

    async def list(self, flt: ListFilter) -> list[Transaction]:
        async with self._transaction_block() as conn:
            # Its optional filters need a plan made for the values at hand (see _SESSION).
            await conn.execute(q("plan_for_these_values"))
            rows = await conn.fetch(q("list_transactions"), *list_arguments(flt))
        return [_transaction(r) for r in rows]

    async def backlog(self) -> Backlog:
        async with self.connection() as conn:
            rows = await conn.fetch(q("backlog"))
        return Backlog(
            unfinished={GlobalStatus(r["status"]): r["n"] for r in rows},
            oldest_unfinished_age_s=max((r["oldest_s"] for r in rows), default=None),
        )

    async def overview(self, window_s: float, attention_limit: int) -> Overview:
        async with self.connection() as conn, conn.transaction(isolation="repeatable_read"):
            counts = await conn.fetch(q("overview_counts"), window_s)
            attention = await conn.fetch(q("overview_attention"), attention_limit)
            parked = [r["gid"] for r in attention if r["kind"] == "parked"]
            done = [s.value for s in states.BRANCH_DONE_STATUSES]
            why = await conn.fetch(q("parked_branches"), parked, done) if parked else []
            seen = await conn.fetch(q("coordinators_seen"), COORDINATORS_SHOWN_FOR_S)
            now = await conn.fetchval(q("now"))
        unfinished: dict[GlobalStatus, int] = {}
        recent: dict[GlobalStatus, int] = {}
        minutes: dict[datetime, dict[GlobalStatus, int]] = {}
        for row in counts:
            status = GlobalStatus(row["status"])
            if row["part"] == "open":
                unfinished[status] = row["n"]
            else:
                recent[status] = recent.get(status, 0) + row["n"]
                minutes.setdefault(row["minute"], {})[status] = row["n"]
        listed: dict[str, list[Transaction]] = {}
        for row in attention:
            listed.setdefault(row["kind"], []).append(_transaction(row))
        return Overview(
            unfinished=unfinished,
            recent=recent,
            per_minute=minute_tallies(minutes, now, window_s),
            parked=listed.get("parked", []),
            retrying_long=listed.get("retrying_long", []),
            oldest_unfinished=listed.get("oldest_unfinished", []),
            near_deadline=listed.get("near_deadline", []),
            window_s=window_s,
            generated_at=now,
            parked_branches={r["gid"]: _branch(r) for r in why},
            coordinators=[from_row(CoordinatorSeen, r) for r in seen],
        )


def _undecided(status: GlobalStatus) -> Judgement:
    """Why decide_after_tries took no decision: the transaction had left trying, or a rule
    beyond the fast path's (a try not recorded, another branch in the way) applies."""
    if status is not GlobalStatus.TRYING:
        return Judgement(Verdict.REFUSE, f"transaction is {status.value}", Refusal.NOT_TRYING)
    return Judgement(Verdict.REFUSE, "not every try was recorded as tried", Refusal.TRY_PENDING)


_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


@dataclass(frozen=True, slots=True)
class _Separately(Generic[_Result]):
    """The results of a batch that was written item by item."""

    results: list[_Result | BaseException]


@dataclass(frozen=True, slots=True)
class _AutoDecision:
    gid: str
    tries: tuple[TryRecord, ...]
    owner: str
    lease_ttl_s: float

    @property
    def failed(self) -> str | None:
        """The first branch whose try failed, which the cancel reason names."""
        return next((t.branch_id for t in self.tries if t.verdict is not TryVerdict.TRIED), None)


@dataclass(frozen=True, slots=True)
class _DoneRound:
    lease: Lease
    decision: Decision
    calls: tuple[tuple[str, CallRecord], ...]
    owner: str


def _written(row: asyncpg.Record, transaction_column: str) -> Written | None:
    """What a batched statement wrote for one transaction: the transaction (None if the
    statement left it alone), its branches and the events it added."""
    if row[transaction_column] is None:
        return None
    return Written(
        _transaction(row[transaction_column]),
        [_branch(b) for b in row["branches"]],
        [_event(e) for e in row["events"]],
    )


def _decision_of(row: asyncpg.Record) -> tuple[DecideResult, Written] | BaseException | None:
    """One transaction's part of a decide_after_tries batch; None when nothing was decided."""
    if row["status_before"] is None:
        return NotFound(f"no transaction {row['gid']!r}")
    written = _written(row, "decided")
    if written is None:
        return None
    decided = written.transaction
    lease = Lease(decided.gid, str(row["decided"]["lease_token"]))
    return DecideResult(decided, Judgement(Verdict.DECIDE), lease), written


def _registration(
    gid: str, new: NewBranch, max_branches: int, row: asyncpg.Record
) -> tuple[Branch, bool]:
    """What a register_branch statement did, or why it did nothing."""
    if row["status"] is None:
        raise NotFound(f"no transaction {gid!r}")
    if row["inserted"] is not None:
        return _branch(row["inserted"]), True
    if row["existing"] is not None:
        if row["existing_hash"] != new.request_hash:
            raise Conflict(f"branch {new.branch_id!r} is already registered with other values")
        return _branch(row["existing"]), False
    if row["status"] != GlobalStatus.TRYING:
        raise NotTrying(GlobalStatus(row["status"]))
    if row["deadline_passed"]:
        raise Conflict("the transaction deadline has passed")
    raise LimitExceeded(f"a transaction may have at most {max_branches} branches")


def list_arguments(flt: ListFilter) -> tuple[object, ...]:
    """The list_transactions statement's arguments for a filter (tcc bench --reads explains
    the statement with them)."""
    after_at, after_gid = flt.after if flt.after else (None, None)
    return (
        [s.value for s in flt.statuses] if flt.statuses else None,
        flt.service,
        flt.created_from,
        flt.created_to,
        after_at,
        after_gid,
        flt.limit,
        flt.dialect,
        _like_prefix(flt.gid_prefix) if flt.gid_prefix else None,
    )


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern matching gids that start with ``prefix`` (whose _ is no wildcard)."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
