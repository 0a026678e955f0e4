"""The participants' coordinator client against a real in-process coordinator and a
scriptable fake participant: the transaction() block, the typed errors, reliable messages and
sagas (those wait for the coordinator's /v1/messages and /v1/sagas where it has none yet)."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.devtools.children import free_port
from participants.client import (
    Conflict,
    CoordinatorClient,
    CoordinatorError,
    InvalidRequest,
    MessageStep,
    NotFound,
    SagaStep,
    Transaction,
    TryFailed,
    TryRefused,
    Unavailable,
    message_request,
)
from tests.conftest import CoordinatorClient as CoordinatorUnderTest
from tests.helpers import eventually
from tests.participant_server import FakeParticipant, Reply
from tests.participants.messages import messages_api_or_xfail, sagas_api_or_xfail


class CheckoutFailed(Exception):
    """The caller's own error, raised inside a transaction block."""


# --- transaction() ----------------------------------------------------------------------


async def test_transaction__block_that_ends_normally__confirms(
    coordinator: CoordinatorUnderTest, participant: FakeParticipant
) -> None:
    async with CoordinatorClient(coordinator.base, service="shop") as c:
        async with c.transaction(timeout_s=30) as tx:
            reply = await tx.try_branch("b", **participant.urls(), payload={"amount": 5})
            assert reply["verdict"] == "tried"
        stored = await c.get(tx.gid)

    assert tx.outcome is not None
    assert tx.outcome.status == "confirmed"
    assert tx.outcome.finished
    assert tx.outcome.cancel_reason is None
    assert stored.status == "confirmed"
    assert stored.raw["service"] == "shop"
    assert [c.phase for c in participant.calls_for(gid=tx.gid)] == ["try", "confirm"]
    confirm = participant.calls_for("confirm", gid=tx.gid)[0]
    assert confirm.branch_id == "b"
    assert confirm.body["payload"] == {"amount": 5}


async def test_transaction__with_a_chosen_gid__uses_it(
    coordinator: CoordinatorUnderTest, participant: FakeParticipant
) -> None:
    async with (
        CoordinatorClient(coordinator.base) as c,
        c.transaction("order-42", timeout_s=30, metadata={"order": 42}) as tx,
    ):
        await tx.try_branch("b", **participant.urls())

    assert tx.gid == "order-42"
    assert tx.outcome is not None
    assert tx.outcome.gid == "order-42"
    assert tx.outcome.raw["metadata"] == {"order": 42}
    assert len(participant.calls_for("confirm", gid="order-42")) == 1


async def test_transaction__exception_in_the_block__cancels_and_reraises_it(
    coordinator: CoordinatorUnderTest, participant: FakeParticipant
) -> None:
    seen: list[Transaction] = []
    async with CoordinatorClient(coordinator.base, service="shop") as c:

        async def checkout() -> None:
            async with c.transaction(timeout_s=30) as tx:
                seen.append(tx)
                await tx.try_branch("b", **participant.urls(), payload={"amount": 5})
                raise CheckoutFailed("out of stock")

        with pytest.raises(CheckoutFailed, match="out of stock"):
            await checkout()
        stored = await c.get(seen[0].gid)

    tx = seen[0]
    assert tx.outcome is not None
    assert tx.outcome.status == "cancelled"
    assert tx.outcome.cancel_reason == "client"
    assert stored.status == "cancelled"
    assert [c.phase for c in participant.calls_for(gid=tx.gid)] == ["try", "cancel"]


async def test_transaction__try_refused_by_the_participant__raises_try_refused_and_cancels(
    coordinator: CoordinatorUnderTest, participant: FakeParticipant
) -> None:
    participant.script("try", Reply(status=409, body={"error": "insufficient funds"}))
    seen: list[Transaction] = []
    async with CoordinatorClient(coordinator.base) as c:

        async def checkout() -> None:
            async with c.transaction(timeout_s=30) as tx:
                seen.append(tx)
                await tx.try_branch("b", **participant.urls())

        with pytest.raises(TryRefused) as caught:
            await checkout()
        stored = await c.get(seen[0].gid)

    err = caught.value
    assert isinstance(err, Conflict)
    assert err.status == 409
    assert "refused the try of branch 'b'" in err.detail
    assert err.body["status"] == 409
    assert err.body["verdict"] == "refused"
    assert err.body["participant"]["http_status"] == 409
    assert err.body["participant"]["body"] == {"error": "insufficient funds"}
    assert stored.status == "cancelled"
    assert stored.cancel_reason == "try_failed: b"
    assert seen[0].outcome is not None
    assert seen[0].outcome.status == "cancelled"
    assert participant.calls_for("confirm") == []


async def test_try_branch__participant_unavailable__raises_try_failed(
    coordinator: CoordinatorUnderTest, participant: FakeParticipant
) -> None:
    participant.script("try", Reply(status=503, body={"error": "down"}))
    async with CoordinatorClient(coordinator.base) as c:
        state = await c.begin(timeout_s=30)
        with pytest.raises(TryFailed) as caught:
            await c.try_branch(state.gid, "b", **participant.urls())
        stored = await c.get(state.gid)

    err = caught.value
    assert not isinstance(err, Conflict)
    assert err.status == 502
    assert err.body["verdict"] == "failed"
    assert err.body["participant"]["http_status"] == 503
    assert stored.cancel_reason == "try_failed: b"
    assert stored.status in ("cancelling", "cancelled")
    assert participant.calls_for("confirm") == []


async def test_transaction__try_failure_inside_the_block__ends_cancelled(
    coordinator: CoordinatorUnderTest, participant: FakeParticipant
) -> None:
    participant.script("try", Reply(status=503))
    seen: list[Transaction] = []
    async with CoordinatorClient(coordinator.base) as c:

        async def checkout() -> None:
            async with c.transaction(timeout_s=30) as tx:
                seen.append(tx)
                await tx.try_branch("b", **participant.urls())

        with pytest.raises(TryFailed):
            await checkout()

    assert seen[0].outcome is not None
    assert seen[0].outcome.status == "cancelled"
    assert participant.calls_for("confirm") == []


# --- typed errors -------------------------------------------------------------------------


async def test_get__unknown_gid__raises_not_found(coordinator: CoordinatorUnderTest) -> None:
    async with CoordinatorClient(coordinator.base) as c:
        with pytest.raises(NotFound) as caught:
            await c.get("no-such-gid")

    assert caught.value.status == 404
    assert "no-such-gid" in caught.value.detail


async def test_begin__invalid_gid__raises_invalid_request(
    coordinator: CoordinatorUnderTest,
) -> None:
    async with CoordinatorClient(coordinator.base) as c:
        with pytest.raises(InvalidRequest) as caught:
            await c.begin("not a valid gid!")

    assert caught.value.status == 422
    assert "gid" in caught.value.detail
    assert caught.value.body["status"] == 422


async def test_confirm__after_cancel__raises_conflict(
    coordinator: CoordinatorUnderTest, participant: FakeParticipant
) -> None:
    async with CoordinatorClient(coordinator.base) as c:
        state = await c.begin(timeout_s=30)
        await c.try_branch(state.gid, "b", **participant.urls())
        cancelled = await c.cancel(state.gid)
        with pytest.raises(Conflict) as caught:
            await c.confirm(state.gid)
        stored = await c.get(state.gid)

    assert cancelled.status == "cancelled"
    assert type(caught.value) is Conflict
    assert caught.value.status == 409
    assert "cancelled" in caught.value.detail
    assert stored.status == "cancelled"
    assert participant.calls_for("confirm") == []


async def test_cancel__repeated__answers_the_same_outcome(
    coordinator: CoordinatorUnderTest, participant: FakeParticipant
) -> None:
    async with CoordinatorClient(coordinator.base) as c:
        state = await c.begin(timeout_s=30)
        await c.try_branch(state.gid, "b", **participant.urls())
        first = await c.cancel(state.gid)
        second = await c.cancel(state.gid)

    assert first.status == second.status == "cancelled"
    assert len(participant.calls_for("cancel", gid=state.gid)) == 1


async def test_try_branch__on_a_cancelled_transaction__raises_conflict_not_try_refused(
    coordinator: CoordinatorUnderTest, participant: FakeParticipant
) -> None:
    async with CoordinatorClient(coordinator.base) as c:
        state = await c.begin(timeout_s=30)
        await c.cancel(state.gid)
        with pytest.raises(Conflict) as caught:
            await c.try_branch(state.gid, "late", **participant.urls())

    assert participant.calls_for("try") == []  # the participant refused nothing
    assert "branches can only be added while trying" in caught.value.detail
    assert not isinstance(caught.value, TryRefused)


async def test_begin__unreachable_coordinator__raises_unavailable() -> None:
    async with CoordinatorClient("http://127.0.0.1:1", timeout_s=5) as c:
        with pytest.raises(Unavailable) as caught:
            await c.begin()

    assert caught.value.status is None
    assert "unreachable" in caught.value.detail
    assert isinstance(caught.value, CoordinatorError)


async def test_transaction__unreachable_coordinator__raises_unavailable_before_the_block() -> None:
    entered = False
    async with CoordinatorClient("http://127.0.0.1:1", timeout_s=5) as c:
        with pytest.raises(Unavailable):
            async with c.transaction(timeout_s=30):
                entered = True

    assert not entered


# --- sessions -------------------------------------------------------------------------------


async def test_close__with_a_session_of_the_caller__leaves_it_open(
    coordinator: CoordinatorUnderTest,
) -> None:
    async with CoordinatorClient(coordinator.base, session=coordinator.session) as c:
        await c.begin("shared-session")

    assert not coordinator.session.closed
    status, body = await coordinator.get("/v1/transactions/shared-session")
    assert status == 200
    assert body["status"] == "trying"


# --- reliable messages and sagas -----------------------------------------------------------


def test_message_request__is_the_body_of_post_v1_messages() -> None:
    steps = [MessageStep("a", url="http://x/a", payload={"n": 1}), MessageStep("b", "http://x/b")]

    assert message_request(steps, gid="g", concurrent=True) == {
        "gid": "g",
        "steps": [
            {"branch_id": "a", "url": "http://x/a", "payload": {"n": 1}},
            {"branch_id": "b", "url": "http://x/b", "payload": None},
        ],
        "concurrent": True,
        "prepared": False,
    }
    prepared = message_request(steps, prepared=True, query_url="http://x/q", timeout_s=5)
    assert (prepared["prepared"], prepared["query_url"], prepared["timeout_s"]) == (
        True,
        "http://x/q",
        5,
    )
    with pytest.raises(ValueError, match="at least one step"):
        message_request([])
    with pytest.raises(ValueError, match="query_url"):
        message_request(steps, prepared=True)


def test_saga_step__names_its_dependencies_only_when_it_has_some() -> None:
    assert "after" not in SagaStep("a", "http://x/a", "http://x/c").as_json()
    assert SagaStep("b", "http://x/a", "http://x/c", after=("a",)).as_json()["after"] == ["a"]


async def test_send_message__coordinator_unreachable__raises_unavailable() -> None:
    async with CoordinatorClient(f"http://127.0.0.1:{free_port()}", timeout_s=2) as c:
        with pytest.raises(Unavailable):
            await c.send_message([MessageStep("a", "http://127.0.0.1:9/a")], gid="g")


async def test_send_message__delivers_each_step_in_order_once(
    coordinator: CoordinatorUnderTest, participant: FakeParticipant
) -> None:
    await messages_api_or_xfail(coordinator.base)
    base = participant.base_url()
    steps = [MessageStep(b, f"{base}/svc/action", {"step": b}) for b in ("one", "two")]
    async with CoordinatorClient(coordinator.base, service="shop") as c:
        sent = await c.send_message(steps, gid="m-1", metadata={"why": "test"})
        again = await c.send_message(steps, gid="m-1", metadata={"why": "test"})  # a resend
        assert sent.kind == "msg"
        assert again.gid == "m-1"
        await eventually(lambda: c.get("m-1"), lambda s: s.finished)

    calls = participant.calls_for("action", gid="m-1")
    assert [(x.branch_id, x.body["payload"]) for x in calls] == [
        ("one", {"step": "one"}),
        ("two", {"step": "two"}),
    ]
    assert calls[0].headers["X-TCC-Phase"] == "action"


async def test_send_message__gid_taken_by_another_message__raises_conflict(
    coordinator: CoordinatorUnderTest, participant: FakeParticipant
) -> None:
    await messages_api_or_xfail(coordinator.base)
    url = f"{participant.base_url()}/svc/action"
    async with CoordinatorClient(coordinator.base) as c:
        await c.send_message([MessageStep("a", url, 1)], gid="m-2")
        with pytest.raises(Conflict):
            await c.send_message([MessageStep("a", url, 2)], gid="m-2")


async def test_prepared_message__submitted_is_delivered__aborted_never(
    coordinator: CoordinatorUnderTest, participant: FakeParticipant
) -> None:
    await messages_api_or_xfail(coordinator.base)
    url = f"{participant.base_url()}/svc/action"
    query = f"{participant.base_url()}/svc/query"
    async with CoordinatorClient(coordinator.base) as c:
        await c.prepare_message([MessageStep("a", url)], gid="p-1", query_url=query)
        await c.prepare_message([MessageStep("a", url)], gid="p-2", query_url=query)
        await asyncio.sleep(0.5)
        assert participant.calls_for("action") == []  # held while prepared
        await c.submit_message("p-1")
        aborted = await c.abort_message("p-2")
        await eventually(lambda: c.get("p-1"), lambda s: s.finished)
        assert aborted.gid == "p-2"
        await asyncio.sleep(0.5)

    assert len(participant.calls_for("action", gid="p-1")) == 1
    assert participant.calls_for(gid="p-2") == []


async def test_run_saga__every_action_done__returns_the_finished_saga(
    coordinator: CoordinatorUnderTest, participant: FakeParticipant
) -> None:
    await sagas_api_or_xfail(coordinator.base)
    base = f"{participant.base_url()}/svc"
    steps = [SagaStep(b, f"{base}/action", f"{base}/compensate", {"b": b}) for b in ("x", "y")]
    async with CoordinatorClient(coordinator.base, service="shop") as c:
        state = await c.run_saga(steps, gid="s-1", timeout_s=30)

    assert state.finished
    assert state.kind == "saga"
    assert [x.branch_id for x in participant.calls_for("action", gid="s-1")] == ["x", "y"]
    assert participant.calls_for("compensate", gid="s-1") == []


async def test_run_saga__an_action_refused__compensates_what_was_started_in_reverse(
    coordinator: CoordinatorUnderTest, participant: FakeParticipant
) -> None:
    await sagas_api_or_xfail(coordinator.base)
    participant.script("action", Reply(), Reply(status=409, body={"error": "no"}))
    base = f"{participant.base_url()}/svc"
    steps = [SagaStep(b, f"{base}/action", f"{base}/compensate") for b in ("x", "y", "z")]
    async with CoordinatorClient(coordinator.base) as c:
        state = await c.run_saga(steps, gid="s-2", timeout_s=30)

    assert state.finished
    assert [x.branch_id for x in participant.calls_for("action", gid="s-2")] == ["x", "y"]
    # The failing step included: its action may have done something before it said no.
    assert [x.branch_id for x in participant.calls_for("compensate", gid="s-2")] == ["y", "x"]
