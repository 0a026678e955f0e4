"""Participants with one defect each, for `tcc conformance`'s tests: a small aiohttp app that
serves every mode under its own prefix (`/{mode}/try`, `/confirm`, `/cancel`, `/action`,
`/compensate`, and the check URL `/{mode}/check`). The `correct` mode keeps the protocol
(an in-memory barrier, like participants/barrier.py); each other mode breaks it in one place,
but `slow-try`, which is correct and slow.

What a branch holds is kept per mode as the check URL's contract words it: `held` (a try's
reservation in place), `applied` (times confirm or an action took effect), `undone` (times a
cancel or compensation gave something back). Calls come in the coordinator's format (JSON
{gid, branch_id, payload}) or DTM's (gid and branch_id in the query).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aiohttp import web


class Mode(StrEnum):
    CORRECT = "correct"
    # Non-idempotent confirm (and action): a repeat takes effect again.
    APPLIES_TWICE = "applies-twice"
    # Non-idempotent confirm (and action): a repeat answers 409 "already confirmed".
    ERROR_ON_REPEAT = "error-on-repeat"
    # A cancel (compensation) with no try (action) before it answers 500.
    EMPTY_CANCEL_FAILS = "empty-cancel-fails"
    # ... answers 404 "no such reservation", and records nothing.
    EMPTY_CANCEL_404 = "empty-cancel-404"
    # A cancel with no try records nothing, so a late try reserves after it.
    RESERVES_AFTER_CANCEL = "reserves-after-cancel"
    # Everything it refuses is answered 200 with {"error": ...}.
    ERROR_BODY = "error-body"
    # Correct, but each try (action) takes SLOW seconds before its work.
    SLOW_TRY = "slow-try"
    # A slow try that writes its barrier row before its slow work, not with it: a cancel that
    # comes meanwhile finds the row, releases nothing, and the try then reserves for good.
    SLOW_UNGUARDED_TRY = "slow-unguarded-try"


FORWARD = {"cancel": "try", "compensate": "action"}  # each undo and what it undoes
PHASES = ("try", "confirm", "cancel", "action", "compensate")


@dataclass
class Holding:
    held: bool = False
    applied: int = 0
    undone: int = 0


@dataclass
class Books:
    """One mode's memory: its barrier rows (who wrote each) and what each branch holds."""

    barrier: dict[tuple[str, str, str], str] = field(default_factory=dict)
    holdings: dict[tuple[str, str], Holding] = field(default_factory=lambda: defaultdict(Holding))


class Unreadable(Exception):
    pass


async def read_call(request: web.Request) -> tuple[str, str]:
    """The call's gid and branch id, from DTM's query or the coordinator's JSON body."""
    raw = await request.read()
    if "gid" in request.query and "branch_id" in request.query:
        return request.query["gid"], request.query["branch_id"]
    try:
        body: Any = json.loads(raw)
    except ValueError:
        raise Unreadable("body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("gid"), str):
        raise Unreadable("expected gid and branch_id")
    return body["gid"], str(body.get("branch_id"))


def create_app(slow_s: float = 0.0) -> web.Application:
    books: dict[Mode, Books] = defaultdict(Books)

    def answer(mode: Mode, status: int, error: str | None = None) -> web.Response:
        if error is None:
            return web.json_response({"ok": True}, status=status)
        if mode is Mode.ERROR_BODY and 400 <= status < 500:
            return web.json_response({"error": error}, status=200)
        return web.json_response({"error": error}, status=status)

    async def handle(request: web.Request) -> web.Response:
        try:
            mode = Mode(request.match_info["mode"])
        except ValueError:
            raise web.HTTPNotFound() from None
        phase = request.match_info["phase"]
        if phase not in PHASES:
            raise web.HTTPNotFound()
        try:
            gid, branch_id = await read_call(request)
        except Unreadable as exc:
            # 409, not 400: a refusal for good in both dialects (DTM retries a 400 action).
            return answer(mode, 409, str(exc))
        if mode is Mode.SLOW_TRY and phase in FORWARD.values():
            await asyncio.sleep(slow_s)
        b = books[mode]
        holding = b.holdings[(gid, branch_id)]
        if mode is Mode.SLOW_UNGUARDED_TRY and phase == "try":
            if b.barrier.setdefault((gid, branch_id, phase), phase) != phase:
                return answer(mode, 409, "this branch was undone before its try arrived")
            await asyncio.sleep(slow_s)  # the row is in; the change comes later, unguarded
            holding.held = True
            return answer(mode, 200)
        seen = b.barrier.get((gid, branch_id, phase))
        # A repeat of what takes effect (confirm, a saga's action), as each mode answers it.
        repeat = seen == phase and phase in ("confirm", "action")
        if repeat and mode is Mode.ERROR_ON_REPEAT:
            return answer(mode, 409, f"already {phase}ed")
        if seen is not None and not (repeat and mode is Mode.APPLIES_TWICE):
            if seen != phase:  # a try (action) whose undo wrote its row: suspended
                return answer(mode, 409, f"this branch was undone before its {phase} arrived")
            return answer(mode, 200)  # a repeat: nothing more to do
        if phase in FORWARD:
            forward = FORWARD[phase]
            if (gid, branch_id, forward) not in b.barrier:
                if mode is Mode.EMPTY_CANCEL_FAILS:
                    return answer(mode, 500, f"no {forward} to undo")
                if mode is Mode.EMPTY_CANCEL_404:
                    return answer(mode, 404, "no such reservation")
                if mode is not Mode.RESERVES_AFTER_CANCEL:
                    b.barrier[(gid, branch_id, forward)] = phase  # a late one is suspended
        b.barrier[(gid, branch_id, phase)] = phase
        if phase == "try":
            holding.held = True
        elif phase == "action" or (phase == "confirm" and (holding.held or repeat)):
            holding.held = False
            holding.applied += 1
        elif holding.held or (phase == "compensate" and holding.applied > holding.undone):
            holding.held = False
            holding.undone += 1
        return answer(mode, 200)

    async def check(request: web.Request) -> web.Response:
        b = books[Mode(request.match_info["mode"])]
        key = (request.query.get("gid", ""), request.query.get("branch_id", ""))
        holding = b.holdings.get(key, Holding())
        return web.json_response(
            {"held": holding.held, "applied": holding.applied, "undone": holding.undone}
        )

    app = web.Application()
    app.router.add_get("/{mode}/check", check)
    # DTM GETs a TCC branch that has no data.
    app.router.add_route("*", "/{mode}/{phase}", handle)
    return app
