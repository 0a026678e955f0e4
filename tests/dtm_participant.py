"""A participant written the way DTM's users write them: gid, branch_id and op arrive as
query parameters, the body is the branch's data, and the answer is DTM's envelope."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass(frozen=True)
class DtmReply:
    status: int = 200
    body: str = '{"dtm_result": "SUCCESS"}'
    delay_s: float = 0.0


@dataclass(frozen=True)
class DtmCall:
    service: str
    op: str
    method: str
    query: dict[str, str]
    body: str
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


@dataclass
class DtmParticipant:
    calls: list[DtmCall] = field(default_factory=list)
    scripts: dict[tuple[str, str], deque[DtmReply]] = field(
        default_factory=lambda: defaultdict(deque)
    )
    base: str = ""

    def script(self, service: str, op: str, *replies: DtmReply) -> None:
        self.scripts[(service, op)].extend(replies)

    def url(self, service: str, op: str) -> str:
        return f"{self.base}/{service}/{op}"

    def calls_for(self, op: str, gid: str | None = None) -> list[DtmCall]:
        return [c for c in self.calls if c.op == op and (gid is None or c.query.get("gid") == gid)]

    async def handle(self, request: web.Request) -> web.Response:
        service, op = request.match_info["service"], request.match_info["op"]
        self.calls.append(
            DtmCall(
                service,
                op,
                request.method,
                dict(request.query),
                await request.text(),
                dict(request.headers),
            )
        )
        queue = self.scripts[(service, op)]
        reply = queue.popleft() if queue else DtmReply()
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        return web.Response(status=reply.status, text=reply.body, content_type="application/json")


@asynccontextmanager
async def dtm_participant() -> AsyncIterator[DtmParticipant]:
    participant = DtmParticipant()
    app = web.Application()
    app.router.add_route("*", "/{service}/{op}", participant.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    participant.base = str(server.make_url("")).rstrip("/")
    try:
        yield participant
    finally:
        await server.close()
