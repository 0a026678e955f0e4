"""A participant for soak and chaos runs: it fails on purpose and remembers every call.

Every call is written to its own Postgres table before it is answered, so the
record survives the process being killed; `tcc chaos` reads the table to check
that what participants were told agrees with what the coordinator decided.

    python -m participants.flaky --database-url URL --port 8091 --fail-rate 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import random
from typing import Any

import asyncpg
from aiohttp import web

POOL = web.AppKey("pool", asyncpg.Pool)
OPTIONS = web.AppKey("options", argparse.Namespace)

# Several flaky participants start at once on one database: CREATE ... IF NOT EXISTS is not
# safe against a concurrent create (a unique violation in the catalog), so they take turns.
SCHEMA_LOCK = 0x666C616B79  # "flaky"

SCHEMA = """
CREATE TABLE IF NOT EXISTS flaky_calls (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    service   text NOT NULL,
    gid       text NOT NULL,
    branch_id text NOT NULL,
    phase     text NOT NULL,
    answer    integer NOT NULL,
    at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS flaky_calls_gid ON flaky_calls (gid, branch_id);
"""

RECORD = "INSERT INTO flaky_calls (service, gid, branch_id, phase, answer) VALUES ($1,$2,$3,$4,$5)"


def choose_answer(phase: str, options: argparse.Namespace, rng: random.Random) -> int:
    if phase == "try" and rng.random() < options.refuse_rate:
        return 409
    if rng.random() < options.fail_rate:
        return 500
    return 200


async def handle(request: web.Request) -> web.Response:
    options = request.app[OPTIONS]
    phase = request.match_info["phase"]
    body: dict[str, Any] = await request.json()
    answer = choose_answer(phase, options, random.Random())
    if options.delay_max_s:
        await asyncio.sleep(random.uniform(0, options.delay_max_s))
    # Recorded before answering: an answer the coordinator saw is always in the table.
    await request.app[POOL].execute(
        RECORD, options.service, body["gid"], body["branch_id"], phase, answer
    )
    return web.json_response({"answer": answer}, status=answer)


def create_app(options: argparse.Namespace) -> web.Application:
    app = web.Application()
    app[OPTIONS] = options

    async def database(app: web.Application) -> Any:
        pool = await asyncpg.create_pool(options.database_url, min_size=1, max_size=10)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            await conn.execute(SCHEMA)
        app[POOL] = pool
        yield
        await pool.close()

    app.cleanup_ctx.append(database)
    app.router.add_post("/{phase:try|confirm|cancel}", handle)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="a participant that fails on purpose")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--service", default="flaky")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of calls answered 500")
    parser.add_argument("--refuse-rate", type=float, default=0.0, help="share of tries refused")
    parser.add_argument("--delay-max-s", type=float, default=0.0, help="random delay per call")
    return parser.parse_args(argv)


def main() -> None:
    options = parse_args()
    web.run_app(
        create_app(options),
        host=options.host,
        port=options.port,
        print=lambda *_: None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
