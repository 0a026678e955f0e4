"""Who the client is behind a gateway: reading ``Forwarded`` (RFC 7239) and ``X-Forwarded-*``
from the proxies we trust (TCC_TRUSTED_PROXIES), and from no one else.

Anyone can send these headers, so only the entries our own proxies added are believed: the
chain of addresses (``X-Forwarded-For: client, proxy1, proxy2`` plus the peer of the
connection) is walked from the right, and the first address that is not a trusted proxy is the
client. What the nearest trusted proxy says of the scheme, host and path prefix the client
used is taken as it says it. (aiohttp-remotes' middlewares were considered: they want the
exact number of hops, or believe the last one whatever it is, where a gateway in front of a
fleet wants "any of these networks".)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_TOKEN = re.compile(r'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*')
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~!$&'()*+=:@-]+)+$")


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What a request looks like from the client's side of the gateway."""

    client: str  # the client's address
    scheme: str | None = None  # http or https, as the client used
    host: str | None = None  # the Host the client asked for
    prefix: str = ""  # the path prefix the gateway serves us under ("/tcc"), or ""


def parse_trusted(config: str | None) -> tuple[IpNetwork, ...]:
    """``10.0.0.0/8, 192.168.1.7``; raises ValueError naming a bad entry."""
    networks = []
    for raw in (config or "").split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ValueError(f"trusted proxy {entry[:60]!r} is not an address or range") from exc
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from a chain entry: ``203.0.113.7``, ``[2001:db8::1]:4711``, ``"..."``."""
    value = text.strip().strip('"')
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def is_trusted(address: str | None, trusted: tuple[IpNetwork, ...]) -> bool:
    found = _address(address) if address else None
    return found is not None and any(found in network for network in trusted)


def _last(value: str | None) -> str | None:
    if not value:
        return None
    return value.split(",")[-1].strip() or None


def _forwarded_elements(value: str) -> list[dict[str, str]]:
    """The elements of a ``Forwarded`` header, each as lowercase parameter -> value."""
    elements = []
    for element in value.split(","):
        pairs: dict[str, str] = {}
        for part in element.split(";"):
            found = _TOKEN.fullmatch(part)
            if found:
                pairs[found[1].lower()] = found[2].strip('"')
        elements.append(pairs)
    return elements


def resolve(
    peer: str | None, headers: Mapping[str, str], trusted: tuple[IpNetwork, ...]
) -> Forwarded | None:
    """The client's side of a request whose connection came from ``peer``; None when the
    peer is not a trusted proxy (its headers are then ignored entirely)."""
    if not trusted or not is_trusted(peer, trusted):
        return None
    assert peer is not None
    forwarded = headers.get("Forwarded")
    if forwarded:
        elements = _forwarded_elements(forwarded)
        chain = [e.get("for", "") for e in elements]
        nearest = elements[-1] if elements else {}
        scheme, host, prefix = nearest.get("proto"), nearest.get("host"), None
    else:
        chain = [a for a in (headers.get("X-Forwarded-For") or "").split(",") if a.strip()]
        scheme = _last(headers.get("X-Forwarded-Proto"))
        host = _last(headers.get("X-Forwarded-Host"))
        prefix = _last(headers.get("X-Forwarded-Prefix"))
    client = peer
    for entry in reversed(chain):
        address = _address(entry)
        if address is None:
            break  # an obfuscated or unknown hop: the last address we could read stands
        client = str(address)
        if not any(address in network for network in trusted):
            break
    return Forwarded(
        client=client,
        scheme=scheme.lower() if scheme and scheme.lower() in ("http", "https") else None,
        host=host or None,
        prefix=prefix.rstrip("/") if prefix and _is_clean(prefix.rstrip("/")) else "",
    )


def _is_clean(prefix: str) -> bool:
    """A path of plain segments: no query, no "." or ".." (which would climb out of it)."""
    return bool(_PREFIX.match(prefix)) and not any(
        part in (".", "..") for part in prefix.split("/")
    )


def clean_prefix(value: str | None) -> str:
    """A configured path prefix (TCC_PATH_PREFIX) as the code uses it: ``/tcc`` or ``""``;
    raises ValueError for anything else."""
    if not value or value == "/":
        return ""
    prefix = value.rstrip("/")
    if not _is_clean(prefix):
        raise ValueError(f"path prefix {value[:60]!r} must look like /tcc (a path, no query)")
    return prefix
