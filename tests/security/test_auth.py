"""API keys, scopes and ownership, on /v1 and on the DTM endpoints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from coordinator.core.apikeys import hash_key, parse_keys
from tests.conftest import CoordinatorClient
from tests.participant_server import FakeParticipant

MakeCoordinator = Callable[..., Awaitable[CoordinatorClient]]

KEYS = {"shop": "shop-key-0123456789", "bank": "bank-key-0123456789", "ops": "ops-key-0123456789"}
CONFIG = ",".join(
    [
        f"shop:service:{hash_key(KEYS['shop'])}",
        f"bank:service:{hash_key(KEYS['bank'])}",
        f"ops:admin:{hash_key(KEYS['ops'])}",
    ]
)


def auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[who]}"}


@pytest.fixture
async def secured(make_coordinator: MakeCoordinator) -> CoordinatorClient:
    return await make_coordinator(insecure=False, api_keys=CONFIG)


async def call(
    c: CoordinatorClient, method: str, path: str, who: str | None, body: Any = None
) -> tuple[int, Any]:
    headers = auth(who) if who else None
    status, out, _ = await c.request(method, path, json=body, headers=headers)
    return status, out


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
    ],
)
async def test_no_or_bad_key__is_401_with_a_challenge(
    secured: CoordinatorClient, headers: dict[str, str] | None
) -> None:
    status, body, resp = await secured.request("GET", "/v1/transactions/x", headers=headers)
    assert status == 401
    assert resp.content_type == "application/problem+json"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "API key" in body["detail"]


async def test_health_and_openapi__stay_open(secured: CoordinatorClient) -> None:
    for path in ("/healthz", "/readyz", "/api/ping"):
        assert (await secured.get(path))[0] == 200, path


async def test_health__can_be_protected(make_coordinator: MakeCoordinator) -> None:
    c = await make_coordinator(insecure=False, api_keys=CONFIG, protect_health=True)
    assert (await c.get("/readyz"))[0] == 401
    assert (await call(c, "GET", "/readyz", "bank"))[0] == 200


async def test_a_transaction_belongs_to_the_service_that_began_it(
    secured: CoordinatorClient, participant: FakeParticipant
) -> None:
    status, out = await call(secured, "POST", "/v1/transactions", "shop", {"gid": "shop:mine"})
    assert (status, out["service"]) == (201, "shop")
    branch = participant.branch("b")
    assert (await call(secured, "POST", "/v1/transactions/shop:mine/try", "shop", branch))[0] == 200

    # Another service sees nothing at all: every operation is a plain 404.
    for method, path, body in (
        ("GET", "/v1/transactions/shop:mine", None),
        ("POST", "/v1/transactions/shop:mine/try", participant.branch("c")),
        ("POST", "/v1/transactions/shop:mine/branches", participant.branch("d", with_try=False)),
        ("POST", "/v1/transactions/shop:mine/confirm", None),
        ("POST", "/v1/transactions/shop:mine/cancel", None),
    ):
        status, out = await call(secured, method, path, "bank", body)
        assert status == 404, (method, path, status)
        assert out["detail"] == "no transaction 'shop:mine'"
    assert participant.calls_for("cancel") == []

    # The owner and an admin can.
    assert (await call(secured, "GET", "/v1/transactions/shop:mine", "ops"))[0] == 200
    status, out = await call(secured, "POST", "/v1/transactions/shop:mine/confirm", "shop")
    assert (status, out["status"]) == (200, "confirmed")


async def test_service_key__cannot_begin_as_another_service(secured: CoordinatorClient) -> None:
    status, out = await call(
        secured, "POST", "/v1/transactions", "shop", {"gid": "shop:x", "service": "bank"}
    )
    assert status == 403
    assert "cannot begin transactions as 'bank'" in out["detail"]
    status, out = await call(
        secured, "POST", "/v1/transactions", "ops", {"gid": "y", "service": "bank"}
    )
    assert (status, out["service"]) == (201, "bank")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/transactions"), ("POST", "/v1/transactions/g/retry"), ("GET", "/api/dtmsvr/all")],
)
async def test_admin_only_operations__refuse_service_keys(
    secured: CoordinatorClient, method: str, path: str
) -> None:
    await call(secured, "POST", "/v1/transactions", "shop", {"gid": "shop:g"})
    status, _ = await call(secured, method, path, "shop")
    assert status == 403
    assert (await call(secured, method, path, "ops"))[0] != 403


async def test_dtm_endpoints__take_the_same_keys_and_ownership(
    secured: CoordinatorClient,
) -> None:
    body = {"gid": "shop:d1", "trans_type": "tcc"}
    assert (await secured.post("/api/dtmsvr/prepare", body))[0] == 401
    assert await call(secured, "POST", "/api/dtmsvr/prepare", "shop", body) == (
        200,
        {"dtm_result": "SUCCESS"},
    )
    status, out = await call(secured, "GET", "/api/dtmsvr/query?gid=shop:d1", "bank")
    assert out == {"transaction": None, "branches": []}
    status, out = await call(secured, "POST", "/api/dtmsvr/abort", "bank", body)
    assert (status, out["dtm_result"]) == (409, "FAILURE")
    status, out = await call(secured, "GET", "/api/dtmsvr/query?gid=shop:d1", "shop")
    assert out["transaction"]["status"] == "prepared"


async def test_insecure_mode__says_so_in_readyz(coordinator: CoordinatorClient) -> None:
    status, body = await coordinator.get("/readyz")
    assert status == 200
    assert "without authentication" in body["warning"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("shop:service", "name:scope:sha256hex"),
        ("shop:root:" + "a" * 64, "scope"),
        ("shop:service:not-hex", "SHA-256"),
        ("bad name:service:" + "a" * 64, "name"),
    ],
)
def test_key_configuration__bad_entries_are_refused(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_keys(entry)


def test_key_configuration__hashes_never_keys() -> None:
    [key] = parse_keys(f"shop:service:{hash_key('s3cret-s3cret-s3cret')}")
    assert key.sha256.hex() == hash_key("s3cret-s3cret-s3cret")
    assert "s3cret" not in repr(key)


async def test_metrics__open_by_default__protected_on_request(
    secured: CoordinatorClient, make_coordinator: MakeCoordinator
) -> None:
    assert (await secured.get("/metrics"))[0] == 200
    protected = await make_coordinator(insecure=False, api_keys=CONFIG, protect_health=True)
    assert (await protected.get("/metrics"))[0] == 401
    assert (await call(protected, "GET", "/metrics", "ops"))[0] == 200


async def test_gids__live_in_their_services_namespace__so_none_can_be_taken_or_probed(
    secured: CoordinatorClient,
) -> None:
    status, out = await call(secured, "POST", "/v1/transactions", "shop", {})
    assert (status, out["gid"][:5]) == (201, "shop:")  # generated inside the namespace
    # Another service cannot even name a gid of shop's: refused before the log is asked,
    # with the same words whether or not the gid exists.
    taken = out["gid"]
    for gid in (taken, "shop:never-used"):
        status, out = await call(secured, "POST", "/v1/transactions", "bank", {"gid": gid})
        assert status == 422, gid
        assert "the gids of service 'bank' begin with 'bank:'" in out["detail"]
        dtm = {"gid": gid, "trans_type": "tcc"}
        status, out = await call(secured, "POST", "/api/dtmsvr/prepare", "bank", dtm)
        assert (status, out["dtm_result"]) == (400, "FAILURE")
        assert "begin with 'bank:'" in out["message"]
    # The same suffix in each namespace is two unrelated transactions.
    for who in ("shop", "bank"):
        body = {"gid": f"{who}:order-1"}
        assert (await call(secured, "POST", "/v1/transactions", who, body))[0] == 201
    status, out = await call(secured, "GET", "/api/dtmsvr/newGid", "bank")
    assert out["gid"].startswith("bank:")
    # Admins are not namespaced.
    assert (await call(secured, "POST", "/v1/transactions", "ops", {"gid": "ops-free"}))[0] == 201


async def test_gids__with_one_global_namespace__a_refusal_says_nothing_about_the_owner(
    make_coordinator: MakeCoordinator,
) -> None:
    c = await make_coordinator(insecure=False, api_keys=CONFIG, gid_namespaces=False)
    assert (await call(c, "POST", "/v1/transactions", "shop", {"gid": "g1"}))[0] == 201
    theirs = await call(c, "POST", "/v1/transactions", "bank", {"gid": "g1"})
    own_other_body = await call(
        c, "POST", "/v1/transactions", "shop", {"gid": "g1", "timeout_s": 5}
    )
    assert theirs == own_other_body
    assert theirs[0] == 409
    assert "cannot be used" in theirs[1]["detail"]
    dtm = {"gid": "g1", "trans_type": "tcc"}
    status, out = await call(c, "POST", "/api/dtmsvr/prepare", "bank", dtm)
    assert (status, out["dtm_result"]) == (409, "FAILURE")
    assert "trying" not in out["message"]
    assert "prepared" not in out["message"]


async def test_python_client__sends_its_api_key(secured: CoordinatorClient) -> None:
    from participants.client import CoordinatorClient as Client

    async with Client(secured.base, service="shop", api_key=KEYS["shop"]) as tcc:
        state = await tcc.begin("with-key")
        # The client keeps the gid it was given inside its service's namespace.
        assert (state.gid, state.raw["service"]) == ("shop:with-key", "shop")
    async with Client(secured.base) as anonymous:
        with pytest.raises(Exception, match="401"):
            await anonymous.get("shop:with-key")
