"""The allowlist's rules, unit by unit: names vouch for what they resolve to, ranges must
hold every resolved address, and a host is judged as the address the C library reads in it."""

from __future__ import annotations

import errno
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from coordinator.core.urlpolicy import ParticipantPolicy, PolicyError
from coordinator.outbound import PolicyResolver

RANGES_ALL = "0.0.0.0/0,::/0"


def allowed(rules: str, url: str) -> bool:
    try:
        ParticipantPolicy.from_config(rules).check_url(url)
    except PolicyError:
        return False
    return True


def refusal(rules: str, url: str) -> str:
    with pytest.raises(PolicyError) as caught:
        ParticipantPolicy.from_config(rules).check_url(url)
    return str(caught.value)


# --- registration: names --------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "url", "expected"),
    [
        # A name rule vouches for its name (and suffix), on its port.
        ("wallet.internal", "http://wallet.internal/x", True),
        ("wallet.internal", "http://WALLET.internal./x", True),
        ("wallet.internal", "http://example.com/x", False),
        ("wallet.internal", "http://evil-wallet.internal/x", False),
        (".svc.local", "http://a.b.svc.local/x", True),
        (".svc.local", "http://svc.local/x", True),
        (".svc.local", "http://svc.local.evil.com/x", False),
        (".svc.local", "http://evilsvc.local/x", False),
        ("wallet.internal:8080", "http://wallet.internal:8080/x", True),
        ("wallet.internal:8080", "http://wallet.internal:9090/x", False),
        ("wallet.internal:443", "https://wallet.internal/x", True),
        # A name no rule vouches for passes only if range rules can judge its addresses.
        ("10.0.0.0/8", "http://example.com/x", True),
        ("wallet.internal:8080,10.0.0.0/8", "http://wallet.internal:9090/x", True),
        ("wallet.internal,10.0.0.0/8", "http://example.com/x", True),
        # No rules: any name, its public addresses decide at call time.
        ("", "http://example.com/x", True),
    ],
)
def test_names_at_registration(rules: str, url: str, expected: bool) -> None:
    assert allowed(rules, url) is expected


# --- registration: address literals -----------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "url", "expected"),
    [
        ("10.0.0.0/8", "http://10.1.2.3/x", True),
        ("10.0.0.0/8", "http://8.8.8.8/x", False),  # rules: a literal must be in a range
        ("wallet.internal", "http://8.8.8.8/x", False),
        ("10.0.0.0/8:8080", "http://10.1.2.3:8080/x", True),
        ("10.0.0.0/8:8080", "http://10.1.2.3/x", False),
        ("0.0.0.0/0", "http://8.8.8.8/x", True),  # how to allow everything
        ("0.0.0.0/0", "http://10.1.2.3/x", True),
        ("0.0.0.0/0", "http://127.0.0.1:8080/x", True),
        ("0.0.0.0/0", "http://169.254.169.254/x", False),  # never, whatever the rules
        ("0.0.0.0/0", "http://169.254.1.1/x", False),
        ("0.0.0.0/0", "http://[::ffff:169.254.169.254]/x", False),
        ("0.0.0.0/0", "http://0.0.0.0/x", False),
        ("0.0.0.0/0", "http://[2001:db8::1]/x", False),  # an IPv4 range covers no IPv6
        (RANGES_ALL, "http://[2001:db8::1]/x", True),
        (RANGES_ALL, "http://[fe80::1]/x", False),
        (RANGES_ALL, "http://[fd00:ec2::254]/x", False),
        (RANGES_ALL, "http://[::]/x", False),
        ("10.0.0.0/8", "http://[::ffff:10.0.0.1]/x", True),  # judged as IPv4
        ("10.0.0.0/8", "http://[2002:a00:1::]/x", True),  # 6to4 of 10.0.0.1
        ("[fd00::]/8", "http://[fd12::1]/x", True),
        ("[fd00::]/8:8080", "http://[fd12::1]:8080/x", True),
        ("[fd00::]/8:8080", "http://[fd12::1]/x", False),
        ("", "http://8.8.8.8/x", True),  # no rules: public addresses only
        ("", "http://10.1.2.3/x", False),
    ],
)
def test_address_literals_at_registration(rules: str, url: str, expected: bool) -> None:
    assert allowed(rules, url) is expected


# --- registration: numeric host forms -----------------------------------------------------


METADATA_FORMS = [
    "2852039166",  # decimal
    "0xa9fea9fe",  # hex
    "0xa9.0xfe.0xa9.0xfe",  # hex parts
    "0251.0376.0251.0376",  # octal parts
    "0251.0xfe.169.0376",  # mixed
    "169.254.43518",  # a.b.c: the last part fills two bytes
    "169.16689662",  # a.b
    "00000251.254.169.254",  # leading zeros are octal
]


@pytest.mark.parametrize("rules", ["", "0.0.0.0/0", "wallet.internal,10.0.0.0/8"])
@pytest.mark.parametrize("host", METADATA_FORMS)
def test_numeric_forms_of_metadata__are_refused_as_that_address(rules: str, host: str) -> None:
    assert socket.inet_aton(host) == socket.inet_aton("169.254.169.254")  # what libc reads
    message = refusal(rules, f"http://{host}/latest/meta-data")
    assert "169.254.169.254" in message
    assert "link-local or cloud metadata" in message


@pytest.mark.parametrize("host", ["0", "0x0", "00", "0.0", "123"])
def test_numeric_forms_of_this_network__are_refused(host: str) -> None:
    assert "never called" in refusal(RANGES_ALL, f"http://{host}/x")


@pytest.mark.parametrize(
    ("rules", "host", "expected"),
    [
        ("127.0.0.0/8", "127.1", True),
        ("127.0.0.0/8", "2130706433", True),
        ("127.0.0.0/8", "0x7f000001", True),
        ("127.0.0.0/8", "0177.0.0.1", True),
        ("127.0.0.0/8", "127.000.000.001", True),
        ("127.0.0.1:8080", "127.1", False),  # judged as 127.0.0.1 on port 80
        ("10.0.0.0/8", "127.1", False),
        ("", "127.1", False),  # internal, no range rule
        ("", "134744072", True),  # 8.8.8.8, public
        ("10.0.0.0/8", "134744072", False),
    ],
)
def test_numeric_forms__are_judged_as_the_address(rules: str, host: str, expected: bool) -> None:
    assert allowed(rules, f"http://{host}/x") is expected


@pytest.mark.parametrize(
    "host",
    ["1.2.3.4.5", "256.1.1.1", "1.2.3.256", "1.256.65535", "4294967296", "0x100000000",
     "08", "0.09", "0x", "0x7f.0x", "99999999999999999999", "1.0x1000000"],
)  # fmt: skip
def test_numbers_that_are_not_addresses__are_refused_as_malformed(host: str) -> None:
    with pytest.raises(OSError, match="illegal IP address"):
        socket.inet_aton(host)  # not an address to libc either
    assert "nor a valid IPv4 address" in refusal(RANGES_ALL, f"http://{host}/x")


def test_hex_looking_names__stay_names() -> None:
    assert allowed("", "http://dead.beef/x")
    assert allowed("", "http://cafe.0x.example/x")


# --- registration: form ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://[v1.fe80::1]/x", "[v1.fe80::1] is not a valid IPv6 address"),
        ("http://[::ffff:a9fe:a9fe%25%30]/x", "zone id"),
        ("http://[fe80::1%25eth0]/x", "zone id"),
        ("http://[::1%25lo]:8080/x", "zone id"),
        ("http://exa\r\nmple.com/x", "control character (CR)"),
        ("http://example.com/x\n", "control character (LF)"),
        ("http://example.com/\tx", "control character (TAB)"),
        ("http://example.com/x\x00", "control character (U+0000)"),
        ("http://example.com/x\x7f", "control character (U+007F)"),
        ("http://example.com/x\x85", "control character (U+0085)"),
        (" http://example.com/x", "whitespace"),
        ("http://example.com/x ", "whitespace"),
        ("http://example.com:0/x", "port 0 is not a port"),
        ("http://127.0.0.1:0/x", "port 0 is not a port"),
        ("http://[::1]:0/x", "port 0 is not a port"),
        ("http://example.com:00/x", "port 0 is not a port"),
        ("http://exa%2emple.com/x", "characters a host name cannot have"),
        ("http://user:secret@example.com/x", "credentials"),
        ("ftp://example.com/x", "only http and https"),
        ("http:///x", "no host"),
    ],
)
def test_malformed_urls__are_refused_whatever_the_rules(url: str, reason: str) -> None:
    assert reason in refusal(f"example.com,{RANGES_ALL}", url)
    assert reason in refusal("", url)


# --- call time: every resolved address -------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "host", "port", "addresses", "refused"),
    [
        # A vouched name: only link-local and metadata are refused.
        ("wallet.internal", "wallet.internal", 80, ["10.0.0.1", "127.0.0.1", "8.8.8.8"], None),
        ("wallet.internal", "WALLET.internal.", 80, ["10.0.0.1"], None),
        ("wallet.internal", "wallet.internal", 80, ["10.0.0.1", "169.254.169.254"],
         "169.254.169.254"),
        ("wallet.internal", "wallet.internal", 80, ["::ffff:a9fe:a9fe"], "::ffff:a9fe:a9fe"),
        ("wallet.internal", "wallet.internal", 80, ["fe80::1%eth0"], "fe80::1%eth0"),
        (".svc.local", "a.svc.local", 80, ["10.0.0.1"], None),
        # Not vouched (no name rule, or not on this port): every address in a range.
        ("10.0.0.0/8", "example.com", 80, ["10.0.0.1", "10.9.9.9"], None),
        ("10.0.0.0/8", "example.com", 80, ["10.0.0.1", "93.184.216.34"], "93.184.216.34"),
        ("10.0.0.0/8", "example.com", 80, ["93.184.216.34"], "93.184.216.34"),
        ("10.0.0.0/8", "localhost", 80, ["127.0.0.1"], "127.0.0.1"),
        ("10.0.0.0/8:8080", "example.com", 80, ["10.0.0.1"], "port 80 is not allowed"),
        ("wallet.internal:443,10.0.0.0/8", "wallet.internal", 80, ["8.8.8.8"], "8.8.8.8"),
        ("wallet.internal", "example.com", 80, ["93.184.216.34"], "93.184.216.34"),
        ("0.0.0.0/0", "example.com", 80, ["8.8.8.8", "10.0.0.1"], None),
        ("0.0.0.0/0", "example.com", 80, ["8.8.8.8", "169.254.169.254"], "169.254.169.254"),
        ("0.0.0.0/0", "example.com", 80, ["8.8.8.8", "2001:4860::8888"], "2001:4860::8888"),
        # No rules: public addresses only, all of them.
        ("", "example.com", 80, ["93.184.216.34"], None),
        ("", "example.com", 80, ["93.184.216.34", "127.0.0.1"], "127.0.0.1"),
        ("", "example.com", 80, ["10.0.0.1"], "10.0.0.1"),
        ("", "example.com", 80, ["not-an-address"], "not an address"),
        ("", "example.com", 80, [], "resolves to nothing"),
    ],
)  # fmt: skip
def test_call_time__every_resolved_address_is_judged(
    rules: str, host: str, port: int, addresses: list[str], refused: str | None
) -> None:
    policy = ParticipantPolicy.from_config(rules)
    if refused is None:
        policy.check_resolved(host, port, addresses)
        return
    with pytest.raises(PolicyError) as caught:
        policy.check_resolved(host, port, addresses)
    assert refused in str(caught.value)
    assert str(caught.value).startswith(f"{host} resolves to")


class FixedResolver(AbstractResolver):
    """Answers every name with the same addresses: DNS without a network."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_resolver__one_address_outside_the_ranges__refuses_the_call() -> None:
    policy = ParticipantPolicy.from_config("127.0.0.0/8")
    resolver = PolicyResolver(policy, FixedResolver("127.0.0.1", "93.184.216.34"))
    with pytest.raises(OSError, match="participant URL policy") as caught:
        await resolver.resolve("mixed.test", 80)
    assert caught.value.errno == errno.EACCES
    assert "mixed.test resolves to 93.184.216.34" in str(caught.value)


async def test_resolver__all_addresses_allowed__returns_them_all() -> None:
    policy = ParticipantPolicy.from_config("127.0.0.0/8,::1")
    resolver = PolicyResolver(policy, FixedResolver("127.0.0.1", "127.0.0.2", "::1"))
    found = await resolver.resolve("local.test", 80)
    assert [r["host"] for r in found] == ["127.0.0.1", "127.0.0.2", "::1"]


async def test_resolver__vouched_name__may_resolve_to_internal_addresses() -> None:
    policy = ParticipantPolicy.from_config("wallet.internal:8080")
    resolver = PolicyResolver(policy, FixedResolver("10.1.2.3"))
    assert [r["host"] for r in await resolver.resolve("wallet.internal", 8080)] == ["10.1.2.3"]
    with pytest.raises(OSError, match=r"10\.1\.2\.3"):
        await resolver.resolve("wallet.internal", 9090)  # the rule's port only


# --- rules and the start-up warning -----------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    ["localhost:0", "*", "wallet internal", "[::1", "[fd00::]x", "127.1", "0x7f000001",
     "fe80::1%eth0", "exa%2emple.com"],
)  # fmt: skip
def test_bad_rules__are_refused(rule: str) -> None:
    with pytest.raises(PolicyError):
        ParticipantPolicy.from_config(rule)


def test_bracketed_ipv6_range_with_a_port__keeps_its_prefix() -> None:
    [rule] = ParticipantPolicy.from_config("[fd00::]/8:8443").rules
    assert (str(rule.network), rule.port) == ("fd00::/8", 8443)


def test_open_policy__says_so_for_the_startup_log() -> None:
    open_policy = ParticipantPolicy.from_config("  ")
    assert open_policy.is_open
    assert open_policy.startup_warning is not None
    assert "TCC_PARTICIPANT_ALLOW" in open_policy.startup_warning
    assert "\n" not in open_policy.startup_warning
    closed = ParticipantPolicy.from_config("10.0.0.0/8")
    assert not closed.is_open
    assert closed.startup_warning is None
