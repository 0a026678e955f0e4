"""aiohttp helpers: a participant writes only its business code for try, confirm and
cancel (TCC), action and compensate (saga), or a message step's action; parsing, the barrier
and the coordinator's reply codes are handled here.

    app.add_routes(tcc_routes(POOL, "/wallet", try_=freeze, confirm=debit, cancel=release))
    app.add_routes(saga_routes(POOL, "/ship", action=book, compensate=unbook))
    app.add_routes([message_route(POOL, "/notify/action", send_mail)])

Each business function gets the open connection (inside the transaction that also
holds the barrier row) and the call; it raises Refused to say no to a try or an action
(409), RetryLater when it cannot do its work now (503: the coordinator calls again).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from participants import barrier
from participants.barrier import Outcome

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class TccCall:
    gid: str
    branch_id: str
    phase: str
    payload: Any


class Refused(Exception):
    """The business says no (insufficient funds, out of stock): the try is refused (409)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RetryLater(Exception):
    """The work cannot be done now (a mail server down, a lock busy): answered 503, nothing
    is kept (the barrier row rolls back with the rest), and the coordinator calls again."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


BusinessFn = Callable[[barrier.Connection, TccCall], Awaitable[Any]]


class BadCall(Exception):
    pass


async def parse_call(request: web.Request, phase: str) -> TccCall:
    """Read a call in the coordinator's format ({gid, branch_id, phase, payload} as JSON),
    or in DTM's (gid and branch_id as query parameters, the body as the payload)."""
    raw = await request.read()
    try:
        body: Any = json.loads(raw) if raw.strip() else None
    except ValueError as exc:
        raise BadCall(f"body is not JSON: {exc}") from exc
    query = request.query
    if "gid" in query and "branch_id" in query:
        return TccCall(query["gid"], query["branch_id"], phase, body)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("gid"), str)
        or not isinstance(body.get("branch_id"), str)
    ):
        raise BadCall("expected a JSON object with gid and branch_id")
    return TccCall(body["gid"], body["branch_id"], phase, body.get("payload"))


def phase_handler(pool_key: web.AppKey[asyncpg.Pool], phase: str, business: BusinessFn) -> Any:
    """A handler for one phase (try, confirm, cancel, action or compensate): the call parsed,
    the barrier and ``business`` in one transaction, the outcome answered."""

    async def handle(request: web.Request) -> web.Response:
        try:
            call = await parse_call(request, phase)
        except BadCall as exc:
            return web.json_response({"error": str(exc)}, status=400)
        with structlog.contextvars.bound_contextvars(
            gid=call.gid, branch_id=call.branch_id, phase=phase
        ):
            try:
                async with request.app[pool_key].acquire() as conn, conn.transaction():
                    outcome = await barrier.enter(conn, call.gid, call.branch_id, phase)
                    result = await business(conn, call) if outcome is Outcome.RUN else None
            except Refused as exc:
                # The transaction rolled back, barrier row included: nothing happened.
                log.info("call_refused", reason=exc.reason)
                return web.json_response({"error": exc.reason}, status=409)
            except RetryLater as exc:
                log.warning("call_retry_later", reason=exc.reason)
                return web.json_response({"error": exc.reason}, status=503)
            log.info("call_handled", outcome=outcome.value)
            if outcome is Outcome.SUSPENDED:
                undo = "cancelled" if phase == "try" else "compensated"
                return web.json_response(
                    {
                        "error": f"this branch was {undo} before its {phase} arrived",
                        "outcome": outcome.value,
                    },
                    status=409,
                )
            return web.json_response({"outcome": outcome.value, "result": result})

    return handle


def tcc_routes(
    pool_key: web.AppKey[asyncpg.Pool],
    prefix: str,
    *,
    try_: BusinessFn,
    confirm: BusinessFn,
    cancel: BusinessFn,
) -> list[web.RouteDef]:
    """POST {prefix}/try, {prefix}/confirm and {prefix}/cancel."""
    return [
        web.post(f"{prefix}/{phase}", phase_handler(pool_key, phase, fn))
        for phase, fn in (("try", try_), ("confirm", confirm), ("cancel", cancel))
    ]


def saga_routes(
    pool_key: web.AppKey[asyncpg.Pool],
    prefix: str,
    *,
    action: BusinessFn,
    compensate: BusinessFn,
) -> list[web.RouteDef]:
    """POST {prefix}/action and {prefix}/compensate, a saga step's two calls.

    A compensation whose action never ran is answered 200 without calling ``compensate``
    (an empty compensation), and an action arriving after its compensation 409 without
    calling ``action`` (suspended: the saga is compensating already).
    """
    return [
        web.post(f"{prefix}/{phase}", phase_handler(pool_key, phase, fn))
        for phase, fn in (("action", action), ("compensate", compensate))
    ]


def message_route(
    pool_key: web.AppKey[asyncpg.Pool], path: str, action: BusinessFn
) -> web.RouteDef:
    """POST {path}: a reliable message's step. Delivery is at least once; the barrier runs
    ``action`` once per (gid, branch_id) and answers every repeat 200. Anything but a 2xx
    (Refused's 409 included) is delivered again later, until the coordinator parks it."""
    return web.post(path, phase_handler(pool_key, "action", action))
