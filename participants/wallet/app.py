"""The wallet service: accounts, and the TCC handlers that move money between them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from participants.barrier import Connection
from participants.http import Refused, TccCall, tcc_routes
from participants.service import POOL, database

MIGRATIONS = Path(__file__).with_name("migrations")


def _amount_and_accounts(payload: Any) -> tuple[str, str, int]:
    if not isinstance(payload, dict):
        raise Refused("payload must be an object with account and amount")
    account, amount = payload.get("account"), payload.get("amount")
    payee = payload.get("payee", "shop")
    if not isinstance(account, str) or not isinstance(payee, str):
        raise Refused("account and payee must be strings")
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= 10**12:
        raise Refused("amount must be a positive integer, at most 10^12")
    return account, payee, amount


async def freeze(conn: Connection, call: TccCall) -> dict[str, Any]:
    account, payee, amount = _amount_and_accounts(call.payload)
    if await conn.fetchval(
        "SELECT count(*) FROM accounts WHERE id = ANY($1)", [account, payee]
    ) < len({account, payee}):
        raise Refused(f"unknown account {account!r} or payee {payee!r}")
    left = await conn.fetchval(
        "UPDATE accounts SET balance = balance - $2, frozen = frozen + $2"
        " WHERE id = $1 AND balance >= $2 RETURNING balance",
        account,
        amount,
    )
    if left is None:
        raise Refused(f"insufficient funds in {account!r} for {amount}")
    await conn.execute(
        "INSERT INTO freezes (gid, branch_id, account, payee, amount, state)"
        " VALUES ($1, $2, $3, $4, $5, 'frozen')",
        call.gid,
        call.branch_id,
        account,
        payee,
        amount,
    )
    return {"account": account, "frozen": amount, "balance": left}


async def pay(conn: Connection, call: TccCall) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "UPDATE freezes SET state = 'paid' WHERE gid = $1 AND branch_id = $2 AND state = 'frozen'"
        " RETURNING account, payee, amount",
        call.gid,
        call.branch_id,
    )
    if row is None:
        return None
    await conn.execute(
        "UPDATE accounts SET frozen = frozen - $2 WHERE id = $1", row["account"], row["amount"]
    )
    await conn.execute(
        "UPDATE accounts SET balance = balance + $2 WHERE id = $1", row["payee"], row["amount"]
    )
    return {"paid": row["amount"], "to": row["payee"]}


async def release(conn: Connection, call: TccCall) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "UPDATE freezes SET state = 'released' WHERE gid = $1 AND branch_id = $2"
        " AND state = 'frozen' RETURNING account, amount",
        call.gid,
        call.branch_id,
    )
    if row is None:
        return None
    await conn.execute(
        "UPDATE accounts SET frozen = frozen - $2, balance = balance + $2 WHERE id = $1",
        row["account"],
        row["amount"],
    )
    return {"released": row["amount"]}


async def list_accounts(request: web.Request) -> web.Response:
    rows = await request.app[POOL].fetch("SELECT id, balance, frozen FROM accounts ORDER BY id")
    return web.json_response([dict(r) for r in rows])


async def get_account(request: web.Request) -> web.Response:
    row = await request.app[POOL].fetchrow(
        "SELECT id, balance, frozen FROM accounts WHERE id = $1", request.match_info["id"]
    )
    if row is None:
        return web.json_response({"error": "no such account"}, status=404)
    return web.json_response(dict(row))


async def check(request: web.Request) -> web.Response:
    """What one branch holds and what became of it, for `tcc conformance --check-url`
    (docs/participants.md): its freeze's state, as the check URL's contract words it."""
    gid, branch_id = request.query.get("gid"), request.query.get("branch_id")
    if gid is None or branch_id is None:
        return web.json_response({"error": "give gid and branch_id"}, status=400)
    state = await request.app[POOL].fetchval(
        "SELECT state FROM freezes WHERE gid = $1 AND branch_id = $2", gid, branch_id
    )
    return web.json_response(
        {
            "held": state == "frozen",
            "applied": int(state == "paid"),
            "undone": int(state == "released"),
        }
    )


def create_app(database_url: str, schema: str = "wallet") -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(database(database_url, schema, MIGRATIONS))
    app.add_routes(tcc_routes(POOL, "/tcc", try_=freeze, confirm=pay, cancel=release))
    app.router.add_get("/accounts", list_accounts)
    app.router.add_get("/accounts/{id}", get_account)
    app.router.add_get("/tcc/check", check)
    return app
