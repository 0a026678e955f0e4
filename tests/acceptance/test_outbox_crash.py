"""The outbox's promises with a real service process killed by SIGKILL: a message committed
and not yet handed off is sent after the restart; a hand-off cut short by the kill is sent
again as the same message, which the coordinator keeps once; a rolled-back transaction sends
nothing at any point."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from coordinator.devtools.children import clean_env, free_port
from tests.helpers import eventually
from tests.participant_server import FakeParticipant
from tests.participants.messages import FakeMessages, messages_api_or_xfail
from tests.processes import CoordinatorProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = "shop"


class Service:
    """tests/participants/outbox_service.py as a child process, killed for real."""

    def __init__(self, dsn: str, coordinator: str, step_url: str, log_dir: Path) -> None:
        self.port = free_port()
        self.command = [
            sys.executable,
            "-m",
            "tests.participants.outbox_service",
            "--database-url",
            dsn,
            "--schema",
            SCHEMA,
            "--port",
            str(self.port),
            "--coordinator-url",
            coordinator,
            "--step-url",
            step_url,
        ]
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        with open(self.log_dir / f"service-{self.starts}.log", "wb") as log:
            return subprocess.Popen(self.command, cwd=ROOT, env=clean_env(), stdout=log, stderr=log)

    async def start(self) -> None:
        self.proc = self._spawn()
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.logs()
                try:
                    async with http.post(f"{self.base}/orders", data=b"not json"):
                        return  # it answers (a 500 for that body): up
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)
        raise AssertionError(f"the service did not start: {self.logs()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    async def place(self, order: str, *, fail: bool = False) -> int:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.post(f"{self.base}/orders", json={"id": order, "fail": fail}) as resp,
        ):
            return resp.status


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[Service]]:
    made: list[Service] = []
    yield made
    for service in made:
        service.stop()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMA})
    try:
        yield conn
    finally:
        await conn.close()


async def outbox_rows(db: asyncpg.Connection) -> dict[str, str]:
    return {r["gid"]: r["status"] for r in await db.fetch("SELECT gid, status FROM tcc_outbox")}


async def test_killed_after_commits_before_any_hand_off__every_message_goes_after_restart(
    database_url: str, tmp_path: Path, services: list[Service], db: asyncpg.Connection
) -> None:
    port = free_port()  # the coordinator: not there while the orders are placed
    service = Service(database_url, f"http://127.0.0.1:{port}", "http://127.0.0.1:9/s", tmp_path)
    services.append(service)
    await service.start()
    committed = [f"o-{n:02d}" for n in range(15)]
    for n, order in enumerate(committed):
        assert await service.place(order) == 200
        assert await service.place(f"rb-{n:02d}", fail=True) == 500  # rolled back

    rows = await eventually(lambda: outbox_rows(db), lambda r: len(r) == 15)
    assert set(rows.values()) == {"pending"}
    service.kill()  # committed, never handed off

    intake = FakeMessages()
    await intake.start(port)
    try:
        assert intake.received == []
        await service.start()  # the next start's relay finds them
        await eventually(
            lambda: outbox_rows(db), lambda r: set(r.values()) == {"handed_off"}, timeout_s=30
        )
    finally:
        await intake.stop()

    assert sorted(intake.gids()) == [f"{o}.mail" for o in committed]  # each once, none lost
    assert not any(gid.startswith("rb-") for gid in intake.gids())
    assert await db.fetchval("SELECT count(*) FROM orders") == 15


async def test_killed_during_the_hand_off__the_repeat_is_the_same_message(
    database_url: str, tmp_path: Path, services: list[Service], db: asyncpg.Connection
) -> None:
    intake = FakeMessages(hang=asyncio.Event())  # takes each request in, never answers
    await intake.start()
    try:
        service = Service(database_url, intake.base, "http://127.0.0.1:9/s", tmp_path)
        services.append(service)
        await service.start()
        for order in ("o-1", "o-2", "o-3"):
            assert await service.place(order) == 200
        # The coordinator has had a message (the relay is waiting for its answer, and the
        # rows behind it for their turn); the service has marked nothing yet.
        await eventually(lambda: asyncio.sleep(0, intake.gids()), lambda g: len(g) >= 1)
        assert set((await outbox_rows(db)).values()) == {"pending"}
        service.kill()
        first = list(intake.received)

        intake.hang = None  # answers from now on
        await service.start()
        await eventually(
            lambda: outbox_rows(db), lambda r: set(r.values()) == {"handed_off"}, timeout_s=30
        )
    finally:
        await intake.stop()

    again = intake.received[len(first) :]
    # What the killed service had handed off is handed off again, the same gid with the same
    # body: the coordinator answers it as the message it has (the stand-in 409s otherwise,
    # and the row would end refused).
    repeated = [r for r in again if r["gid"] in {f["gid"] for f in first}]
    assert sorted(repeated, key=str) == sorted(first, key=str)
    assert sorted(intake.messages) == ["o-1.mail", "o-2.mail", "o-3.mail"]
    assert len(intake.received) == 3 + len(first)


class HoldingProxy:
    """Forwards POST /v1/messages to the real coordinator, then keeps its answer from the
    caller until ``released``: the coordinator has the message, the caller does not know."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.released = asyncio.Event()
        self.forwarded: list[dict[str, Any]] = []
        self.server: TestServer | None = None

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.json()
        async with (
            aiohttp.ClientSession() as http,
            http.post(self.target + "/v1/messages", json=body) as resp,
        ):
            status, text = resp.status, await resp.text()
        self.forwarded.append({"gid": body.get("gid"), "status": status})
        await self.released.wait()
        return web.Response(status=status, text=text, content_type="application/json")

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/messages", self._post)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return str(self.server.make_url("")).rstrip("/")

    async def stop(self) -> None:
        self.released.set()
        if self.server is not None:
            await self.server.close()


async def test_killed_during_the_hand_off__the_real_coordinator_keeps_one_message(
    database_url: str, tmp_path: Path, services: list[Service], db: asyncpg.Connection
) -> None:
    coordinator = CoordinatorProcess(
        database_url, tmp_path, retry_initial_s=0.1, retry_max_s=0.5, recovery_interval_s=0.3
    )
    await coordinator.start()
    step = FakeParticipant()
    await step.start()
    proxy = HoldingProxy(coordinator.base)
    try:
        await messages_api_or_xfail(coordinator.base)
        base = await proxy.start()
        service = Service(database_url, base, f"{step.base_url()}/mail/action", tmp_path)
        services.append(service)
        await service.start()
        assert await service.place("o-1") == 200
        assert await service.place("rb-1", fail=True) == 500
        await eventually(lambda: asyncio.sleep(0, proxy.forwarded), lambda f: len(f) == 1)
        assert proxy.forwarded[0]["status"] == 201  # the coordinator took it
        service.kill()  # before the service heard so: its row is still pending
        assert (await outbox_rows(db))["o-1.mail"] == "pending"

        proxy.released.set()
        await service.start()
        await eventually(lambda: outbox_rows(db), lambda r: r == {"o-1.mail": "handed_off"}, 30)
        assert [f["status"] for f in proxy.forwarded] == [201, 200]  # the repeat: same message
        await eventually(
            lambda: asyncio.sleep(0, step.calls_for("action", gid="o-1.mail")),
            lambda calls: len(calls) == 1,
            timeout_s=30,
        )
        await asyncio.sleep(1.0)  # a second delivery would come within this
        assert len(step.calls_for("action", gid="o-1.mail")) == 1
        assert step.calls_for(gid="rb-1.mail") == []
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{coordinator.base}/v1/transactions/rb-1.mail") as resp,
        ):
            assert resp.status == 404
    finally:
        await proxy.stop()
        await step.stop()
        coordinator.stop()
