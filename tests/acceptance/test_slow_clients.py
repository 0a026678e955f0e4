"""Slow and numerous clients against real sockets: slowloris, idle keep-alive, connection floods
under a lowered open-file limit while a real transaction completes."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from coordinator.api.server import (
    ConnectionLimits,
    GuardedSite,
    awaiting_next_request,
    parsed_requests,
)
from tests.helpers import eventually
from tests.participant_server import FakeParticipant
from tests.processes import TCC, CoordinatorProcess

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]

GET_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: tcc\r\n\r\n"


# --- raw HTTP over asyncio streams ------------------------------------------------------------


async def connect(port: int) -> Streams:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response with a Content-Length body: (status, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(next(v for k, v in headers.items() if k.lower() == "content-length"))
    body = await asyncio.wait_for(reader.readexactly(length), 10)
    return int(lines[0].split()[1]), body


async def dribble_until_closed(
    streams: Streams, drip: bytes, *, every_s: float, give_up_s: float
) -> bytes | None:
    """Send ``drip`` every ``every_s`` until the server closes the connection; return what it
    sent before closing (b"" for a silent close or a reset), None if still open at give_up_s."""
    reader, writer = streams
    received = b""
    deadline = time.monotonic() + give_up_s
    try:
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(4096), every_s)
            except TimeoutError:
                writer.write(drip)
                await writer.drain()
                continue
            if not chunk:
                return received
            received += chunk
    except ConnectionError:
        return received
    finally:
        writer.close()
    return None


async def wait_closed_by_server(reader: asyncio.StreamReader, give_up_s: float) -> bytes | None:
    """What the server sends before closing an idle connection; None if it stays open."""
    try:
        return await asyncio.wait_for(reader.read(), give_up_s)
    except TimeoutError:
        return None
    except ConnectionError:
        return b""


# --- in process: the guard around aiohttp's RequestHandler ------------------------------------


ServeGuarded = Callable[..., Awaitable[GuardedSite]]


@pytest.fixture
async def serve_guarded() -> AsyncIterator[ServeGuarded]:
    """Serve an app on 127.0.0.1 through a GuardedSite; everything is closed afterwards."""
    runners: list[web.AppRunner] = []

    async def serve(
        app: web.Application, *, header_timeout_s: float, max_connections: int = 100
    ) -> GuardedSite:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        runners.append(runner)
        site = GuardedSite(
            runner, "127.0.0.1", 0, ConnectionLimits(max_connections, header_timeout_s)
        )
        await site.start()
        return site

    yield serve
    for runner in runners:
        await runner.cleanup()


async def test_aiohttp_request_handler__still_has_what_the_header_deadline_reads(
    serve_guarded: ServeGuarded,
) -> None:
    """server.parsed_requests / awaiting_next_request read aiohttp's private RequestHandler
    state; this fails if an aiohttp upgrade changes what they mean."""
    handlers: list[Any] = []
    seen: list[tuple[int, bool]] = []

    async def probe(request: web.Request) -> web.Response:
        handlers.append(request.protocol)
        seen.append((parsed_requests(request.protocol), awaiting_next_request(request.protocol)))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/probe", probe)
    site = await serve_guarded(app, header_timeout_s=30)
    reader, writer = await connect(site.port)
    try:
        writer.write(b"GET /probe HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        handler = handlers[0]

        async def idle() -> bool:
            return awaiting_next_request(handler)

        await eventually(idle, lambda waiting: waiting, timeout_s=5)
        writer.write(b"GET /probe HTTP/1.1\r\nHost: t\r\n")  # the headers' end is missing
        await asyncio.sleep(0.2)
        assert parsed_requests(handler) == 1
        assert awaiting_next_request(handler)
        writer.write(b"\r\n")
        assert (await read_response(reader))[0] == 200
    finally:
        writer.close()
    assert seen == [(1, False), (2, False)]


async def test_header_deadline__spares_slow_handlers_and_quiet_keepalive_connections(
    serve_guarded: ServeGuarded,
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.8)
        return web.Response(text="done")

    app = web.Application()
    app.router.add_get("/slow", slow)
    site = await serve_guarded(app, header_timeout_s=0.3)
    reader, writer = await connect(site.port)
    try:
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_response(reader) == (200, b"done")  # handled longer than the deadline
        await asyncio.sleep(0.8)  # quiet between requests: only the keep-alive timer counts
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_response(reader) == (200, b"done")
    finally:
        writer.close()


async def test_connection_cap__refuses_with_503_and_admits_again_when_one_closes(
    serve_guarded: ServeGuarded,
) -> None:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    site = await serve_guarded(app, header_timeout_s=30, max_connections=2)
    held = [await connect(site.port) for _ in range(2)]
    for _, writer in held:
        writer.write(GET_HEALTHZ)
    for reader, _ in held:
        assert (await read_response(reader))[0] == 200

    reader, writer = await connect(site.port)
    refused = await wait_closed_by_server(reader, give_up_s=10)
    writer.close()
    assert refused is not None
    assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Connection: close" in refused

    held[0][1].close()
    guard = site.guard
    assert guard is not None

    async def open_connections() -> int:
        return guard.open

    await eventually(open_connections, lambda n: n == 1, timeout_s=5)
    reader, writer = await connect(site.port)
    writer.write(GET_HEALTHZ)
    assert (await read_response(reader))[0] == 200
    writer.close()
    held[1][1].close()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


# --- real `tcc serve` processes --------------------------------------------------------------


async def healthz_answers(base: str, until: Callable[[], bool], give_up_s: float) -> list[int]:
    """GET /healthz on fresh connections every 0.2 s until ``until()`` or give_up_s."""
    statuses: list[int] = []
    deadline = time.monotonic() + give_up_s
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        while not until() and time.monotonic() < deadline:
            async with http.get(f"{base}/healthz") as resp:
                statuses.append(resp.status)
            await asyncio.sleep(0.2)
    return statuses


@pytest.mark.slow
async def test_slowloris__dribbled_headers_are_cut_while_healthz_answers(
    database_url: str, tmp_path: Path
) -> None:
    proc = CoordinatorProcess(database_url, tmp_path, header_timeout_s=1)
    await proc.start()
    try:
        opened = [await connect(proc.port) for _ in range(50)]
        for _, writer in opened:
            writer.write(b"GET /healthz HTTP/1.1\r\n")
        lorises = [
            asyncio.create_task(
                dribble_until_closed(streams, b"X-Dribble: 1\r\n", every_s=0.2, give_up_s=15)
            )
            for streams in opened
        ]
        health = await healthz_answers(
            proc.base, until=lambda: all(t.done() for t in lorises), give_up_s=20
        )
        endings = await asyncio.gather(*lorises)
    finally:
        proc.stop()
    assert health, "no /healthz answer was tried"
    assert set(health) == {200}
    closed = [e for e in endings if e is not None]
    assert len(closed) == 50, "a slowloris connection was still open after 15 s"
    # Each is told why (408), unless its last drip raced the close into a reset.
    assert all(e == b"" or e.startswith(b"HTTP/1.1 408 Request Timeout\r\n") for e in closed)
    assert any(closed)
    cut = sum(line["closed_for_slow_headers"] for line in log_events(proc, "connections_shed"))
    assert cut == 50


@pytest.mark.slow
async def test_idle_keepalive_connection__closed_after_keepalive_timeout(
    database_url: str, tmp_path: Path
) -> None:
    proc = CoordinatorProcess(database_url, tmp_path, keepalive_timeout_s=1, header_timeout_s=60)
    await proc.start()
    try:
        reader, writer = await connect(proc.port)
        writer.write(GET_HEALTHZ)
        assert (await read_response(reader))[0] == 200
        ending = await wait_closed_by_server(reader, give_up_s=20)
        writer.close()
    finally:
        proc.stop()
    assert ending == b"", "an idle keep-alive connection is closed silently"


@pytest.mark.slow
async def test_kept_alive_connection__dribbling_its_next_request__is_cut_by_the_header_deadline(
    database_url: str, tmp_path: Path
) -> None:
    # Keep-alive would only close it after 60 s (silently): a close within 20 s is the
    # header deadline, re-armed when the second request began.
    proc = CoordinatorProcess(database_url, tmp_path, keepalive_timeout_s=60, header_timeout_s=1)
    await proc.start()
    try:
        streams = await connect(proc.port)
        reader, writer = streams
        writer.write(GET_HEALTHZ)
        assert (await read_response(reader))[0] == 200
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        ending = await dribble_until_closed(streams, b"X-Dribble: 1\r\n", every_s=0.2, give_up_s=20)
    finally:
        proc.stop()
    assert ending is not None, "the dribbling connection was still open after 20 s"
    assert ending == b"" or ending.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


def log_events(proc: CoordinatorProcess, event: str) -> list[dict[str, Any]]:
    lines = [line for line in proc.logs().splitlines() if line.startswith("{")]
    return [e for e in map(json.loads, lines) if e.get("event") == event]


class LimitedCoordinator(CoordinatorProcess):
    """`tcc serve` whose open-file limit (soft, hard) is lowered before it starts."""

    def __init__(
        self, database_url: str, log_dir: Path, file_limit: tuple[int, int], **settings: object
    ) -> None:
        super().__init__(database_url, log_dir, **settings)
        self.file_limit = file_limit

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        limit = self.file_limit
        with open(self.log_dir / f"coordinator-{self.port}-{self.starts}.log", "wb") as log:
            return subprocess.Popen(
                [*TCC, "serve"],
                env=self.env,
                stdout=log,
                stderr=log,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limit),
            )


FLOOD = 700  # more connections than the coordinator's hard limit of 640 files
FILE_LIMIT = (320, 640)


@pytest.fixture
def files_for_a_flood() -> Iterator[None]:
    """This test process holds the whole flood: make sure it may open that many files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * FLOOD  # the flood, the participant, sessions, the test database
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the test process may open only {hard} files; the flood needs {wanted}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def flood_outcome(streams: Streams, deadline: float) -> str:
    """The flood connection's fate: refused (with a 503), closed (without a word) or open."""
    reader, writer = streams
    try:
        data = await asyncio.wait_for(reader.read(), max(deadline - time.monotonic(), 0.1))
    except TimeoutError:
        return "open"
    except ConnectionError:
        return "closed"
    finally:
        writer.close()
    return "refused" if data.startswith(b"HTTP/1.1 503 ") else "closed"


async def open_flood(port: int) -> tuple[list[Streams], int]:
    """FLOOD connections, 50 at a time (under the listen backlog); and how many failed."""
    opened: list[Streams] = []
    for _ in range(FLOOD // 50):
        batch = await asyncio.gather(*(connect(port) for _ in range(50)), return_exceptions=True)
        opened += [s for s in batch if not isinstance(s, BaseException)]
    return opened, FLOOD - len(opened)


def warm_session() -> aiohttp.ClientSession:
    """One connection, opened before the flood and kept alive through it."""
    connector = aiohttp.TCPConnector(limit=1, keepalive_timeout=60)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20))


@pytest.mark.slow
@pytest.mark.usefixtures("files_for_a_flood")
async def test_connection_flood_under_a_low_file_limit__a_real_transaction_still_confirms(
    database_url: str, tmp_path: Path, participant: FakeParticipant
) -> None:
    proc = LimitedCoordinator(
        database_url,
        tmp_path,
        FILE_LIMIT,
        pool_min_size=1,
        pool_max_size=4,
        max_participant_connections=16,
        header_timeout_s=20,  # flood connections stay open through the test
        keepalive_timeout_s=60,
    )
    await proc.start()
    (limit,) = log_events(proc, "file_limit")
    cap = limit["max_connections"]
    flood: list[Streams] = []
    try:
        async with warm_session() as client, warm_session() as health:
            for session in (client, health):
                async with session.get(f"{proc.base}/healthz") as resp:
                    assert resp.status == 200
            flood, failed = await open_flood(proc.port)
            body = {
                "gid": "through-the-flood",
                "auto": True,
                # Three branches: the coordinator opens new participant connections now.
                "branches": [participant.branch(b, b) for b in ("one", "two", "three")],
            }
            async with client.post(f"{proc.base}/v1/transactions", json=body) as resp:
                assert resp.status == 201, await resp.text()
                assert (await resp.json())["status"] == "confirmed"
            async with health.get(f"{proc.base}/healthz") as resp:
                assert resp.status == 200
        deadline = time.monotonic() + 5
        outcomes = await asyncio.gather(*(flood_outcome(s, deadline) for s in flood))
    finally:
        for _, writer in flood:
            writer.close()
        proc.stop()

    assert (limit["soft_before"], limit["hard_before"]) == FILE_LIMIT
    assert (limit["soft"], limit["hard"]) == (FILE_LIMIT[1], FILE_LIMIT[1])
    assert 16 <= cap < FILE_LIMIT[1]
    assert limit["max_connections_from"] == "file limit"

    admitted = outcomes.count("open") + outcomes.count("closed")
    assert admitted <= cap - 2  # the two warm connections hold a slot each
    assert outcomes.count("refused") + failed >= FLOOD - cap
    assert "Too many open files" not in proc.logs()

    assert sorted(c.branch_id for c in participant.calls_for("confirm")) == [
        "one",
        "three",
        "two",
    ]
    shed = log_events(proc, "connections_shed")
    assert sum(line["refused_over_limit"] for line in shed) >= outcomes.count("refused")
    assert len(shed) <= 5, "refusals are summarised, not logged one by one"
