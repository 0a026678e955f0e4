"""A DTM-style participant for the dtmcli saga and message tests (and the saga kill test):
scripted replies, held calls, the order calls arrived and were answered in, and the helpers
that read DTM's query."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
from aiohttp import web
from aiohttp.test_utils import TestServer
from dtmcli import saga, utils

from tests.conftest import CoordinatorClient
from tests.dtm_participant import DtmCall, DtmParticipant, DtmReply

FAILURE_409 = DtmReply(status=409, body='{"dtm_result": "FAILURE"}')
FAILURE_WORD = DtmReply(status=200, body='{"dtm_result": "FAILURE", "message": "no stock"}')
ONGOING_425 = DtmReply(status=425, body='{"dtm_result": "ONGOING"}')
ONGOING_WORD = DtmReply(status=200, body='{"dtm_result": "ONGOING"}')
ERROR_500 = DtmReply(status=500, body="internal error")


@dataclass
class ScriptedBusi(DtmParticipant):
    """A DTM-style participant (as tests.dtm_participant's) that can also answer a default
    other than SUCCESS, hold a call until the test lets it go, and keeps the order in which
    calls arrived and were answered (``trail``), so tests check order by causality, not time."""

    defaults: dict[tuple[str, str], DtmReply] = field(default_factory=dict)
    holds: dict[tuple[str, str], deque[asyncio.Event]] = field(
        default_factory=lambda: defaultdict(deque)
    )
    trail: list[tuple[str, str, str, str]] = field(default_factory=list)
    gates: list[asyncio.Event] = field(default_factory=list)

    def default(self, service: str, op: str, reply: DtmReply) -> None:
        self.defaults[(service, op)] = reply

    def hold(self, service: str, op: str) -> asyncio.Event:
        """The next call to (service, op) waits for the returned event before answering."""
        gate = asyncio.Event()
        self.holds[(service, op)].append(gate)
        self.gates.append(gate)
        return gate

    def ops(self, gid: str) -> list[tuple[str, str]]:
        """(service, op) of every call of ``gid``, in the order they arrived."""
        return [(c.service, c.op) for c in self.calls if c.query.get("gid") == gid]

    def count(self, gid: str, service: str, op: str) -> int:
        return self.ops(gid).count((service, op))

    def position(self, what: str, service: str, op: str, gid: str) -> int:
        """Where in the trail the first ``what`` ('arrived' or 'answered') of a call is."""
        return self.trail.index((what, service, op, gid))

    async def handle(self, request: web.Request) -> web.Response:
        service, op = request.match_info["service"], request.match_info["op"]
        gid = request.query.get("gid", "")
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
        self.trail.append(("arrived", service, op, gid))
        key = (service, op)
        if self.holds[key]:
            await self.holds[key].popleft().wait()
        queue = self.scripts[key]
        reply = queue.popleft() if queue else self.defaults.get(key, DtmReply())
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        self.trail.append(("answered", service, op, gid))
        return web.Response(status=reply.status, text=reply.body, content_type="application/json")

    def release_all(self) -> None:
        """Let every held call answer (before the server closes)."""
        for gate in self.gates:
            gate.set()


async def serve_busi(busi: ScriptedBusi) -> TestServer:
    app = web.Application()
    app.router.add_route("*", "/{service}/{op}", busi.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    busi.base = str(server.make_url("")).rstrip("/")
    return server


def dtm_url(coordinator: CoordinatorClient) -> str:
    return coordinator.url("/api/dtmsvr")


async def dtm_query(dtm: str, gid: str) -> dict[str, Any]:
    def get() -> dict[str, Any]:
        answer = requests.get(f"{dtm}/query", params={"gid": gid}, timeout=10)
        assert answer.status_code == 200, answer.text
        shown: dict[str, Any] = answer.json()
        return shown

    return await asyncio.to_thread(get)


def rows(shown: dict[str, Any]) -> dict[tuple[str, str], str]:
    """query's branch rows as (branch_id, op) -> status."""
    return {(b["branch_id"], b["op"]): b["status"] for b in shown["branches"]}


SERVICES = ("Order", "Stock", "Pay")


def three_steps(
    dtm: str, busi: DtmParticipant, configure: Callable[[saga.Saga], None] | None = None
) -> tuple[str, saga.Saga]:
    """A dtmcli saga of three steps, one per service, with payload {"step": n}."""
    gid = utils.gen_gid(dtm)
    s = saga.Saga(dtm, gid)
    for n, service in enumerate(SERVICES, start=1):
        s.add({"step": n}, busi.url(service, "action"), busi.url(service, "compensate"))
    if configure is not None:
        configure(s)
    return gid, s


async def submit_saga(
    dtm: str, busi: DtmParticipant, configure: Callable[[saga.Saga], None] | None = None
) -> str:
    def run() -> str:
        gid, s = three_steps(dtm, busi, configure)
        s.submit()
        return gid

    return await asyncio.to_thread(run)


def assert_actions_posted_in_order(
    busi: ScriptedBusi, gid: str, trans_type: str, services: tuple[str, ...] = SERVICES
) -> None:
    """Each step's action (one per service, in order) was called only once the one before it
    had answered, every call a POST with DTM's query parameters and the step's payload
    ({"step": n}) as its body."""
    for before, after in itertools.pairwise(services):
        assert busi.position("answered", before, "action", gid) < busi.position(
            "arrived", after, "action", gid
        )
    for n, call in enumerate(busi.calls, start=1):
        assert call.method == "POST"
        assert call.query == {
            "gid": gid,
            "trans_type": trans_type,
            "branch_id": f"{n:02d}",
            "op": "action",
        }
        assert json.loads(call.body) == {"step": n}


def ended(detail: dict[str, Any]) -> bool:
    return detail["status"] in ("confirmed", "cancelled", "failed_to_confirm", "failed_to_cancel")


# --- (a) every action, once, in order ---------------------------------------------------
