"""A small service with an outbox, run as a real process by the outbox's crash tests:

    python -m tests.participants.outbox_service --database-url URL --schema shop \\
        --port P --coordinator-url C --step-url S

``POST /orders {"id", "fail": bool}`` writes an order and its message (gid ``<id>.mail``, one
step to the step URL) in one transaction; with ``fail`` the transaction raises after both and
rolls back (500). The relay runs as in any service, with short retries.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from aiohttp import web

from participants import outbox
from participants.client import MessageStep
from participants.outbox_relay import RelaySettings, relay_in_background
from participants.service import POOL, database, serve

STEP_URL = web.AppKey("step_url", str)


class Failed(Exception):
    pass


async def place(request: web.Request) -> web.Response:
    body = await request.json()
    order = str(body["id"])
    try:
        async with request.app[POOL].acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO orders (id) VALUES ($1)", order)
            gid = await outbox.add(
                conn,
                f"{order}.mail",
                [MessageStep("mail", url=request.app[STEP_URL], payload={"order": order})],
                service="shop",
            )
            if body.get("fail"):
                raise Failed("failing after the message was added")
    except Failed as exc:
        return web.json_response({"error": str(exc)}, status=500)
    return web.json_response({"order": order, "message": gid})


def create_app(dsn: str, schema: str, coordinator: str, step_url: str) -> web.Application:
    migrations = Path(tempfile.mkdtemp(prefix="outbox-service-"))
    (migrations / "0001_orders.sql").write_text("CREATE TABLE orders (id text PRIMARY KEY);\n")
    app = web.Application()
    app[STEP_URL] = step_url
    app.cleanup_ctx.append(database(dsn, schema, migrations))
    settings = RelaySettings(
        retry_initial_s=0.1, retry_max_s=0.5, scan_every_s=1.0, handoff_timeout_s=60
    )
    app.cleanup_ctx.append(
        relay_in_background(POOL, coordinator, dsn=dsn, schema=schema, settings=settings)
    )
    app.router.add_post("/orders", place)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--schema", default="shop")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--coordinator-url", required=True)
    parser.add_argument("--step-url", required=True)
    args = parser.parse_args()
    app = create_app(args.database_url, args.schema, args.coordinator_url, args.step_url)
    serve(app, "127.0.0.1", args.port)


if __name__ == "__main__":
    main()
