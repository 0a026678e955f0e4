"""Recovery under real faults: hanging tries, dead participants, racing and killed
coordinators, and a database that goes away. Short deadlines, real waits."""

from __future__ import annotations

import asyncio
import functools
import shutil
import signal
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from coordinator.devtools.chaos import ChaosConfig, ChaosRun
from coordinator.embedded import EmbeddedServer
from tests.conftest import CoordinatorClient, fast_settings, start_coordinator
from tests.conftest import transaction_detail as detail
from tests.helpers import event_count, event_kinds, eventually
from tests.participant_server import FakeParticipant, Reply
from tests.processes import CoordinatorProcess

pytestmark = pytest.mark.slow

MakeCoordinator = Callable[..., Awaitable[CoordinatorClient]]


async def test_deadline__hanging_try__is_cancelled_by_recovery_and_the_participant_told(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    coordinator = await make_coordinator(recovery_interval_s=0.2)
    status, _ = await coordinator.post(
        "/v1/transactions", {"gid": "hang", "timeout_s": 1, "call_timeout_s": 4}
    )
    assert status == 201
    participant.script("try", Reply(delay_s=3))
    hanging_try = asyncio.create_task(
        coordinator.post("/v1/transactions/hang/try", participant.branch("b"))
    )
    final = await eventually(
        lambda: detail(coordinator, "hang"), lambda d: d["status"] == "cancelled", timeout_s=10
    )
    assert final["cancel_reason"] == "timeout"
    # Decided by the database clock, within the deadline plus a recovery interval (and slack
    # for a slow machine), and the branch whose try never answered got its cancel.
    from datetime import datetime

    decided = datetime.fromisoformat(final["decided_at"])
    deadline = datetime.fromisoformat(final["deadline"])
    assert 0 <= (decided - deadline).total_seconds() < 0.2 + 2.0
    assert [c.branch_id for c in participant.calls_for("cancel")] == ["b"]

    # The try answers late: it must not resurrect the branch, and its caller is told so.
    status, out = await hanging_try
    assert (status, out["verdict"]) == (409, "cancelled")
    assert out["transaction_status"] == "cancelled"
    again = await detail(coordinator, "hang")
    assert again["branches"][0]["status"] == "cancelled"
    assert again["events"][-1]["detail"]["late"] is True

    status, out = await coordinator.post("/v1/transactions/hang/confirm")
    assert status == 409
    assert "timeout" in out["detail"]


async def test_participant_down_during_confirm__confirmed_after_it_returns(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await coordinator.post("/v1/transactions", {"gid": "down"})
    assert (await coordinator.post("/v1/transactions/down/try", participant.branch("b")))[0] == 200
    await participant.stop()
    status, out = await coordinator.post("/v1/transactions/down/confirm")
    assert (status, out["status"]) == (202, "confirming")
    assert "ClientConnectorError" in out["branches"][0]["last_error"]
    await asyncio.sleep(1.0)  # several failed rounds while it is down
    await participant.start()
    final = await eventually(
        lambda: detail(coordinator, "down"), lambda d: d["status"] == "confirmed"
    )
    assert final["branches"][0]["status"] == "confirmed"
    assert event_count(final, "retry_scheduled") >= 2
    assert len(participant.calls_for("confirm")) == 1  # only the one after it came back


async def test_two_coordinators_racing__each_branch_called_once_per_round(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    first = await make_coordinator(recovery_interval_s=0.05, retry_initial_s=0.05, retry_max_s=0.1)
    second = await make_coordinator(recovery_interval_s=0.05, retry_initial_s=0.05, retry_max_s=0.1)
    gids = [f"r{i}" for i in range(20)]
    for gid in gids:
        await first.post("/v1/transactions", {"gid": gid})
        for service in ("one", "two"):
            branch = participant.branch(service, service, with_try=False)
            assert (await first.post(f"/v1/transactions/{gid}/branches", branch))[0] == 201
    for service in ("one", "two"):
        participant.default("confirm", Reply(status=503), service=service)
    decided = await asyncio.gather(*(first.post(f"/v1/transactions/{g}/confirm") for g in gids))
    assert all(status == 202 for status, _ in decided)
    await asyncio.sleep(1.5)  # both coordinators' recovery loops fight over the retries
    for service in ("one", "two"):
        participant.default("confirm", Reply(status=200), service=service)
    owners: set[str] = set()
    for gid in gids:
        final = await eventually(
            functools.partial(detail, second, gid), lambda d: d["status"] == "confirmed"
        )
        rounds = final["phase_attempts"]
        for service in ("one", "two"):
            calls = len(participant.calls_for("confirm", gid=gid, branch_id=service))
            # Every round called every pending branch exactly once: never twice in a round.
            assert calls == rounds, (gid, service, calls, rounds)
        owners |= {e["detail"]["by"] for e in final["events"] if e["kind"] == "retry_scheduled"}
    assert {first.runtime.driver.owner, second.runtime.driver.owner} <= owners


async def test_admin_retry__parked_transaction_goes_back_and_confirms(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    coordinator = await make_coordinator(give_up_after_s=0.5)
    await coordinator.post("/v1/transactions", {"gid": "parked"})
    await coordinator.post("/v1/transactions/parked/try", participant.branch("b"))
    participant.default("confirm", Reply(status=500))
    await coordinator.post("/v1/transactions/parked/confirm")
    await eventually(
        lambda: detail(coordinator, "parked"), lambda d: d["status"] == "failed_to_confirm"
    )
    participant.default("confirm", Reply(status=200))
    status, out = await coordinator.post("/v1/transactions/parked/retry")
    assert (status, out["status"]) == (200, "confirmed")
    kinds = event_kinds(out)
    assert kinds.index("failed_to_confirm") < kinds.index("admin_retry") < kinds.index("confirmed")
    status, out = await coordinator.post("/v1/transactions/parked/retry")
    assert status == 409
    assert "only failed_to_confirm and failed_to_cancel" in out["detail"]


@pytest.fixture
async def own_postgres() -> AsyncIterator[EmbeddedServer]:
    """A Postgres server of this test's own, so the test may stop it."""
    root = Path(tempfile.mkdtemp(prefix="tcc-outage-"))
    server = await asyncio.to_thread(EmbeddedServer, root / "pgdata", delete_on_close=True)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.close)
        shutil.rmtree(root, ignore_errors=True)


async def test_database_outage__api_answers_503_then_continues_without_restart(
    own_postgres: EmbeddedServer, participant: FakeParticipant
) -> None:
    server, session = await start_coordinator(
        own_postgres.url, fast_settings(migrate=True, recovery_interval_s=0.2)
    )
    coordinator = CoordinatorClient(server, session)
    try:
        await coordinator.post("/v1/transactions", {"gid": "before"})
        await coordinator.post("/v1/transactions/before/try", participant.branch("b"))
        await asyncio.to_thread(own_postgres.stop)

        status, body, resp = await coordinator.request(
            "POST", "/v1/transactions", json={"gid": "during"}
        )
        assert status == 503
        assert resp.headers["Retry-After"] == "1"
        assert resp.content_type == "application/problem+json"
        assert "unavailable" in body["detail"]
        status, _, _ = await coordinator.request("POST", "/v1/transactions/before/confirm")
        assert status == 503
        status, _, _ = await coordinator.request("GET", "/readyz")
        assert status == 503

        await asyncio.to_thread(own_postgres.start)
        ready = await eventually(
            lambda: coordinator.request("GET", "/readyz"), lambda r: r[0] == 200
        )
        assert ready[0] == 200
        status, out = await coordinator.post("/v1/transactions/before/confirm")
        assert (status, out["status"]) == (200, "confirmed")
        # The refused begin left nothing behind; it can simply be repeated.
        status, _ = await coordinator.get("/v1/transactions/during")
        assert status == 404
        assert (await coordinator.post("/v1/transactions", {"gid": "during"}))[0] == 201
    finally:
        await session.close()
        await server.close()


async def test_sigterm__releases_leases_so_another_coordinator_continues_at_once(
    database_url: str, tmp_path: Path, participant: FakeParticipant
) -> None:
    participant.script("confirm", Reply(delay_s=30))
    proc = CoordinatorProcess(
        database_url, tmp_path, lease_ttl_s=60, shutdown_grace_s=1, confirm_wait_s=0.5
    )
    await proc.start()
    try:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.post(f"{proc.base}/v1/transactions", json={"gid": "term"}) as r:
                assert r.status == 201
            async with http.post(
                f"{proc.base}/v1/transactions/term/try", json=participant.branch("b")
            ) as r:
                assert r.status == 200
            async with http.post(f"{proc.base}/v1/transactions/term/confirm") as r:
                assert r.status == 202
        await eventually(lambda: _value(len(participant.calls_for("confirm"))), lambda n: n == 1)
        proc.kill(signal.SIGTERM)
        assert proc.proc is not None
        assert proc.proc.returncode == 0
    finally:
        proc.stop()
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT status, lease_owner FROM tcc_transactions WHERE gid = 'term'"
        )
    finally:
        await conn.close()
    # With a 60 s lease, only an explicit release lets the next coordinator in now.
    assert row is not None
    assert (row["status"], row["lease_owner"]) == ("confirming", None)
    assert "lease_released_on_shutdown" in proc.logs()


async def _value(value: int) -> int:
    return value


async def test_chaos__coordinators_killed_at_random__every_transaction_final_and_agreed() -> None:
    chaos = ChaosRun(
        ChaosConfig(
            transactions=200,
            concurrency=12,
            kill_every_s=1.0,
            kill_participants=False,
            database_outages=False,
            seed=11,
            time_limit_s=240,
        )
    )
    report = await chaos.run()
    print(report.table())
    assert report.coordinator_kills >= 1
    assert report.ok, report.table()
    assert not chaos.log_dir.exists(), "a clean run removes its folder"
    assert sum(report.final.values()) == report.begun == 200


async def test_chaos__database_stopped_and_started_under_load__nothing_lost() -> None:
    report = await ChaosRun(
        ChaosConfig(
            transactions=150,
            concurrency=12,
            kill_every_s=1.5,
            kill_coordinators=False,
            kill_participants=False,
            database_outages=True,
            seed=5,
            time_limit_s=240,
        )
    ).run()
    print(report.table())
    assert report.outages >= 1
    assert report.ok, report.table()
    assert Counter(report.final).total() == report.begun


async def test_admin_resolve__parked_transaction_marked_done_by_hand_is_audited(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    coordinator = await make_coordinator(give_up_after_s=0.5)
    await coordinator.post("/v1/transactions", {"gid": "byhand"})
    await coordinator.post("/v1/transactions/byhand/try", participant.branch("b"))
    participant.default("confirm", Reply(status=500))
    await coordinator.post("/v1/transactions/byhand/confirm")
    await eventually(
        lambda: detail(coordinator, "byhand"), lambda d: d["status"] == "failed_to_confirm"
    )
    status, out = await coordinator.post("/v1/transactions/byhand/resolve", {})
    assert status == 422  # a note is required
    status, out = await coordinator.post(
        "/v1/transactions/byhand/resolve", {"note": "confirmed in the wallet DB, ticket 42"}
    )
    assert (status, out["status"]) == (200, "confirmed")
    assert out["branches"][0]["status"] == "confirmed"
    assert out["branches"][0]["last_error"].startswith("resolved by an operator")
    audit = out["events"][-1]
    assert audit["kind"] == "admin_resolved"
    assert audit["detail"]["note"] == "confirmed in the wallet DB, ticket 42"
    assert audit["detail"]["branches"] == ["b"]
    status, out = await coordinator.post("/v1/transactions/byhand/resolve", {"note": "again"})
    assert status == 409
