"""`tcc bench --tls N`: what TLS costs a participant call, measured side by side.

The coordinator's own caller (coordinator.outbound.HttpCaller, its TLS contexts from
coordinator.tlsfiles) calls one small participant on 127.0.0.1 served three ways: plain
http, https with a server certificate only, and https requiring a client certificate (mutual
TLS), all issued by a CA made for the run. Each is called N times on kept-alive connections
(what the coordinator's pool does) and N / 5 times with a new connection each (a handshake
every call: the pool's first calls, or a participant that closes connections). The three are
measured in turn, twice, so that the machine's drift falls on all of them alike.
"""

from __future__ import annotations

import json
import ssl
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from coordinator.core.errors import UsageError
from coordinator.core.records import OutboundCall
from coordinator.devtools.localca import LocalCA
from coordinator.outbound import HttpCaller
from coordinator.tlsfiles import ParticipantTls

ROUNDS = 2
WARMUP_CALLS = 20
BODY = b'{"gid": "bench", "branch_id": "b1"}'


@dataclass(frozen=True)
class Point:
    participant: str  # http, https, mutual TLS
    connections: str  # kept, new
    calls: int
    mean_ms: float
    p50_ms: float
    p99_ms: float


async def tls_main(calls: int, *, as_json: bool) -> int:
    if calls < 100:
        raise UsageError("--tls needs at least 100 calls per point")
    with tempfile.TemporaryDirectory(prefix="tcc-bench-tls-") as folder:
        points = await measure(Path(folder), calls)
    print(json.dumps([asdict(p) for p in points], indent=2) if as_json else report(points))
    return 0


async def measure(folder: Path, calls: int) -> list[Point]:
    ca = LocalCA.create("tcc bench CA")
    ca.write(folder / "ca.crt", folder / "ca.key")
    ca.issue("participant", hosts=("127.0.0.1",)).write(folder / "p.crt", folder / "p.key")
    ca.issue("coordinator", client=True).write(folder / "c.crt", folder / "c.key")
    served = {
        "http": None,
        "https": _server_context(folder, client_ca=None),
        "mutual TLS": _server_context(folder, client_ca=folder / "ca.crt"),
    }
    callers = {
        "http": ParticipantTls(ca=folder / "ca.crt"),
        "https": ParticipantTls(ca=folder / "ca.crt"),
        "mutual TLS": ParticipantTls(
            ca=folder / "ca.crt", cert=folder / "c.crt", key=folder / "c.key"
        ),
    }
    runners: list[web.AppRunner] = []
    try:
        urls = {}
        for name, context in served.items():
            runner, port = await _serve(context)
            runners.append(runner)
            scheme = "http" if context is None else "https"
            urls[name] = f"{scheme}://127.0.0.1:{port}/confirm"
        taken: dict[tuple[str, str], list[float]] = {}
        for _ in range(ROUNDS):
            for fresh, count in ((False, calls), (True, max(20, calls // 5))):
                for name, url in urls.items():
                    times = await _time_calls(url, callers[name], count, fresh=fresh)
                    taken.setdefault((name, "new" if fresh else "kept"), []).extend(times)
    finally:
        for runner in runners:
            await runner.cleanup()
    return [_point(name, kind, times) for (name, kind), times in taken.items()]


def report(points: list[Point]) -> str:
    lines = [
        f"{'participant':12} {'connections':12} {'calls':>7} {'mean ms':>8} {'p50 ms':>8}"
        f" {'p99 ms':>8} {'+ms/call':>9}"
    ]
    base = {p.connections: p.mean_ms for p in points if p.participant == "http"}
    for p in points:
        extra = p.mean_ms - base[p.connections]
        lines.append(
            f"{p.participant:12} {p.connections:12} {p.calls:>7,} {p.mean_ms:8.3f}"
            f" {p.p50_ms:8.3f} {p.p99_ms:8.3f} {extra:+9.3f}"
        )
    lines.append(
        "+ms/call: above plain http on the same kind of connection, both ends' CPU on this"
        " machine (a handshake, with new connections)."
    )
    return "\n".join(lines)


def _server_context(folder: Path, client_ca: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "p.crt", folder / "p.key")
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def _serve(context: ssl.SSLContext | None) -> tuple[web.AppRunner, int]:
    async def answer(_: web.Request) -> web.Response:
        return web.json_response({"dtm_result": "SUCCESS"})

    app = web.Application()
    app.router.add_post("/confirm", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    return runner, int(runner.addresses[0][1])


async def _time_calls(url: str, tls: ParticipantTls, count: int, *, fresh: bool) -> list[float]:
    connector = aiohttp.TCPConnector(force_close=fresh)
    async with aiohttp.ClientSession(connector=connector) as session:
        caller = HttpCaller(session, 65_536, None, tls)
        call = OutboundCall("POST", url, {"Content-Type": "application/json"}, BODY)
        for _ in range(WARMUP_CALLS):
            await caller.send(call, 10)
        times = []
        for _ in range(count):
            started = time.perf_counter()
            result = await caller.send(call, 10)
            times.append((time.perf_counter() - started) * 1000)
            if result.http_status != 200:
                raise RuntimeError(f"the bench participant failed: {result.error}")
    return times


def _point(participant: str, connections: str, times: list[float]) -> Point:
    ordered = sorted(times)
    return Point(
        participant,
        connections,
        len(ordered),
        round(statistics.fmean(ordered), 3),
        round(ordered[len(ordered) // 2], 3),
        round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
    )
