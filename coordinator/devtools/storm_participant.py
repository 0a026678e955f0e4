"""The participant `tcc bench --storm` kills and brings back: every call answered 200 at once,
and written down before it is answered.

`python -m coordinator.devtools.storm_participant --port P --record FILE`. It takes the
coordinator's calls under `/tcc/{branch}/{phase}` (try, confirm, cancel) and its breaker's
health probe (`GET /health`), and appends one line per call to FILE: the arrival time
(seconds since the epoch), the phase (or `health`), the gid and the branch. When it starts
listening it appends a `start` line, so the record says when it came back.

Each line is one write() to a file opened for appending, made before the answer goes out: a
call that was answered is in the record however the process ends (the storm kills it with
SIGKILL), and the file outlives the process, so the restarted participant adds to the same
record. `GET /ready` answers 200 and is not recorded: the harness waits on it.
"""

from __future__ import annotations

import argparse
import os
import time

from aiohttp import web

START = "start"
HEALTH = "health"
_REPLY = b'{"ok": true}'

RECORD: web.AppKey[int] = web.AppKey("record", int)


def line(at: float, phase: str, gid: str = "-", branch: str = "-") -> bytes:
    return f"{at:.6f}\t{phase}\t{gid}\t{branch}\n".encode()


def _write(request: web.Request, data: bytes) -> None:
    os.write(request.app[RECORD], data)


async def call(request: web.Request) -> web.Response:
    at = time.time()
    await request.read()  # a real participant reads the body; the headers say who it is for
    phase = request.match_info["phase"]
    gid = request.headers.get("X-TCC-Gid", "-")
    _write(request, line(at, phase, gid, request.match_info["branch"]))
    return web.Response(body=_REPLY, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    _write(request, line(time.time(), HEALTH))
    return web.Response(body=_REPLY, content_type="application/json")


async def ready(_request: web.Request) -> web.Response:
    return web.Response(body=_REPLY, content_type="application/json")


def create_app(record: str) -> web.Application:
    app = web.Application()
    app[RECORD] = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def started(app: web.Application) -> None:
        os.write(app[RECORD], line(time.time(), START))

    async def closed(app: web.Application) -> None:
        os.close(app[RECORD])

    app.on_startup.append(started)
    app.on_cleanup.append(closed)
    app.router.add_post("/tcc/{branch}/{phase}", call)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", required=True, help="the file each call is appended to")
    args = parser.parse_args()
    web.run_app(
        create_app(args.record),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    main()
