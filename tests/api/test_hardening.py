"""Edge cases an adversarial run found: limits on every entry point, a bounded timeline,
odd participant replies and odd client values, late tries."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from coordinator.devtools.children import free_port
from tests.conftest import CoordinatorClient
from tests.conftest import transaction_detail as detail
from tests.dtm_participant import dtm_participant
from tests.helpers import event_count, eventually
from tests.participant_server import FakeParticipant, Reply

MakeCoordinator = Callable[..., Awaitable[CoordinatorClient]]
P = "/api/dtmsvr"


async def test_dtm_submit__over_the_call_timeout_limit__is_refused_and_changes_nothing(
    make_coordinator: MakeCoordinator,
) -> None:
    c = await make_coordinator(max_call_timeout_s=5)
    gid = {"gid": "lim", "trans_type": "tcc"}
    assert (await c.post(f"{P}/prepare", {**gid, "request_timeout": 3}))[0] == 200
    status, out = await c.post(f"{P}/submit", {**gid, "request_timeout": 40})
    assert (status, out["dtm_result"]) == (400, "FAILURE")
    assert "request_timeout: must be at most 5 seconds" in out["message"]
    txn = await detail(c, "lim")
    assert (txn["status"], txn["call_timeout_s"]) == ("trying", 3)


@pytest.mark.parametrize("where", ["prepare", "submit"])
async def test_dtm_retry_interval__is_bounded_on_every_entry_point(
    make_coordinator: MakeCoordinator, where: str
) -> None:
    c = await make_coordinator(max_retry_interval_s=600)
    gid = {"gid": f"ri-{where}", "trans_type": "tcc"}
    huge = {"retry_interval": 1e300}
    status, out = await c.post(f"{P}/prepare", {**gid, **(huge if where == "prepare" else {})})
    if where == "submit":
        assert status == 200
        status, out = await c.post(f"{P}/submit", {**gid, **huge})
    assert (status, out["dtm_result"]) == (400, "FAILURE")
    assert "retry_interval: must be at most 600 seconds" in out["message"]


async def test_a_dead_participant__collapses_into_one_event_per_branch__and_the_timeline_pages(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    c = await make_coordinator(retry_initial_s=0.01, retry_max_s=0.02, recovery_interval_s=0.05)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every confirm fails alike
    branches = 12
    await c.post("/v1/transactions", {"gid": "down"})
    for i in range(branches):
        body = {**participant.branch(f"b{i}"), "confirm_url": f"{dead}/confirm"}
        assert (await c.post("/v1/transactions/down/try", body))[0] == 200
    assert (await c.post("/v1/transactions/down/confirm"))[0] == 202

    txn = await eventually(lambda: detail(c, "down"), lambda d: d["phase_attempts"] >= 8)
    rounds = txn["phase_attempts"]
    calls = [e for e in txn["events"] if e["kind"] == "confirm_call"]
    # One entry per branch, however many rounds: begin, 2 per branch, decision, and the
    # collapsed retry entry (plus at most one round caught in flight per branch).
    assert len(calls) == branches
    assert len(txn["events"]) <= 3 + 3 * branches
    assert all(e["repeats"] >= rounds - 1 and e["last_at"] > e["at"] for e in calls)
    assert event_count(txn, "retry_scheduled") >= rounds - 1

    # The timeline pages: a small page, then the rest by cursor, nothing lost or repeated.
    status, first = await c.get("/v1/transactions/down/events?limit=5")
    assert (status, len(first["events"])) == (200, 5)
    assert first["next_cursor"]
    seen = [e["id"] for e in first["events"]]
    cursor = first["next_cursor"]
    for _ in range(50):
        status, page = await c.get(f"/v1/transactions/down/events?limit=5&cursor={cursor}")
        assert status == 200
        seen += [e["id"] for e in page["events"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(set(seen))
    assert len(seen) >= len(txn["events"])
    assert (await c.get("/v1/transactions/nope/events"))[0] == 404


async def test_transaction_detail__embeds_only_the_first_page_of_a_long_timeline(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    from coordinator.txlog.interface import DEFAULT_EVENTS_PAGE

    coordinator = await make_coordinator(max_branches=DEFAULT_EVENTS_PAGE)
    await coordinator.post("/v1/transactions", {"gid": "long"})
    # Distinct events do not collapse: one registration each, past one page with the begin.
    branches = DEFAULT_EVENTS_PAGE
    for i in range(branches):
        body = participant.branch(f"b{i}", with_try=False)
        assert (await coordinator.post("/v1/transactions/long/branches", body))[0] == 201
    out = await detail(coordinator, "long")
    assert len(out["events"]) == DEFAULT_EVENTS_PAGE
    assert out["events_next_cursor"] == str(out["events"][-1]["id"])
    status, rest = await coordinator.get(
        f"/v1/transactions/long/events?cursor={out['events_next_cursor']}"
    )
    assert (status, rest["next_cursor"]) == (200, None)
    assert len(out["events"]) + len(rest["events"]) == 1 + branches


@pytest.mark.parametrize("depth", [300, 900])
async def test_try_reply_nested_hundreds_deep__reports_the_tries_real_verdict(
    coordinator: CoordinatorClient, participant: FakeParticipant, depth: int
) -> None:
    gid = f"deep{depth}"
    await coordinator.post("/v1/transactions", {"gid": gid})
    participant.script("try", Reply(raw=b'{"a":' * depth + b"1" + b"}" * depth))
    status, out = await coordinator.post(f"/v1/transactions/{gid}/try", participant.branch("b"))
    assert (status, out["verdict"]) == (200, "tried")
    assert isinstance(out["participant"]["body"], str)  # unreadable as JSON here: kept as text
    status, out = await coordinator.post(f"/v1/transactions/{gid}/confirm")
    assert (status, out["status"]) == (200, "confirmed")


async def test_dtm_register_branch__with_a_lone_surrogate__is_refused_not_a_crash(
    coordinator: CoordinatorClient,
) -> None:
    async with dtm_participant() as busi:
        await coordinator.post(f"{P}/prepare", {"gid": "sur", "trans_type": "tcc"})
        raw = (
            b'{"gid": "sur", "branch_id": "01", "trans_type": "tcc", "data": "\\ud800",'
            b' "confirm": "' + busi.url("S", "confirm").encode() + b'",'
            b' "cancel": "' + busi.url("S", "cancel").encode() + b'"}'
        )
        status, out, _ = await coordinator.request("POST", f"{P}/registerBranch", data=raw)
    assert (status, out["dtm_result"]) == (400, "FAILURE")
    assert "data: contains a lone surrogate" in out["message"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"metadata": {"k": "\\udfff"}}', "metadata.k: contains a lone surrogate"),
        (b'{"metadata": {"n": 1' + b"0" * 400 + b"}}", "metadata.n: number beyond the range"),
        (b'{"metadata": {"n": -1' + b"0" * 400 + b"}}", "metadata.n: number beyond the range"),
    ],
)
async def test_begin__values_beyond_what_the_readme_promises__are_422(
    coordinator: CoordinatorClient, raw: bytes, message: str
) -> None:
    status, out, _ = await coordinator.request("POST", "/v1/transactions", data=raw)
    assert status == 422
    assert message in out["detail"]


async def test_a_try_answering_after_the_timeout_cancelled_its_transaction__is_409_cancelled(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    c = await make_coordinator(recovery_interval_s=0.05, call_timeout_s=5)
    await c.post("/v1/transactions", {"gid": "late", "timeout_s": 0.3})
    participant.script("try", Reply(delay_s=1.5))  # answers well after the deadline
    status, out = await c.post("/v1/transactions/late/try", participant.branch("b"))
    assert status == 409, out
    assert out["verdict"] == "cancelled"
    assert out["branch"]["status"] == "cancelled"
    assert out["transaction_status"] in ("cancelling", "cancelled")
    assert "was cancelled" in out["detail"]


async def test_a_body_slower_than_the_minimum_rate__is_cut_with_408(
    make_coordinator: MakeCoordinator,
) -> None:
    c = await make_coordinator(body_grace_s=1.0, body_min_bytes_per_s=200)
    port = c.server.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /v1/transactions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        answer = b""
        # 5 bytes every 0.25 s (20 bytes/s, far below the minimum) for at most 10 s: an
        # answer before then can only be the server cutting the body off.
        for _ in range(40):
            writer.write(b"     ")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.25):
                    answer += await reader.read(4096)
            if answer:
                break
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b"application/problem+json" in answer
    assert b"arrived too slowly" in answer
    # A body at a normal pace on the same server is fine.
    assert (await c.post("/v1/transactions", {"gid": "fine"}))[0] == 201
