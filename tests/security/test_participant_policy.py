"""The participant URL policy: at registration, and again at call time after DNS."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

import pytest

from coordinator.core.urlpolicy import ParticipantPolicy, PolicyError
from tests.conftest import CoordinatorClient
from tests.helpers import eventually
from tests.participant_server import FakeParticipant

MakeCoordinator = Callable[..., Awaitable[CoordinatorClient]]


@pytest.mark.parametrize(
    ("rules", "url", "allowed"),
    [
        ("", "https://payments.example.com/confirm", True),
        ("", "http://127.0.0.1:8080/x", False),  # internal addresses need a range rule
        ("", "http://10.1.2.3/x", False),
        ("", "http://169.254.169.254/latest/meta-data", False),
        ("169.254.0.0/16", "http://169.254.169.254/x", False),  # never, whatever the rules
        ("", "http://[fd00:ec2::254]/x", False),
        ("", "ftp://example.com/x", False),
        ("127.0.0.0/8", "http://127.0.0.1:8080/x", True),
        ("127.0.0.1:8080", "http://127.0.0.1:9090/x", False),
        ("127.0.0.1:8080", "http://127.0.0.1:8080/x", True),
        ("wallet.internal", "http://wallet.internal/x", True),
        ("wallet.internal", "http://evil.example.com/x", False),
        (".svc.local", "http://inventory.svc.local/x", True),
        (".svc.local", "http://svc.local.evil.com/x", False),
        (".svc.local:443", "https://inventory.svc.local/x", True),
        (".svc.local:443", "http://inventory.svc.local/x", False),
        ("[::1]:8080", "http://[::1]:8080/x", True),
        ("10.0.0.0/8", "http://[::ffff:10.0.0.1]/x", True),
        ("", "http://[::ffff:169.254.169.254]/x", False),
        ("", "http://8.8.8.8/x", True),  # no rules: public addresses are fine
        (".svc.local:8080", "http://8.8.8.8:8080/x", False),  # rules: a literal must be ranged
        ("wallet.example.com,10.0.0.0/8", "http://8.8.8.8/x", False),
        ("", "http://[2002:7f00:1::]/x", False),  # 6to4 wrapping loopback
        ("", "http://[64:ff9b::7f00:1]/x", False),  # NAT64 wrapping loopback
        ("", "http://[::7f00:1]/x", False),  # IPv4-compatible loopback
    ],
)
def test_check_url(rules: str, url: str, allowed: bool) -> None:
    policy = ParticipantPolicy.from_config(rules)
    if allowed:
        policy.check_url(url)
    else:
        with pytest.raises(PolicyError):
            policy.check_url(url)


@pytest.mark.parametrize("rule", ["a b", "10.0.0.0/8:99999", "host:port", "/8"])
def test_bad_rules__are_refused(rule: str) -> None:
    with pytest.raises(PolicyError):
        ParticipantPolicy.from_config(rule)


def test_resolved_addresses__a_name_rule_vouches_only_for_its_own_name() -> None:
    policy = ParticipantPolicy.from_config("localhost")
    policy.check_resolved("localhost", 80, ["127.0.0.1", "::1"])  # vouched for
    with pytest.raises(PolicyError, match="public and not on the participant allowlist"):
        policy.check_resolved("example.com", 80, ["93.184.216.34"])  # no rule covers it
    with pytest.raises(PolicyError, match="not on the participant allowlist"):
        policy.check_address(ipaddress.ip_address("93.184.216.34"), 80)


async def test_registration__refused_url__is_422_with_the_reason(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    c = await make_coordinator(participant_allow="10.0.0.0/8")
    await c.post("/v1/transactions", {"gid": "p"})
    status, body = await c.post("/v1/transactions/p/try", participant.branch("b"))
    assert status == 422
    assert "try_url" in body["detail"]
    assert "127.0.0.1 is internal and not on the participant allowlist" in body["detail"]
    assert participant.calls == []


async def test_hostname_resolving_to_loopback__called_when_a_name_rule_vouches_for_it(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    """A name rule vouches for what the name resolves to (link-local and metadata aside);
    a name no rule vouches for must resolve inside a range rule."""
    branch = {
        "branch_id": "b",
        "try_url": f"http://localhost:{participant.port}/svc/try",
        "confirm_url": f"http://localhost:{participant.port}/svc/confirm",
        "cancel_url": f"http://localhost:{participant.port}/svc/cancel",
    }
    refused = await make_coordinator(participant_allow="wallet.internal,10.0.0.0/8")
    await refused.post("/v1/transactions", {"gid": "r"})
    status, body = await refused.post("/v1/transactions/r/try", branch)
    assert status == 502
    assert "participant URL policy" in body["participant"]["error"]
    assert participant.calls == []

    vouched = await make_coordinator(participant_allow="localhost")
    await vouched.post("/v1/transactions", {"gid": "a"})
    status, body = await vouched.post("/v1/transactions/a/try", branch)
    assert (status, body["verdict"]) == (200, "tried")
    assert len(participant.calls) == 1


async def test_policy_tightened_after_registration__call_time_check_still_refuses(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    loose = await make_coordinator()
    await loose.post("/v1/transactions", {"gid": "t"})
    await loose.post("/v1/transactions/t/branches", participant.branch("b", with_try=False))
    strict = await make_coordinator(participant_allow="10.0.0.0/8", confirm_wait_s=0)
    status, _ = await strict.post("/v1/transactions/t/confirm")
    assert status == 202
    final = await eventually(
        lambda: strict.get("/v1/transactions/t"),
        lambda r: "refused by policy" in (r[1]["branches"][0]["last_error"] or ""),
    )
    assert final[1]["status"] == "confirming"
    assert participant.calls == []
