"""Participants that answer oddly, and clients that repeat themselves."""

from __future__ import annotations

import asyncio

from coordinator.api.schemas import TryBranchIn
from coordinator.txlog.postgres import PostgresLog
from tests.conftest import CoordinatorClient, MakeCoordinator
from tests.conftest import transaction_detail as detail
from tests.helpers import event_count, eventually
from tests.participant_server import FakeParticipant, Reply


async def test_repeated_try__after_a_refusal__still_answers_refused(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await coordinator.post("/v1/transactions", {"gid": "r"})
    participant.script("try", Reply(status=409))
    branch = participant.branch("b")
    assert (await coordinator.post("/v1/transactions/r/try", branch))[0] == 409
    await eventually(lambda: detail(coordinator, "r"), lambda d: d["status"] == "cancelled")
    status, out = await coordinator.post("/v1/transactions/r/try", branch)
    assert status == 409
    assert out["verdict"] == "cancelled"
    assert len(participant.calls_for("try")) == 1


async def test_repeated_try__of_a_try_whose_answer_was_never_logged__runs_it_again(
    coordinator: CoordinatorClient, participant: FakeParticipant, store: PostgresLog
) -> None:
    await coordinator.post("/v1/transactions", {"gid": "stale", "call_timeout_s": 0.2})
    branch = participant.branch("b")
    # The coordinator that registered the branch died before logging the try's answer.
    registered = TryBranchIn.model_validate(branch).to_new()
    async with store.connection() as conn:
        await conn.execute(
            "INSERT INTO tcc_branches (gid, branch_id, position, name, try_url, confirm_url,"
            " cancel_url, request_hash, status, updated_at)"
            " VALUES ('stale', 'b', 0, 'svc', $1, $2, $3, $4, 'registered',"
            " now() - interval '5 seconds')",
            branch["try_url"],
            branch["confirm_url"],
            branch["cancel_url"],
            registered.request_hash,
        )
        # As a registration does: the transaction's row counts its branches.
        await conn.execute(
            "UPDATE tcc_transactions SET branch_count = branch_count + 1 WHERE gid = 'stale'"
        )
    status, out = await coordinator.post("/v1/transactions/stale/try", branch)
    assert (status, out["verdict"]) == (200, "tried")
    assert len(participant.calls_for("try")) == 1
    status, out = await coordinator.post("/v1/transactions/stale/confirm")
    assert (status, out["status"]) == (200, "confirmed")


async def test_repeated_try__while_the_first_is_in_flight__does_not_call_again(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await coordinator.post("/v1/transactions", {"gid": "busy"})
    participant.script("try", Reply(delay_s=1.0))
    branch = participant.branch("b")
    first = asyncio.create_task(coordinator.post("/v1/transactions/busy/try", branch))
    await eventually(lambda: _value(len(participant.calls)), lambda n: n == 1)
    status, out = await coordinator.post("/v1/transactions/busy/try", branch)
    assert (status, out["verdict"]) == (202, "pending")
    assert (await first)[0] == 200
    assert len(participant.calls_for("try")) == 1


async def _value(value: int) -> int:
    return value


async def test_phase_two_reply_with_a_nul_byte__is_retried_then_parked_not_looped(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    coordinator = await make_coordinator(give_up_after_s=1.0)
    await coordinator.post("/v1/transactions", {"gid": "nul"})
    await coordinator.post("/v1/transactions/nul/try", participant.branch("b"))
    participant.default("cancel", Reply(status=500, raw=b"oops\x00"))
    assert (await coordinator.post("/v1/transactions/nul/cancel"))[0] == 202
    final = await eventually(
        lambda: detail(coordinator, "nul"), lambda d: d["status"] == "failed_to_cancel"
    )
    assert "oops\\x00" in final["branches"][0]["last_error"]
    assert event_count(final, "cancel_call") == final["phase_attempts"]
    # Backed off between rounds: a tight loop would have made far more calls in a second.
    assert len(participant.calls_for("cancel")) < 15


async def test_try_reply_nested_too_deeply_to_parse__is_still_a_success(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await coordinator.post("/v1/transactions", {"gid": "deep"})
    participant.script("try", Reply(raw=b"[" * 50000 + b"]" * 50000))
    status, out = await coordinator.post("/v1/transactions/deep/try", participant.branch("b"))
    assert (status, out["verdict"]) == (200, "tried")
    assert isinstance(out["participant"]["body"], str)
