"""One trace per transaction: spans as an in-memory exporter sees them, and the W3C headers
each participant receives, across branches, phases, and a coordinator killed mid-phase."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from coordinator import tracing
from tests.conftest import CoordinatorClient, transaction_detail
from tests.dtm_participant import DtmCall, DtmParticipant, dtm_participant
from tests.helpers import eventually
from tests.participant_server import Call, FakeParticipant, Reply
from tests.processes import CoordinatorProcess

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Spans recorded in memory while the test runs; nothing recorded before or after."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.use_tracer_provider(provider)
    try:
        yield spans
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()


def trace_id(call: Call) -> str:
    """The trace id of the traceparent a participant received (version-trace-span-flags)."""
    parts = call.headers["traceparent"].split("-")
    assert len(parts) == 4, call.headers["traceparent"]
    assert parts[0] == "00", call.headers["traceparent"]
    return parts[1]


def parent_span(call: Call) -> str:
    return call.headers["traceparent"].split("-")[2]


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def hex_span(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.span_id, "016x")


async def begin_auto(
    coordinator: CoordinatorClient, participant: FakeParticipant, gid: str, **headers: str
) -> tuple[int, Any]:
    status, body, _ = await coordinator.request(
        "POST",
        "/v1/transactions",
        json={
            "gid": gid,
            "auto": True,
            "branches": [participant.branch("stock"), participant.branch("wallet")],
        },
        headers=headers,
    )
    return status, body


async def test_auto_transaction__every_span_and_call_in_the_callers_trace(
    coordinator: CoordinatorClient,
    participant: FakeParticipant,
    exporter: InMemorySpanExporter,
) -> None:
    status, out = await begin_auto(
        coordinator, participant, "traced", traceparent=CLIENT_TRACEPARENT
    )
    assert (status, out["status"]) == (201, "confirmed"), out

    spans = await eventually(
        lambda: _spans(exporter), lambda s: any(x.name == "tcc.round" for x in s)
    )
    names = sorted(s.name for s in spans)
    assert names == sorted(
        [
            "tcc.begin",
            "tcc.try",
            "tcc.try",
            "tcc.call.try",
            "tcc.call.try",
            "tcc.decide",
            "tcc.round",
            "tcc.call.confirm",
            "tcc.call.confirm",
        ]
    )
    assert {hex_trace(s) for s in spans} == {CLIENT_TRACE}
    by_name = {s.name: s for s in spans}
    begin = by_name["tcc.begin"]
    assert begin.parent is not None
    assert format(begin.parent.span_id, "016x") == CLIENT_SPAN
    assert begin.attributes is not None
    assert begin.attributes["tcc.gid"] == "traced"
    assert begin.attributes["tcc.status"] == "confirmed"
    for span in spans:
        assert span.attributes is not None
        assert span.attributes["tcc.gid"] == "traced", span.name
    calls = [s for s in spans if s.name.startswith("tcc.call.")]
    assert {s.attributes["tcc.branch"] for s in calls if s.attributes} == {"stock", "wallet"}
    assert all(s.attributes and s.attributes["tcc.http_status"] == 200 for s in calls)
    decide = by_name["tcc.decide"]
    assert decide.attributes is not None
    assert decide.attributes["tcc.decision"] == "confirm"

    # Each participant call carries the context of its own call span.
    received = participant.calls_for(gid="traced")
    assert len(received) == 4
    assert {trace_id(c) for c in received} == {CLIENT_TRACE}
    assert {parent_span(c) for c in received} == {hex_span(s) for s in calls}

    # The trace is kept with the transaction.
    detail = await transaction_detail(coordinator, "traced")
    assert detail["traceparent"].split("-")[1] == CLIENT_TRACE


async def _spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return list(exporter.get_finished_spans())


async def test_no_exporter_no_caller_context__one_made_up_trace_reaches_every_call(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    for gid in ("first", "second"):
        status, out = await begin_auto(coordinator, participant, gid)
        assert (status, out["status"]) == (201, "confirmed"), out
    first = {trace_id(c) for c in participant.calls_for(gid="first")}
    second = {trace_id(c) for c in participant.calls_for(gid="second")}
    assert len(first) == 1
    assert len(second) == 1
    assert first != second  # a trace per transaction
    detail = await transaction_detail(coordinator, "first")
    assert detail["traceparent"].split("-")[1] in first


async def test_no_exporter__the_callers_trace_still_reaches_every_call(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    status, _ = await begin_auto(
        coordinator, participant, "propagated", traceparent=CLIENT_TRACEPARENT
    )
    assert status == 201
    received = participant.calls_for(gid="propagated")
    assert len(received) == 4
    assert {trace_id(c) for c in received} == {CLIENT_TRACE}


async def test_invalid_traceparent__ignored_and_a_trace_of_our_own(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    status, _ = await begin_auto(
        coordinator, participant, "garbled", traceparent="00-zz-not-a-trace"
    )
    assert status == 201
    ids = {trace_id(c) for c in participant.calls_for(gid="garbled")}
    assert len(ids) == 1
    assert CLIENT_TRACE not in ids


async def test_interactive__client_steps_join_the_trace_of_the_begin(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    headers = {"traceparent": CLIENT_TRACEPARENT}
    status, _, _ = await coordinator.request(
        "POST", "/v1/transactions", json={"gid": "steps"}, headers=headers
    )
    assert status == 201
    # Later requests arrive without the header (another process of the client): the
    # transaction's stored trace still holds every call together.
    for branch in ("stock", "wallet"):
        status, out = await coordinator.post(
            "/v1/transactions/steps/try", participant.branch(branch)
        )
        assert status == 200, out
    status, out = await coordinator.post("/v1/transactions/steps/confirm")
    assert (status, out["status"]) == (200, "confirmed"), out
    received = participant.calls_for(gid="steps")
    assert [c.phase for c in received].count("confirm") == 2
    assert {trace_id(c) for c in received} == {CLIENT_TRACE}


async def test_dtm__prepare_with_traceparent__confirm_calls_carry_it(
    coordinator: CoordinatorClient,
) -> None:
    async with dtm_participant() as busi:
        status, _, _ = await coordinator.request(
            "POST",
            "/api/dtmsvr/prepare",
            json={"gid": "dtm-traced", "trans_type": "tcc"},
            headers={"traceparent": CLIENT_TRACEPARENT},
        )
        assert status == 200
        for branch_id in ("01", "02"):
            status, body = await coordinator.post(
                "/api/dtmsvr/registerBranch",
                {
                    "gid": "dtm-traced",
                    "branch_id": branch_id,
                    "trans_type": "tcc",
                    "status": "prepared",
                    "data": "{}",
                    "confirm": busi.url("S", "confirm"),
                    "cancel": busi.url("S", "cancel"),
                },
            )
            assert status == 200, body
        status, body = await coordinator.post(
            "/api/dtmsvr/submit", {"gid": "dtm-traced", "trans_type": "tcc"}
        )
        assert status == 200, body
        confirms = await eventually(lambda: _dtm_confirms(busi), lambda calls: len(calls) == 2)
    assert {c.headers["traceparent"].split("-")[1] for c in confirms} == {CLIENT_TRACE}


async def _dtm_confirms(busi: DtmParticipant) -> list[DtmCall]:
    return busi.calls_for("confirm", gid="dtm-traced")


@pytest.mark.slow
async def test_coordinator_killed_mid_phase_two__the_retry_by_its_successor_is_in_the_trace(
    database_url: str, tmp_path: Path, participant: FakeParticipant
) -> None:
    # The wallet's confirm fails until the first coordinator is dead; its successor's
    # retry must carry the transaction's trace, read back from the log.
    participant.default("confirm", Reply(status=503))
    settings = {
        "lease_ttl_s": 2,
        "retry_initial_s": 0.2,
        "retry_max_s": 0.5,
        "recovery_interval_s": 0.2,
        "confirm_wait_s": 0.5,
    }
    first = CoordinatorProcess(database_url, tmp_path, **settings)
    second = CoordinatorProcess(database_url, tmp_path, **settings)
    await first.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{first.base}/v1/transactions",
                json={
                    "gid": "survivor",
                    "auto": True,
                    "branches": [participant.branch("stock"), participant.branch("wallet")],
                },
                headers={"traceparent": CLIENT_TRACEPARENT},
            ) as resp,
        ):
            assert resp.status == 202  # confirming: the wallet's confirm keeps failing
        await eventually(lambda: _count(participant, "confirm"), lambda n: n >= 4, timeout_s=20)
        first.kill(signal.SIGKILL)
        before = len(participant.calls_for("confirm", gid="survivor"))
        participant.default("confirm", Reply())
        await second.start()
        async with aiohttp.ClientSession() as http:

            async def status() -> str:
                async with http.get(f"{second.base}/v1/transactions/survivor") as resp:
                    return str((await resp.json())["status"])

            await eventually(status, lambda s: s == "confirmed", timeout_s=30)
    finally:
        first.stop()
        second.stop()
    confirms = participant.calls_for("confirm", gid="survivor")
    assert len(confirms) > before  # the successor made calls of its own
    assert {trace_id(c) for c in participant.calls_for(gid="survivor")} == {CLIENT_TRACE}
    # The successor's log lines about it carry the trace id too.
    lines = [json.loads(line) for line in second.logs().splitlines() if line.startswith("{")]
    finished = [e for e in lines if e.get("event") == "transaction_finished"]
    assert finished, second.logs()
    assert {e.get("trace_id") for e in finished} == {CLIENT_TRACE}


async def _count(participant: FakeParticipant, phase: str) -> int:
    return len(participant.calls_for(phase, gid="survivor"))


async def test_tracestate_longer_than_the_log_keeps__the_begin_still_succeeds(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    # W3C allows up to 32 members; a header must never fail a business request.
    members = [f"vendor{n}=" + "x" * 40 for n in range(20)]
    tracestate = ",".join(members)
    assert len(tracestate) > tracing.MAX_STORED_TRACESTATE
    status, out = await begin_auto(
        coordinator,
        participant,
        "long-state",
        traceparent=CLIENT_TRACEPARENT,
        tracestate=tracestate,
    )
    assert (status, out["status"]) == (201, "confirmed"), out
    received = participant.calls_for(gid="long-state")
    assert {trace_id(c) for c in received} == {CLIENT_TRACE}
    # What the log kept: whole members from the front, within the bound.
    txn = await coordinator.runtime.log.get("long-state")
    assert txn.tracestate is not None
    assert len(txn.tracestate) <= tracing.MAX_STORED_TRACESTATE
    assert tracestate.startswith(txn.tracestate + ",")
    assert txn.tracestate.split(",") == members[: len(txn.tracestate.split(","))]


async def test_saga__its_actions_and_compensations_are_spans_of_the_callers_trace(
    coordinator: CoordinatorClient,
    participant: FakeParticipant,
    exporter: InMemorySpanExporter,
) -> None:
    participant.script("action", Reply(409, body={"error": "no room"}), service="hotel")

    def step(branch_id: str) -> dict[str, Any]:
        base = f"{participant.base_url()}/{branch_id}"
        return {
            "branch_id": branch_id,
            "action_url": f"{base}/action",
            "compensate_url": f"{base}/compensate",
        }

    status, out, _ = await coordinator.request(
        "POST",
        "/v1/sagas",
        json={"gid": "traced-saga", "steps": [step("flight"), step("hotel"), step("car")]},
        headers={"traceparent": CLIENT_TRACEPARENT},
    )
    assert (status, out["status"], out["kind"]) == (201, "cancelled", "saga"), out

    spans = await eventually(
        lambda: _spans(exporter),
        lambda s: sum(x.name == "tcc.call.compensate" for x in s) == 2,
    )
    assert {hex_trace(s) for s in spans} == {CLIENT_TRACE}
    calls = [
        (s.name, s.attributes["tcc.branch"])
        for s in sorted(spans, key=lambda s: s.start_time or 0)
        if s.name.startswith("tcc.call.") and s.attributes
    ]
    assert calls == [
        ("tcc.call.action", "flight"),
        ("tcc.call.action", "hotel"),
        ("tcc.call.compensate", "hotel"),
        ("tcc.call.compensate", "flight"),
    ]
    received = participant.calls_for(gid="traced-saga")
    assert [(c.service, c.phase) for c in received] == [
        ("flight", "action"),
        ("hotel", "action"),
        ("hotel", "compensate"),
        ("flight", "compensate"),
    ]
    assert {trace_id(c) for c in received} == {CLIENT_TRACE}
