"""For the outbox's tests: a stand-in for the coordinator's ``POST /v1/messages`` that keeps
to its contract (201 for a new gid, 200 for an identical repeat, 409 for the gid with another
body) and can be made to fail, hang or count; and the check that a real coordinator serves
``/v1/messages`` at all (tests that need it are reported as waiting for it, not skipped)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

WAITS_FOR = "waits for the coordinator's {path} (issue 18, {part}): the coordinator answered"


async def api_or_xfail(base_url: str, path: str, part: str) -> None:
    """xfail the calling test, saying why, when the coordinator does not serve ``POST path``.

    An empty body is sent: a coordinator that serves the endpoint refuses it (400 or 422) and
    creates nothing; one that does not answers 404 (or 405)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.post(base_url.rstrip("/") + path, json={}) as resp,
    ):
        status = resp.status
    if status in (404, 405):
        pytest.xfail(f"{WAITS_FOR.format(path=f'POST {path}', part=part)} {status}")


async def messages_api_or_xfail(base_url: str) -> None:
    await api_or_xfail(base_url, "/v1/messages", "part 3")


async def sagas_api_or_xfail(base_url: str) -> None:
    await api_or_xfail(base_url, "/v1/sagas", "part 2")


@dataclass
class FakeMessages:
    """The coordinator's message intake, and nothing else."""

    down: bool = False  # answer 503, like a coordinator without its database
    hang: asyncio.Event | None = None  # hold every request (after recording it) until set
    delay_s: float = 0.0
    received: list[dict[str, Any]] = field(default_factory=list)  # every request, in order
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # gid -> first body
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gids(self) -> list[str]:
        return [str(r.get("gid")) for r in self.received]

    async def _post(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        if self.down:
            return web.json_response({"detail": "database unavailable"}, status=503)
        self.received.append(body)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.hang is not None:
            await self.hang.wait()
        gid = body.get("gid")
        if not isinstance(gid, str) or not body.get("steps"):
            return web.json_response({"detail": "gid and steps are required"}, status=422)
        if gid in self.messages:
            if self.messages[gid] != body:
                return web.json_response({"detail": f"gid {gid} is taken"}, status=409)
            return web.json_response(self._shown(gid), status=200)
        self.messages[gid] = body
        return web.json_response(self._shown(gid), status=201)

    def _shown(self, gid: str) -> dict[str, Any]:
        return {"gid": gid, "kind": "msg", "status": "submitted", "finished_at": None}

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self._post)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self.hang is not None:
            self.hang.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
