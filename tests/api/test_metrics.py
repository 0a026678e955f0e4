"""GET /metrics: Prometheus counters of what this coordinator did."""

from __future__ import annotations

from tests.conftest import CoordinatorClient
from tests.participant_server import FakeParticipant, Reply


async def test_metrics__count_begins_decisions_calls_and_endings(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await coordinator.post("/v1/transactions", {"gid": "m1"})
    await coordinator.post("/v1/transactions/m1/try", participant.branch("b"))
    await coordinator.post("/v1/transactions/m1/confirm")
    await coordinator.post("/v1/transactions", {"gid": "m2"})
    participant.script("try", Reply(status=409))
    await coordinator.post("/v1/transactions/m2/try", participant.branch("b"))

    status, text, resp = await coordinator.request("GET", "/metrics")
    assert status == 200
    assert resp.content_type == "text/plain"
    lines = set(text.splitlines())
    assert 'tcc_transactions_begun_total{dialect="tcc"} 2' in lines
    assert 'tcc_decisions_total{decision="confirm"} 1' in lines
    assert 'tcc_participant_calls_total{outcome="tried",phase="try"} 1' in lines
    assert 'tcc_participant_calls_total{outcome="refused",phase="try"} 1' in lines
    assert 'tcc_participant_calls_total{outcome="done",phase="confirm"} 1' in lines
    assert 'tcc_transactions_ended_total{status="confirmed"} 1' in lines
    assert 'tcc_participant_call_seconds_count{phase="try"} 2' in lines
    assert "# TYPE tcc_active_rounds gauge" in lines
