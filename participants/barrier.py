"""The barrier: makes a participant's calls safe against the three classic anomalies, inside
the participant's own local transaction. TCC's phases are try, confirm and cancel; a saga's
are action and compensate; a message step is delivered as an action.

- Repeats (the coordinator retries): the second try/confirm/cancel finds its row
  and does nothing, and the handler answers success again.
- Empty compensation (cancel for a try that never ran): cancel writes the try row
  itself; finding no try row there means there is nothing to undo.
- Suspension (a try that arrives after its cancel): that try row written by the
  cancel makes the late try a no-op, so it reserves nothing that nobody would release.

A saga's action behaves as a try (repeat-safe, suspended when its compensation came first)
and its compensate as a cancel (an empty compensation when its action never ran, repeats
no-ops); a message step's delivery is an action that no compensation ever follows, so the
barrier makes its repeats (delivery is at least once) no-ops.

All of it is decided by one unique key, (gid, branch_id, phase), in the same
database transaction as the business change: either both commit or neither does.
Two concurrent duplicates serialise on the key; the loser sees the winner's row.
"""

from __future__ import annotations

from enum import StrEnum

import asyncpg

INSERT = """
INSERT INTO tcc_barrier (gid, branch_id, phase, written_by) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING
"""

PURGE = """
DELETE FROM tcc_barrier WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM tcc_barrier
    WHERE created_at < now() - make_interval(secs => $1)
    LIMIT $2))
"""

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


class Outcome(StrEnum):
    RUN = "run"  # first time: do the business change
    DUPLICATE = "duplicate"  # seen before: answer success, change nothing
    EMPTY_COMPENSATION = "empty_compensation"  # cancel (compensate) without its try (action)
    SUSPENDED = "suspended"  # try (action) after its cancel (compensate): must change nothing


async def _insert(conn: Connection, gid: str, branch_id: str, phase: str, by: str) -> bool:
    status = await conn.execute(INSERT, gid, branch_id, phase, by)
    return status.endswith(" 1")


# Each undo phase and the forward phase it undoes: the undo claims its forward phase's slot,
# so finding it free means the forward call never ran (and is suspended should it come late).
UNDOES = {"cancel": "try", "compensate": "action"}
FORWARD = frozenset(UNDOES.values())
ONCE = frozenset({"confirm"})  # runs once, no undo of its own
PHASES = FORWARD | UNDOES.keys() | ONCE


async def enter(conn: Connection, gid: str, branch_id: str, phase: str) -> Outcome:
    """Call inside the handler's transaction, before the business change.

    ``phase`` is one of try, confirm, cancel (TCC) or action, compensate (saga; a message
    step's delivery is an action). Run the business change only when this returns
    Outcome.RUN.
    """
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}: expected one of {', '.join(sorted(PHASES))}")
    if not conn.is_in_transaction():
        raise RuntimeError("the barrier must run inside the business transaction")
    if phase in FORWARD:
        if await _insert(conn, gid, branch_id, phase, phase):
            return Outcome.RUN
        written_by = await conn.fetchval(
            "SELECT written_by FROM tcc_barrier WHERE gid = $1 AND branch_id = $2 AND phase = $3",
            gid,
            branch_id,
            phase,
        )
        return Outcome.SUSPENDED if written_by != phase else Outcome.DUPLICATE
    if phase in ONCE:
        inserted = await _insert(conn, gid, branch_id, phase, phase)
        return Outcome.RUN if inserted else Outcome.DUPLICATE
    # An undo: claim the forward slot first; if it was free, the forward call never ran (or
    # will be suspended when it arrives).
    forward_was_missing = await _insert(conn, gid, branch_id, UNDOES[phase], phase)
    if not await _insert(conn, gid, branch_id, phase, phase):
        return Outcome.DUPLICATE
    return Outcome.EMPTY_COMPENSATION if forward_was_missing else Outcome.RUN


COUNT_OLDER = """
SELECT count(*) FROM tcc_barrier WHERE created_at < now() - make_interval(secs => $1)
"""


async def purge_batch(conn: Connection, older_than_s: float, batch: int = 1000) -> int:
    """Delete at most ``batch`` barrier rows older than ``older_than_s``; returns how many.

    One statement: outside a transaction it is a short transaction of its own, so the row
    locks it takes are held only while that one batch is deleted.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    status = await conn.execute(PURGE, older_than_s, batch)
    return int(status.split()[-1])


async def count_older(conn: Connection, older_than_s: float) -> int:
    """How many barrier rows are older than ``older_than_s`` (what a purge would delete)."""
    count: int = await conn.fetchval(COUNT_OLDER, older_than_s)
    return count


async def purge(conn: Connection, older_than_s: float, batch: int = 1000) -> int:
    """Delete barrier rows older than ``older_than_s``, ``batch`` at a time; returns the count.

    Keep rows for longer than any transaction can still send a call (the coordinator's
    give-up time), or a very late retry would be taken for a first call. For a purge on a
    schedule, with pauses between batches, see participants/barrier_purge.py.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    total = 0
    while True:
        deleted = await purge_batch(conn, older_than_s, batch)
        total += deleted
        if deleted < batch:
            return total
