"""Which participant URLs the coordinator will call: it must not be turned into a way to
reach internal services (SSRF).

``TCC_PARTICIPANT_ALLOW`` lists rules, comma-separated, each with an optional ``:port``:

- ``wallet.internal`` a host name; ``.svc.cluster.local`` a suffix (the leading dot);
- ``10.0.0.0/8``, ``127.0.0.1``, ``[fd00::]/8`` address ranges (IPv6 in brackets when a port
  follows: ``[::1]:8080``); ``0.0.0.0/0,::/0`` allows every address.

Once any rule is configured, a URL is called only if

- its host is a name matching a name rule (on that rule's port): the operator vouched for the
  name, so the addresses it resolves to only have to avoid link-local and cloud metadata; or
- every address its host resolves to (or the address written in it) falls in a range rule,
  on that rule's port. One address outside is enough to refuse the call.

With no rules, any host name passes and only public addresses are called.
Link-local and cloud-metadata addresses (``ALWAYS_DENIED``) are refused whatever the rules
say. An IPv4 address inside an IPv6 one (mapped, 6to4, NAT64, compatible) is judged as IPv4.

``check_url`` judges what can be judged before DNS (at registration, and again before each
call); ``coordinator.outbound.PolicyResolver`` judges the addresses when the call is made, so
a DNS answer that changes after registration cannot get round the rules.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

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

OPEN_POLICY_WARNING = (
    "TCC_PARTICIPANT_ALLOW is empty: any host name is accepted and every public address it"
    " resolves to is called; list your participants' names or ranges"
)

# A host name after IDNA encoding: letters, digits, "-" and "_" in non-empty labels.
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
# What inet_aton reads as one part of an IPv4 number: decimal, octal (leading 0) or hex.
_NUMBER_PART = re.compile(r"[0-9]+|0x[0-9a-f]*")
_CONTROL_NAMES = {"\r": "CR", "\n": "LF", "\t": "TAB"}


class PolicyError(ValueError):
    """A participant URL or address the policy refuses; the message says why."""


# --- rules ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    host: str | None = None  # exact host name, or a suffix starting with "."
    network: IpNetwork | None = None
    port: int | None = None  # None: any port

    def port_ok(self, port: int) -> bool:
        return self.port is None or self.port == port

    def matches_name(self, host: str, port: int) -> bool:
        if self.host is None or not self.port_ok(port):
            return False
        if self.host.startswith("."):
            return host.endswith(self.host) or host == self.host[1:]
        return host == self.host

    def covers(self, address: IpAddress) -> bool:
        return (
            self.network is not None
            and address.version == self.network.version
            and address in self.network
        )


def _split_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        prefix, colon, port = rest.partition(":")  # "[fd00::]/8:443"
        if not bracket or (prefix and not prefix.startswith("/")):
            raise ValueError(text)
        return inner + prefix, int(port) if colon else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, None  # a bare IPv6 range, or no port


def parse_rules(config: str | None) -> list[Rule]:
    rules: list[Rule] = []
    for raw in (config or "").split(","):
        entry = raw.strip().lower()
        if entry:
            rules.append(parse_rule(entry))
    return rules


def parse_rule(entry: str) -> Rule:
    """One lower-case rule: a host, a .suffix or a range, with an optional :port."""
    try:
        target, port = _split_port(entry)
    except ValueError as exc:
        raise PolicyError(f"participant rule {entry!r}: bad port") from exc
    if "%" in target:
        raise PolicyError(f"participant rule {entry!r}: a zone id has no place in a rule")
    if port is not None and not 0 < port < 65536:
        raise PolicyError(f"participant rule {entry!r}: port out of range")
    try:
        return Rule(network=ipaddress.ip_network(target, strict=False), port=port)
    except ValueError:
        pass
    name = target.rstrip(".")
    if not _HOST_NAME.fullmatch(name.removeprefix(".")):
        raise PolicyError(f"participant rule {entry!r} is neither a host nor a range")
    if _is_numeric_host(name):
        # Such a host is judged as the address it encodes, never as a name.
        raise PolicyError(f"participant rule {entry!r}: write an address in dotted decimal")
    return Rule(host=name, port=port)


# --- what a URL names ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A participant URL's host and port, as they will be connected to."""

    host: str  # lower case, IDNA-encoded, no trailing dot, no brackets
    port: int
    address: IpAddress | None  # set when the host is an address, in any notation


@functools.lru_cache(maxsize=4096)  # participant URLs repeat on every transaction
def parse_target(url: str) -> Target:
    """The URL's host and port, or PolicyError for what no rule can make callable."""
    _refuse_hidden_characters(url)
    try:
        parsed = URL(url)
    except ValueError as exc:
        raise PolicyError(f"not a URL: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise PolicyError("only http and https participant URLs are allowed")
    if parsed.user is not None or parsed.password is not None:
        raise PolicyError("the URL must not carry credentials")
    host = (parsed.raw_host or "").lower().rstrip(".")
    if not host:
        raise PolicyError("the URL names no host")
    if parsed.explicit_port == 0:
        raise PolicyError("port 0 is not a port")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    address = _host_address(host)
    if address is not None:
        _refuse_always_denied(address, written=host)
    return Target(host=host, port=port, address=address)


def check_url_form(url: str) -> None:
    """Raise PolicyError for a URL no allowlist could make callable (the rules aside)."""
    parse_target(url)


def _refuse_hidden_characters(url: str) -> None:
    # The URL parser strips these silently, so what would be called differs from what is stored.
    for char in url:
        if unicodedata.category(char) == "Cc":
            name = _CONTROL_NAMES.get(char, f"U+{ord(char):04X}")
            raise PolicyError(f"the URL contains a control character ({name})")
    if url != url.strip():
        raise PolicyError("the URL starts or ends with whitespace")


def _host_address(host: str) -> IpAddress | None:
    """The address a host denotes (None for a name); PolicyError for a malformed host."""
    if ":" in host:  # only a bracketed IPv6 literal can hold a colon
        return _ipv6_literal(host)
    if _is_numeric_host(host):
        return _ipv4_number(host)
    if not _HOST_NAME.fullmatch(host):
        raise PolicyError(f"host {host!r} has characters a host name cannot have")
    return None


def _ipv6_literal(host: str) -> ipaddress.IPv6Address:
    if "%" in host:
        raise PolicyError(f"[{host}]: a zone id has no place in a participant URL")
    try:
        return ipaddress.IPv6Address(host)
    except ValueError:
        raise PolicyError(f"[{host}] is not a valid IPv6 address") from None


def _is_numeric_host(host: str) -> bool:
    """Whether the C library would read the host as an IPv4 number, not look it up."""
    return all(_NUMBER_PART.fullmatch(part) for part in host.split("."))


def _ipv4_number(host: str) -> ipaddress.IPv4Address:
    """The address inet_aton reads: ``a.b.c.d``, ``a.b.c``, ``a.b`` or ``a``, each part
    decimal, octal or hex, the last one filling the remaining bytes (``127.1``,
    ``2852039166``, ``0xa9.0xfe.0xa9.0xfe``)."""
    parts = [_number_part(part) for part in host.split(".")]
    numbers = [n for n in parts if n is not None]
    if len(numbers) != len(parts) or len(numbers) > 4:
        raise _malformed(host)
    *leading, last = numbers
    if any(n > 0xFF for n in leading) or last >= 1 << (8 * (4 - len(leading))):
        raise _malformed(host)
    return ipaddress.IPv4Address(sum(n << (24 - 8 * i) for i, n in enumerate(leading)) + last)


def _number_part(part: str) -> int | None:
    if part.startswith("0x"):
        return int(part[2:], 16) if len(part) > 2 else None  # inet_aton refuses a bare "0x"
    if part.startswith("0"):
        return None if set(part) & {"8", "9"} else int(part, 8)
    return int(part) if len(part) <= 10 else None  # longer cannot fit 32 bits anyway


def _malformed(host: str) -> PolicyError:
    return PolicyError(f"host {host!r} is neither a host name nor a valid IPv4 address")


# --- addresses --------------------------------------------------------------------------


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


def _judged_as(address: IpAddress) -> IpAddress:
    return _embedded_ipv4(address) or address


def _refuse_always_denied(address: IpAddress, *, written: str | None = None) -> None:
    address = _judged_as(address)
    if any(address.version == d.version and address in d for d in ALWAYS_DENIED):
        shown = (
            str(address) if written in (None, str(address)) else f"{address} (written {written})"
        )
        raise PolicyError(f"address {shown} is link-local or cloud metadata: never called")


def _parse_resolved(address: str) -> IpAddress:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        raise PolicyError(f"{address!r} is not an address") from None


# --- the policy ----------------------------------------------------------------------------


_UNJUDGED = "unjudged"
_REMEMBERED_VERDICTS = 10_000


class ParticipantPolicy:
    def __init__(self, rules: list[Rule]) -> None:
        self._verdicts: dict[str, str | None] = {}
        self.rules = rules
        self.name_rules = [r for r in rules if r.host is not None]
        self.range_rules = [r for r in rules if r.network is not None]

    @classmethod
    def from_config(cls, config: str | None) -> ParticipantPolicy:
        return cls(parse_rules(config))

    @property
    def is_open(self) -> bool:
        """No rules: any public address may be called (worth a warning at start-up)."""
        return not self.rules

    @property
    def startup_warning(self) -> str | None:
        """One line for the start-up log when the policy is open, else None."""
        return OPEN_POLICY_WARNING if self.is_open else None

    def check_url(self, url: str) -> None:
        """Raise PolicyError unless the URL may be registered; what its host name resolves
        to is judged when the call is made (coordinator.outbound.PolicyResolver).

        The rules do not change while the process runs and every call checks its URL
        again, so verdicts are remembered (a bounded number of them)."""
        verdict = self._verdicts.get(url, _UNJUDGED)
        if verdict is _UNJUDGED:
            try:
                self._judge_url(url)
                verdict = None
            except PolicyError as exc:
                verdict = str(exc)
            if len(self._verdicts) >= _REMEMBERED_VERDICTS:
                self._verdicts.clear()
            self._verdicts[url] = verdict
        if verdict is not None:
            raise PolicyError(verdict)

    def _judge_url(self, url: str) -> None:
        target = parse_target(url)
        if target.address is not None:
            self.check_address(target.address, target.port)
        elif not self._name_may_resolve_later(target.host, target.port):
            raise PolicyError(
                f"host {target.host!r} on port {target.port} is not on the participant allowlist"
            )

    def _name_may_resolve_later(self, host: str, port: int) -> bool:
        # Without rules only public addresses are called; with range rules, the addresses
        # decide; with name rules only, the name has to match one.
        return self.is_open or bool(self.range_rules) or self.vouches_for(host, port)

    def vouches_for(self, host: str, port: int) -> bool:
        """Whether a name rule covers this host name and port."""
        host = host.lower().rstrip(".")
        return any(rule.matches_name(host, port) for rule in self.name_rules)

    def check_address(self, address: IpAddress, port: int) -> None:
        """Raise PolicyError unless an address no name rule vouched for may be called:
        inside a range rule once any rule is configured, public when there are none."""
        _refuse_always_denied(address)
        address = _judged_as(address)
        if self.is_open:
            if not address.is_global:
                raise PolicyError(
                    f"address {address} is internal and not on the participant allowlist"
                )
            return
        in_range = [r for r in self.range_rules if r.covers(address)]
        if any(r.port_ok(port) for r in in_range):
            return
        if in_range:
            raise PolicyError(f"port {port} is not allowed for address {address}")
        kind = "public" if address.is_global else "internal"
        raise PolicyError(f"address {address} is {kind} and not on the participant allowlist")

    def check_resolved(self, host: str, port: int, addresses: Iterable[str]) -> None:
        """Raise PolicyError unless every address the host resolved to may be called."""
        found = list(addresses)
        if not found:
            raise PolicyError(f"{host} resolves to nothing")
        vouched = self.vouches_for(host, port)
        for text in found:
            try:
                address = _parse_resolved(text)
                if vouched:
                    _refuse_always_denied(address)
                else:
                    self.check_address(address, port)
            except PolicyError as exc:
                raise PolicyError(f"{host} resolves to {text}: {exc}") from None
