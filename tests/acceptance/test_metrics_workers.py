"""`tcc serve --workers 2`: every scrape reports the whole server, whichever worker answers,
and a worker's counts outlive it."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.api.test_metrics import Samples, parse, value
from tests.helpers import eventually
from tests.participant_server import FakeParticipant
from tests.processes import CoordinatorProcess

pytestmark = pytest.mark.slow

TRANSACTIONS = 30


async def _count(proc: CoordinatorProcess, line: str) -> int:
    return proc.logs().count(line)


async def fresh(method: str, url: str, body: object = None) -> tuple[int, str]:
    """One request on a connection of its own, so the kernel picks a worker each time."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.request(method, url, json=body) as resp,
    ):
        return resp.status, await resp.text()


async def scrapes(proc: CoordinatorProcess, count: int) -> list[Samples]:
    found = []
    for _ in range(count):
        status, text = await fresh("GET", f"{proc.base}/metrics")
        assert status == 200
        found.append(parse(text))
    return found


def totals(samples: Samples) -> tuple[float | None, ...]:
    return (
        value(samples, "tcc_transactions_begun_total", dialect="tcc"),
        value(samples, "tcc_transactions_ended_total", status="confirmed", dialect="tcc"),
        value(samples, "tcc_participant_calls_total", phase="try", outcome="tried"),
        value(samples, "tcc_participant_calls_total", phase="confirm", outcome="done"),
        value(samples, "tcc_unfinished_transactions", status="trying"),
    )


async def test_two_workers__ten_scrapes_agree_with_each_other_and_the_load(
    database_url: str, tmp_path: Path, participant: FakeParticipant
) -> None:
    proc = CoordinatorProcess(database_url, tmp_path, workers=2, participant_allow="127.0.0.0/8")
    await proc.start()
    try:
        await eventually(lambda: _count(proc, '"coordinator_started"'), lambda n: n == 2)
        for i in range(TRANSACTIONS):
            gid = f"w{i}"
            assert (await fresh("POST", f"{proc.base}/v1/transactions", {"gid": gid}))[0] == 201
            branch = participant.branch("b")
            try_url = f"{proc.base}/v1/transactions/{gid}/try"
            assert (await fresh("POST", try_url, branch))[0] == 200
            confirm_url = f"{proc.base}/v1/transactions/{gid}/confirm"
            assert (await fresh("POST", confirm_url))[0] == 200
        # Both workers took part: each decision names the worker that took it.
        owners = set()
        for i in range(TRANSACTIONS):
            detail = json.loads((await fresh("GET", f"{proc.base}/v1/transactions/w{i}"))[1])
            owners |= {e["detail"]["by"] for e in detail["events"] if e["kind"] == "decision"}
        assert len(owners) == 2

        expected = (TRANSACTIONS, TRANSACTIONS, TRANSACTIONS, TRANSACTIONS, 0)
        seen = [totals(s) for s in await scrapes(proc, 10)]
        assert seen == [expected] * 10

        # A worker killed outright: its replacement starts, its counts stay in the totals.
        victim = int(next(iter(owners)).split(":")[1])
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: _count(proc, '"coordinator_started"'), lambda n: n == 3)
        seen = [totals(s) for s in await scrapes(proc, 10)]
        assert seen == [expected] * 10
    finally:
        proc.stop()
    assert proc.proc is not None
    assert proc.proc.returncode == 0
