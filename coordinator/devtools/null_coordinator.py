"""The null coordinator: what a TCC coordinator on our stack costs with nothing of ours in it.

`tcc bench` runs it in a process of its own beside `tcc serve`, on the same stack (aiohttp
server and client, uvloop, orjson), and drives it with the same auto begin: POST
/v1/transactions with {"auto": true, "branches": [...]}. It calls every branch's try at
once, then every confirm at once (the body and headers the coordinator sends), and answers
201 {"gid": ..., "status": "confirmed"}. Nothing is validated, retried or cancelled: a
participant answering anything but 200 makes the request fail (502).

Two variants:

- `null http` (no --database): the calls only;
- `null log` (the database URL in the environment variable NULL_COORDINATOR_DATABASE_URL):
  the calls and the least a durable coordinator must write, each its own transaction with a
  synchronous commit, no batching, no timeline: one INSERT of the transaction with its
  branches (a jsonb column) before any try, one UPDATE for the decision before any confirm.

It is a yardstick, not a coordinator: it keeps nothing it could recover from.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from typing import Any

import aiohttp
import asyncpg
import orjson
import uvloop
from aiohttp import web

DATABASE_ENV = "NULL_COORDINATOR_DATABASE_URL"
SCHEMA = """CREATE TABLE IF NOT EXISTS null_transactions (
    gid text PRIMARY KEY,
    status text NOT NULL,
    branches jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    decided_at timestamptz
)"""
INSERT = "INSERT INTO null_transactions (gid, status, branches) VALUES ($1, 'trying', $2)"
DECIDE = (
    "UPDATE null_transactions SET status = 'confirming', decided_at = now()"
    " WHERE gid = $1 AND status = 'trying'"
)

POOL: web.AppKey[asyncpg.Pool | None] = web.AppKey("pool", asyncpg.Pool)
HTTP: web.AppKey[aiohttp.ClientSession] = web.AppKey("http", aiohttp.ClientSession)


class ParticipantRefused(Exception):
    pass


async def _call(http: aiohttp.ClientSession, gid: str, branch: dict[str, Any], phase: str) -> None:
    branch_id = branch["branch_id"]
    body = {"gid": gid, "branch_id": branch_id, "phase": phase, "payload": branch.get("payload")}
    headers = {
        "Content-Type": "application/json",
        "X-TCC-Gid": gid,
        "X-TCC-Branch": branch_id,
        "X-TCC-Phase": phase,
        "Idempotency-Key": f"{gid}:{branch_id}:{phase}",
    }
    async with http.post(branch[f"{phase}_url"], data=orjson.dumps(body), headers=headers) as r:
        await r.read()
        if r.status != 200:
            raise ParticipantRefused(f"{phase} {branch_id}: {r.status}")


async def begin(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    branches: list[dict[str, Any]] = body["branches"]
    gid = uuid.uuid4().hex
    pool, http = request.app[POOL], request.app[HTTP]
    if pool is not None:
        await pool.execute(INSERT, gid, orjson.dumps(branches).decode())
    try:
        await asyncio.gather(*(_call(http, gid, b, "try") for b in branches))
        if pool is not None:
            await pool.execute(DECIDE, gid)
        await asyncio.gather(*(_call(http, gid, b, "confirm") for b in branches))
    except (ParticipantRefused, aiohttp.ClientError) as exc:
        return web.Response(status=502, text=str(exc))
    answer = {"gid": gid, "status": "confirmed"}
    return web.Response(status=201, body=orjson.dumps(answer), content_type="application/json")


async def ready(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Nothing to reset (as the coordinator's pool): asyncpg's default reset is four
    statements and a commit per checkout."""


def create_app(database_url: str | None, pool_size: int) -> web.Application:
    app = web.Application()
    app[POOL] = None

    async def resources(app: web.Application) -> Any:
        connector = aiohttp.TCPConnector(limit=1000, limit_per_host=100)
        app[HTTP] = aiohttp.ClientSession(connector=connector)
        if database_url is not None:
            conn = await asyncpg.connect(database_url)
            try:
                await conn.execute(SCHEMA)
            finally:
                await conn.close()
            app[POOL] = await asyncpg.create_pool(
                database_url, min_size=2, max_size=pool_size, reset=_keep_session
            )
        yield
        await app[HTTP].close()
        pool = app[POOL]
        if pool is not None:
            await pool.close()

    app.cleanup_ctx.append(resources)
    app.router.add_post("/v1/transactions", begin)
    app.router.add_get("/readyz", ready)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pool-size", type=int, default=20)
    args = parser.parse_args()
    web.run_app(
        create_app(os.environ.get(DATABASE_ENV) or None, args.pool_size),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        shutdown_timeout=1.0,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
