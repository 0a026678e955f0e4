"""TCC_OTLP_ENDPOINT for real: `tcc serve` exports its spans over OTLP/HTTP to a collector
(here a receiver that decodes the protobuf), flushing what is left when it stops."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.helpers import eventually
from tests.participant_server import FakeParticipant
from tests.processes import CoordinatorProcess

pytestmark = pytest.mark.slow

TRACE = "0af7651916cd43dd8448eb211c80319c"
T = TypeVar("T")


def _async(probe: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def probed() -> T:
        return probe()

    return probed


class Collector:
    def __init__(self) -> None:
        self.spans: list[tuple[str, str, dict[str, object]]] = []  # name, trace id, attributes
        self.content_types: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        self.content_types.add(request.content_type)
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {
                        a.key: a.value.string_value or a.value.int_value or a.value.bool_value
                        for a in span.attributes
                    }
                    self.spans.append((span.name, span.trace_id.hex(), attributes))
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    sink = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", sink.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield sink, str(server.make_url("/v1/traces"))
    finally:
        await server.close()


async def test_serve_with_an_otlp_endpoint__its_spans_reach_the_collector(
    database_url: str,
    tmp_path: Path,
    participant: FakeParticipant,
    collector: tuple[Collector, str],
) -> None:
    sink, endpoint = collector
    proc = CoordinatorProcess(database_url, tmp_path, otlp_endpoint=endpoint)
    await proc.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{proc.base}/v1/transactions",
                json={
                    "gid": "exported",
                    "auto": True,
                    "branches": [participant.branch("stock"), participant.branch("wallet")],
                },
                headers={"traceparent": f"00-{TRACE}-b7ad6b7169203331-01"},
            ) as resp,
        ):
            assert resp.status == 201
        # A clean stop flushes the spans not yet sent; the collector lives in this event
        # loop, so wait for the exit without blocking it.
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        exited = proc.proc
        await eventually(_async(exited.poll), lambda code: code is not None, timeout_s=20)
        assert exited.returncode == 0, proc.logs()
    finally:
        proc.stop()
    assert sink.content_types == {"application/x-protobuf"}
    ours = [(name, attrs) for name, trace, attrs in sink.spans if trace == TRACE]
    names = sorted(name for name, _ in ours)
    assert names.count("tcc.call.confirm") == 2, names
    assert {"tcc.begin", "tcc.decide", "tcc.round", "tcc.try", "tcc.call.try"} <= set(names)
    assert all(attrs.get("tcc.gid") == "exported" for _, attrs in ours)
