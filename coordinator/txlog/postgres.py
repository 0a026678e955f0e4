"""The transaction log in Postgres, in domain words. Every query is in sql/queries.sql."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import asyncpg

from coordinator.core import jsonsafe, states, writes
from coordinator.core.apikeys import Scope
from coordinator.core.breaker import BreakerMove
from coordinator.core.errors import (
    Conflict,
    DatabaseUnavailable,
    InvalidInput,
    NotFound,
    TakenGid,
)
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
    from_row,
    minute_tallies,
    participant_usage,
)
from coordinator.core.states import (
    AlertKind,
    Decision,
    GlobalStatus,
    Judgement,
    Phase,
    TransactionKind,
    TryVerdict,
    Verdict,
)
from coordinator.core.writes import AutoDecision, CallRule, DoneRound, Entry, RoundEnd
from coordinator.txlog import migrator
from coordinator.txlog.batching import Batcher
from coordinator.txlog.connecting import (
    CONNECT_TIMEOUT_S,
    CONNECTION_ERRORS,
    START_ERRORS,
    start_failure,
)
from coordinator.txlog.interface import (
    COORDINATORS_SHOWN_FOR_S,
    DEFAULT_EVENTS_PAGE,
    LIVE_COORDINATOR_S,
)
from coordinator.txlog.queries import query, statement

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
    """The pool a log starts with (its first connections made now): a database that cannot
    be reached is DatabaseUnavailable, in one line that says why (connecting.start_failure)."""
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            server_settings=server_settings,
            init=_init_connection,
            reset=_keep_session,
            # Connecting; an unreachable database must not hang a request.
            timeout=CONNECT_TIMEOUT_S,
            command_timeout=60,
        )
    except START_ERRORS as exc:
        raise start_failure(dsn, exc) from exc
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


def _transaction(row: asyncpg.Record) -> Transaction:
    return from_row(Transaction, row)


def _branch(row: asyncpg.Record) -> Branch:
    return from_row(Branch, row)


def _event(row: asyncpg.Record) -> Event:
    return from_row(Event, row)


class PostgresLog:
    """Every read and write of the transaction log (see TransactionLog for the contract).
    What each write changes comes from core.writes; the statements apply it."""

    def __init__(self, pool: asyncpg.Pool, lazy_pool: asyncpg.Pool | None = None) -> None:
        self.pool = pool
        # Connections whose commits do not wait for the disk, for the writes that are safe
        # to lose in a crash (they are redone); the same pool when none is given.
        self.lazy_pool = lazy_pool or pool
        # Group commit of the hot path's writes (see batching.py).
        self._begins: Batcher[writes.BeginWrite, TransactionDetail | None] = Batcher(
            self._flush_begins, key=lambda write: write.new.gid, name="begins"
        )
        self._decisions: Batcher[_AutoDecision, tuple[DecideResult, Written] | None] = Batcher(
            self._flush_decisions, key=lambda item: item.write.gid, name="decisions"
        )
        self._finishes: Batcher[_DoneRound, Written | None] = Batcher(
            self._flush_finishes, key=lambda item: item.lease.gid, name="round ends"
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
        """Write what the group commits accepted (refusing anything new), then close."""
        try:
            await asyncio.gather(
                self._begins.close(), self._decisions.close(), self._finishes.close()
            )
        finally:
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

    async def readiness(self) -> list[str]:
        async with self.connection() as conn:
            pending = await migrator.pending_migrations(conn)
        return [f"migration {m.version:04d}_{m.name} not applied" for m in pending]

    # --- events ------------------------------------------------------------

    @staticmethod
    async def _event(
        conn: asyncpg.pool.PoolConnectionProxy,
        gid: str,
        entry: Entry,
        *,
        branch_id: str | None = None,
        call: CallRecord | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Append ``entry`` to the timeline (with ``detail`` in place of its own, if given);
        a repeatable one identical to the branch's latest only bumps that one's count."""
        await conn.execute(
            *statement(
                "insert_or_repeat_event" if entry.repeatable else "insert_event",
                gid=gid,
                kind=entry.kind,
                branch_id=branch_id,
                phase=entry.phase,
                http_status=call.http_status if call else None,
                latency_ms=call.latency_ms if call else None,
                error=call.error if call else None,
                detail=entry.detail if detail is None else detail,
            )
        )

    # --- the hot path, group-committed -----------------------------------------------

    async def begin(self, new: NewTransaction) -> tuple[TransactionDetail, bool]:
        written = await self._begins.submit(writes.begin(new))
        if written is not None:
            return written, True
        async with self.connection() as conn:
            existing_hash = await conn.fetchval(*statement("transaction_request_hash", gid=new.gid))
        if existing_hash != new.request_hash:
            raise TakenGid(new.gid)
        return await self.detail(new.gid), False

    async def _flush_begins(
        self, items: list[writes.BeginWrite]
    ) -> list[TransactionDetail | BaseException | None]:
        shared = _begin_settings(items[0])
        if any(_begin_settings(i) != shared for i in items):
            # The core begins every transaction alike: never seen, but keep them single.
            return [r for i in items for r in await self._flush_begins([i])]
        news = [w.new for w in items]
        branches = [(n, pos, b) for n, w in enumerate(items, 1) for pos, b in enumerate(w.branches)]
        first = items[0]
        args = query("begin_transactions").args(
            {
                "status": first.status,
                "begin_kind": first.entry.kind,
                "branch_status": first.registration.status,
                "branch_kind": first.registration.kind,
                "gids": [new.gid for new in news],
                "dialects": [new.dialect for new in news],
                "kinds": [new.kind for new in news],
                "services": [new.service for new in news],
                "metadata": [new.metadata for new in news],
                "request_hashes": [new.request_hash for new in news],
                "timeouts_s": [float(new.timeout_s) for new in news],
                "call_timeouts_s": [new.call_timeout_s for new in news],
                "options": [new.options for new in news],
                "begin_details": [w.entry.detail for w in items],
                "branch_counts": [len(w.branches) for w in items],
                "traceparents": [new.traceparent for new in news],
                "tracestates": [new.tracestate for new in news],
                "branch_of": [n for n, _, _ in branches],
                "positions": [pos for _, pos, _ in branches],
                "branch_ids": [b.branch.branch_id for _, _, b in branches],
                "names": [b.branch.name for _, _, b in branches],
                "try_urls": [b.branch.try_url for _, _, b in branches],
                "confirm_urls": [b.branch.confirm_url for _, _, b in branches],
                "cancel_urls": [b.branch.cancel_url for _, _, b in branches],
                "payloads": [b.branch.payload for _, _, b in branches],
                "branch_request_hashes": [b.branch.request_hash for _, _, b in branches],
                "data": [b.branch.data for _, _, b in branches],
                "branch_details": [b.entry.detail for _, _, b in branches],
                "branch_participants": [b.branch.participant for _, _, b in branches],
            }
        )
        rows = await self._batch("begin_transactions", args, items, self._flush_begins)
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
        write = writes.decision_after_tries(gid, tries, owner)
        decided = await self._decisions.submit(_AutoDecision(write, owner, lease_ttl_s))
        if decided is None:
            # Nothing decided: say why, from the transaction as it is now.
            txn = await self.get(gid)
            return DecideResult(txn, writes.undecided(txn.status), None), None
        return decided

    async def _flush_decisions(
        self, items: list[_AutoDecision]
    ) -> list[tuple[DecideResult, Written] | BaseException | None]:
        shared = _decision_settings(items[0])
        if any(_decision_settings(i) != shared for i in items):
            # One process, one owner and one set of rules: never seen, but keep each
            # statement's settings single.
            return [r for i in items for r in await self._flush_decisions([i])]
        first = items[0]
        timeout = first.write.on_timeout
        guard = next((i.write.first.guard for i in items if _guarded(i.write.first)), None)
        autos = [i.write for i in items]
        decisions, decision_of = _numbered([a.first for a in autos])
        tries = [(n, t) for n, auto in enumerate(autos, 1) for t in auto.tries]
        answers, answer_of = _numbered([t.rule for _, t in tries])
        args = query("decide_after_tries").args(
            {
                "decision_targets": [d.move.target for d in decisions],
                "decision_reasons": [d.cancel_reason for d in decisions],
                "decision_kinds": [d.entry.kind for d in decisions],
                "decision_details": [d.entry.detail for d in decisions],
                "decision_guarded": [_guarded(d) for d in decisions],
                "gids": [a.gid for a in autos],
                "decisions": decision_of,
                **_answer_arguments(answers),
                "try_of": [n for n, _ in tries],
                "try_branches": [t.branch_id for _, t in tries],
                "try_answers": answer_of,
                "try_http_statuses": [t.call.http_status for _, t in tries],
                "try_errors": [t.call.error for _, t in tries],
                "try_latencies_ms": [t.call.latency_ms for _, t in tries],
                **_MOVE_ARGUMENTS,
                "sources": first.write.first.move.sources,
                **_guard_arguments(guard or states.NO_GUARD),
                "timeout_target": timeout.move.target,
                "timeout_reason": timeout.cancel_reason,
                "timeout_kind": timeout.entry.kind,
                "timeout_detail": timeout.entry.detail,
                "owner": first.owner,
                "lease_ttl_s": first.lease_ttl_s,
            }
        )
        rows = await self._batch("decide_after_tries", args, items, self._flush_decisions)
        if not isinstance(rows, list):
            return rows.results
        return [_decision_of(row) for row in rows]

    async def finish_done_round(
        self, lease: Lease, decision: Decision, calls: list[tuple[str, CallRecord]], owner: str
    ) -> Written | None:
        return await self._finishes.submit(
            _DoneRound(lease, writes.done_round(decision, calls, owner))
        )

    async def _flush_finishes(
        self, items: list[_DoneRound]
    ) -> list[Written | BaseException | None]:
        rules, rule_of = _numbered(
            [(i.write.rule, i.write.end) for i in items],
            key=lambda rule: (id(rule[0]), id(rule[1])),
        )
        calls = [(n, call) for n, item in enumerate(items, 1) for call in item.write.calls]
        args = query("finish_done_rounds").args(
            {
                **_round_rule_arguments(rules),
                "gids": [i.lease.gid for i in items],
                "tokens": [i.lease.token for i in items],
                "rules": rule_of,
                "call_of": [n for n, _ in calls],
                "call_branches": [branch_id for _, (branch_id, _) in calls],
                "call_http_statuses": [c.http_status for _, (_, c) in calls],
                "call_errors": [c.error for _, (_, c) in calls],
                "call_latencies_ms": [c.latency_ms for _, (_, c) in calls],
                **_MOVE_ARGUMENTS,
            }
        )
        rows = await self._batch("finish_done_rounds", args, items, self._flush_finishes, lazy=True)
        if not isinstance(rows, list):
            return rows.results
        return [_written(row, "finished") for row in rows]

    async def _batch(
        self,
        name: str,
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
                return await conn.fetch(query(name).sql, *args)
        except InvalidInput as exc:
            if len(items) == 1:
                return _Separately([exc])
        results: list[_Result | BaseException] = []
        for item in items:
            results.extend(await one_by_one([item]))
        return _Separately(results)

    # --- register and try ----------------------------------------------------------

    async def register_branch(
        self, gid: str, new: NewBranch, max_branches: int
    ) -> tuple[Branch, bool]:
        write = writes.register(new, max_branches)
        for _ in range(_STALE_SNAPSHOT_RETRIES):
            try:
                async with self.connection() as conn:
                    row = await conn.fetchrow(
                        *statement(
                            "register_branch",
                            gid=gid,
                            branch_id=new.branch_id,
                            name=new.name,
                            try_url=new.try_url,
                            confirm_url=new.confirm_url,
                            cancel_url=new.cancel_url,
                            payload=new.payload,
                            request_hash=new.request_hash,
                            data=new.data,
                            participant=new.participant,
                            status=write.branch.status,
                            kind=write.branch.entry.kind,
                            detail=write.branch.entry.detail,
                            open_in=write.open_in,
                            max_branches=write.max_branches,
                        )
                    )
            except asyncpg.UniqueViolationError:
                continue  # registered meanwhile by a repeat: the next snapshot shows it
            assert row is not None  # the statement always returns its one summary row
            return _registration(gid, write, row)
        raise DatabaseUnavailable("the transaction kept changing while a branch was registered")

    async def claim_stale_try(
        self, gid: str, branch_id: str, stale_after_s: float
    ) -> Branch | None:
        """The branch, if its try may be run again (see the query); None otherwise."""
        async with self.connection() as conn:
            row = await conn.fetchrow(
                *statement(
                    "claim_stale_try",
                    gid=gid,
                    branch_id=branch_id,
                    open_in=writes.STALE_TRY.open_in,
                    pending_in=writes.STALE_TRY.pending_in,
                    stale_after_s=stale_after_s,
                )
            )
        return _branch(row) if row is not None else None

    async def record_try(
        self, gid: str, branch_id: str, verdict: TryVerdict, call: CallRecord
    ) -> tuple[Branch, bool]:
        rule = writes.try_answer(TryRecord(branch_id, verdict, call)).rule
        async with self.connection() as conn:
            row = await conn.fetchrow(
                *statement(
                    "record_try",
                    gid=gid,
                    branch_id=branch_id,
                    target=rule.target,
                    sources=rule.sources,
                    http_status=call.http_status,
                    error=call.error,
                    latency_ms=call.latency_ms,
                    kind=rule.entry.kind,
                    phase=rule.entry.phase,
                    detail=rule.entry.detail,
                    late_detail=rule.late_detail,
                )
            )
        assert row is not None  # the statement always returns its one summary row
        if row["branch"] is None:
            raise NotFound(f"no branch {branch_id!r} in transaction {gid!r}")
        return _branch(row["branch"]), bool(row["recorded"])

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
        for _ in range(_STALE_SNAPSHOT_RETRIES):
            async with self.connection() as conn:
                row = await conn.fetchrow(
                    *statement(
                        "decide_judged",
                        gid=gid,
                        target=write.move.target,
                        sources=write.move.sources,
                        **_guard_arguments(write.guard, with_tries=False),
                        cancel_reason=write.cancel_reason,
                        owner=owner,
                        lease_ttl_s=lease_ttl_s,
                        options=options.options if options is not None else None,
                        call_timeout_s=options.call_timeout_s if options is not None else None,
                        kind=write.entry.kind,
                        detail=write.entry.detail,
                    )
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
                kind,
            )
            if judgement.verdict is Verdict.DECIDE:  # the guard and the judgement disagree
                raise AssertionError(f"decide_judged refused what judge_decision allows: {gid}")
            return DecideResult(before, judgement, None, branches)
        raise DatabaseUnavailable("the transaction kept changing while it was being decided")

    @staticmethod
    async def _lock(
        conn: asyncpg.pool.PoolConnectionProxy, gid: str
    ) -> tuple[GlobalStatus, TransactionKind]:
        """Lock a transaction an operator acts on; its status and kind."""
        txn = await conn.fetchrow(*statement("lock_transaction", gid=gid))
        if txn is None:
            raise NotFound(f"no transaction {gid!r}")
        return GlobalStatus(txn["status"]), TransactionKind(txn["kind"])

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
            status, _ = await self._lock(conn, gid)
            write = writes.retry_parked(status, actor=actor, reason=reason)
            row = await conn.fetchrow(
                *statement(
                    "retry_parked",
                    gid=gid,
                    target=write.move.target,
                    sources=write.move.sources,
                    owner=owner,
                    lease_ttl_s=lease_ttl_s,
                )
            )
            assert row is not None  # locked and checked above
            await self._event(conn, gid, write.entry)
            lease = Lease(gid, str(row["lease_token"])) if row["lease_token"] else None
            return _transaction(row), lease

    async def resolve_parked(
        self, gid: str, *, actor: str, note: str, branch_id: str | None = None
    ) -> Transaction:
        """An operator declares branches of a parked transaction done (all, or one): they
        were finished by hand. Audited in the timeline with who and why."""
        async with self._transaction_block() as conn:
            status, kind = await self._lock(conn, gid)
            write = writes.resolve_parked(
                status, actor=actor, note=note, branch_id=branch_id, kind=kind
            )
            resolved = await conn.fetch(
                *statement(
                    "resolve_branches",
                    gid=gid,
                    target=write.branches.target,
                    sources=write.branches.sources,
                    last_error=write.last_error,
                    branch_id=branch_id,
                )
            )
            if branch_id is not None and not resolved:
                found = statement("get_branch", gid=gid, branch_id=branch_id)
                if await conn.fetchval(*found) is None:
                    raise NotFound(f"no branch {branch_id!r} in transaction {gid!r}")
                raise write.already_done()
            still_waiting = await conn.fetchval(
                *statement("pending_branches", gid=gid, statuses=write.branches.sources)
            )
            if still_waiting:
                row = await conn.fetchrow(*statement("get_transaction", gid=gid))
            else:
                row = await conn.fetchrow(
                    *statement(
                        "resolve_transaction",
                        gid=gid,
                        target=write.finish.target,
                        sources=write.finish.sources,
                    )
                )
            assert row is not None  # locked and checked above
            ids = [r["branch_id"] for r in resolved]
            detail = write.detail(ids, finished=not still_waiting)
            await self._event(conn, gid, write.entry, branch_id=branch_id, detail=detail)
            return _transaction(row)

    # --- leases and phase two ----------------------------------------------------

    async def claim_due(self, owner: str, limit: int, lease_ttl_s: float) -> list[Claim]:
        async with self.connection() as conn:
            rows = await conn.fetch(
                *statement("claim_due", owner=owner, limit=limit, lease_ttl_s=lease_ttl_s)
            )
        return [
            Claim(Lease(r["gid"], str(r["lease_token"])), GlobalStatus(r["status"]), r["took_over"])
            for r in rows
        ]

    async def renew_lease(self, lease: Lease, lease_ttl_s: float) -> bool:
        async with self.connection() as conn:
            renewed = await conn.fetchval(
                *statement("renew_lease", gid=lease.gid, token=lease.token, lease_ttl_s=lease_ttl_s)
            )
        return renewed is not None

    async def release_lease(self, lease: Lease) -> None:
        async with self.connection() as conn:
            await conn.execute(*statement("release_lease", gid=lease.gid, token=lease.token))

    async def round_context(self, lease: Lease, give_up_after_s: float) -> RoundContext | None:
        """The transaction and its branches, or None if the lease was lost."""
        async with self.connection() as conn:
            row = await conn.fetchrow(
                *statement(
                    "round_context",
                    gid=lease.gid,
                    token=lease.token,
                    give_up_after_s=give_up_after_s,
                )
            )
            if row is None:
                return None
            rows = await conn.fetch(*statement("list_branches", gid=lease.gid))
        return RoundContext(
            _transaction(row),
            [_branch(r) for r in rows],
            bool(row["budget_spent"]),
            bool(row["deadline_passed"]),
        )

    async def record_phase_call(self, lease: Lease, answer: writes.CallWrite) -> bool:
        """Store one phase-two reply; False if the lease was lost (fenced out).

        A fenced-out coordinator writes nothing at all, not even the timeline event:
        the new lease holder owns this transaction's story now.
        """
        rule, call = answer.rule, answer.call
        async with self._transaction_block() as conn:
            row = await conn.fetchrow(
                *statement(
                    "record_phase_call",
                    gid=lease.gid,
                    token=lease.token,
                    branch_id=answer.branch_id,
                    target=rule.target,
                    sources=rule.sources,
                    http_status=call.http_status,
                    error=call.error,
                    latency_ms=call.latency_ms,
                )
            )
            assert row is not None  # the statement always returns its one summary row
            if not row["holds_lease"]:
                return False
            await self._event(
                conn,
                lease.gid,
                rule.entry,
                branch_id=answer.branch_id,
                call=call,
                detail=rule.detail(row["recorded"]),
            )
        return True

    async def change_course(self, lease: Lease, write: writes.CourseChange) -> Transaction | None:
        change = statement(
            "change_course",
            gid=lease.gid,
            token=lease.token,
            target=write.move.target,
            sources=write.move.sources,
            cancel_reason=write.cancel_reason,
        )
        return await self._leased_write(lease, change, write.entry)

    async def postpone(
        self, lease: Lease, write: writes.Postpone, call: CallRecord | None = None
    ) -> Transaction | None:
        change = statement(
            "postpone",
            gid=lease.gid,
            token=lease.token,
            sources=write.move.sources,
            retry_in_s=write.retry_in_s,
            counts_round=write.counts_round,
        )
        return await self._leased_write(lease, change, write.entry, call)

    async def _leased_write(
        self,
        lease: Lease,
        change: tuple[Any, ...],
        entry: Entry,
        call: CallRecord | None = None,
    ) -> Transaction | None:
        """``change`` (a statement fenced by the lease, returning the transaction) and its
        timeline entry, in one database transaction; None (nothing written) if the lease was
        lost or the statement's guard refused."""
        async with self._transaction_block() as conn:
            row = await conn.fetchrow(*change)
            if row is None:
                return None
            await self._event(conn, lease.gid, entry, call=call)
            return _transaction(row)

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
        end = writes.round_end(
            decision,
            outcome,
            owner=owner,
            retry_in_s=retry_in_s,
            pending=pending,
            alert_after_rounds=alert_after_rounds,
        )
        async with self._transaction_block() as conn:
            row = await conn.fetchrow(
                *statement(
                    "finish_round",
                    gid=lease.gid,
                    token=lease.token,
                    target=end.move.target,
                    sources=end.move.sources,
                    retry_in_s=end.retry_in_s,
                    finishes=end.finishes,
                )
            )
            if row is None:
                return None
            txn = _transaction(row)
            if end.pending:
                await conn.execute(
                    *statement(
                        "schedule_branch_retry",
                        gid=lease.gid,
                        branch_ids=list(end.pending),
                        at=txn.next_attempt_at,
                    )
                )
            await self._event(conn, lease.gid, end.entry, detail=end.detail(txn.phase_attempts))
            if end.alert is not None and end.alert.raised_after(txn.phase_attempts):
                rows = await conn.fetch(*statement("list_branches", gid=lease.gid))
                body = alert_body(end.alert.kind, txn, [_branch(b) for b in rows])
                await conn.execute(
                    *statement("insert_alert", gid=lease.gid, kind=end.alert.kind, body=body)
                )
            return txn

    # --- alerts ------------------------------------------------------------------------

    async def claim_alerts(self, owner: str, limit: int, lease_ttl_s: float) -> list[Alert]:
        async with self.connection() as conn:
            rows = await conn.fetch(
                *statement("claim_alerts", owner=owner, limit=limit, lease_ttl_s=lease_ttl_s)
            )
        return [
            Alert(
                id=row["id"],
                gid=row["gid"],
                participant=row["participant"],
                kind=AlertKind(row["kind"]),
                body=row["body"],
                attempts=row["attempts"],
                age_s=row["age_s"],
            )
            for row in sorted(rows, key=lambda r: r["id"])
        ]

    async def alert_delivered(self, alert_id: int, owner: str) -> bool:
        async with self.connection() as conn:
            status = await conn.execute(*statement("alert_delivered", id=alert_id, owner=owner))
        return bool(status.endswith(" 1"))

    async def alert_failed(
        self, alert_id: int, owner: str, error: str, retry_in_s: float | None
    ) -> bool:
        async with self.connection() as conn:
            status = await conn.execute(
                *statement(
                    "alert_failed",
                    id=alert_id,
                    owner=owner,
                    error=jsonsafe.printable(error),
                    retry_in_s=retry_in_s,
                )
            )
        return bool(status.endswith(" 1"))

    # --- retention -------------------------------------------------------------------

    async def prune(self, older_than_s: float, batch: int) -> int:
        # Each statement its own short transaction: its row locks last one batch.
        async with self.connection() as conn:
            status = await conn.execute(
                *statement("prune_finished", older_than_s=older_than_s, limit=batch)
            )
            await conn.execute(*statement("prune_alerts", older_than_s=older_than_s, limit=batch))
        return int(status.split()[-1])

    async def count_prunable(self, older_than_s: float) -> int:
        async with self.connection() as conn:
            count = await conn.fetchval(*statement("count_prunable", older_than_s=older_than_s))
        return int(count)

    # --- coordinators -----------------------------------------------------------------

    async def coordinator_seen(self, owner: str, claimed: int, taken_over: int) -> None:
        # Lost in a crash, it is noted again at the next scan: no need to wait for the disk.
        async with self.connection(lazy=True) as conn:
            await conn.execute(
                *statement("coordinator_seen", owner=owner, claimed=claimed, taken_over=taken_over)
            )

    async def coordinator_stopped(self, owner: str) -> None:
        async with self.connection() as conn:
            await conn.execute(*statement("coordinator_stopped", owner=owner))

    async def prune_coordinators(self, unseen_for_s: float) -> int:
        async with self.connection() as conn:
            status = await conn.execute(*statement("prune_coordinators", unseen_for_s=unseen_for_s))
        return int(status.split()[-1])

    # --- participants ----------------------------------------------------------------

    async def register_participant(
        self, new: NewParticipant, *, replace_any: bool = True
    ) -> tuple[Participant, bool] | None:
        async with self.connection() as conn:
            row = await conn.fetchrow(
                *statement(
                    "register_participant",
                    name=new.name,
                    base_url=new.base_url,
                    try_url=new.try_url,
                    confirm_url=new.confirm_url,
                    cancel_url=new.cancel_url,
                    health_url=new.health_url,
                    call_timeout_s=new.call_timeout_s,
                    tls_profile=new.tls_profile,
                    owner_service=new.owner_service,
                    registered_by=new.registered_by,
                    replace_any=replace_any,
                )
            )
        if row is None:
            return None
        return from_row(Participant, row), bool(row["inserted"])

    async def remove_participant(self, name: str, *, owner: str | None = None) -> bool:
        async with self.connection() as conn:
            removed = await conn.fetchval(*statement("remove_participant", name=name, owner=owner))
        return removed is not None

    async def participants(self) -> Registry:
        async with self.connection() as conn:
            row = await conn.fetchrow(
                *statement("list_participants", live_within_s=LIVE_COORDINATOR_S)
            )
        assert row is not None
        return Registry(
            [from_row(Participant, p) for p in row["participants"]],
            row["read_at"],
            row["live_coordinators"],
        )

    async def participant(self, name: str) -> Participant | None:
        async with self.connection() as conn:
            row = await conn.fetchrow(*statement("get_participant", name=name))
        return from_row(Participant, row) if row is not None else None

    async def move_breaker(self, move: BreakerMove) -> Participant | None:
        alert = move.alert
        async with self.connection() as conn:
            row = await conn.fetchrow(
                *statement(
                    "move_breaker",
                    name=move.name,
                    sources=move.source_words,
                    target=move.target.value,
                    reason=move.reason,
                    open_for_s=move.open_for_s,
                    opens=move.opens,
                    opens_seen=move.opens_seen,
                    when_due=move.when_due,
                    holder=move.holder,
                    probe_owner=move.probe_owner,
                    probe_ttl_s=move.probe_ttl_s,
                    ramps=move.ramps,
                    alert_kind=AlertKind.BREAKER_OPEN.value if alert else None,
                    alert_body=move.alert_body() if alert else None,
                )
            )
        return from_row(Participant, row) if row is not None else None

    async def add_call_tallies(self, tallies: list[CallTally]) -> None:
        if not tallies:
            return
        # Counts lost in a crash are only counts: no need to wait for the disk.
        async with self.connection(lazy=True) as conn:
            await conn.execute(
                *statement(
                    "add_call_tallies",
                    participants=[t.participant for t in tallies],
                    phases=[t.phase.value for t in tallies],
                    calls=[t.calls for t in tallies],
                    errors=[t.errors for t in tallies],
                    latency_sums=[t.latency_ms_sum for t in tallies],
                    latency_maxes=[t.latency_ms_max for t in tallies],
                )
            )

    async def participant_usage(self, names: list[str], window_s: float) -> list[ParticipantUsage]:
        async with self.connection() as conn:
            rows = await conn.fetch(*statement("call_tallies", window_s=window_s))
            now = rows[0]["read_at"] if rows else await conn.fetchval(*statement("now"))
            waiting = await conn.fetch(
                *statement(
                    "waiting_on_participants",
                    txn_statuses=[t.value for t, _ in writes.WAITING],
                    done_statuses=[d.value for _, d in writes.WAITING],
                )
            )
        minutes = [
            MinuteOfCalls(
                r["participant"],
                r["minute"],
                Phase(r["phase"]),
                r["calls"],
                r["errors"],
                r["latency_ms_sum"],
                r["latency_ms_max"],
            )
            for r in rows
        ]
        counts = {r["participant"]: r["waiting"] for r in waiting}
        return participant_usage(names, minutes, counts, now, window_s)

    async def prune_call_tallies(self, older_than_s: float) -> int:
        async with self.connection() as conn:
            status = await conn.execute(*statement("prune_call_tallies", older_than_s=older_than_s))
        return int(status.split()[-1])

    # --- console sessions ----------------------------------------------------------

    async def open_session(self, new: NewSession) -> None:
        async with self.connection() as conn:
            await conn.execute(
                *statement(
                    "open_session",
                    id=new.id,
                    key_name=new.key_name,
                    scope=new.scope.value,
                    key_digest=new.key_digest,
                    remote=new.remote,
                    ttl_s=new.ttl_s,
                )
            )

    async def session_is_live(self, session_id: str) -> bool:
        async with self.connection() as conn:
            return bool(await conn.fetchval(*statement("session_is_live", id=session_id)))

    async def revoke_sessions(
        self, by: str, *, id_prefix: str | None = None, key_name: str | None = None
    ) -> int:
        async with self.connection() as conn:
            ended = await conn.fetchval(
                *statement("revoke_sessions", by=by, id_prefix=id_prefix, key_name=key_name)
            )
        return int(ended)

    async def revoke_sessions_of_other_keys(
        self, by: str, keys: list[tuple[str, Scope, str]]
    ) -> int:
        async with self.connection() as conn:
            ended = await conn.fetchval(
                *statement(
                    "revoke_sessions_of_other_keys",
                    by=by,
                    names=[name for name, _, _ in keys],
                    scopes=[scope.value for _, scope, _ in keys],
                    digests=[digest for _, _, digest in keys],
                )
            )
        return int(ended)

    async def list_sessions(self, *, include_ended: bool, limit: int) -> list[ConsoleSession]:
        async with self.connection() as conn:
            rows = await conn.fetch(
                *statement("list_sessions", include_ended=include_ended, limit=limit)
            )
        return [from_row(ConsoleSession, r) for r in rows]

    async def prune_sessions(self, ended_for_s: float) -> int:
        async with self.connection() as conn:
            status = await conn.execute(*statement("prune_sessions", ended_for_s=ended_for_s))
        return int(status.split()[-1])

    # --- reads -------------------------------------------------------------------

    async def get(self, gid: str) -> Transaction:
        async with self.connection() as conn:
            row = await conn.fetchrow(*statement("get_transaction", gid=gid))
        if row is None:
            raise NotFound(f"no transaction {gid!r}")
        return _transaction(row)

    async def detail(self, gid: str, events_limit: int = DEFAULT_EVENTS_PAGE) -> TransactionDetail:
        """The transaction, its branches and the first page of its timeline, all as of one
        moment (one statement)."""
        async with self.connection() as conn:
            row = await conn.fetchrow(
                *statement("transaction_detail", gid=gid, events_limit=events_limit + 1)
            )
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
            rows = await conn.fetch(
                *statement("list_events", gid=gid, after_id=after_id, limit=limit + 1)
            )
            exists = statement("transaction_request_hash", gid=gid)
            if not rows and await conn.fetchval(*exists) is None:
                raise NotFound(f"no transaction {gid!r}")
        return [_event(e) for e in rows[:limit]], len(rows) > limit

    async def list(self, flt: ListFilter) -> list[Transaction]:
        async with self._transaction_block() as conn:
            # Its optional filters need a plan made for the values at hand (see _SESSION).
            await conn.execute(*statement("plan_for_these_values"))
            rows = await conn.fetch(query("list_transactions").sql, *list_arguments(flt))
        return [_transaction(r) for r in rows]

    async def backlog(self) -> Backlog:
        async with self.connection() as conn:
            rows = await conn.fetch(*statement("backlog"))
        return Backlog(
            unfinished={GlobalStatus(r["status"]): r["n"] for r in rows},
            oldest_unfinished_age_s=max((r["oldest_s"] for r in rows), default=None),
        )

    async def overview(self, window_s: float, attention_limit: int) -> Overview:
        async with self.connection() as conn, conn.transaction(isolation="repeatable_read"):
            counts = await conn.fetch(*statement("overview_counts", window_s=window_s))
            attention = await conn.fetch(*statement("overview_attention", limit=attention_limit))
            parked = [r["gid"] for r in attention if r["attention"] == "parked"]
            why = (
                await conn.fetch(
                    *statement(
                        "parked_branches",
                        gids=parked,
                        parked_statuses=[p for p, _ in states.done_while_parked()],
                        done_statuses=[d for _, d in states.done_while_parked()],
                    )
                )
                if parked
                else []
            )
            seen = await conn.fetch(
                *statement("coordinators_seen", within_s=COORDINATORS_SHOWN_FOR_S)
            )
            now = await conn.fetchval(*statement("now"))
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
            listed.setdefault(row["attention"], []).append(_transaction(row))
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


_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


@dataclass(frozen=True, slots=True)
class _Separately(Generic[_Result]):
    """The results of a batch that was written item by item."""

    results: list[_Result | BaseException]


@dataclass(frozen=True, slots=True)
class _AutoDecision:
    write: AutoDecision
    owner: str
    lease_ttl_s: float


@dataclass(frozen=True, slots=True)
class _DoneRound:
    lease: Lease
    write: DoneRound


def _begin_settings(write: writes.BeginWrite) -> tuple[object, ...]:
    """What every begin of one statement shares: its status, how its branches are
    registered, the kind of its entry."""
    return (write.status, write.entry.kind, write.registration)


def _guarded(write: writes.DecisionWrite) -> bool:
    return write.guard != states.NO_GUARD


def _decision_settings(item: _AutoDecision) -> tuple[object, ...]:
    """What every auto decision of one statement shares: the owner and the lease's length,
    the statuses it decides from, the guard of the guarded ones, the timeout decision."""
    first = item.write.first
    guard = first.guard if _guarded(first) else None
    return (item.owner, item.lease_ttl_s, first.move.sources, guard, item.write.on_timeout)


_Rule = TypeVar("_Rule")


def _numbered(
    rules: list[_Rule], key: Callable[[_Rule], object] = id
) -> tuple[list[_Rule], list[int]]:
    """The distinct rules a batch applies, each once, and the number (1-based) of each item's:
    the core hands out one record per rule, so the same one is the same object."""
    table: list[_Rule] = []
    numbers: dict[object, int] = {}
    of_each: list[int] = []
    for rule in rules:
        found = numbers.setdefault(key(rule), len(table) + 1)
        if found > len(table):
            table.append(rule)
        of_each.append(found)
    return table, of_each


def _answer_arguments(rules: list[CallRule]) -> dict[str, list[Any]]:
    """The distinct try answers of a batch."""
    return {
        "answer_targets": [r.target for r in rules],
        "answer_kinds": [r.entry.kind for r in rules],
        "answer_phases": [r.entry.phase for r in rules],
        "answer_details": [r.entry.detail for r in rules],
        "answer_late_details": [r.late_detail for r in rules],
    }


def _round_rule_arguments(rules: list[tuple[CallRule, RoundEnd]]) -> dict[str, list[Any]]:
    """The distinct rules of a batch of done rounds: what the calls do, how the round ends."""
    return {
        "rule_call_targets": [c.target for c, _ in rules],
        "rule_call_kinds": [c.entry.kind for c, _ in rules],
        "rule_call_phases": [c.entry.phase for c, _ in rules],
        "rule_call_details": [c.entry.detail for c, _ in rules],
        "rule_call_late_details": [c.late_detail for c, _ in rules],
        "rule_end_sources": [_only(end.move.sources) for _, end in rules],
        "rule_end_targets": [end.move.target for _, end in rules],
        "rule_end_retries_in_s": [end.retry_in_s for _, end in rules],
        "rule_end_finishes": [end.finishes for _, end in rules],
        "rule_end_kinds": [end.entry.kind for _, end in rules],
        "rule_end_details": [end.entry.detail for _, end in rules],
        "rule_end_counts_rounds": [end.counts_rounds for _, end in rules],
    }


def _only(statuses: frozenset[GlobalStatus]) -> GlobalStatus:
    """The one status a batched round end moves from (its phase status)."""
    [status] = statuses
    return status


# The branch table, for batches whose branches each have a target of their own.
_MOVE_ARGUMENTS = {
    "move_from": [source for source, _ in writes.branch_moves()],
    "move_to": [target for _, target in writes.branch_moves()],
}


def _guard_arguments(guard: states.Guard, *, with_tries: bool = True) -> dict[str, Any]:
    args: dict[str, Any] = {
        "deadline_ahead": guard.deadline_ahead,
        "blocking": guard.blocking,
        "try_pending": guard.try_pending,
    }
    if with_tries:
        args["tries_recorded"] = guard.tries_recorded
    return args


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
    gid: str, write: writes.RegisterWrite, row: asyncpg.Record
) -> tuple[Branch, bool]:
    """What a register_branch statement did, or why it did nothing."""
    if row["status"] is None:
        raise NotFound(f"no transaction {gid!r}")
    if row["inserted"] is not None:
        return _branch(row["inserted"]), True
    new = write.branch.branch
    if row["existing"] is not None:
        if row["existing_hash"] != new.request_hash:
            raise Conflict(f"branch {new.branch_id!r} is already registered with other values")
        return _branch(row["existing"]), False
    refused = write.refusal(GlobalStatus(row["status"]), row["deadline_passed"], row["branches"])
    assert refused is not None, f"register_branch wrote nothing that the rules allow: {gid}"
    raise refused


def list_arguments(flt: ListFilter) -> tuple[object, ...]:
    """The list_transactions statement's arguments for a filter, in $n order (tcc bench
    --reads explains the statement with them)."""
    after_at, after_gid = flt.after if flt.after else (None, None)
    return query("list_transactions").args(
        {
            "statuses": [s.value for s in flt.statuses] if flt.statuses else None,
            "service": flt.service,
            "created_from": flt.created_from,
            "created_to": flt.created_to,
            "after_at": after_at,
            "after_gid": after_gid,
            "limit": flt.limit,
            "dialect": flt.dialect,
            "kind": flt.kind,
            "gid_like": _like_prefix(flt.gid_prefix) if flt.gid_prefix else None,
        }
    )


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern matching gids that start with ``prefix`` (whose _ is no wildcard)."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
