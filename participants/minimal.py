"""The cheapest participant there is: every call, on any path, answered 200 at once.

`tcc bench` runs it in its own process (`python -m participants.minimal --port P`) so that
what it measures is the coordinator, not a participant's business logic. It takes the
coordinator's format (POST with a JSON body) and DTM's (GET or POST with gid, branch_id and
op as query parameters) alike. The body is read (a real participant would parse it) and the
answer is DTM's success envelope, which our own protocol also reads as done.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib

from aiohttp import web

# DTM clients look for the words FAILURE and ONGOING in a reply; this says neither.
_REPLY = b'{"dtm_result": "SUCCESS"}'


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=_REPLY, content_type="application/json")


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def _loop_factory() -> asyncio.AbstractEventLoop:
    """uvloop when it is installed (as the load generator uses it), asyncio's loop otherwise."""
    try:
        uvloop = importlib.import_module("uvloop")  # optional: not a dependency
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(
        create_app(),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,  # a log line per call would cost more than the call
        shutdown_timeout=1.0,
        loop=_loop_factory(),
    )


if __name__ == "__main__":
    main()
