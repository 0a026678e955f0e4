"""The transaction log in Postgres, in domain words. Every query is in sql/queries.sql."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from coordinator.core import jsonsafe, states
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
    Branch,
    CallRecord,
    DecideResult,
    Event,
    Lease,
    ListFilter,
    NewBranch,
    NewTransaction,
    OptionsUpdate,
    RoundContext,
    Transaction,
    TransactionDetail,
    from_row,
)
from coordinator.core.states import (
    BranchStatus,
    Decision,
    EventKind,
    GlobalStatus,
    Phase,
    TryVerdict,
    Verdict,
)
from coordinator.txlog import migrator
from coordinator.txlog.interface import DEFAULT_EVENTS_PAGE
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


async def connect_pool(dsn: str, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            reset=_keep_session,
            timeout=10,  # connecting; an unreachable database must not hang a request
            command_timeout=60,
        )
    except CONNECTION_ERRORS as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {exc}") from exc
    return pool


def _transaction(row: asyncpg.Record) -> Transaction:
    return from_row(Transaction, row)


def _branch(row: asyncpg.Record) -> Branch:
    return from_row(Branch, row)


def _event(row: asyncpg.Record) -> Event:
    return from_row(Event, row)


class PostgresLog:
    """Every read and write of the transaction log (see TransactionLog for the contract)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, min_size: int = 2, max_size: int = 20) -> PostgresLog:
        return cls(await connect_pool(dsn, min_size, max_size))

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        try:
            async with self.pool.acquire() as conn:
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

    async def begin(self, new: NewTransaction) -> tuple[Transaction, bool]:
        """Log a new transaction; a repeat with the same request returns the original."""
        async with self._transaction_block() as conn:
            row = await conn.fetchrow(
                q("insert_transaction"),
                new.gid,
                new.dialect,
                new.service,
                new.metadata,
                new.request_hash,
                new.timeout_s,
                new.call_timeout_s,
                new.options,
            )
            if row is None:
                existing_hash = await conn.fetchval(q("transaction_request_hash"), new.gid)
                if existing_hash != new.request_hash:
                    raise TakenGid(new.gid)
                original = await conn.fetchrow(q("get_transaction"), new.gid)
                assert original is not None  # rows are never deleted
                return _transaction(original), False
            await self._event(
                conn,
                new.gid,
                EventKind.BEGIN,
                detail={"timeout_s": new.timeout_s, "service": new.service},
            )
            for branch in new.branches:
                await self._insert_branch(conn, new.gid, branch)
            return _transaction(row), True

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
        """Add a branch while the transaction is trying; an identical repeat is a no-op."""
        async with self._transaction_block() as conn:
            txn = await conn.fetchrow(q("lock_transaction"), gid)
            if txn is None:
                raise NotFound(f"no transaction {gid!r}")
            existing = await conn.fetchrow(q("get_branch"), gid, new.branch_id)
            if existing is not None:
                if existing["request_hash"] != new.request_hash:
                    raise Conflict(
                        f"branch {new.branch_id!r} is already registered with other values"
                    )
                return _branch(existing), False
            if txn["status"] != GlobalStatus.TRYING:
                raise NotTrying(GlobalStatus(txn["status"]))
            if txn["deadline_passed"]:
                raise Conflict("the transaction deadline has passed")
            if await conn.fetchval(q("count_branches"), gid) >= max_branches:
                raise LimitExceeded(f"a transaction may have at most {max_branches} branches")
            row = await self._insert_branch(conn, gid, new)
            assert row is not None  # the row lock above rules out a concurrent insert
            return _branch(row), True

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
        async with self._transaction_block() as conn:
            row = await conn.fetchrow(
                q("record_try_result"),
                gid,
                branch_id,
                target.value,
                call.http_status,
                call.error,
                call.latency_ms,
                states.branch_sources_of(target),
            )
            current = (
                row if row is not None else await conn.fetchrow(q("get_branch"), gid, branch_id)
            )
            if current is None:
                raise NotFound(f"no branch {branch_id!r} in transaction {gid!r}")
            await self._event(
                conn,
                gid,
                EventKind.TRY_RESULT,
                branch_id=branch_id,
                phase=Phase.TRY,
                call=call,
                detail={"verdict": verdict.value, "late": row is None},
            )
            return _branch(current), row is not None

    # --- decisions -------------------------------------------------------------

    async def decide(
        self,
        gid: str,
        decision: Decision,
        *,
        reason: str | None,
        owner: str,
        lease_ttl_s: float,
        options: OptionsUpdate | None = None,
    ) -> DecideResult:
        target = states.phase_status(decision)
        async with self._transaction_block() as conn:
            txn = await conn.fetchrow(q("lock_transaction"), gid)
            if txn is None:
                raise NotFound(f"no transaction {gid!r}")
            branches = [_branch(r) for r in await conn.fetch(q("list_branches"), gid)]
            judgement = states.judge_decision(
                decision,
                GlobalStatus(txn["status"]),
                txn["deadline_passed"],
                [b.view for b in branches],
                txn["cancel_reason"],
            )
            if judgement.verdict is not Verdict.DECIDE:
                return DecideResult(_transaction(txn), judgement, None)
            if options is not None:
                await conn.execute(q("set_options"), gid, options.options, options.call_timeout_s)
            row = await conn.fetchrow(
                q("decide"),
                gid,
                target.value,
                reason if decision is Decision.CANCEL else None,
                owner,
                lease_ttl_s,
                states.sources_of(target),
            )
            assert row is not None  # the row is locked and its status was checked
            await self._event(
                conn,
                gid,
                EventKind.DECISION,
                detail={"decision": decision.value, "reason": reason, "by": owner},
            )
            return DecideResult(_transaction(row), judgement, Lease(gid, str(row["lease_token"])))

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
        self, gid: str, *, actor: str, owner: str | None, lease_ttl_s: float
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
            await self._event(
                conn, gid, EventKind.ADMIN_RETRY, detail={"from": status.value, "actor": actor}
            )
            lease = Lease(gid, str(row["lease_token"])) if row["lease_token"] else None
            return _transaction(row), lease

    async def resolve_parked(self, gid: str, *, actor: str, note: str) -> Transaction:
        """An operator declares a parked transaction done: its stuck branches were finished
        by hand. Audited in the timeline with who and why."""
        async with self._transaction_block() as conn:
            status, decision = await self._lock_parked(conn, gid, "resolved")
            final = states.final_status(decision)
            states.check_move(status, final)
            branch_done = states.branch_done_status(decision)
            resolved = await conn.fetch(
                q("resolve_branches"),
                gid,
                branch_done.value,
                note,
                states.branch_sources_of(branch_done),
            )
            row = await conn.fetchrow(q("resolve_transaction"), gid, final.value, status.value)
            assert row is not None  # locked and checked above
            await self._event(
                conn,
                gid,
                EventKind.ADMIN_RESOLVED,
                detail={
                    "actor": actor,
                    "note": note,
                    "branches": [r["branch_id"] for r in resolved],
                },
            )
            return _transaction(row)

    # --- leases and phase two ----------------------------------------------------

    async def claim_due(
        self, owner: str, limit: int, lease_ttl_s: float
    ) -> list[tuple[Lease, GlobalStatus]]:
        async with self.connection() as conn:
            rows = await conn.fetch(q("claim_due"), owner, limit, lease_ttl_s)
        return [(Lease(r["gid"], str(r["lease_token"])), GlobalStatus(r["status"])) for r in rows]

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
    ) -> Transaction | None:
        """End a round and release the lease; None if the lease was lost."""
        phase_status = states.phase_status(decision)
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
            return txn

    # --- reads -------------------------------------------------------------------

    async def get(self, gid: str) -> Transaction:
        async with self.connection() as conn:
            row = await conn.fetchrow(q("get_transaction"), gid)
        if row is None:
            raise NotFound(f"no transaction {gid!r}")
        return _transaction(row)

    async def detail(self, gid: str, events_limit: int = DEFAULT_EVENTS_PAGE) -> TransactionDetail:
        """The transaction, its branches and the first page of its timeline, all as of one
        moment."""
        async with self.connection() as conn, conn.transaction(isolation="repeatable_read"):
            row = await conn.fetchrow(q("get_transaction"), gid)
            if row is None:
                raise NotFound(f"no transaction {gid!r}")
            branches = await conn.fetch(q("list_branches"), gid)
            events = await conn.fetch(q("list_events"), gid, 0, events_limit + 1)
        page = [_event(e) for e in events[:events_limit]]
        return TransactionDetail(
            _transaction(row),
            [_branch(b) for b in branches],
            page,
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
        after_at, after_gid = flt.after if flt.after else (None, None)
        async with self.connection() as conn:
            rows = await conn.fetch(
                q("list_transactions"),
                [s.value for s in flt.statuses] if flt.statuses else None,
                flt.service,
                flt.created_from,
                flt.created_to,
                after_at,
                after_gid,
                flt.limit,
            )
        return [_transaction(r) for r in rows]
