"""A decision survives the coordinator being killed: a new process finishes phase two."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import eventually
from tests.participant_server import FakeParticipant, Reply
from tests.processes import CoordinatorProcess

pytestmark = pytest.mark.slow


@pytest.fixture
async def coordinator_process(
    database_url: str, tmp_path: Path
) -> AsyncIterator[CoordinatorProcess]:
    proc = CoordinatorProcess(
        database_url,
        tmp_path,
        lease_ttl_s=2,
        recovery_interval_s=0.2,
        call_timeout_s=30,
        confirm_wait_s=1,
    )
    await proc.start()
    try:
        yield proc
    finally:
        proc.stop()


async def test_sigkill_after_the_decision__restarted_coordinator_confirms(
    coordinator_process: CoordinatorProcess, participant: FakeParticipant
) -> None:
    base = coordinator_process.base
    # The first confirm hangs far longer than the test: the coordinator dies mid-call.
    participant.script("confirm", Reply(delay_s=60), service="wallet")
    async with aiohttp.ClientSession() as http:

        async def post(path: str, body: object = None) -> tuple[int, dict]:  # type: ignore[type-arg]
            async with http.post(base + path, json=body or {}) as resp:
                return resp.status, await resp.json(content_type=None)

        async def get(gid: str) -> dict:  # type: ignore[type-arg]
            async with http.get(f"{base}/v1/transactions/{gid}") as resp:
                return await resp.json()  # type: ignore[no-any-return]

        assert (await post("/v1/transactions", {"gid": "durable"}))[0] == 201
        for branch_id, service in (("pay", "wallet"), ("stock", "inventory")):
            status, _ = await post(
                "/v1/transactions/durable/try", participant.branch(branch_id, service)
            )
            assert status == 200
        status, body = await post("/v1/transactions/durable/confirm")
        assert (status, body["status"]) == (202, "confirming")
        await eventually(
            lambda: _async_value(len(participant.calls_for("confirm"))), lambda n: n == 2
        )

        coordinator_process.kill(signal.SIGKILL)
        assert coordinator_process.proc is not None
        assert coordinator_process.proc.returncode == -signal.SIGKILL

        await coordinator_process.start()
        final = await eventually(
            lambda: get("durable"), lambda d: d["status"] == "confirmed", timeout_s=30
        )
    assert {b["branch_id"]: b["status"] for b in final["branches"]} == {
        "pay": "confirmed",
        "stock": "confirmed",
    }
    # The hung wallet confirm was sent again by the new process; inventory was already done.
    assert len(participant.calls_for("confirm", branch_id="pay")) == 2
    assert len(participant.calls_for("confirm", branch_id="stock")) == 1
    assert participant.calls_for("cancel") == []
    kinds = [e["kind"] for e in final["events"]]
    assert kinds.count("decision") == 1
    assert kinds[-1] == "confirmed"


async def _async_value(value: int) -> int:
    return value
