"""The participant registry over /v1, on a real coordinator and Postgres: register, name a
participant in a branch instead of URLs, its calls counted per participant, and its breaker
opening for real when it keeps failing (calls held, new work refused at once, closed again by
a probe or by an operator)."""

from __future__ import annotations

from typing import Any

from tests.conftest import CoordinatorClient, MakeCoordinator
from tests.helpers import eventually
from tests.participant_server import FakeParticipant, Reply
from tests.security.test_auth import CONFIG, auth


async def register(
    c: CoordinatorClient, p: FakeParticipant, name: str = "stock", **extra: Any
) -> tuple[int, Any]:
    body = {"base_url": f"{p.base_url()}/{name}", **extra}
    status, out, _ = await c.request("PUT", f"/v1/participants/{name}", body)
    return status, out


async def test_register__201_then_200__and_read_back(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    status, out = await register(coordinator, participant, call_timeout_s=3)
    assert status == 201, out
    assert out["confirm_url"] == f"{participant.base_url()}/stock/confirm"
    assert out["breaker_state"] == "closed"
    assert "probe_owner" not in out  # internal
    status, again = await register(coordinator, participant, health_url="http://127.0.0.1:9/h")
    assert status == 200
    assert again["health_url"] == "http://127.0.0.1:9/h"
    assert again["call_timeout_s"] is None
    status, one, _ = await coordinator.request("GET", "/v1/participants/stock")
    assert (status, one["name"]) == (200, "stock")
    status, removed, _ = await coordinator.request("DELETE", "/v1/participants/stock")
    assert (status, removed["name"]) == (200, "stock")
    status, problem, resp = await coordinator.request("GET", "/v1/participants/stock")
    assert status == 404
    assert resp.content_type == "application/problem+json"
    assert "no participant 'stock'" in problem["detail"]


async def test_register__bad_input__is_a_clear_422(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    status, problem, _ = await coordinator.request("PUT", "/v1/participants/stock", {})
    assert status == 422
    assert "base_url, or its confirm_url and cancel_url" in problem["detail"]
    status, problem, _ = await coordinator.request(
        "PUT", "/v1/participants/stock", {"base_url": "http://10.1.2.3/stock"}
    )
    assert status == 422  # outside the participant allowlist (127.0.0.0/8 here)
    assert problem["detail"].startswith("base_url:")
    status, _, _ = await coordinator.request(
        "PUT", "/v1/participants/no%20spaces", {"base_url": f"{participant.base_url()}/x"}
    )
    assert status == 400


async def test_branch__naming_a_participant__takes_its_urls_and_is_counted_by_its_name(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await register(coordinator, participant)
    status, out, _ = await coordinator.request(
        "POST",
        "/v1/transactions",
        {
            "gid": "named",
            "auto": True,
            "branches": [{"branch_id": "b1", "participant": "stock", "payload": {"n": 1}}],
        },
    )
    assert status == 201, out
    assert out["status"] == "confirmed"
    [branch] = out["branches"]
    assert branch["participant"] == "stock"
    assert branch["try_url"] == f"{participant.base_url()}/stock/try"
    assert [c.phase for c in participant.calls_for(gid="named")] == ["try", "confirm"]

    # A branch given by URLs under a registered base URL belongs to it too.
    status, out, _ = await coordinator.request(
        "POST",
        "/v1/transactions",
        {"gid": "by-url", "auto": True, "branches": [participant.branch("b1", service="stock")]},
    )
    assert out["branches"][0]["participant"] == "stock"

    status, problem, _ = await coordinator.request(
        "POST",
        "/v1/transactions",
        {"auto": True, "branches": [{"branch_id": "b1", "participant": "nobody"}]},
    )
    assert status == 422
    assert "branches.0.participant: no participant 'nobody' is registered" in problem["detail"]

    _, text, _ = await coordinator.request("GET", "/metrics")
    assert 'tcc_participant_calls_total{outcome="done",participant="stock",phase="confirm"}' in text

    async def listed() -> Any:
        _, body, _ = await coordinator.request("GET", "/v1/participants")
        return body

    # Counts reach the log every few seconds, from every coordinator.
    body = await eventually(listed, lambda b: b["participants"][0]["usage"]["calls_per_minute"] > 0)
    usage = body["participants"][0]["usage"]
    assert {p["phase"] for p in usage["phases"]} == {"try", "confirm"}
    assert usage["error_rate"] == 0
    assert usage["waiting"] == 0


async def test_ownership__a_service_registers_its_own__not_another_services(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    c = await make_coordinator(insecure=False, api_keys=CONFIG)
    body = {"base_url": f"{participant.base_url()}/stock"}
    status, out, _ = await c.request("PUT", "/v1/participants/stock", body, headers=auth("shop"))
    assert status == 201
    assert out["owner_service"] == "shop"
    status, _, _ = await c.request("PUT", "/v1/participants/stock", body, headers=auth("bank"))
    assert status == 403
    status, _, _ = await c.request("DELETE", "/v1/participants/stock", headers=auth("bank"))
    assert status == 403
    status, _, _ = await c.request(
        "POST", "/v1/participants/stock/breaker/reset", {}, headers=auth("shop")
    )
    assert status == 403  # closing a breaker is an operator's
    status, _, _ = await c.request(
        "POST", "/v1/participants/stock/breaker/reset", {}, headers=auth("ops")
    )
    assert status == 200
    status, _, _ = await c.request("GET", "/v1/participants", headers=auth("bank"))
    assert status == 200  # any key reads the registry
    status, _, _ = await c.request("GET", "/v1/participants")
    assert status == 401


async def test_breaker__a_failing_participant__is_cut_off_then_probed_back(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    c = await make_coordinator(
        breaker_failures=3, breaker_open_s=4.0, breaker_ramp_s=1.0, confirm_wait_s=0.3
    )
    await register(c, participant)
    participant.default("confirm", Reply(status=503), service="stock")

    async def begin(gid: str) -> tuple[int, Any]:
        branches = [{"branch_id": "b", "participant": "stock"}]
        status, out, _ = await c.request(
            "POST", "/v1/transactions", {"gid": gid, "auto": True, "branches": branches}
        )
        return status, out

    decided = {}
    for n in range(3):  # (recovery retries the failed confirms meanwhile: it may open early)
        status, out = await begin(f"down-{n}")
        assert out["status"] in ("confirming", "cancelling"), out
        decided[f"down-{n}"] = "confirmed" if out["status"] == "confirming" else "cancelled"
    assert decided["down-0"] == "confirmed"

    async def breaker() -> str:
        _, one, _ = await c.request("GET", "/v1/participants/stock")
        return str(one["breaker_state"])

    assert await eventually(breaker, lambda s: s == "open") == "open"  # for 4 s
    # New work to it fails at once: a try the coordinator would run...
    participant.default("confirm", Reply(status=200), service="stock")
    tries_before = len(participant.calls_for("try"))
    status, out = await begin("refused")
    assert out["cancel_reason"] == "try_failed: b"
    assert "not sent: circuit open" in out["branches"][0]["last_error"]
    assert len(participant.calls_for("try")) == tries_before
    decided["refused"] = "cancelled"  # (its empty cancel waits for the probe too)
    # ... and a branch whose try the client would run.
    await c.post("/v1/transactions", {"gid": "manual"})
    status, problem, resp = await c.request(
        "POST",
        "/v1/transactions/manual/branches",
        {"branch_id": "b", "participant": "stock"},
    )
    assert status == 503
    assert resp.content_type == "application/problem+json"
    assert int(resp.headers["Retry-After"]) >= 1
    assert "'stock' is not taking new work" in problem["detail"]

    # The participant answers again: a probe (one real confirm) closes the breaker and the
    # held transactions finish.
    assert await eventually(breaker, lambda s: s == "closed", timeout_s=20) == "closed"

    async def statuses() -> dict[str, str]:
        out = {}
        for gid in decided:
            _, txn, _ = await c.request("GET", f"/v1/transactions/{gid}")
            out[gid] = txn["status"]
        return out

    assert await eventually(statuses, lambda s: s == decided, timeout_s=20) == decided
    _, text, _ = await c.request("GET", "/metrics")
    assert 'tcc_breaker_transitions_total{event="tripped",participant="stock"}' in text
    assert 'tcc_breaker_state{participant="stock",state="closed"} 1.0' in text


async def test_dtm_branch__under_a_registered_base_url__belongs_to_it(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    """DTM's SDKs send URLs, never a name: the registry finds the participant by them, so
    its breaker and its counts cover DTM transactions unchanged."""
    await register(coordinator, participant)
    urls = participant.urls("stock")
    status, _ = await coordinator.post("/api/dtmsvr/prepare", {"gid": "dtm-1", "trans_type": "tcc"})
    assert status == 200
    status, out = await coordinator.post(
        "/api/dtmsvr/registerBranch",
        {
            "gid": "dtm-1",
            "branch_id": "01",
            "trans_type": "tcc",
            "status": "prepared",
            "data": "{}",
            "confirm": urls["confirm_url"],
            "cancel": urls["cancel_url"],
        },
    )
    assert status == 200, out
    _, txn = await coordinator.get("/v1/transactions/dtm-1")
    assert [b["participant"] for b in txn["branches"]] == ["stock"]


async def test_ownership__no_takeover_of_an_admins_participant_or_of_anothers_urls(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    c = await make_coordinator(insecure=False, api_keys=CONFIG)
    base = f"{participant.base_url()}/stock"
    status, out, _ = await c.request(
        "PUT", "/v1/participants/stock", {"base_url": base}, headers=auth("ops")
    )
    assert (status, out["owner_service"]) == (201, None)
    status, problem, _ = await c.request(
        "PUT", "/v1/participants/stock", {"base_url": base}, headers=auth("shop")
    )
    assert status == 403
    assert "only an admin key may replace it" in problem["detail"]
    # Another service's participant's URLs, or a base URL that takes them in: refused.
    wallet = f"{participant.base_url()}/wallet"
    status, _, _ = await c.request(
        "PUT", "/v1/participants/wallet", {"base_url": wallet}, headers=auth("bank")
    )
    assert status == 201
    status, problem, _ = await c.request(
        "PUT",
        "/v1/participants/mine",
        {"confirm_url": f"{wallet}/confirm", "cancel_url": f"{participant.base_url()}/x"},
        headers=auth("shop"),
    )
    assert status == 403
    assert "belongs to participant 'wallet', owned by service 'bank'" in problem["detail"]
    status, problem, _ = await c.request(
        "PUT", "/v1/participants/all", {"base_url": participant.base_url()}, headers=auth("shop")
    )
    assert status == 403
    assert "would take in the URLs of participant" in problem["detail"]
    # An admin's registration without an owner keeps the one it has.
    status, out, _ = await c.request(
        "PUT", "/v1/participants/wallet", {"base_url": f"{wallet}/v2"}, headers=auth("ops")
    )
    assert (status, out["owner_service"]) == (200, "bank")


async def test_branch__naming_a_participant_with_someone_elses_url__is_refused(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await register(coordinator, participant)
    branch = {
        "branch_id": "b1",
        "participant": "stock",
        "confirm_url": "http://127.0.0.1:1/elsewhere/confirm",
    }
    status, problem, _ = await coordinator.request(
        "POST", "/v1/transactions", {"auto": True, "branches": [branch]}
    )
    assert status == 422
    detail = problem["detail"]
    assert "confirm_url: http://127.0.0.1:1/elsewhere/confirm is not a URL of participant" in detail
    # Its own URL (under its base) is fine.
    branch["confirm_url"] = f"{participant.base_url()}/stock/confirm"
    status, out, _ = await coordinator.request(
        "POST", "/v1/transactions", {"auto": True, "branches": [branch]}
    )
    assert status == 201, out
