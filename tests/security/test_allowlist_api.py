"""The allowlist through the HTTP API of a real coordinator: what is refused at registration,
and what is refused when the call is made. Every URL here is on 127.0.0.1 or localhost."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver

from tests.conftest import CoordinatorClient
from tests.participant_server import FakeParticipant

MakeCoordinator = Callable[..., Awaitable[CoordinatorClient]]


def branch_on(host: str, participant: FakeParticipant) -> dict[str, Any]:
    base = f"http://{host}:{participant.port}/svc"
    return {
        "branch_id": "b",
        "try_url": f"{base}/try",
        "confirm_url": f"{base}/confirm",
        "cancel_url": f"{base}/cancel",
    }


async def test_range_only_allowlist__name_resolving_outside__is_refused_when_called(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    """No name rule vouches for 'localhost': its address must be in a range, and is not."""
    c = await make_coordinator(participant_allow="10.0.0.0/8")
    await c.post("/v1/transactions", {"gid": "g"})
    status, body = await c.post("/v1/transactions/g/try", branch_on("localhost", participant))
    assert status == 502, body  # registered: its addresses could only be judged now
    error = body["participant"]["error"]
    assert "participant URL policy: localhost resolves to 127.0.0.1" in error
    assert "not on the participant allowlist" in error
    assert participant.calls == []


async def test_one_resolved_address_outside_the_ranges__refuses_the_whole_call(
    make_coordinator: MakeCoordinator,
    participant: FakeParticipant,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """mixed.test resolves to loopback (allowed) and a public address (not): no address is
    dropped to call the rest; the call is refused and the error names the outsider."""
    real_resolve = ThreadedResolver.resolve

    async def resolve(
        self: ThreadedResolver,
        host: str,
        port: int = 0,
        family: socket.AddressFamily = socket.AF_INET,
    ) -> list[ResolveResult]:
        if host != "mixed.test":
            return await real_resolve(self, host, port, family)
        return [
            ResolveResult(
                hostname=host, host=address, port=port, family=socket.AF_INET, proto=0, flags=0
            )
            for address in ("127.0.0.1", "93.184.216.34")
        ]

    monkeypatch.setattr(ThreadedResolver, "resolve", resolve)
    c = await make_coordinator(participant_allow="127.0.0.0/8")
    await c.post("/v1/transactions", {"gid": "g"})
    status, body = await c.post("/v1/transactions/g/try", branch_on("mixed.test", participant))
    assert status == 502, body
    assert "mixed.test resolves to 93.184.216.34" in body["participant"]["error"]
    assert participant.calls == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://2852039166/", "169.254.169.254 (written 2852039166) is link-local"),
        ("http://0xa9.0xfe.0xa9.0xfe/", "169.254.169.254 (written 0xa9.0xfe.0xa9.0xfe)"),
        ("http://0251.0376.0251.0376/", "169.254.169.254 (written 0251.0376.0251.0376)"),
        ("http://0/", "0.0.0.0 (written 0) is link-local or cloud metadata"),
        ("http://1.2.3.4.5/", "neither a host name nor a valid IPv4 address"),
        ("http://127.0.0.1:0/", "port 0 is not a port"),
        ("http://127.0.0.1/\r\nX-Injected: 1", "control character (CR)"),
        ("http://local\nhost/", "control character (LF)"),
        ("http://[v1.fe80::1]/", "[v1.fe80::1] is not a valid IPv6 address"),
        ("http://[::ffff:a9fe:a9fe%25%30]/", "zone id"),
    ],
)
async def test_registration__urls_that_can_already_be_judged__are_422(
    make_coordinator: MakeCoordinator, url: str, reason: str
) -> None:
    """Refused even under an allow-everything rule set, and before anything is called:
    the branch is only registered here, never tried."""
    c = await make_coordinator(participant_allow="0.0.0.0/0,::/0")
    await c.post("/v1/transactions", {"gid": "g"})
    branch = {"branch_id": "b", "confirm_url": url, "cancel_url": "http://127.0.0.1:9/x"}
    status, body = await c.post("/v1/transactions/g/branches", branch)
    assert status == 422, body
    assert "confirm_url" in str(body)
    assert reason in str(body)
