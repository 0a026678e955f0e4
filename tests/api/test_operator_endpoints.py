"""The operator's endpoints (the console's actions and reads) over HTTP on Postgres: why each
action was taken and who took it end up in the timeline; what the state forbids is refused
whole; a viewer key looks but never acts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from coordinator.core.apikeys import hash_key
from tests.conftest import CoordinatorClient
from tests.helpers import eventually
from tests.participant_server import FakeParticipant, Reply

MakeCoordinator = Callable[..., Awaitable[CoordinatorClient]]

KEYS = {"shop": "shop-key-0123456789", "ops": "ops-key-0123456789", "eyes": "eyes-key-012345678"}
CONFIG = ",".join(
    [
        f"shop:service:{hash_key(KEYS['shop'])}",
        f"ops:admin:{hash_key(KEYS['ops'])}",
        f"eyes:viewer:{hash_key(KEYS['eyes'])}",
    ]
)
BROKEN = Reply(status=500, body={"error": "ledger offline"})


@pytest.fixture
async def secured(make_coordinator: MakeCoordinator) -> CoordinatorClient:
    # Phase two gives up after a second, so a failing confirm parks quickly.
    return await make_coordinator(insecure=False, api_keys=CONFIG, give_up_after_s=1.0)


async def call(
    c: CoordinatorClient, method: str, path: str, who: str, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {KEYS[who]}"}
    status, out, _ = await c.request(method, path, json=body, headers=headers)
    return status, out


async def parked(
    c: CoordinatorClient, participant: FakeParticipant, gid: str, stuck: tuple[str, ...]
) -> dict[str, Any]:
    """A transaction of the shop with branch ``ok`` and the ``stuck`` ones, whose confirm
    fails until its budget is spent: failed_to_confirm."""
    for name in stuck:
        participant.default("confirm", BROKEN, service=name)
    assert (await call(c, "POST", "/v1/transactions", "shop", {"gid": gid}))[0] == 201
    for name in ("ok", *stuck):
        branch = participant.branch(name, service=name)
        status, out = await call(c, "POST", f"/v1/transactions/{gid}/try", "shop", branch)
        assert status == 200, out
    await call(c, "POST", f"/v1/transactions/{gid}/confirm", "shop")

    async def detail() -> dict[str, Any]:
        body: dict[str, Any] = (await call(c, "GET", f"/v1/transactions/{gid}", "ops"))[1]
        return body

    return await eventually(detail, lambda d: d["status"] == "failed_to_confirm")


def last_event(detail: dict[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = detail["events"][-1]
    return event


async def test_resolve_branch__one_by_hand_then_retry_the_rest__is_audited_step_by_step(
    secured: CoordinatorClient, participant: FakeParticipant
) -> None:
    gid = "shop:order-1"
    await parked(secured, participant, gid, ("stock", "bank"))
    path = f"/v1/transactions/{gid}"

    status, out = await call(
        secured, "POST", f"{path}/branches/stock/resolve", "ops", {"note": "booked by hand"}
    )
    assert status == 200, out
    assert out["status"] == "failed_to_confirm"  # the bank still waits
    by_id = {b["branch_id"]: b for b in out["branches"]}
    assert by_id["stock"]["status"] == "confirmed"
    assert by_id["bank"]["status"] == "tried"
    entry = last_event(out)
    assert (entry["kind"], entry["branch_id"]) == ("admin_resolved", "stock")
    assert entry["detail"] == {
        "actor": "api:ops (127.0.0.1)",
        "note": "booked by hand",
        "branches": ["stock"],
        "finished": False,
    }

    # Resolving it again is refused whole, and says why.
    status, out = await call(
        secured, "POST", f"{path}/branches/stock/resolve", "ops", {"note": "twice"}
    )
    assert status == 409
    assert "branch 'stock' is already confirmed" in out["detail"]
    status, out = await call(secured, "POST", f"{path}/branches/nope/resolve", "ops", {"note": "x"})
    assert status == 404

    # The bank is back: a retry with a reason confirms the rest and calls stock no more.
    participant.default("confirm", Reply(), service="bank")
    stock_calls = len(participant.calls_for("confirm", gid=gid, branch_id="stock"))
    status, out = await call(secured, "POST", f"{path}/retry", "ops", {"reason": "bank is up"})
    assert status == 200, out
    retry = next(e for e in out["events"] if e["kind"] == "admin_retry")
    assert retry["detail"] == {
        "from": "failed_to_confirm",
        "actor": "api:ops (127.0.0.1)",
        "reason": "bank is up",
    }

    async def detail() -> dict[str, Any]:
        body: dict[str, Any] = (await call(secured, "GET", path, "ops"))[1]
        return body

    final = await eventually(detail, lambda d: d["status"] == "confirmed")
    assert [b["status"] for b in final["branches"]] == ["confirmed"] * 3
    assert len(participant.calls_for("confirm", gid=gid, branch_id="stock")) == stock_calls


async def test_resolve_branch__the_last_one_left__finishes_the_transaction(
    secured: CoordinatorClient, participant: FakeParticipant
) -> None:
    gid = "shop:order-2"
    await parked(secured, participant, gid, ("bank",))
    status, out = await call(
        secured,
        "POST",
        f"/v1/transactions/{gid}/branches/bank/resolve",
        "ops",
        {"note": "refunded at the bank"},
    )
    assert status == 200, out
    assert out["status"] == "confirmed"
    assert last_event(out)["detail"]["finished"] is True


async def test_operator_actions__that_the_state_forbids__are_refused_with_the_reason(
    secured: CoordinatorClient,
) -> None:
    assert (await call(secured, "POST", "/v1/transactions", "shop", {"gid": "shop:open"}))[0] == 201
    path = "/v1/transactions/shop:open"
    status, out = await call(secured, "POST", f"{path}/retry", "ops", {"reason": "why not"})
    assert status == 409
    assert "only failed_to_confirm and failed_to_cancel" in out["detail"]
    assert "this one is trying" in out["detail"]
    status, out = await call(secured, "POST", f"{path}/branches/b/resolve", "ops", {"note": "x"})
    assert status == 409
    after = (await call(secured, "GET", path, "ops"))[1]
    assert after["status"] == "trying"
    assert [e["kind"] for e in after["events"]] == ["begin"]


async def test_operator_cancel__records_who_and_why(secured: CoordinatorClient) -> None:
    assert (await call(secured, "POST", "/v1/transactions", "shop", {"gid": "shop:held"}))[0] == 201
    status, out = await call(
        secured, "POST", "/v1/transactions/shop:held/cancel", "ops", {"reason": "customer called"}
    )
    assert status == 200, out
    assert out["status"] == "cancelled"
    assert out["cancel_reason"] == "operator: customer called"
    decision = next(e for e in out["events"] if e["kind"] == "decision")
    assert decision["detail"]["actor"] == "api:ops (127.0.0.1)"
    # Once decided, a second cancel changes nothing and a confirm is refused with why.
    status, out = await call(secured, "POST", "/v1/transactions/shop:held/confirm", "shop")
    assert status == 409
    assert "cancelled" in out["detail"]


async def test_client_cancel__with_words__stays_the_clients_own(secured: CoordinatorClient) -> None:
    assert (await call(secured, "POST", "/v1/transactions", "shop", {"gid": "shop:mine"}))[0] == 201
    status, out = await call(
        secured, "POST", "/v1/transactions/shop:mine/cancel", "shop", {"reason": "cart emptied"}
    )
    assert status == 200, out
    assert out["cancel_reason"] == "client: cart emptied"
    decision = next(e for e in out["events"] if e["kind"] == "decision")
    assert "actor" not in decision["detail"]


async def test_insecure__a_scripts_cancel_with_words__is_the_clients_as_documented(
    coordinator: CoordinatorClient,
) -> None:
    assert (await coordinator.post("/v1/transactions", {"gid": "local"}))[0] == 201
    status, out = await coordinator.post(
        "/v1/transactions/local/cancel", {"reason": "cart emptied"}
    )
    assert status == 200, out
    assert out["cancel_reason"] == "client: cart emptied"
    decision = next(e for e in out["events"] if e["kind"] == "decision")
    assert "actor" not in decision["detail"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/transactions/shop:v/retry", {"reason": "x"}),
        ("POST", "/v1/transactions/shop:v/resolve", {"note": "x"}),
        ("POST", "/v1/transactions/shop:v/branches/b/resolve", {"note": "x"}),
        ("POST", "/v1/transactions/shop:v/cancel", {"reason": "x"}),
        ("POST", "/v1/transactions/shop:v/confirm", None),
        ("POST", "/v1/transactions", {"gid": "eyes:new"}),
    ],
)
async def test_viewer_key__looks_but_never_acts(
    secured: CoordinatorClient, method: str, path: str, body: Any
) -> None:
    assert (await call(secured, "POST", "/v1/transactions", "shop", {"gid": "shop:v"}))[0] == 201
    for read in ("/v1/transactions/shop:v", "/v1/transactions", "/v1/overview"):
        assert (await call(secured, "GET", read, "eyes"))[0] == 200, read
    status, out = await call(secured, method, path, "eyes", body)
    assert status == 403, out
    assert "viewer" in out["detail"] or "admin" in out["detail"]
    assert (await call(secured, "GET", "/v1/transactions/shop:v", "ops"))[1]["status"] == "trying"


async def test_service_key__may_not_see_the_overview(secured: CoordinatorClient) -> None:
    status, out = await call(secured, "GET", "/v1/overview", "shop")
    assert status == 403
    assert out["detail"] == "the overview needs an admin or viewer key"


async def test_overview__counts_and_lists_what_needs_attention(
    secured: CoordinatorClient, participant: FakeParticipant
) -> None:
    await parked(secured, participant, "shop:stuck", ("bank",))
    assert (await call(secured, "POST", "/v1/transactions", "shop", {"gid": "shop:open"}))[0] == 201
    status, out = await call(secured, "GET", "/v1/overview?window_s=600", "eyes")
    assert status == 200, out
    assert out["unfinished"] == {"failed_to_confirm": 1, "trying": 1}
    assert out["recent"] == {"failed_to_confirm": 1, "trying": 1}
    assert [t["gid"] for t in out["parked"]] == ["shop:stuck"]
    assert [t["gid"] for t in out["oldest_unfinished"]] == ["shop:stuck", "shop:open"]
    assert sum(m["begun"] for m in out["per_minute"]) == 2
    assert out["window_s"] == 600
    status, out = await call(secured, "GET", "/v1/overview?window_s=5", "eyes")
    assert status == 422
    assert "window_s" in out["detail"]


async def test_list__by_dialect_and_gid_prefix(secured: CoordinatorClient) -> None:
    for gid in ("shop:order-1", "shop:order-2", "shop:refund-1"):
        assert (await call(secured, "POST", "/v1/transactions", "shop", {"gid": gid}))[0] == 201

    async def gids(query: str) -> list[str]:
        status, out = await call(secured, "GET", f"/v1/transactions?{query}", "ops")
        assert status == 200, out
        return sorted(t["gid"] for t in out["transactions"])

    assert await gids("gid_prefix=shop:order-") == ["shop:order-1", "shop:order-2"]
    assert await gids("dialect=tcc&gid_prefix=shop:ref") == ["shop:refund-1"]
    assert await gids("dialect=dtm") == []
    status, out = await call(secured, "GET", "/v1/transactions?gid_prefix=a%25b", "ops")
    assert status == 422
    assert "gid_prefix" in out["detail"]
