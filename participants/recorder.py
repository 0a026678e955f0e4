"""A participant that accepts every try, confirm and cancel and remembers them.

Handy for a first look at the coordinator (the README's walk-through uses it) and
for smoke-testing a deployment: `python -m participants.recorder --port 8081`,
then `GET /calls` lists what arrived. A path ending in /fail answers 500 and one
ending in /refuse answers 409, to see a cancel happen.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from aiohttp import web

CALLS = web.AppKey("calls", list)


async def handle(request: web.Request) -> web.Response:
    try:
        body: Any = await request.json()
    except ValueError:
        body = await request.text()
    call = {
        "at": time.time(),
        "path": request.path,
        "phase": request.headers.get("X-TCC-Phase"),
        "gid": request.headers.get("X-TCC-Gid"),
        "branch_id": request.headers.get("X-TCC-Branch"),
        "body": body,
    }
    request.app[CALLS].append(call)
    if request.path.endswith("/fail"):
        return web.json_response({"error": "failing on purpose"}, status=500)
    if request.path.endswith("/refuse"):
        return web.json_response({"error": "refused on purpose"}, status=409)
    return web.json_response({"ok": True})


async def list_calls(request: web.Request) -> web.Response:
    return web.json_response(request.app[CALLS])


def create_app() -> web.Application:
    app = web.Application()
    app[CALLS] = []
    app.router.add_get("/calls", list_calls)
    app.router.add_post("/{tail:.*}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    web.run_app(create_app(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
