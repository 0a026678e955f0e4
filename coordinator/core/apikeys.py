"""API keys: who is calling, and what they may touch.

Keys are configured hashed (``TCC_API_KEYS="shop:service:<sha256 hex>,ops:admin:<sha256 hex>"``;
``tcc key-hash`` prints an entry). A ``service`` key begins transactions that then belong to
that service and can only be seen and moved by it; a ``viewer`` key may look at every
transaction and change nothing (the console's read-only users); an ``admin`` key may do
everything.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from enum import StrEnum

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")


class Scope(StrEnum):
    SERVICE = "service"
    VIEWER = "viewer"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request."""

    name: str | None  # the service name; None when running --insecure
    scope: Scope

    @property
    def is_admin(self) -> bool:
        return self.scope is Scope.ADMIN

    @property
    def reads_everything(self) -> bool:
        """Admins and viewers see every transaction; a service only its own."""
        return self.scope in (Scope.ADMIN, Scope.VIEWER)

    @property
    def may_write(self) -> bool:
        return self.scope is not Scope.VIEWER

    def may_see(self, owner: str | None) -> bool:
        return self.reads_everything or (owner is not None and owner == self.name)

    @property
    def gid_namespace(self) -> str | None:
        """The prefix a service's gids carry when gids are namespaced: its name and a colon.
        (Key names cannot contain a colon, so no service's namespace contains another's.)"""
        return f"{self.name}:" if self.scope is Scope.SERVICE and self.name else None


INSECURE = Principal(None, Scope.ADMIN)


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    scope: Scope
    sha256: bytes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_keys(config: str) -> list[ApiKey]:
    """``name:scope:sha256hex`` entries separated by commas or new lines."""
    keys: list[ApiKey] = []
    for raw in re.split(r"[,\n]", config):
        entry = raw.strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3:
            raise ValueError(f"API key entry {entry[:20]!r}... must be name:scope:sha256hex")
        name, scope, digest = parts
        if not _NAME.match(name):
            raise ValueError(f"API key name {name!r} must be 1-200 of A-Z a-z 0-9 . _ : -")
        if scope not in Scope.__members__.values():
            raise ValueError(f"API key scope {scope!r} must be 'service', 'viewer' or 'admin'")
        if not _HEX64.match(digest.lower()):
            raise ValueError(f"API key for {name!r}: give the SHA-256 of the key, in hex")
        keys.append(ApiKey(name, Scope(scope), bytes.fromhex(digest)))
    return keys


class KeyRing:
    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    def identify(self, presented: str) -> Principal | None:
        """The key's owner, or None. Compares against every key in constant time."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: ApiKey | None = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.sha256) and found is None:
                found = key
        return Principal(found.name, found.scope) if found else None


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
