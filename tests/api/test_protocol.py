"""The /v1 protocol end to end: real coordinator, real Postgres, real participant servers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import CoordinatorClient
from tests.conftest import transaction_detail as detail
from tests.helpers import event_count, event_kinds, eventually
from tests.participant_server import FakeParticipant, Reply

MakeCoordinator = Callable[..., Awaitable[CoordinatorClient]]


async def begin(coordinator: CoordinatorClient, gid: str, **body: Any) -> dict[str, Any]:
    status, out = await coordinator.post("/v1/transactions", {"gid": gid, **body})
    assert status == 201, out
    assert isinstance(out, dict)
    return out


async def wait_status(coordinator: CoordinatorClient, gid: str, *statuses: str) -> dict[str, Any]:
    return await eventually(lambda: detail(coordinator, gid), lambda d: d["status"] in statuses)


async def test_happy_path__two_tries_then_confirm__every_branch_confirmed_once(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await begin(coordinator, "order-1", service="shop", metadata={"order": 1})
    for branch_id, service in (("pay", "wallet"), ("stock", "inventory")):
        status, out = await coordinator.post(
            "/v1/transactions/order-1/try",
            participant.branch(branch_id, service, payload={"amount": 5}),
        )
        assert status == 200, out
        assert out["verdict"] == "tried"
        assert out["participant"]["http_status"] == 200
        assert out["participant"]["body"] == {"ok": True}

    status, out = await coordinator.post("/v1/transactions/order-1/confirm")
    assert status == 200, out
    assert out["status"] == "confirmed"
    assert out["finished_at"] is not None
    assert {b["branch_id"]: b["status"] for b in out["branches"]} == {
        "pay": "confirmed",
        "stock": "confirmed",
    }
    assert len(participant.calls_for("confirm")) == 2
    assert len(participant.calls_for("cancel")) == 0
    assert event_kinds(out) == [
        "begin",
        "branch_registered",
        "try_result",
        "branch_registered",
        "try_result",
        "decision",
        "confirm_call",
        "confirm_call",
        "confirmed",
    ]


async def test_participant_call__carries_protocol_headers_and_body(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await begin(coordinator, "hdr")
    await coordinator.post("/v1/transactions/hdr/try", participant.branch("b1", payload=[1, 2]))
    call = participant.calls_for("try")[0]
    assert call.body == {"gid": "hdr", "branch_id": "b1", "phase": "try", "payload": [1, 2]}
    assert call.headers["X-TCC-Gid"] == "hdr"
    assert call.headers["X-TCC-Branch"] == "b1"
    assert call.headers["X-TCC-Phase"] == "try"
    assert call.headers["Idempotency-Key"] == "hdr:b1:try"


@pytest.mark.parametrize(
    ("reply", "http_status", "verdict"),
    [
        (Reply(status=409, body={"error": "insufficient funds"}), 409, "refused"),
        (Reply(status=503), 502, "failed"),
    ],
)
async def test_try_not_tried__cancels_the_transaction_and_every_branch(
    coordinator: CoordinatorClient,
    participant: FakeParticipant,
    reply: Reply,
    http_status: int,
    verdict: str,
) -> None:
    await begin(coordinator, "t")
    status, _ = await coordinator.post("/v1/transactions/t/try", participant.branch("first"))
    assert status == 200
    participant.script("try", reply)
    status, out, resp = await coordinator.request(
        "POST", "/v1/transactions/t/try", json=participant.branch("second")
    )
    assert status == http_status
    assert resp.content_type == "application/problem+json"
    assert out["verdict"] == verdict
    assert "second" in out["detail"]

    final = await wait_status(coordinator, "t", "cancelled")
    assert final["cancel_reason"] == "try_failed: second"
    # Cancel reaches every branch, the failed one too (an empty compensation for it).
    assert sorted(c.branch_id for c in participant.calls_for("cancel")) == ["first", "second"]
    status, out = await coordinator.post("/v1/transactions/t/confirm")
    assert status == 409
    assert "try_failed: second" in out["detail"]


async def test_try_timeout__counts_as_failed_and_cancels(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await begin(coordinator, "slow", call_timeout_s=0.3)
    participant.script("try", Reply(delay_s=2.0))
    status, out = await coordinator.post("/v1/transactions/slow/try", participant.branch("b"))
    assert status == 502
    assert out["verdict"] == "failed"
    assert "timed out" in out["participant"]["error"]
    final = await wait_status(coordinator, "slow", "cancelled")
    assert final["branches"][0]["status"] == "cancelled"


async def test_confirm__retries_until_the_participant_recovers__and_answers_the_end(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await begin(coordinator, "flaky")
    await coordinator.post("/v1/transactions/flaky/try", participant.branch("b"))
    participant.script("confirm", Reply(status=500), Reply(status=502), Reply(status=500))
    # The request waits (TCC_CONFIRM_WAIT_S) through the retries for the final state.
    status, out = await coordinator.post("/v1/transactions/flaky/confirm")
    assert (status, out["status"]) == (200, "confirmed")
    assert out["branches"][0]["last_http_status"] == 200

    final = await wait_status(coordinator, "flaky", "confirmed")
    assert final["branches"][0]["attempts"] == 5  # every call counts: 1 try + 4 confirms
    assert len(participant.calls_for("confirm")) == 4
    assert event_count(final, "retry_scheduled") == 3


async def test_confirm__gives_up_after_the_budget_and_parks_for_an_operator(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    coordinator = await make_coordinator(give_up_after_s=1.0)
    await begin(coordinator, "doomed")
    await coordinator.post("/v1/transactions/doomed/try", participant.branch("b"))
    participant.default("confirm", Reply(status=500))
    status, _ = await coordinator.post("/v1/transactions/doomed/confirm")
    assert status == 202
    final = await wait_status(coordinator, "doomed", "failed_to_confirm")
    assert final["next_retry_at"] is None
    assert final["branches"][0]["status"] == "tried"
    assert final["branches"][0]["last_error"].startswith("HTTP 500")
    assert event_kinds(final)[-1] == "failed_to_confirm"
    calls = len(participant.calls_for("confirm"))
    assert calls >= 2
    # Parked means parked: no more calls without an operator.
    await asyncio.sleep(0.6)
    assert len(participant.calls_for("confirm")) == calls
    # A repeated confirm reports the parked state; cancel is refused.
    status, out = await coordinator.post("/v1/transactions/doomed/confirm")
    assert (status, out["status"]) == (202, "failed_to_confirm")
    status, out = await coordinator.post("/v1/transactions/doomed/cancel")
    assert status == 409


async def test_confirm_cancel_race__exactly_one_decision(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await begin(coordinator, "race")
    await coordinator.post("/v1/transactions/race/try", participant.branch("a", "one"))
    await coordinator.post("/v1/transactions/race/try", participant.branch("b", "two"))
    calls = [
        coordinator.post(f"/v1/transactions/race/{'confirm' if i % 2 else 'cancel'}")
        for i in range(30)
    ]
    results = await asyncio.gather(*calls)
    final = await wait_status(coordinator, "race", "confirmed", "cancelled")
    winner = "confirm" if final["status"] == "confirmed" else "cancel"
    for i, (status, _) in enumerate(results):
        asked = "confirm" if i % 2 else "cancel"
        assert status in ((200, 202) if asked == winner else (409,)), (asked, status)
    assert event_kinds(final).count("decision") == 1
    loser = "cancel" if winner == "confirm" else "confirm"
    assert participant.calls_for(loser) == []
    assert len(participant.calls_for(winner)) == 2


async def test_begin__repeat_is_idempotent_and_a_different_body_conflicts(
    coordinator: CoordinatorClient,
) -> None:
    body = {"gid": "same", "timeout_s": 30, "metadata": {"k": "v"}}
    status, first = await coordinator.post("/v1/transactions", body)
    assert status == 201
    status, again = await coordinator.post("/v1/transactions", body)
    assert status == 200
    assert again["created_at"] == first["created_at"]
    status, out = await coordinator.post("/v1/transactions", {**body, "timeout_s": 31})
    assert status == 409
    assert "cannot be used" in out["detail"]


async def test_begin__without_gid__generates_one(coordinator: CoordinatorClient) -> None:
    status, out, resp = await coordinator.request("POST", "/v1/transactions", json={})
    assert status == 201
    assert len(out["gid"]) == 32
    assert resp.headers["Location"] == f"/v1/transactions/{out['gid']}"
    assert out["timeout_s"] == 60.0


async def test_confirm_and_cancel__repeats_are_idempotent(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await begin(coordinator, "c")
    await coordinator.post("/v1/transactions/c/try", participant.branch("b"))
    assert (await coordinator.post("/v1/transactions/c/confirm"))[0] == 200
    status, out = await coordinator.post("/v1/transactions/c/confirm")
    assert (status, out["status"]) == (200, "confirmed")
    assert len(participant.calls_for("confirm")) == 1

    await begin(coordinator, "x")
    await coordinator.post("/v1/transactions/x/try", participant.branch("b"))
    assert (await coordinator.post("/v1/transactions/x/cancel"))[0] == 200
    status, out = await coordinator.post("/v1/transactions/x/cancel")
    assert (status, out["status"], out["cancel_reason"]) == (200, "cancelled", "client")
    assert len(participant.calls_for("cancel", gid="x")) == 1


async def test_repeated_try__does_not_call_the_participant_again(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await begin(coordinator, "rt")
    branch = participant.branch("b")
    assert (await coordinator.post("/v1/transactions/rt/try", branch))[0] == 200
    status, out = await coordinator.post("/v1/transactions/rt/try", branch)
    assert (status, out["verdict"]) == (200, "tried")
    assert len(participant.calls_for("try")) == 1
    status, out = await coordinator.post(
        "/v1/transactions/rt/try", {**branch, "payload": {"other": True}}
    )
    assert status == 409
    assert "already registered" in out["detail"]


async def test_registered_branches__client_run_tries_are_confirmed(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await begin(coordinator, "dtm-style")
    status, out = await coordinator.post(
        "/v1/transactions/dtm-style/branches", participant.branch("b", with_try=False)
    )
    assert (status, out["status"]) == (201, "registered")
    status, out = await coordinator.post("/v1/transactions/dtm-style/confirm")
    assert (status, out["status"]) == (200, "confirmed")
    assert participant.calls_for("try") == []
    status, out = await coordinator.post(
        "/v1/transactions/dtm-style/branches", participant.branch("late", with_try=False)
    )
    assert status == 409
    assert "only be added while trying" in out["detail"]


async def test_cancel__participant_404_means_nothing_to_compensate(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await begin(coordinator, "gone")
    await coordinator.post(
        "/v1/transactions/gone/branches", participant.branch("b", with_try=False)
    )
    participant.script("cancel", Reply(status=404))
    status, out = await coordinator.post("/v1/transactions/gone/cancel")
    assert (status, out["status"]) == (200, "cancelled")
    assert out["branches"][0]["last_http_status"] == 404


async def test_confirm__after_the_deadline__is_refused_with_the_reason(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await begin(coordinator, "late", timeout_s=0.5)
    await coordinator.post("/v1/transactions/late/try", participant.branch("b"))
    await asyncio.sleep(0.7)
    status, out = await coordinator.post("/v1/transactions/late/confirm")
    assert status == 409
    assert "deadline" in out["detail"] or "timeout" in out["detail"]
    final = await wait_status(coordinator, "late", "cancelled")
    assert final["cancel_reason"] == "timeout"
    assert [c.branch_id for c in participant.calls_for("cancel")] == ["b"]


async def test_auto__all_tries_succeed__confirmed_in_one_request(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    body = {
        "gid": "auto-ok",
        "auto": True,
        "branches": [participant.branch("a", "one"), participant.branch("b", "two")],
    }
    status, out = await coordinator.post("/v1/transactions", body)
    assert (status, out["status"]) == (201, "confirmed")
    assert len(participant.calls_for("try")) == 2
    assert len(participant.calls_for("confirm")) == 2
    # A repeat answers the logged outcome and runs nothing again.
    status, out = await coordinator.post("/v1/transactions", body)
    assert (status, out["status"]) == (200, "confirmed")
    assert len(participant.calls_for("try")) == 2


async def test_auto__one_try_refused__everything_cancelled(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    participant.script("try", Reply(status=422), service="two")
    body = {
        "gid": "auto-no",
        "auto": True,
        "branches": [participant.branch("a", "one"), participant.branch("b", "two")],
    }
    status, out = await coordinator.post("/v1/transactions", body)
    assert (status, out["status"], out["cancel_reason"]) == (201, "cancelled", "try_failed: b")
    assert sorted(c.branch_id for c in participant.calls_for("cancel")) == ["a", "b"]
    assert participant.calls_for("confirm") == []


async def test_branch_limit__is_enforced(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    client = await make_coordinator(max_branches=2)
    await begin(client, "lim")
    for b in ("a", "b"):
        status, _ = await client.post(
            "/v1/transactions/lim/branches", participant.branch(b, with_try=False)
        )
        assert status == 201
    status, out = await client.post(
        "/v1/transactions/lim/branches", participant.branch("c", with_try=False)
    )
    assert status == 422
    assert "at most 2 branches" in out["detail"]


async def test_detail__written_straight_from_the_records__equals_the_models_rendering(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    from coordinator.api.schemas import detail_json, render_detail

    body = {"gid": "same", "metadata": {"n": 1.5, "s": "é", "big": 2**70}, "auto": True}
    body["branches"] = [participant.branch("b", payload={"x": [1, None, "ü"]})]
    assert (await coordinator.post("/v1/transactions", body))[0] == 201
    detail = await coordinator.runtime.log.detail("same")
    for shown in (detail, dataclasses.replace(detail, more_events=True)):
        fast = json.loads(detail_json(shown))
        assert fast == json.loads(render_detail(shown).model_dump_json())
    small = dataclasses.replace(
        detail, transaction=dataclasses.replace(detail.transaction, metadata={"n": 1})
    )
    # Without the long integer, the fast path writes it (the same JSON, keys in its order).
    assert json.loads(detail_json(small)) == json.loads(render_detail(small).model_dump_json())
