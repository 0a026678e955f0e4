"""The inventory service: items, and the TCC handlers that reserve and sell them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from participants.barrier import Connection
from participants.http import Refused, TccCall, tcc_routes
from participants.service import POOL, database

MIGRATIONS = Path(__file__).with_name("migrations")


def _sku_and_qty(payload: Any) -> tuple[str, int]:
    if not isinstance(payload, dict):
        raise Refused("payload must be an object with sku and qty")
    sku, qty = payload.get("sku"), payload.get("qty")
    if not isinstance(sku, str):
        raise Refused("sku must be a string")
    if not isinstance(qty, int) or isinstance(qty, bool) or not 0 < qty <= 1_000_000:
        raise Refused("qty must be a positive integer, at most 1000000")
    return sku, qty


async def reserve(conn: Connection, call: TccCall) -> dict[str, Any]:
    sku, qty = _sku_and_qty(call.payload)
    left = await conn.fetchval(
        "UPDATE items SET stock = stock - $2, reserved = reserved + $2"
        " WHERE sku = $1 AND stock >= $2 RETURNING stock",
        sku,
        qty,
    )
    if left is None:
        exists = await conn.fetchval("SELECT true FROM items WHERE sku = $1", sku)
        raise Refused(f"out of stock: {sku!r}" if exists else f"unknown sku {sku!r}")
    await conn.execute(
        "INSERT INTO reservations (gid, branch_id, sku, qty, state)"
        " VALUES ($1, $2, $3, $4, 'reserved')",
        call.gid,
        call.branch_id,
        sku,
        qty,
    )
    return {"sku": sku, "reserved": qty, "stock": left}


async def _settle(
    conn: Connection, call: TccCall, state: str, column: str
) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "UPDATE reservations SET state = $3 WHERE gid = $1 AND branch_id = $2"
        " AND state = 'reserved' RETURNING sku, qty",
        call.gid,
        call.branch_id,
        state,
    )
    if row is None:
        return None
    # column is one of two literals chosen below, never input.
    await conn.execute(
        f"UPDATE items SET reserved = reserved - $2, {column} = {column} + $2 WHERE sku = $1",
        row["sku"],
        row["qty"],
    )
    return {"sku": row["sku"], state: row["qty"]}


async def consume(conn: Connection, call: TccCall) -> dict[str, Any] | None:
    return await _settle(conn, call, "sold", "sold")


async def release(conn: Connection, call: TccCall) -> dict[str, Any] | None:
    return await _settle(conn, call, "released", "stock")


async def list_items(request: web.Request) -> web.Response:
    rows = await request.app[POOL].fetch(
        "SELECT sku, name, stock, reserved, sold FROM items ORDER BY sku"
    )
    return web.json_response([dict(r) for r in rows])


async def check(request: web.Request) -> web.Response:
    """What one branch holds and what became of it, for `tcc conformance --check-url`
    (docs/participants.md): its reservation's state, as the check URL's contract words it."""
    gid, branch_id = request.query.get("gid"), request.query.get("branch_id")
    if gid is None or branch_id is None:
        return web.json_response({"error": "give gid and branch_id"}, status=400)
    state = await request.app[POOL].fetchval(
        "SELECT state FROM reservations WHERE gid = $1 AND branch_id = $2", gid, branch_id
    )
    return web.json_response(
        {
            "held": state == "reserved",
            "applied": int(state == "sold"),
            "undone": int(state == "released"),
        }
    )


def create_app(database_url: str, schema: str = "inventory") -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(database(database_url, schema, MIGRATIONS))
    app.add_routes(tcc_routes(POOL, "/tcc", try_=reserve, confirm=consume, cancel=release))
    app.router.add_get("/items", list_items)
    app.router.add_get("/tcc/check", check)
    return app
