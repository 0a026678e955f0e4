"""Each DTM endpoint's exact status codes and response shapes, and how DTM-style
participants are called and read."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import CoordinatorClient
from tests.dtm_participant import DtmParticipant, DtmReply
from tests.helpers import event_count, eventually

P = "/api/dtmsvr"
MakeCoordinator = Callable[..., Awaitable[CoordinatorClient]]


async def prepare(c: CoordinatorClient, gid: str, **options: Any) -> None:
    status, body = await c.post(f"{P}/prepare", {"gid": gid, "trans_type": "tcc", **options})
    assert (status, body) == (200, {"dtm_result": "SUCCESS"})


async def register(
    c: CoordinatorClient,
    busi: DtmParticipant,
    gid: str,
    branch_id: str,
    data: str = '{"amount": 1}',
) -> tuple[int, Any]:
    return await c.post(
        f"{P}/registerBranch",
        {
            "gid": gid,
            "branch_id": branch_id,
            "trans_type": "tcc",
            "status": "prepared",
            "data": data,
            "confirm": busi.url("S", "confirm"),
            "cancel": busi.url("S", "cancel"),
        },
    )


async def v1_status(c: CoordinatorClient, gid: str) -> str:
    return str((await c.get(f"/v1/transactions/{gid}"))[1]["status"])


async def test_new_gid__is_unique_and_successful(coordinator: CoordinatorClient) -> None:
    first = (await coordinator.get(f"{P}/newGid"))[1]
    second = (await coordinator.get(f"{P}/newGid"))[1]
    assert first["dtm_result"] == "SUCCESS"
    assert first["gid"] != second["gid"]


async def test_ping_and_version(coordinator: CoordinatorClient) -> None:
    assert await coordinator.get("/api/ping") == (200, {"msg": "pong"})
    status, body = await coordinator.get(f"{P}/version")
    assert status == 200
    assert body["version"].startswith("tcc-coordinator ")


async def test_prepare__repeat_succeeds__after_submit_fails(
    coordinator: CoordinatorClient,
) -> None:
    await prepare(coordinator, "p1")
    await prepare(coordinator, "p1")
    assert (await coordinator.post(f"{P}/submit", {"gid": "p1", "trans_type": "tcc"}))[0] == 200
    status, body = await coordinator.post(f"{P}/prepare", {"gid": "p1", "trans_type": "tcc"})
    assert status == 409
    assert body["dtm_result"] == "FAILURE"
    assert "cannot prepare" in body["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"gid": "s", "trans_type": "saga"}, "is not prepared"),
        ({"gid": "x", "trans_type": "xa"}, "not supported"),
        ({"trans_type": "tcc"}, "gid"),
        ({"gid": "bad gid", "trans_type": "tcc"}, "gid"),
        ({"gid": "t", "trans_type": "tcc", "timeout_to_fail": -1}, "timeout_to_fail"),
        ({"gid": "t", "trans_type": "tcc", "timeout_to_fail": 10**9}, "at most"),
    ],
)
async def test_prepare__bad_input__is_a_400_failure(
    coordinator: CoordinatorClient, body: dict[str, Any], message: str
) -> None:
    status, out = await coordinator.post(f"{P}/prepare", body)
    assert status == 400
    assert out["dtm_result"] == "FAILURE"
    assert message in out["message"]


async def test_prepare__unknown_fields_are_ignored(coordinator: CoordinatorClient) -> None:
    await prepare(coordinator, "extra", custom_data="x", passthrough_headers=["a"], steps=[])


async def test_register_branch__idempotent__conflicting__and_only_while_prepared(
    coordinator: CoordinatorClient, dtm_busi: DtmParticipant
) -> None:
    await prepare(coordinator, "r")
    assert (await register(coordinator, dtm_busi, "r", "01"))[0] == 200
    assert await register(coordinator, dtm_busi, "r", "01") == (200, {"dtm_result": "SUCCESS"})
    status, body = await register(coordinator, dtm_busi, "r", "01", data='{"amount": 2}')
    assert (status, body["dtm_result"]) == (409, "FAILURE")
    await coordinator.post(f"{P}/abort", {"gid": "r", "trans_type": "tcc"})
    status, body = await register(coordinator, dtm_busi, "r", "02")
    assert status == 409
    assert "cannot register branch" in body["message"]


async def test_register_branch__unknown_gid_or_bad_url__fail_cleanly(
    coordinator: CoordinatorClient, dtm_busi: DtmParticipant
) -> None:
    status, body = await register(coordinator, dtm_busi, "nope", "01")
    assert (status, body["dtm_result"]) == (409, "FAILURE")
    await prepare(coordinator, "u")
    status, body = await coordinator.post(
        f"{P}/registerBranch",
        {
            "gid": "u",
            "branch_id": "01",
            "trans_type": "tcc",
            "data": "",
            "confirm": "grpc://x/y",
            "cancel": dtm_busi.url("S", "cancel"),
        },
    )
    assert (status, body["dtm_result"]) == (400, "FAILURE")
    assert "confirm" in body["message"]


async def test_submit__without_wait__succeeds_at_once_and_confirms_in_the_background(
    coordinator: CoordinatorClient, dtm_busi: DtmParticipant
) -> None:
    await prepare(coordinator, "sub")
    await register(coordinator, dtm_busi, "sub", "01")
    status, body = await coordinator.post(f"{P}/submit", {"gid": "sub", "trans_type": "tcc"})
    assert (status, body) == (200, {"dtm_result": "SUCCESS"})
    await eventually(lambda: v1_status(coordinator, "sub"), lambda s: s == "confirmed")
    status, body = await coordinator.post(f"{P}/abort", {"gid": "sub", "trans_type": "tcc"})
    assert (status, body["dtm_result"]) == (409, "FAILURE")
    assert "cannot abort" in body["message"]


async def test_submit__wait_result_while_a_participant_keeps_failing__is_425_ongoing(
    make_coordinator: MakeCoordinator, dtm_busi: DtmParticipant
) -> None:
    coordinator = await make_coordinator(confirm_wait_s=0.5)
    await prepare(coordinator, "slow")
    await register(coordinator, dtm_busi, "slow", "01")
    dtm_busi.script("S", "confirm", *[DtmReply(status=500, body="boom")] * 3)
    status, body = await coordinator.post(
        f"{P}/submit", {"gid": "slow", "trans_type": "tcc", "wait_result": True}
    )
    assert (status, body["dtm_result"]) == (425, "ONGOING")
    await eventually(lambda: v1_status(coordinator, "slow"), lambda s: s == "confirmed")


async def test_submit__after_abort__is_a_failure_with_the_reason(
    coordinator: CoordinatorClient,
) -> None:
    await prepare(coordinator, "ab")
    status, body = await coordinator.post(
        f"{P}/abort", {"gid": "ab", "trans_type": "tcc", "rollback_reason": "user changed mind"}
    )
    assert (status, body) == (200, {"dtm_result": "SUCCESS"})
    status, body = await coordinator.post(
        f"{P}/submit", {"gid": "ab", "trans_type": "tcc", "wait_result": True}
    )
    assert status == 409
    assert "user changed mind" in body["message"]
    assert body["dtm_result"] == "FAILURE"


async def test_query__unknown_gid_is_null__missing_gid_is_400(
    coordinator: CoordinatorClient,
) -> None:
    assert await coordinator.get(f"{P}/query?gid=none") == (
        200,
        {"transaction": None, "branches": []},
    )
    status, body = await coordinator.get(f"{P}/query")
    assert (status, body["dtm_result"]) == (400, "FAILURE")


async def test_query__shape_uses_dtm_field_names(
    coordinator: CoordinatorClient, dtm_busi: DtmParticipant
) -> None:
    await prepare(coordinator, "q", timeout_to_fail=30, request_timeout=3, retry_interval=2)
    await register(coordinator, dtm_busi, "q", "01", data="hello")
    status, body = await coordinator.get(f"{P}/query?gid=q")
    assert status == 200
    t = body["transaction"]
    assert {
        "gid",
        "trans_type",
        "status",
        "create_time",
        "update_time",
        "finish_time",
        "rollback_reason",
    } <= set(t)
    assert (t["gid"], t["trans_type"], t["status"]) == ("q", "tcc", "prepared")
    assert (t["timeout_to_fail"], t["request_timeout"], t["retry_interval"]) == (30, 3, 2)
    assert {(b["branch_id"], b["op"], b["status"]) for b in body["branches"]} == {
        ("01", "cancel", "prepared"),
        ("01", "confirm", "prepared"),
    }
    assert body["branches"][0]["bin_data"] == "aGVsbG8="  # base64 of the data, as DTM shows it


async def test_all__pages_with_position_and_filters_by_dtm_status(
    coordinator: CoordinatorClient,
) -> None:
    for i in range(5):
        await prepare(coordinator, f"a{i}")
    await coordinator.post(f"{P}/abort", {"gid": "a0", "trans_type": "tcc", "wait_result": True})
    seen: list[str] = []
    position = ""
    for _ in range(5):  # bounded: 5 rows, pages of 2
        status, body = await coordinator.get(f"{P}/all?limit=2&position={position}")
        assert status == 200
        seen += [t["gid"] for t in body["transactions"]]
        position = body["next_position"]
        if not position:
            break
    assert seen == ["a4", "a3", "a2", "a1", "a0"]
    status, body = await coordinator.get(f"{P}/all?status=failed")
    assert [t["gid"] for t in body["transactions"]] == ["a0"]
    status, body = await coordinator.get(f"{P}/all?status=sideways")
    assert (status, body["dtm_result"]) == (400, "FAILURE")


async def test_participant_calls__branch_headers_sent__reserved_ones_not_overridden(
    coordinator: CoordinatorClient, dtm_busi: DtmParticipant
) -> None:
    await prepare(coordinator, "h", branch_headers={"X-Tenant": "acme", "X-TCC-Gid": "forged"})
    await register(coordinator, dtm_busi, "h", "01")
    await coordinator.post(f"{P}/submit", {"gid": "h", "trans_type": "tcc", "wait_result": True})
    [call] = dtm_busi.calls_for("confirm", "h")
    assert call.headers["X-Tenant"] == "acme"
    assert call.headers["X-TCC-Gid"] == "h"
    assert call.headers["Content-Type"] == "application/json"
    assert call.query == {"gid": "h", "trans_type": "tcc", "branch_id": "01", "op": "confirm"}


@pytest.mark.parametrize(
    "reply",
    [
        DtmReply(status=425, body="{}"),
        DtmReply(status=200, body='{"dtm_result": "ONGOING"}'),
        DtmReply(status=409, body='{"dtm_result": "FAILURE"}'),
        DtmReply(status=200, body='{"dtm_result": "FAILURE"}'),
        DtmReply(status=500, body="oops"),
    ],
)
async def test_participant_replies__not_success__are_retried_until_success(
    coordinator: CoordinatorClient, dtm_busi: DtmParticipant, reply: DtmReply
) -> None:
    await prepare(coordinator, "rp")
    await register(coordinator, dtm_busi, "rp", "01")
    dtm_busi.script("S", "cancel", reply, reply)
    await coordinator.post(f"{P}/abort", {"gid": "rp", "trans_type": "tcc"})
    await eventually(lambda: v1_status(coordinator, "rp"), lambda s: s == "cancelled")
    assert len(dtm_busi.calls_for("cancel", "rp")) == 3


async def test_dtm_transactions__show_up_in_v1_with_their_dialect(
    coordinator: CoordinatorClient, dtm_busi: DtmParticipant
) -> None:
    await prepare(coordinator, "seen")
    await register(coordinator, dtm_busi, "seen", "01", data="payload")
    status, body = await coordinator.get("/v1/transactions/seen")
    assert status == 200
    assert body["dialect"] == "dtm"
    assert body["branches"][0]["data"] == "payload"
    status, page = await coordinator.get("/v1/transactions")
    assert "seen" in [t["gid"] for t in page["transactions"]]


async def test_dtm_api__can_be_switched_off(make_coordinator: MakeCoordinator) -> None:
    coordinator = await make_coordinator(dtm_api=False)
    status, _ = await coordinator.get(f"{P}/newGid")
    assert status == 404


async def test_ongoing_reply__comes_back_at_the_retry_interval_not_backoff(
    coordinator: CoordinatorClient, dtm_busi: DtmParticipant
) -> None:
    await prepare(coordinator, "og", retry_interval=0.2)
    await register(coordinator, dtm_busi, "og", "01")
    dtm_busi.script("S", "confirm", *[DtmReply(status=425, body="{}")] * 4)
    await coordinator.post(f"{P}/submit", {"gid": "og", "trans_type": "tcc"})
    await eventually(lambda: v1_status(coordinator, "og"), lambda s: s == "confirmed")
    _, body = await coordinator.get("/v1/transactions/og")
    assert event_count(body, "retry_scheduled") == 4
    calls = [c.at for c in dtm_busi.calls_for("confirm", "og")]
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    # Each "not yet" waits the transaction's retry_interval (0.2 s), never a shorter jitter.
    assert all(gap >= 0.19 for gap in gaps), gaps


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"branch_headers": {"X-Evil": "a\r\nInjected: 1"}}, "cannot carry"),
        ({"branch_headers": {"Bad Name": "x"}}, "header name"),
        ({"request_timeout": 1e-300}, "at least 0.01"),
    ],
)
async def test_prepare__options_that_would_break_every_call__are_refused(
    coordinator: CoordinatorClient, options: dict[str, Any], message: str
) -> None:
    status, body = await coordinator.post(
        f"{P}/prepare", {"gid": "opt", "trans_type": "tcc", **options}
    )
    assert (status, body["dtm_result"]) == (400, "FAILURE")
    assert message in body["message"]


async def test_participant_reply__read_whole__a_late_failure_word_is_not_missed(
    coordinator: CoordinatorClient,
) -> None:
    """The word FAILURE arriving in a second TCP segment must still be seen."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    calls: list[str] = []

    async def slow_failure(request: web.Request) -> web.StreamResponse:
        calls.append(request.query["op"])
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        if len(calls) == 1:
            await response.write(b'{"dtm_result": ')
            await asyncio.sleep(0.2)
            await response.write(b'"FAILURE"}')
        else:
            await response.write(b'{"dtm_result": "SUCCESS"}')
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("*", "/b/{op}", slow_failure)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("/b/cancel"))
        await prepare(coordinator, "late-word")
        await coordinator.post(
            f"{P}/registerBranch",
            {
                "gid": "late-word",
                "branch_id": "01",
                "trans_type": "tcc",
                "data": "x",
                "confirm": url,
                "cancel": url,
            },
        )
        await coordinator.post(f"{P}/abort", {"gid": "late-word", "trans_type": "tcc"})
        await eventually(lambda: v1_status(coordinator, "late-word"), lambda s: s == "cancelled")
    finally:
        await server.close()
    assert calls == ["cancel", "cancel"]  # the first answer was a failure: retried
