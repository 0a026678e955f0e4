"""The transactional outbox: a reliable message written in the service's own database
transaction, so it is sent if and only if that transaction commits.

    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE orders SET status = 'paid' WHERE id = $1", order_id)
        await outbox.add(conn, f"{order_id}.mail", [MessageStep("mail", url=..., payload=...)])

The row commits with the business change or rolls back with it: nothing is sent for a
rolled-back transaction. The relay (participants/outbox_relay.py, a task the service runs)
takes the committed rows, oldest first, and hands each to the coordinator with
``POST /v1/messages``; the coordinator then delivers it at least once. A service that dies
between its commit and the hand-off loses nothing: the row waits in its table for the relay
of the next start. A hand-off repeated after a crash (the coordinator had it, the row was
not marked yet) sends the same gid and the same body again, which the coordinator answers
as the message it already has: no second message.

Everything here is one table, ``tcc_outbox`` (participants/sql/0003_outbox.sql), in the
service's own schema, applied by participants/schema.py with the barrier's table. Handed-off
rows are pruned after a retention; refused ones (the coordinator said it never will take
them) stay for an operator.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from participants.barrier import Connection
from participants.client import MessageStep, message_request

# NOTIFY channel: the payload is the schema of the table a row was added to, since every
# service on one database shares the channel.
CHANNEL = "tcc_outbox"

ADD = """
WITH added AS (
    INSERT INTO tcc_outbox (gid, request) VALUES ($1, $2::jsonb)
    ON CONFLICT (gid) DO NOTHING
    RETURNING id
)
SELECT id, pg_notify($3, current_schema()) FROM added
"""

STORED_REQUEST = "SELECT request::text FROM tcc_outbox WHERE gid = $1"

TAKE_DUE = """
SELECT id, gid, request::text AS request, attempts FROM tcc_outbox
WHERE status = 'pending' AND next_attempt_at <= now()
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""

MARK_HANDED_OFF = """
UPDATE tcc_outbox
SET status = 'handed_off', handed_off_at = now(), attempts = attempts + 1, last_error = NULL
WHERE id = ANY($1::bigint[])
"""

MARK_RETRY = """
UPDATE tcc_outbox
SET attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => $2),
    last_error = $3
WHERE id = $1
"""

MARK_REFUSED = """
UPDATE tcc_outbox SET status = 'refused', attempts = attempts + 1, last_error = $2 WHERE id = $1
"""

NEXT_DUE_IN = """
SELECT extract(epoch FROM min(next_attempt_at) - now())::float8
FROM tcc_outbox WHERE status = 'pending'
"""

PRUNE = """
DELETE FROM tcc_outbox WHERE id = ANY (ARRAY(
    SELECT id FROM tcc_outbox
    WHERE status = 'handed_off' AND handed_off_at < now() - make_interval(secs => $1)
    ORDER BY handed_off_at
    LIMIT $2))
"""

REQUEUE = """
UPDATE tcc_outbox SET status = 'pending', next_attempt_at = now(), last_error = NULL
WHERE gid = $1 AND status = 'refused'
RETURNING pg_notify($2, current_schema())
"""


class DuplicateMessage(Exception):
    """The gid is in the outbox already, with a different message."""


@dataclass(frozen=True, slots=True)
class Pending:
    """An outbox row the relay took: its id, gid, the request to send and earlier attempts."""

    id: int
    gid: str
    request: dict[str, Any]
    attempts: int


def _gid() -> str:
    return f"msg-{uuid.uuid4().hex}"


async def add(
    conn: Connection,
    gid: str | None,
    steps: Iterable[MessageStep],
    *,
    service: str | None = None,
    metadata: dict[str, Any] | None = None,
    concurrent: bool = False,
) -> str:
    """Write a message to the outbox inside the caller's open transaction; returns its gid.

    Choose a gid derived from the business change (an order's id and what the message is
    for), so the message is one however often the code that adds it runs: adding the same
    gid with the same message again is a no-op; with a different message it raises
    DuplicateMessage. Without a gid one is made up. Raises RuntimeError outside a
    transaction: a message added on its own would be sent even if the business change
    that should go with it never commits.
    """
    if not conn.is_in_transaction():
        raise RuntimeError(
            "outbox.add must run inside the service's database transaction, the one that"
            " makes the business change the message belongs to"
        )
    gid = gid or _gid()
    request = message_request(
        steps, gid=gid, service=service, metadata=metadata, concurrent=concurrent
    )
    text = json.dumps(request, sort_keys=True, separators=(",", ":"))
    if await conn.fetchrow(ADD, gid, text, CHANNEL) is not None:
        return gid
    stored = await conn.fetchval(STORED_REQUEST, gid)
    if stored is None or json.loads(stored) != request:
        raise DuplicateMessage(f"the outbox holds another message with gid {gid!r}")
    return gid


async def take_due(conn: Connection, batch: int) -> list[Pending]:
    """Lock and return up to ``batch`` pending rows that are due, oldest first, skipping
    rows another relay holds. Call inside a transaction, and mark each before it ends."""
    rows = await conn.fetch(TAKE_DUE, batch)
    return [Pending(r["id"], r["gid"], json.loads(r["request"]), r["attempts"]) for r in rows]


async def mark_handed_off(conn: Connection, ids: list[int]) -> None:
    await conn.execute(MARK_HANDED_OFF, ids)


async def mark_retry(conn: Connection, row_id: int, after_s: float, error: str) -> None:
    await conn.execute(MARK_RETRY, row_id, after_s, error)


async def mark_refused(conn: Connection, row_id: int, error: str) -> None:
    await conn.execute(MARK_REFUSED, row_id, error)


async def next_due_in(conn: Connection) -> float | None:
    """Seconds until the next pending row is due (0 when one is due now); None: none pending."""
    due: float | None = await conn.fetchval(NEXT_DUE_IN)
    return None if due is None else max(due, 0.0)


async def requeue(conn: Connection, gid: str) -> bool:
    """Put a refused message back for the relay (once whatever made the coordinator refuse
    it is fixed); False if there is no refused message with that gid."""
    return await conn.fetchrow(REQUEUE, gid, CHANNEL) is not None


async def prune_batch(conn: Connection, older_than_s: float, batch: int = 1000) -> int:
    """Delete at most ``batch`` rows handed off more than ``older_than_s`` ago; returns how
    many. Pending and refused rows are never pruned."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    status = await conn.execute(PRUNE, older_than_s, batch)
    return int(status.split()[-1])


async def prune(conn: Connection, older_than_s: float, batch: int = 1000) -> int:
    """Delete every row handed off more than ``older_than_s`` ago, ``batch`` at a time."""
    total = 0
    while True:
        deleted = await prune_batch(conn, older_than_s, batch)
        total += deleted
        if deleted < batch:
            return total
