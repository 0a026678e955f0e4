"""POST /v1/sagas and /v1/messages end to end: a real coordinator on Postgres, a real
participant server on 127.0.0.1. Statuses, problems, what the participants get, and the
kind filter of the list."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import CoordinatorClient
from tests.conftest import transaction_detail as detail
from tests.helpers import event_kinds, eventually
from tests.participant_server import FakeParticipant, Reply

MakeCoordinator = Callable[..., Awaitable[CoordinatorClient]]


# --- bodies ------------------------------------------------------------------------------


def saga_step(
    participant: FakeParticipant, step_id: str, *, after: list[str] | None = None
) -> dict[str, Any]:
    """A step whose participant is the service named after it: /<step>/action, /compensate."""
    base = participant.base_url()
    step: dict[str, Any] = {
        "branch_id": step_id,
        "action_url": f"{base}/{step_id}/action",
        "compensate_url": f"{base}/{step_id}/compensate",
        "payload": {"step": step_id},
    }
    if after is not None:
        step["after"] = after
    return step


def message_step(participant: FakeParticipant, step_id: str) -> dict[str, Any]:
    return {
        "branch_id": step_id,
        "url": f"{participant.base_url()}/{step_id}/deliver",
        "payload": {"step": step_id},
    }


def called(participant: FakeParticipant, phase: str) -> list[str]:
    """The steps whose ``phase`` was called, in the order the calls came."""
    return [c.service for c in participant.calls if c.phase == phase]


def branch_statuses(out: dict[str, Any]) -> dict[str, str]:
    return {b["branch_id"]: b["status"] for b in out["branches"]}


def nobody_listening() -> str:
    """A loopback URL on a port nothing listens on: every call to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def problem(
    coordinator: CoordinatorClient, path: str, body: Any
) -> tuple[int, dict[str, Any]]:
    status, out, resp = await coordinator.request("POST", path, json=body)
    assert resp.content_type == "application/problem+json", (status, out)
    assert isinstance(out, dict)
    assert out["status"] == status
    return status, out


async def wait_status(coordinator: CoordinatorClient, gid: str, *statuses: str) -> dict[str, Any]:
    return await eventually(lambda: detail(coordinator, gid), lambda d: d["status"] in statuses)


# --- POST /v1/sagas -------------------------------------------------------------------------


async def test_saga__every_action_succeeds__is_201_succeeded_with_its_steps_confirmed(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    body = {
        "gid": "saga-1",
        "service": "shop",
        "metadata": {"order": 7},
        "steps": [saga_step(participant, s) for s in ("a", "b", "c")],
    }
    status, out, resp = await coordinator.request("POST", "/v1/sagas", json=body)

    assert status == 201, out
    assert resp.headers["Location"] == "/v1/transactions/saga-1"
    assert (out["gid"], out["kind"], out["status"]) == ("saga-1", "saga", "confirmed")
    assert out["service"] == "shop"
    assert out["metadata"] == {"order": 7}
    assert out["finished_at"] is not None
    assert branch_statuses(out) == {"a": "confirmed", "b": "confirmed", "c": "confirmed"}
    assert called(participant, "action") == ["a", "b", "c"]
    assert called(participant, "compensate") == []
    first = participant.calls[0]
    assert first.body == {
        "gid": "saga-1",
        "branch_id": "a",
        "phase": "action",
        "payload": {"step": "a"},
    }
    assert first.headers["X-TCC-Phase"] == "action"
    assert first.headers["Idempotency-Key"] == "saga-1:a:action"
    assert event_kinds(out)[-4:] == ["action_call", "action_call", "action_call", "confirmed"]
    # GET says the same.
    assert (await detail(coordinator, "saga-1"))["kind"] == "saga"


async def test_saga__a_refused_action__is_201_compensated_in_reverse(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    participant.script("action", Reply(status=409, body={"error": "no stock"}), service="b")
    body = {"gid": "saga-2", "steps": [saga_step(participant, s) for s in ("a", "b", "c")]}
    status, out = await coordinator.post("/v1/sagas", body)

    assert status == 201, out
    assert (out["kind"], out["status"]) == ("saga", "cancelled")
    assert out["cancel_reason"] == "action_failed: b"
    assert branch_statuses(out) == {"a": "cancelled", "b": "cancelled", "c": "registered"}
    assert called(participant, "action") == ["a", "b"]
    assert called(participant, "compensate") == ["b", "a"]
    compensation = participant.calls_for("compensate")[0]
    assert compensation.body["phase"] == "compensate"
    assert compensation.headers["Idempotency-Key"] == "saga-2:b:compensate"
    kinds = event_kinds(out)
    assert "course_changed" in kinds
    assert kinds[-1] == "cancelled"
    changed = next(e for e in out["events"] if e["kind"] == "course_changed")
    assert changed["detail"]["reason"] == "action_failed: b"


async def test_saga__a_graph__runs_each_step_after_the_ones_it_waits_for(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    steps = [
        saga_step(participant, "a"),
        saga_step(participant, "b", after=["a"]),
        saga_step(participant, "c", after=["a"]),
        saga_step(participant, "d", after=["b", "c"]),
    ]
    status, out = await coordinator.post("/v1/sagas", {"gid": "graph", "steps": steps})
    assert status == 201, out
    assert out["status"] == "confirmed"
    order = called(participant, "action")
    assert order[0] == "a"
    assert sorted(order[1:3]) == ["b", "c"]
    assert order[3] == "d"
    assert out["options"]["after"] == {"b": ["a"], "c": ["a"], "d": ["b", "c"]}


async def test_saga__concurrent__runs_every_action(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    steps = [saga_step(participant, s) for s in ("a", "b", "c")]
    status, out = await coordinator.post(
        "/v1/sagas", {"gid": "at-once", "steps": steps, "concurrent": True}
    )
    assert status == 201, out
    assert out["status"] == "confirmed"
    assert sorted(called(participant, "action")) == ["a", "b", "c"]


async def test_saga__still_running_when_waited_for__is_202(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    coordinator = await make_coordinator(confirm_wait_s=0.5)
    down = nobody_listening()
    steps = [
        saga_step(participant, "a"),
        {"branch_id": "b", "action_url": f"{down}/b/action", "compensate_url": f"{down}/b/undo"},
    ]
    status, out, resp = await coordinator.request(
        "POST", "/v1/sagas", json={"gid": "slow", "steps": steps}
    )
    assert status == 202, out
    assert resp.headers["Location"] == "/v1/transactions/slow"
    assert (out["kind"], out["status"]) == ("saga", "confirming")
    assert branch_statuses(out) == {"a": "confirmed", "b": "registered"}
    assert out["next_retry_at"] is not None
    b = out["branches"][1]
    assert b["attempts"] >= 1
    assert b["last_http_status"] is None
    assert b["last_error"]


async def test_saga__still_running_and_not_waited_for__is_201_at_once(
    coordinator: CoordinatorClient,
) -> None:
    down = nobody_listening()
    steps = [{"branch_id": "a", "action_url": f"{down}/a", "compensate_url": f"{down}/a-undo"}]
    status, out = await coordinator.post(
        "/v1/sagas", {"gid": "later", "steps": steps, "wait": False}
    )
    assert status == 201, out
    assert (out["kind"], out["status"]) == ("saga", "confirming")  # answered without waiting
    assert out["finished_at"] is None


async def test_saga__an_identical_repeat__is_200_and_a_different_body_with_its_gid_409(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    body = {"gid": "once", "steps": [saga_step(participant, s) for s in ("a", "b")]}
    status, first = await coordinator.post("/v1/sagas", body)
    assert status == 201, first
    status, again, resp = await coordinator.request(
        "POST",
        "/v1/sagas",
        json={**body, "wait": False},  # wait is not part of the saga
    )
    assert status == 200, again
    assert resp.headers["Location"] == "/v1/transactions/once"
    assert (again["status"], again["created_at"]) == ("confirmed", first["created_at"])
    assert called(participant, "action") == ["a", "b"]  # nothing ran again

    other = {**body, "steps": [saga_step(participant, "a")]}
    status, out = await problem(coordinator, "/v1/sagas", other)
    assert status == 409
    assert "once" in out["detail"]
    # Neither is the gid of a saga free for a message.
    status, _ = await problem(
        coordinator, "/v1/messages", {"gid": "once", "steps": [message_step(participant, "a")]}
    )
    assert status == 409


def _step(step_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "branch_id": step_id,
        "action_url": f"http://127.0.0.1:9/{step_id}/action",
        "compensate_url": f"http://127.0.0.1:9/{step_id}/compensate",
        **extra,
    }


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"steps": []}, ["steps", "at least 1"]),
        ({}, ["steps", "required"]),
        ({"steps": [_step("a"), _step("a")]}, ["branch_id", "unique"]),
        ({"steps": [_step("a"), _step("b", after=["x"])]}, ["after.b", "no step 'x'"]),
        ({"steps": [_step("a", after=["a"])]}, ["after.a", "cannot wait for itself"]),
        (
            {"steps": [_step("a", after=["b"]), _step("b", after=["a"])]},
            ["the steps a, b wait for each other in a cycle"],
        ),
        ({"steps": [_step("a")], "surprise": 1}, ["surprise", "unknown field"]),
        ({"steps": [_step("a", surprise=1)]}, ["steps.0.surprise"]),
        ({"steps": [_step("a")], "retry_limit": 0}, ["retry_limit", "greater than or equal to 1"]),
        ({"steps": [_step("a")], "timeout_s": 0}, ["timeout_s", "greater than 0"]),
        ({"steps": [{"branch_id": "a", "action_url": "http://127.0.0.1:9/a"}]}, ["compensate_url"]),
        ({"steps": [_step("a", action_url="ftp://h/x")]}, ["steps.0.action_url"]),
        ({"steps": [_step("bad id!")]}, ["steps.0.branch_id"]),
    ],
    ids=[
        "no-steps",
        "steps-missing",
        "duplicate-ids",
        "after-unknown",
        "after-itself",
        "cycle",
        "unknown-field",
        "unknown-step-field",
        "retry-limit-0",
        "timeout-0",
        "no-compensation",
        "not-http",
        "bad-branch-id",
    ],
)
async def test_saga__bad_input__is_422_saying_what_is_wrong(
    coordinator: CoordinatorClient, body: dict[str, Any], words: list[str]
) -> None:
    status, out = await problem(coordinator, "/v1/sagas", {"gid": "bad", **body})
    assert status == 422, out
    for word in words:
        assert word in out["detail"], out
    # Nothing was logged.
    status, _ = await coordinator.get("/v1/transactions/bad")
    assert status == 404


# --- POST /v1/messages ----------------------------------------------------------------------


async def test_message__sent__is_201_and_delivered_in_order(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    body = {"gid": "msg-1", "steps": [message_step(participant, s) for s in ("a", "b", "c")]}
    status, out, resp = await coordinator.request("POST", "/v1/messages", json=body)
    assert status == 201, out
    assert resp.headers["Location"] == "/v1/transactions/msg-1"
    assert out["kind"] == "msg"
    assert out["status"] in ("confirming", "confirmed")  # delivered in the background

    final = await wait_status(coordinator, "msg-1", "confirmed")
    assert branch_statuses(final) == {"a": "confirmed", "b": "confirmed", "c": "confirmed"}
    assert called(participant, "deliver") == ["a", "b", "c"]
    delivery = participant.calls[0]
    assert delivery.body == {
        "gid": "msg-1",
        "branch_id": "a",
        "phase": "action",
        "payload": {"step": "a"},
    }
    assert delivery.headers["Idempotency-Key"] == "msg-1:a:action"

    status, again = await coordinator.post("/v1/messages", body)
    assert status == 200, again
    assert again["status"] == "confirmed"
    assert len(participant.calls) == 3  # a repeat sends nothing again
    other = {**body, "steps": [message_step(participant, "a")]}
    status, out = await problem(coordinator, "/v1/messages", other)
    assert status == 409
    assert "msg-1" in out["detail"]


async def test_message__a_delivery_answering_409__is_retried_until_it_is_taken(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    participant.script("deliver", Reply(status=409), Reply(status=409), service="b")
    body = {"gid": "msg-2", "steps": [message_step(participant, s) for s in ("a", "b")]}
    status, out = await coordinator.post("/v1/messages", body)
    assert status == 201, out
    final = await wait_status(coordinator, "msg-2", "confirmed")
    assert called(participant, "deliver") == ["a", "b", "b", "b"]
    assert final["cancel_reason"] is None
    assert "course_changed" not in event_kinds(final)


async def test_message__prepared_without_a_query_url__is_422(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    body = {"gid": "m", "prepared": True, "steps": [message_step(participant, "a")]}
    status, out = await problem(coordinator, "/v1/messages", body)
    assert status == 422
    assert "query_url" in out["detail"]


async def test_message__a_query_url_the_participant_policy_refuses__is_422_and_nothing_logged(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    body = {
        "gid": "m-metadata",
        "prepared": True,
        "query_url": "http://169.254.169.254/latest/meta-data",
        "steps": [message_step(participant, "a")],
    }
    status, out = await problem(coordinator, "/v1/messages", body)
    assert status == 422
    assert "query_url" in out["detail"]
    assert "169.254.169.254" in out["detail"]
    status, _ = await problem(coordinator, "/v1/messages/m-metadata/submit", {})
    assert status == 404


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"steps": []}, ["steps", "at least 1"]),
        ({"steps": [{"branch_id": "a", "url": "http://127.0.0.1:9/a"}] * 2}, ["unique"]),
        ({"steps": [{"branch_id": "a"}]}, ["steps.0.url", "required"]),
        ({"steps": [{"branch_id": "a", "url": "http://127.0.0.1:9/a"}], "x": 1}, ["x"]),
    ],
    ids=["no-steps", "duplicate-ids", "no-url", "unknown-field"],
)
async def test_message__bad_input__is_422(
    coordinator: CoordinatorClient, body: dict[str, Any], words: list[str]
) -> None:
    status, out = await problem(coordinator, "/v1/messages", {"gid": "bad", **body})
    assert status == 422
    for word in words:
        assert word in out["detail"], out


def prepared_body(participant: FakeParticipant, gid: str, *steps: str) -> dict[str, Any]:
    return {
        "gid": gid,
        "prepared": True,
        "query_url": f"{participant.base_url()}/outbox/query",
        "steps": [message_step(participant, s) for s in steps],
    }


async def test_message__prepared_then_submitted__is_delivered_only_then(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    status, out = await coordinator.post("/v1/messages", prepared_body(participant, "p1", "a", "b"))
    assert status == 201, out
    assert (out["kind"], out["status"]) == ("msg", "trying")
    assert participant.calls == []

    status, out = await coordinator.post("/v1/messages/p1/submit", {})
    assert status == 200, out
    assert out["status"] in ("confirming", "confirmed")
    await wait_status(coordinator, "p1", "confirmed")
    assert called(participant, "deliver") == ["a", "b"]

    # A second submit is no error; an abort is too late.
    status, out = await coordinator.post("/v1/messages/p1/submit")
    assert status == 200, out
    status, out = await problem(coordinator, "/v1/messages/p1/abort", {})
    assert status == 409
    assert out["detail"]
    assert (await detail(coordinator, "p1"))["status"] == "confirmed"


async def test_message__prepared_then_aborted__is_never_delivered(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await coordinator.post("/v1/messages", prepared_body(participant, "p2", "a"))
    status, out = await coordinator.post("/v1/messages/p2/abort", {"reason": "order withdrawn"})
    assert status == 200, out
    assert out["status"] == "cancelled"
    assert out["cancel_reason"] == "client: order withdrawn"
    assert branch_statuses(out) == {"a": "registered"}
    status, out = await coordinator.post("/v1/messages/p2/abort")
    assert status == 200, out  # the same decision again
    status, out = await problem(coordinator, "/v1/messages/p2/submit", {})
    assert status == 409
    assert "cancelled" in out["detail"]
    assert participant.calls == []


async def test_message__submit_or_abort_of_a_tcc_transaction_or_saga__is_409(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    status, _ = await coordinator.post("/v1/transactions", {"gid": "plain"})
    assert status == 201
    status, out = await problem(coordinator, "/v1/messages/plain/submit", {})
    assert status == 409
    assert "not a message" in out["detail"]
    assert (await detail(coordinator, "plain"))["status"] == "trying"  # left alone

    body = {"gid": "saga", "steps": [saga_step(participant, "a")]}
    status, _ = await coordinator.post("/v1/sagas", body)
    assert status == 201
    status, out = await problem(coordinator, "/v1/messages/saga/abort", {})
    assert status == 409
    assert "saga" in out["detail"]
    assert (await detail(coordinator, "saga"))["status"] == "confirmed"


async def test_message__submit_of_an_unknown_gid__is_404(coordinator: CoordinatorClient) -> None:
    status, _ = await problem(coordinator, "/v1/messages/nobody/submit", {})
    assert status == 404


async def test_confirm__of_a_prepared_message_past_its_deadline__is_no_server_error(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    # Its query_url answers 405 (the fake participant takes POSTs only): asked again later.
    body = {**prepared_body(participant, "late", "a"), "timeout_s": 0.2}
    status, _ = await coordinator.post("/v1/messages", body)
    assert status == 201
    await eventually(lambda: detail(coordinator, "late"), lambda d: d["phase_attempts"] >= 1)
    status, out, _ = await coordinator.request("POST", "/v1/transactions/late/confirm")
    assert status in (200, 202, 409), out


# --- the list by kind ---------------------------------------------------------------------


async def test_list__by_kind__lists_only_that_kind(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    assert (await coordinator.post("/v1/transactions", {"gid": "t1"}))[0] == 201
    for gid in ("s1", "s2"):
        status, _ = await coordinator.post(
            "/v1/sagas", {"gid": gid, "steps": [saga_step(participant, "a")]}
        )
        assert status == 201
    status, _ = await coordinator.post("/v1/messages", prepared_body(participant, "m1", "a"))
    assert status == 201

    for kind, gids in (("saga", {"s1", "s2"}), ("msg", {"m1"}), ("tcc", {"t1"})):
        status, out = await coordinator.get(f"/v1/transactions?kind={kind}")
        assert status == 200, out
        assert {t["gid"] for t in out["transactions"]} == gids
        assert {t["kind"] for t in out["transactions"]} == {kind}
    status, out = await coordinator.get("/v1/transactions")
    assert {t["gid"] for t in out["transactions"]} == {"t1", "s1", "s2", "m1"}
    status, out = await coordinator.get("/v1/transactions?kind=saga&status=trying")
    assert (status, out["transactions"]) == (200, [])
    status, out, resp = await coordinator.request("GET", "/v1/transactions?kind=xa")
    assert status == 422
    assert resp.content_type == "application/problem+json"
    assert "kind" in out["detail"]


async def test_saga__more_steps_than_a_body_may_carry__is_422_at_once(
    coordinator: CoordinatorClient,
) -> None:
    steps = [
        {
            "branch_id": f"s{i}",
            "action_url": "http://127.0.0.1:9/a",
            "compensate_url": "http://127.0.0.1:9/c",
            "after": [f"s{i - 1}"] if i else [],
        }
        for i in range(1001)
    ]
    status, out = await problem(coordinator, "/v1/sagas", {"gid": "long", "steps": steps})
    assert status == 422
    assert "steps" in out["detail"]
    assert "1000" in out["detail"]


async def test_dtm_prepare__a_query_prepared_url_of_another_scheme__is_400_saying_so(
    coordinator: CoordinatorClient,
) -> None:
    body = {
        "gid": "dtm-bad-query",
        "trans_type": "msg",
        "steps": [{"action": "http://127.0.0.1:9/a"}],
        "payloads": ["{}"],
        "query_prepared": "ftp://127.0.0.1/query",
    }
    status, out, _ = await coordinator.request("POST", "/api/dtmsvr/prepare", json=body)
    assert status == 400
    assert out["dtm_result"] == "FAILURE"
    assert "query_prepared" in out["message"]
