"""aiohttp helpers: a participant writes only its business code for try, confirm and
cancel; parsing, the barrier and the coordinator's reply codes are handled here.

    routes = tcc_routes(POOL, "/wallet", try_=freeze, confirm=debit, cancel=release)
    app.add_routes(routes)

Each business function gets the open connection (inside the transaction that also
holds the barrier row) and the call; it raises Refused to say no to a try.
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


def tcc_handler(pool_key: web.AppKey[asyncpg.Pool], phase: str, business: BusinessFn) -> Any:
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
                log.info("try_refused", reason=exc.reason)
                return web.json_response({"error": exc.reason}, status=409)
            log.info("tcc_call_handled", outcome=outcome.value)
            if outcome is Outcome.SUSPENDED:
                return web.json_response(
                    {
                        "error": "this branch was cancelled before its try arrived",
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
        web.post(f"{prefix}/{phase}", tcc_handler(pool_key, phase, fn))
        for phase, fn in (("try", try_), ("confirm", confirm), ("cancel", cancel))
    ]
