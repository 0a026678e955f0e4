"""Which participant URLs the coordinator will call: it must not be turned into a way to
reach internal services (SSRF).

``TCC_PARTICIPANT_ALLOW`` lists rules, comma-separated, each with an optional ``:port``:

- ``wallet.internal`` a host name; ``.svc.cluster.local`` a suffix (the leading dot);
- ``10.0.0.0/8``, ``127.0.0.1``, ``[fd00::]/8`` address ranges (IPv6 in brackets when a port
  follows: ``[::1]:8080``).

A URL passes when it is http or https, and its host matches a name rule (when there are any)
or is an address inside a range rule, on an allowed port. Every address it resolves to is
checked again when the call is made, so a DNS answer that changes later cannot get round
the rules: internal addresses (loopback, private, shared, reserved) must be inside a range
rule, and link-local and cloud metadata addresses are refused whatever the rules say.
With no rules, any host name passes, and only public addresses.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Refused even when a rule would allow them: cloud metadata lives here.
ALWAYS_DENIED: tuple[IpNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
    ipaddress.ip_network("0.0.0.0/8"),
    ipaddress.ip_network("::/128"),
)


class PolicyError(ValueError):
    """A participant URL or address the policy refuses; the message says why."""


@dataclass(frozen=True, slots=True)
class Rule:
    host: str | None = None  # exact host name, or a suffix starting with "."
    network: IpNetwork | None = None
    port: int | None = None  # None: any port

    def port_ok(self, port: int) -> bool:
        return self.port is None or self.port == port


def _split_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        inner, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return inner, int(port) if port else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, None  # a bare IPv6 range, or no port


def parse_rules(config: str | None) -> list[Rule]:
    rules: list[Rule] = []
    for raw in (config or "").split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        try:
            target, port = _split_port(entry)
        except ValueError as exc:
            raise PolicyError(f"participant rule {entry!r}: bad port") from exc
        if port is not None and not 0 < port < 65536:
            raise PolicyError(f"participant rule {entry!r}: port out of range")
        try:
            network = ipaddress.ip_network(target, strict=False)
        except ValueError:
            if not target or "/" in target or " " in target:
                raise PolicyError(
                    f"participant rule {entry!r} is neither a host nor a range"
                ) from None
            rules.append(Rule(host=target, port=port))
        else:
            rules.append(Rule(network=network, port=port))
    return rules


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(address: IpAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64, compatible), if any:
    judged as itself, so ::ffff:127.0.0.1 or 2002:7f00:1:: cannot reach loopback."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _is_internal(address: IpAddress) -> bool:
    return not address.is_global


class ParticipantPolicy:
    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.name_rules = [r for r in rules if r.host is not None]
        self.range_rules = [r for r in rules if r.network is not None]

    @classmethod
    def from_config(cls, config: str | None) -> ParticipantPolicy:
        return cls(parse_rules(config))

    def check_url(self, url: str) -> None:
        """Raise PolicyError unless the URL may be registered (and called)."""
        parsed = URL(url)
        if parsed.scheme not in ("http", "https"):
            raise PolicyError("only http and https participant URLs are allowed")
        host = (parsed.host or "").lower().rstrip(".")
        if not host:
            raise PolicyError("the URL names no host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            self._check_name(host, port)
        else:
            self.check_address(address, port, literal=True)

    def _check_name(self, host: str, port: int) -> None:
        if not self.name_rules:
            return  # no name rules: the addresses it resolves to decide, at call time
        for rule in self.name_rules:
            assert rule.host is not None
            matches = host == rule.host or (
                rule.host.startswith(".") and (host.endswith(rule.host) or host == rule.host[1:])
            )
            if matches and rule.port_ok(port):
                return
        raise PolicyError(f"host {host!r} on port {port} is not on the participant allowlist")

    def check_address(self, address: IpAddress, port: int, *, literal: bool = False) -> None:
        """Raise PolicyError unless the coordinator may connect to this address and port.

        ``literal``: the address was written in the URL, so no name rule vouched for it;
        once any rule is configured, it must be inside a range rule.
        """
        address = _embedded_ipv4(address) or address
        for denied in ALWAYS_DENIED:
            if address.version == denied.version and address in denied:
                raise PolicyError(
                    f"address {address} is link-local or cloud metadata: never called"
                )
        in_range = [
            r
            for r in self.range_rules
            if r.network is not None
            and address.version == r.network.version
            and address in r.network
        ]
        if any(r.port_ok(port) for r in in_range):
            return
        if in_range:
            raise PolicyError(f"port {port} is not allowed for address {address}")
        if _is_internal(address):
            raise PolicyError(f"address {address} is internal and not on the participant allowlist")
        if literal and self.rules:
            raise PolicyError(f"address {address} is not on the participant allowlist")

    def allowed_addresses(self, addresses: Iterable[str], port: int) -> list[str]:
        return [a for a in addresses if self._address_ok(a, port)]

    def _address_ok(self, address: str, port: int) -> bool:
        try:
            self.check_address(ipaddress.ip_address(address), port)
        except (PolicyError, ValueError):
            return False
        return True


class PolicyResolver(AbstractResolver):
    """DNS for participant calls: resolves, then keeps only the addresses the policy allows."""

    def __init__(self, policy: ParticipantPolicy) -> None:
        self.policy = policy
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self.policy._address_ok(r["host"], port)]
        if not allowed:
            found = ", ".join(sorted({r["host"] for r in results})) or "nothing"
            # (errno, text): aiohttp keeps only these two when it wraps the error.
            raise OSError(
                errno.EACCES, f"participant URL policy: {host} resolves to {found}, none allowed"
            )
        return allowed

    async def close(self) -> None:
        await self._inner.close()
