"""A scriptable participant service on 127.0.0.1 that records every call it gets."""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Reply:
    status: int = 200
    delay_s: float = 0.0
    body: Any = field(default_factory=lambda: {"ok": True})
    raw: bytes | None = None  # sent as is instead of body, for odd replies


@dataclass(frozen=True)
class Call:
    service: str
    phase: str
    body: Any
    headers: dict[str, str]
    client_certificate: str | None = None  # over TLS: the common name the caller presented

    @property
    def gid(self) -> str:
        return str(self.body["gid"])

    @property
    def branch_id(self) -> str:
        return str(self.body["branch_id"])


class FakeParticipant:
    def __init__(self, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        """``ssl_context``: serve https with it (the tests' own CA and certificates)."""
        self.ssl_context = ssl_context
        self.host = host
        self.calls: list[Call] = []
        self._scripts: dict[tuple[str, str], deque[Reply]] = defaultdict(deque)
        self._defaults: dict[tuple[str, str], Reply] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- scripting -------------------------------------------------------------

    def script(self, phase: str, *replies: Reply, service: str = "svc") -> None:
        """Replies used in order for the next calls, then the default again."""
        self._scripts[(service, phase)].extend(replies)

    def default(self, phase: str, reply: Reply, service: str = "svc") -> None:
        self._defaults[(service, phase)] = reply

    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def urls(self, service: str = "svc") -> dict[str, str]:
        base = f"{self.base_url()}/{service}"
        return {
            "try_url": f"{base}/try",
            "confirm_url": f"{base}/confirm",
            "cancel_url": f"{base}/cancel",
        }

    def branch(
        self, branch_id: str, service: str = "svc", payload: Any = None, with_try: bool = True
    ) -> dict[str, Any]:
        urls = self.urls(service)
        if not with_try:
            del urls["try_url"]
        return {"branch_id": branch_id, "name": service, "payload": payload, **urls}

    def calls_for(
        self, phase: str | None = None, gid: str | None = None, branch_id: str | None = None
    ) -> list[Call]:
        return [
            c
            for c in self.calls
            if (phase is None or c.phase == phase)
            and (gid is None or c.gid == gid)
            and (branch_id is None or c.branch_id == branch_id)
        ]

    # --- serving -----------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        service, phase = request.match_info["service"], request.match_info["phase"]
        body = await request.json()
        self.calls.append(
            Call(service, phase, body, dict(request.headers), _client_certificate(request))
        )
        queue = self._scripts[(service, phase)]
        reply = queue.popleft() if queue else self._defaults.get((service, phase), Reply())
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.raw is not None:
            return web.Response(body=reply.raw, status=reply.status)
        return web.json_response(reply.body, status=reply.status)

    async def start(self, port: int | None = None) -> None:
        app = web.Application()
        app.router.add_post("/{service}/{phase}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            "127.0.0.1",
            port or self.port,
            reuse_address=True,
            ssl_context=self.ssl_context,
        )
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _client_certificate(request: web.Request) -> str | None:
    transport = request.transport
    peer = transport.get_extra_info("peercert") if transport is not None else None
    if not peer:
        return None
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
