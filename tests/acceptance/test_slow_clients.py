"""Slow and numerous clients against real sockets: slowloris, idle keep-alive, connection floods
under a lowered open-file limit while health checks answer and a real transaction completes:
idle connections are cut oldest first, those that have sent a request are kept, and the cap and
its use are in the metrics."""

from __future__ import annotations

import asyncio
import functools
import json
import operator
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
    SlotPlan,
    awaiting_next_request,
    parsed_requests,
)
from coordinator.metrics import ConnectionState, Metrics
from tests.api.test_metrics import Samples, parse, value
from tests.helpers import eventually
from tests.participant_server import FakeParticipant
from tests.processes import TCC, CoordinatorProcess

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]

# A loopback Host: in insecure mode the coordinator answers only names it knows.
GET_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


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
        app: web.Application,
        *,
        header_timeout_s: float,
        max_connections: int = 100,
        metrics: Metrics | None = None,
    ) -> GuardedSite:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        runners.append(runner)
        site = GuardedSite(
            runner,
            "127.0.0.1",
            0,
            ConnectionLimits(max_connections, header_timeout_s),
            metrics=metrics,
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


def test_slot_plan__health_slots_and_a_reserve_that_new_connections_may_not_take() -> None:
    assert SlotPlan.for_cap(16) == SlotPlan(total=16, health=2, general=14, new_limit=10)
    assert SlotPlan.for_cap(300) == SlotPlan(total=300, health=8, general=292, new_limit=263)
    assert SlotPlan.for_cap(2) == SlotPlan(total=2, health=1, general=1, new_limit=1)


CAP = 16  # 2 health slots, 14 general ones, of which connections without a request hold 10


async def is_closed(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (EOF or reset), False if it is open."""
    try:
        return await asyncio.wait_for(reader.read(), 0.05) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def closed_of(held: list[Streams]) -> list[int]:
    return [i for i, (reader, _) in enumerate(held) if await is_closed(reader)]


def close_all(held: list[Streams]) -> None:
    for _, writer in held:
        writer.close()


async def exposition(metrics: Metrics) -> Samples:
    return parse(metrics.exposition(None).decode())


async def test_connection_cap__cuts_idle_connections_oldest_first__keeps_those_that_sent_a_request(
    serve_guarded: ServeGuarded,
) -> None:
    metrics = Metrics()
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    site = await serve_guarded(app, header_timeout_s=30, max_connections=CAP, metrics=metrics)
    # Three clients have had an answer and stay connected (kept alive between requests).
    kept = [await connect(site.port) for _ in range(3)]
    for reader, writer in kept:
        writer.write(GET_HEALTHZ)
        assert (await read_response(reader))[0] == 200
    # Then 40 connections that never send a byte, one after the other.
    flood = [await connect(site.port) for _ in range(40)]
    try:
        # Those without a request may hold 10 slots: the 30 oldest were cut, in order.
        cut = await eventually(lambda: closed_of(flood), lambda c: len(c) >= 30, timeout_s=10)
        assert cut == list(range(30))
        assert await closed_of(kept) == []
        for reader, writer in kept:  # and they still answer
            writer.write(GET_HEALTHZ)
            assert (await read_response(reader))[0] == 200
        # A new client is served at once; it cuts the oldest idle connection that is left.
        reader, writer = await connect(site.port)
        writer.write(GET_HEALTHZ)
        assert (await read_response(reader))[0] == 200
        writer.close()
        assert 30 in await eventually(lambda: closed_of(flood), lambda c: len(c) >= 31)
        assert await closed_of(kept) == []

        m = await eventually(
            lambda: exposition(metrics),
            lambda m: (
                value(m, "tcc_inbound_connections", state="new") == 9
                and value(m, "tcc_inbound_connections", state="idle") == 3
            ),
            timeout_s=10,
        )
        assert value(m, "tcc_inbound_connections_limit") == CAP
        assert value(m, "tcc_inbound_connections", state="idle") == 3
        assert value(m, "tcc_inbound_connections", state="active") == 0
        assert value(m, "tcc_inbound_connections_shed_total", reason="idle_cut") == 31
        assert value(m, "tcc_inbound_connections_shed_total", reason="refused") == 0
    finally:
        close_all(kept + flood)


async def test_connection_cap__busy_connections_are_never_cut__health_checks_answer_past_them(
    serve_guarded: ServeGuarded,
) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="done")

    metrics = Metrics()
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/slow", slow)
    site = await serve_guarded(app, header_timeout_s=30, max_connections=CAP, metrics=metrics)
    guard = site.guard
    assert guard is not None
    busy: list[Streams] = []
    spare: list[Streams] = []

    async def active() -> int:
        return guard.counts()[ConnectionState.ACTIVE]

    try:
        for n in range(1, 15):  # every general slot, each serving a request
            busy.append(await connect(site.port))
            busy[-1][1].write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            await eventually(active, functools.partial(operator.eq, n), timeout_s=10)
        # Nothing idle to cut: a health check is answered in a health slot...
        reader, writer = await connect(site.port)
        writer.write(GET_HEALTHZ)
        assert (await read_response(reader))[0] == 200
        assert await wait_closed_by_server(reader, give_up_s=10) == b""  # one request there
        writer.close()
        # ...any other request gets a 503 there...
        reader, writer = await connect(site.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        refused = await wait_closed_by_server(reader, give_up_s=10)
        writer.close()
        assert refused is not None
        assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"Connection: close" in refused
        # ...and with both health slots held, a connection is refused as it opens.
        spare = [await connect(site.port) for _ in range(2)]
        reader, writer = await connect(site.port)
        refused = await wait_closed_by_server(reader, give_up_s=10)
        writer.close()
        assert refused is not None
        assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert await closed_of(busy) == []  # no request in progress was cut

        # Once the slow requests are answered, their connections are idle: room is made, for
        # a connection waiting in a health slot with another request and for a new one.
        release.set()
        for reader, _ in busy:
            assert await read_response(reader) == (200, b"done")
        waiting_reader, waiting_writer = spare[0]
        waiting_writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_response(waiting_reader) == (200, b"done")
        reader, writer = await connect(site.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_response(reader) == (200, b"done")
        writer.close()
        assert await closed_of(busy) == [0, 1]  # the two idle longest
        m = await exposition(metrics)
        assert value(m, "tcc_inbound_connections_shed_total", reason="refused") == 2
        assert value(m, "tcc_inbound_connections_shed_total", reason="idle_cut") == 2
    finally:
        release.set()
        close_all(busy + spare)


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


async def open_flood(port: int) -> list[Streams]:
    """FLOOD connections that never send a byte, one after the other, so that the server
    accepts them in this order."""
    return [await connect(port) for _ in range(FLOOD)]


async def fresh(method: str, url: str, body: object = None) -> tuple[int, str]:
    """One request on a connection of its own, opened now."""
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=20)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
        http.request(method, url, json=body) as resp,
    ):
        return resp.status, await resp.text()


@pytest.mark.slow
@pytest.mark.usefixtures("files_for_a_flood")
async def test_connection_flood_under_a_low_file_limit__new_clients_are_served_and_idle_ones_cut(
    database_url: str, tmp_path: Path, participant: FakeParticipant
) -> None:
    proc = LimitedCoordinator(
        database_url,
        tmp_path,
        FILE_LIMIT,
        pool_min_size=1,
        pool_max_size=4,
        max_participant_connections=16,
        header_timeout_s=60,  # flood connections stay until they are cut
        keepalive_timeout_s=60,
    )
    await proc.start()
    (limit,) = log_events(proc, "file_limit")
    (listening,) = log_events(proc, "http_listening")
    cap = limit["max_connections"]
    new_slots = listening["new_connection_slots"]
    flood: list[Streams] = []
    kept = await connect(proc.port)
    try:
        # A client that has had an answer and stays connected through the flood.
        kept[1].write(GET_HEALTHZ)
        assert (await read_response(kept[0]))[0] == 200
        flood = await open_flood(proc.port)

        # After the flood, on connections opened now: health checks, a real transaction.
        health = [(await fresh("GET", f"{proc.base}{path}"))[0] for path in ("/healthz",) * 3]
        ready, _ = await fresh("GET", f"{proc.base}/readyz")
        body = {
            "gid": "through-the-flood",
            "auto": True,
            # Three branches: the coordinator opens new participant connections now.
            "branches": [participant.branch(b, b) for b in ("one", "two", "three")],
        }
        began, text = await fresh("POST", f"{proc.base}/v1/transactions", body)
        # The kept-alive connection was spared: it still answers.
        kept[1].write(GET_HEALTHZ)
        kept_answer = (await read_response(kept[0]))[0]

        async def scrape() -> Samples:
            await asyncio.sleep(0.5)  # the gauges are refreshed every second
            status, exposition = await fresh("GET", f"{proc.base}/metrics")
            assert status == 200
            return parse(exposition)

        m = await eventually(
            scrape,
            lambda m: value(m, "tcc_inbound_connections", state="idle") == 1,  # the kept one
            timeout_s=10,
            interval_s=0,
        )
        deadline = time.monotonic() + 5
        outcomes = await asyncio.gather(*(flood_outcome(s, deadline) for s in flood))
    finally:
        for _, writer in [*flood, kept]:
            writer.close()
        proc.stop()

    assert (limit["soft_before"], limit["hard_before"]) == FILE_LIMIT
    assert (limit["soft"], limit["hard"]) == (FILE_LIMIT[1], FILE_LIMIT[1])
    assert 16 <= cap < FILE_LIMIT[1]
    assert limit["max_connections_from"] == "file limit"

    assert health == [200, 200, 200]
    assert ready == 200
    assert began == 201, text
    assert json.loads(text)["status"] == "confirmed"
    assert sorted(c.branch_id for c in participant.calls_for("confirm")) == [
        "one",
        "three",
        "two",
    ]
    assert kept_answer == 200

    # Nothing was refused: room was made by cutting idle connections, the oldest first.
    assert outcomes.count("refused") == 0
    cut = [i for i, outcome in enumerate(outcomes) if outcome == "closed"]
    assert len(cut) >= FLOOD - new_slots
    assert cut == list(range(len(cut))), "idle connections are cut oldest first"
    assert outcomes.count("open") == FLOOD - len(cut)
    assert "Too many open files" not in proc.logs()

    # The cap and its use in the metrics.
    assert value(m, "tcc_inbound_connections_limit") == cap
    new = value(m, "tcc_inbound_connections", state="new")
    assert new is not None
    assert 0 < new <= new_slots
    cut_counted = value(m, "tcc_inbound_connections_shed_total", reason="idle_cut")
    assert cut_counted is not None
    assert FLOOD - new_slots <= cut_counted <= len(cut)
    assert value(m, "tcc_inbound_connections_shed_total", reason="refused") == 0
    shed = log_events(proc, "connections_shed")
    assert sum(line["cut_idle"] for line in shed) == len(cut)
    assert len(shed) * 10 < len(cut), "cuts are summarised, not logged one by one"
    print(
        f"cap {cap}: {FLOOD} idle connections, {len(cut)} cut oldest first,"
        f" {outcomes.count('open')} left open, 0 refused; /healthz {health}, /readyz {ready},"
        f" transaction {json.loads(text)['status']}, kept-alive client {kept_answer}"
    )
