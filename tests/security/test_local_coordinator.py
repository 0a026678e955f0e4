"""A coordinator without keys (tcc up, --insecure) cannot be driven by a web page: changes sent
by another site are refused, and a Host it does not know (DNS rebinding) is not answered."""

from __future__ import annotations

import pytest

from coordinator.core.apikeys import hash_key
from coordinator.core.hosts import parse_allowed_hosts, split_host
from tests.conftest import CoordinatorClient, MakeCoordinator

CROSS_SITE = {
    "Origin": "http://attacker.example",
    "Sec-Fetch-Site": "cross-site",
    "Content-Type": "text/plain",
}


async def _count(coordinator: CoordinatorClient) -> int:
    status, body = await coordinator.get("/v1/transactions")
    assert status == 200, body
    return len(body["transactions"])


async def test_insecure__a_cross_site_begin_is_refused_and_nothing_is_written(
    coordinator: CoordinatorClient,
) -> None:
    status, body, resp = await coordinator.request(
        "POST",
        "/v1/transactions",
        data='{"gid": "planted", "timeout_s": 30}',
        headers=CROSS_SITE,
    )
    assert status == 403
    assert resp.content_type == "application/problem+json"
    assert "cross-site" in body["detail"]
    assert await _count(coordinator) == 0


async def test_insecure__a_cross_site_cancel_is_refused__the_transaction_stays(
    coordinator: CoordinatorClient,
) -> None:
    status, _ = await coordinator.post("/v1/transactions", {"gid": "mine", "timeout_s": 30})
    assert status == 201
    status, body, _ = await coordinator.request(
        "POST", "/v1/transactions/mine/cancel", data="", headers=CROSS_SITE
    )
    assert status == 403, body
    status, body = await coordinator.get("/v1/transactions/mine")
    assert body["status"] == "trying"


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://attacker.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://localhost:3000"},  # another port of the same machine: another site
        {"Origin": "null"},  # a sandboxed frame or a file
    ],
)
async def test_insecure__any_sign_of_another_site_refuses_a_change(
    coordinator: CoordinatorClient, headers: dict[str, str]
) -> None:
    status, _, _ = await coordinator.request(
        "POST", "/v1/transactions", json={"timeout_s": 30}, headers=headers
    )
    assert status == 403
    assert await _count(coordinator) == 0


async def test_insecure__scripts_and_the_console_own_pages_may_still_write(
    coordinator: CoordinatorClient,
) -> None:
    status, body, _ = await coordinator.request("POST", "/v1/transactions", json={"gid": "a"})
    assert status == 201, body
    own = coordinator.base.rstrip("/")
    status, body, _ = await coordinator.request(
        "POST",
        "/v1/transactions",
        json={"gid": "b"},
        headers={"Origin": own, "Sec-Fetch-Site": "same-origin"},
    )
    assert status == 201, body


@pytest.mark.parametrize("path", ["/v1/transactions", "/ui/", "/healthz", "/api/dtmsvr/all"])
async def test_insecure__an_unknown_host_is_not_answered(
    coordinator: CoordinatorClient, path: str
) -> None:
    port = coordinator.server.port
    status, body, resp = await coordinator.request(
        "GET", path, headers={"Host": f"attacker.example:{port}"}
    )
    assert status == 421
    assert resp.content_type == "application/problem+json"
    assert "TCC_ALLOWED_HOSTS" in body["detail"]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "ops.localhost", "10.1.2.3"])
async def test_insecure__local_names_and_addresses_are_answered(
    coordinator: CoordinatorClient, host: str
) -> None:
    port = coordinator.server.port
    status, _, _ = await coordinator.request(
        "GET", "/v1/transactions", headers={"Host": f"{host}:{port}"}
    )
    assert status == 200


async def test_a_configured_host_is_answered__others_are_not(
    make_coordinator: MakeCoordinator,
) -> None:
    coordinator = await make_coordinator(allowed_hosts="tcc.dev.internal, other.internal:9")
    port = coordinator.server.port
    ok, _, _ = await coordinator.request(
        "GET", "/v1/transactions", headers={"Host": f"tcc.dev.internal:{port}"}
    )
    wrong_port, _, _ = await coordinator.request(
        "GET", "/v1/transactions", headers={"Host": f"other.internal:{port}"}
    )
    assert (ok, wrong_port) == (200, 421)


async def test_with_keys__hosts_are_checked_only_when_configured(
    make_coordinator: MakeCoordinator,
) -> None:
    keys = f"ops:admin:{hash_key('k' * 32)}"
    open_coordinator = await make_coordinator(insecure=False, api_keys=keys)
    status, _, _ = await open_coordinator.request(
        "GET", "/healthz", headers={"Host": "tcc.example.com"}
    )
    assert status == 200
    strict = await make_coordinator(insecure=False, api_keys=keys, allowed_hosts="tcc.example.com")
    status, _, _ = await strict.request("GET", "/healthz", headers={"Host": "elsewhere.example"})
    assert status == 421


def test_allowed_hosts__entries_are_checked() -> None:
    hosts = parse_allowed_hosts(" Tcc.Example.com. , console.internal:8080 ")
    assert hosts.permits("tcc.example.com:443")
    assert hosts.permits("TCC.EXAMPLE.COM")
    assert hosts.permits("console.internal:8080")
    assert not hosts.permits("console.internal:8081")
    assert not hosts.permits("example.com")
    assert not hosts.permits("tcc.example.com.attacker.example")
    assert not hosts.permits("")
    assert not hosts.permits("bad host")
    for bad in ("http://x", "a b", "x:0", "x:99999", "[::1", "a/b"):
        with pytest.raises(ValueError, match="allowed host"):
            parse_allowed_hosts(bad)


def test_split_host__reads_names_addresses_and_ports() -> None:
    assert split_host("LOCALHOST:8080") == ("localhost", 8080)
    assert split_host("[::1]:36789") == ("::1", 36789)
    assert split_host("::1") == ("::1", None)
    assert split_host("127.0.0.1") == ("127.0.0.1", None)
    assert split_host("[::1]x") is None
