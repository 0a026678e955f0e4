"""X-Forwarded-* and Forwarded count only from the gateways in TCC_TRUSTED_PROXIES: anyone
else's are ignored (a client cannot write its own address into the audit, nor a prefix)."""

from __future__ import annotations

import uuid

from tests.conftest import MakeCoordinator
from tests.console.helpers import SECURED, bearer

SPOOF = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Prefix": "/elsewhere",
    "X-Forwarded-Proto": "https",
}


async def _cancelled_by(make_coordinator: MakeCoordinator, **settings: object) -> str:
    c = await make_coordinator(**SECURED, **settings)
    gid = f"shop:{uuid.uuid4().hex}"
    status, out, _ = await c.request(
        "POST", "/v1/transactions", {"gid": gid}, headers=bearer("shop")
    )
    assert status == 201, out
    status, out, _ = await c.request(
        "POST",
        f"/v1/transactions/{gid}/cancel",
        {"reason": "held"},
        headers={**bearer("ops"), **SPOOF},
    )
    assert status == 200, out
    decision = next(e for e in out["events"] if e["kind"] == "decision")
    return str(decision["detail"]["actor"])


async def test_from_an_untrusted_peer__forwarded_headers_are_ignored(
    make_coordinator: MakeCoordinator,
) -> None:
    assert await _cancelled_by(make_coordinator) == "api:ops (127.0.0.1)"
    assert (
        await _cancelled_by(make_coordinator, trusted_proxies="10.0.0.0/8") == "api:ops (127.0.0.1)"
    )


async def test_from_a_trusted_gateway__the_client_it_names_is_audited(
    make_coordinator: MakeCoordinator,
) -> None:
    actor = await _cancelled_by(make_coordinator, trusted_proxies="127.0.0.1/32")
    assert actor == "api:ops (6.6.6.6)"


async def test_openapi_servers__the_prefix_of_a_trusted_gateway_or_the_configured_one(
    make_coordinator: MakeCoordinator,
) -> None:
    plain = await make_coordinator()
    _, doc, _ = await plain.request("GET", "/openapi.json", headers=SPOOF)
    assert doc["servers"] == [{"url": "/"}]
    configured = await make_coordinator(path_prefix="/tcc")
    _, doc, _ = await configured.request("GET", "/openapi.json")
    assert doc["servers"] == [{"url": "/tcc"}]
    trusted = await make_coordinator(trusted_proxies="127.0.0.1")
    _, doc, _ = await trusted.request("GET", "/openapi.json", headers=SPOOF)
    assert doc["servers"] == [{"url": "/elsewhere"}]
