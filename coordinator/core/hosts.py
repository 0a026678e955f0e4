"""Which ``Host`` names a coordinator answers to (TCC_ALLOWED_HOSTS).

A coordinator without keys (local development) must not be reachable from a web page by DNS
rebinding: a page on ``attacker.example`` whose name the attacker then points at 127.0.0.1
is same-origin with whatever listens there, so its script could read and decide every
transaction. Such a request still names the attacker's host in ``Host``, so answering only
names we know defeats it. Always known: ``localhost`` and its subdomains (browsers resolve
those to loopback themselves, never through DNS) and any IP address literal (a page cannot
rebind a name it does not use). Anything else must be configured.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_-]{1,63})*$")


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header (or a configured entry) as a lowercase name or address and its port;
    None when it is not one."""
    text = value.strip().lower().rstrip(".")
    port: int | None = None
    if text.startswith("["):
        address, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        host, port_text = address, rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        port = int(port_text)
    if _is_address(host) or _NAME.match(host):
        return host, port
    return None


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_local_name(host: str) -> bool:
    """Names no DNS answer can point elsewhere: localhost, its subdomains, IP literals."""
    return host == "localhost" or host.endswith(".localhost") or _is_address(host)


@dataclass(frozen=True, slots=True)
class AllowedHosts:
    """Configured names, each with the port it must come with (None: any port)."""

    entries: frozenset[tuple[str, int | None]] = frozenset()

    def permits(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        found = split_host(host_header)
        if found is None:
            return False
        host, port = found
        if is_local_name(host):
            return True
        return (host, None) in self.entries or (host, port) in self.entries


def parse_allowed_hosts(config: str | None) -> AllowedHosts:
    """``tcc.example.com, console.internal:8080``; raises ValueError naming a bad entry."""
    entries: set[tuple[str, int | None]] = set()
    for raw in (config or "").split(","):
        if not raw.strip():
            continue
        found = split_host(raw)
        if found is None:
            raise ValueError(f"allowed host {raw.strip()[:100]!r} is not a host name[:port]")
        entries.add(found)
    return AllowedHosts(frozenset(entries))
