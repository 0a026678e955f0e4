"""A saga survives its coordinator being killed mid-action: two real `tcc serve` processes
on one database; the one running the saga is killed with SIGKILL while an action is out,
and the other takes the saga over once the lease has lapsed and finishes it."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from dtmcli import saga, utils

from tests.dtm.busi import FAILURE_409, SERVICES, ScriptedBusi
from tests.helpers import eventually
from tests.processes import CoordinatorProcess

pytestmark = pytest.mark.slow

# A short lease, so B takes over soon after A dies; quick scans and retries.
SETTINGS: dict[str, object] = {
    "lease_ttl_s": 2,
    "recovery_interval_s": 0.2,
    "retry_initial_s": 0.1,
    "retry_max_s": 0.5,
    "confirm_wait_s": 1,
}


@pytest.fixture
async def pair(
    database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[CoordinatorProcess, CoordinatorProcess]]:
    """Coordinators A and B on the same database."""
    a = CoordinatorProcess(database_url, tmp_path, **SETTINGS)
    b = CoordinatorProcess(database_url, tmp_path, **SETTINGS)
    try:
        await a.start()
        await b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


async def submit_saga(coordinator: CoordinatorProcess, busi: ScriptedBusi) -> str:
    """Three steps through dtmcli; a call may take 30 s, so A's held call stays out."""
    dtm = f"{coordinator.base}/api/dtmsvr"

    def run() -> str:
        gid = utils.gen_gid(dtm)
        s = saga.Saga(dtm, gid)
        for n, service in enumerate(SERVICES, start=1):
            s.add({"step": n}, busi.url(service, "action"), busi.url(service, "compensate"))
        s.trans_base.request_timeout = 30
        s.submit()
        return str(gid)

    return await asyncio.to_thread(run)


async def detail(coordinator: CoordinatorProcess, gid: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{coordinator.base}/v1/transactions/{gid}") as resp,
    ):
        assert resp.status == 200, await resp.text()
        out: dict[str, Any] = await resp.json()
        return out


def ended(d: dict[str, Any]) -> bool:
    return d["status"] in ("confirmed", "cancelled", "failed_to_confirm", "failed_to_cancel")


async def kill_while_stock_action_is_out(
    a: CoordinatorProcess, busi: ScriptedBusi
) -> tuple[str, asyncio.Event]:
    """Submit to A; once Stock's action has reached the participant (held there, A waiting
    for its answer), SIGKILL A."""
    gate = busi.hold("Stock", "action")
    gid = await submit_saga(a, busi)
    await eventually(
        lambda: asyncio.sleep(0, busi.trail),
        lambda trail: ("arrived", "Stock", "action", gid) in trail,
        timeout_s=30,
    )
    a.kill(signal.SIGKILL)
    assert a.proc is not None
    assert a.proc.returncode == -signal.SIGKILL
    return gid, gate


def took_over(b: CoordinatorProcess, gid: str) -> bool:
    """B's log says it claimed ``gid`` from another coordinator whose lease had lapsed."""
    for line in b.logs().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(entry, dict)
            and entry.get("event") == "recovery_claimed"
            and entry.get("gid") == gid
            and entry.get("took_over") is True
        ):
            return True
    return False


async def test_saga_kill__action_in_flight__other_coordinator_takes_over_and_succeeds(
    pair: tuple[CoordinatorProcess, CoordinatorProcess], busi: ScriptedBusi
) -> None:
    a, b = pair
    gid, _held = await kill_while_stock_action_is_out(a, busi)

    final = await eventually(lambda: detail(b, gid), ended, timeout_s=30)
    assert final["status"] == "confirmed"
    assert [br["status"] for br in final["branches"]] == ["confirmed"] * 3
    # Order's action was logged by A before Stock's was sent: B does not repeat it. Stock's
    # may have run (A never heard), so B sends it again (the barrier makes a repeat
    # harmless); Pay's only once Stock's is done. Nothing is compensated.
    assert busi.count(gid, "Order", "action") == 1
    assert busi.count(gid, "Stock", "action") == 2
    assert busi.count(gid, "Pay", "action") == 1
    assert [op for _, op in busi.ops(gid)].count("compensate") == 0
    assert busi.position("answered", "Stock", "action", gid) < busi.position(
        "arrived", "Pay", "action", gid
    )
    assert took_over(b, gid), b.logs()


async def test_saga_kill__action_in_flight_then_refused__other_coordinator_compensates(
    pair: tuple[CoordinatorProcess, CoordinatorProcess], busi: ScriptedBusi
) -> None:
    a, b = pair
    # The held call is A's; the next one (B's) is refused.
    busi.script("Stock", "action", FAILURE_409)
    gid, _held = await kill_while_stock_action_is_out(a, busi)

    final = await eventually(lambda: detail(b, gid), ended, timeout_s=30)
    assert final["status"] == "cancelled"
    assert final["cancel_reason"] == "action_failed: 02"
    assert [br["status"] for br in final["branches"]] == ["cancelled", "cancelled", "registered"]
    # Stock's compensation first, then Order's; Pay is never called.
    assert busi.ops(gid) == [
        ("Order", "action"),
        ("Stock", "action"),  # A's, held when A died
        ("Stock", "action"),  # B's, refused
        ("Stock", "compensate"),
        ("Order", "compensate"),
    ]
    assert busi.position("answered", "Stock", "compensate", gid) < busi.position(
        "arrived", "Order", "compensate", gid
    )
    assert took_over(b, gid), b.logs()
