"""GET /metrics: what this coordinator did, and what the log holds, as Prometheus reads it."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from coordinator.metrics import ConnectionState, LoginRefusal, ShedReason
from tests.conftest import CoordinatorClient
from tests.participant_server import FakeParticipant, Reply

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels (parsed as Prometheus would)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(coordinator: CoordinatorClient) -> Samples:
    status, text, resp = await coordinator.request("GET", "/metrics")
    assert status == 200
    assert resp.content_type == "text/plain"
    return parse(text)


async def test_metrics__count_begins_decisions_calls_and_endings(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await coordinator.post("/v1/transactions", {"gid": "m1"})
    await coordinator.post("/v1/transactions/m1/try", participant.branch("b"))
    await coordinator.post("/v1/transactions/m1/confirm")
    await coordinator.post("/v1/transactions", {"gid": "m2"})
    participant.script("try", Reply(status=409))
    await coordinator.post("/v1/transactions/m2/try", participant.branch("b"))
    await coordinator.post("/v1/transactions", {"gid": "open"})

    m = await scrape(coordinator)
    assert value(m, "tcc_transactions_begun_total", dialect="tcc", type="tcc") == 3
    assert value(m, "tcc_decisions_total", decision="confirm", reason="requested") == 1
    assert value(m, "tcc_decisions_total", decision="cancel", reason="try_failed") == 1
    # Calls to a participant nobody registered: labelled so, never by URL.
    unregistered = {"participant": "unregistered"}
    assert (
        value(m, "tcc_participant_calls_total", phase="try", outcome="tried", **unregistered) == 1
    )
    assert (
        value(m, "tcc_participant_calls_total", phase="try", outcome="refused", **unregistered) == 1
    )
    assert (
        value(m, "tcc_participant_calls_total", phase="confirm", outcome="done", **unregistered)
        == 1
    )
    assert (
        value(m, "tcc_participant_call_seconds_count", phase="try", outcome="tried", **unregistered)
        == 1
    )
    assert (
        value(m, "tcc_transactions_ended_total", status="confirmed", dialect="tcc", type="tcc") == 1
    )
    assert (
        value(m, "tcc_transactions_ended_total", status="cancelled", dialect="tcc", type="tcc") == 1
    )
    assert value(m, "tcc_transaction_duration_seconds_count", status="confirmed") == 1
    assert value(m, "tcc_active_rounds") == 0
    # The log's gauges: one transaction is still trying.
    assert value(m, "tcc_log_up") == 1
    assert value(m, "tcc_unfinished_transactions", status="trying") == 1
    assert value(m, "tcc_unfinished_transactions", status="failed_to_confirm") == 0
    assert value(m, "tcc_parked_transactions") == 0
    oldest = value(m, "tcc_oldest_unfinished_age_seconds")
    assert oldest is not None
    assert 0 <= oldest < 60


async def test_metrics__never_label_by_gid_url_or_key(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await coordinator.post("/v1/transactions", {"gid": "secret-gid-42"})
    await coordinator.post("/v1/transactions/secret-gid-42/try", participant.branch("b"))
    status, text, _ = await coordinator.request("GET", "/metrics")
    assert status == 200
    assert "secret-gid-42" not in text
    assert "127.0.0.1" not in text
    allowed = {
        *("dialect", "type", "status", "decision", "reason", "phase", "outcome", "action", "le"),
        *("state", "participant", "event"),
    }
    labels = {name for name, _ in (pair for key in parse(text) for pair in key[1])}
    assert labels <= allowed


async def test_metrics__with_the_log_down__still_answer_and_say_so(
    coordinator: CoordinatorClient,
) -> None:
    await coordinator.post("/v1/transactions", {"gid": "before"})
    await coordinator.runtime.log.close()
    m = await scrape(coordinator)
    assert value(m, "tcc_log_up") == 0
    assert value(m, "tcc_transactions_begun_total", dialect="tcc", type="tcc") == 1
    assert value(m, "tcc_unfinished_transactions", status="trying") is None


async def test_metrics__count_refused_console_logins_by_reason(
    coordinator: CoordinatorClient,
) -> None:
    before = await scrape(coordinator)
    for reason in LoginRefusal:  # every reason is there from the start, at 0
        assert value(before, "tcc_console_login_refusals_total", reason=reason.value) == 0
    metrics = coordinator.runtime.coordinator.metrics
    metrics.login_refused("wrong_key")
    metrics.login_refused("wrong_key")
    metrics.login_refused(LoginRefusal.RATE_LIMITED)
    m = await scrape(coordinator)
    assert value(m, "tcc_console_login_refusals_total", reason="wrong_key") == 2
    assert value(m, "tcc_console_login_refusals_total", reason="rate_limited") == 1
    assert value(m, "tcc_console_login_refusals_total", reason="service_key") == 0
    assert value(m, "tcc_console_login_refusals_total", reason="bad_form") == 0


async def test_metrics__inbound_connection_series_are_there_before_any_guarded_server(
    coordinator: CoordinatorClient,
) -> None:
    """The test server is not behind tcc serve's connection guard: the series exist, at 0."""
    m = await scrape(coordinator)
    assert value(m, "tcc_inbound_connections_limit") == 0
    for state in ConnectionState:
        assert value(m, "tcc_inbound_connections", state=state.value) == 0
    for reason in ShedReason:
        assert value(m, "tcc_inbound_connections_shed_total", reason=reason.value) == 0
