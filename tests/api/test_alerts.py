"""Alerts for real: parked transactions on a real coordinator and Postgres, delivered over
HTTP to a receiver that checks the signature; two coordinators never send one twice."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from coordinator.settings import Settings
from tests.conftest import CoordinatorClient
from tests.helpers import eventually
from tests.participant_server import FakeParticipant, Reply
from tests.processes import run_tcc_async, tcc_env

SECRET = "alert-secret-for-the-tests"
MakeCoordinator = Callable[..., Awaitable[CoordinatorClient]]


@dataclass
class Receiver:
    """An alert webhook: keeps every request as received, answers as told."""

    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    failures_left: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        if self.failures_left:
            self.failures_left -= 1
            return web.Response(status=503, text="try later")
        return web.Response(status=204)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/alerts", hook.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    hook.url = str(server.make_url("/alerts"))
    try:
        yield hook
    finally:
        await server.close()


def alerting(receiver: Receiver, **overrides: object) -> dict[str, object]:
    """Settings that park a transaction within a second, and alert about it."""
    return {
        "alert_webhook": receiver.url,
        "alert_secret": SECRET,
        "give_up_after_s": 0.5,
        **overrides,
    }


async def park(coordinator: CoordinatorClient, participant: FakeParticipant, gid: str) -> None:
    status, out = await coordinator.post(
        "/v1/transactions",
        {
            "gid": gid,
            "auto": True,
            "branches": [participant.branch("stock"), participant.branch("wallet", "pay")],
        },
    )
    assert status in (200, 201, 202), out


async def count(receiver: Receiver) -> int:
    return len(receiver.received)


async def test_parked__alert_delivered_signed_after_a_failed_delivery(
    make_coordinator: MakeCoordinator, participant: FakeParticipant, receiver: Receiver
) -> None:
    participant.default("confirm", Reply(status=500, body={"error": "ledger down"}), "pay")
    receiver.failures_left = 1
    coordinator = await make_coordinator(**alerting(receiver))
    await park(coordinator, participant, "stuck")

    await eventually(lambda: count(receiver), lambda n: n >= 2, timeout_s=20)
    (first_headers, first_body), (headers, body) = receiver.received[:2]
    assert first_body == body  # the same alert, sent again after the 503
    assert headers["X-TCC-Alert-Id"] == first_headers["X-TCC-Alert-Id"]
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-TCC-Signature"], signature)
    alert = json.loads(body)
    assert alert["kind"] == "parked"
    assert (alert["gid"], alert["status"], alert["reason"]) == (
        "stuck",
        "failed_to_confirm",
        "confirm",
    )
    assert alert["failing_branch"]["branch_id"] == "wallet"
    assert alert["failing_branch"]["last_http_status"] == 500
    assert "ledger down" in alert["failing_branch"]["last_error"]
    assert alert["failing_branch"]["attempts"] >= 1
    assert str(alert["alert_id"]) == headers["X-TCC-Alert-Id"]

    status, metrics, _ = await coordinator.request("GET", "/metrics")
    assert status == 200
    assert 'tcc_alerts_total{outcome="delivered"} 1.0' in metrics
    assert 'tcc_alerts_total{outcome="failed"} 1.0' in metrics


async def test_two_coordinators__every_alert_delivered_exactly_once(
    make_coordinator: MakeCoordinator, participant: FakeParticipant, receiver: Receiver
) -> None:
    participant.default("confirm", Reply(status=500), "pay")
    first = await make_coordinator(**alerting(receiver))
    second = await make_coordinator(**alerting(receiver))
    gids = [f"stuck-{n}" for n in range(8)]
    for n, gid in enumerate(gids):
        await park(first if n % 2 else second, participant, gid)

    await eventually(lambda: count(receiver), lambda n: n >= len(gids), timeout_s=30)
    # Five more passes of both coordinators' upkeep (every 0.2 s): nothing may come twice.
    await asyncio.sleep(1.0)
    ids = Counter(h["X-TCC-Alert-Id"] for h, _ in receiver.received)
    assert all(n == 1 for n in ids.values()), ids
    assert sorted(b["gid"] for b in receiver.bodies()) == sorted(gids)


async def test_retrying_for_many_rounds__one_alert_before_it_is_parked(
    make_coordinator: MakeCoordinator, participant: FakeParticipant, receiver: Receiver
) -> None:
    participant.default("confirm", Reply(status=500), "pay")
    coordinator = await make_coordinator(
        **alerting(receiver, give_up_after_s=30.0, alert_after_rounds=3)
    )
    await park(coordinator, participant, "slow")
    await eventually(lambda: count(receiver), lambda n: n >= 1, timeout_s=20)
    alert = receiver.bodies()[0]
    assert (alert["kind"], alert["status"], alert["rounds"]) == ("retrying", "confirming", 3)
    assert alert["failing_branch"]["branch_id"] == "wallet"


def test_webhook_outside_the_allowlist__refused_at_start() -> None:
    with pytest.raises(ValidationError, match="alert_webhook is not allowed"):
        Settings(
            insecure=True,
            participant_allow="127.0.0.0/8",
            alert_webhook="http://10.1.2.3/alerts",
            alert_secret=SECRET,
        )
    with pytest.raises(ValidationError, match="needs alert_secret"):
        Settings(insecure=True, alert_webhook="http://127.0.0.1:9/alerts")


async def test_webhook_outside_the_allowlist__tcc_serve_says_so_in_one_line(
    database_url: str,
) -> None:
    env = tcc_env(database_url, alert_webhook="http://169.254.169.254/latest", alert_secret=SECRET)
    code, _stdout, stderr = await run_tcc_async("serve", env=env, timeout_s=60)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("tcc serve: alert_webhook is not allowed: ")
    assert "169.254.169.254" in stderr
