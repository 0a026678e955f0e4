"""Console sessions: a signed cookie that names a configured key, never carries one.

The cookie holds the key's name and scope, a fingerprint of the key's hash, when it expires
and a random session id, signed with HMAC-SHA256. Reading it proves who logged in, and each
request checks again that a key of that name, scope and hash is still configured. Whether the
login still stands is the log's to say (coordinator/engine/consoles.py keeps each session by
the SHA-256 of its id): a logout, `tcc sessions revoke` or a key's removal ends it on every
coordinator. The CSRF token is an HMAC of the whole cookie, so it belongs to one login and
changes with the next.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from coordinator.core.apikeys import ApiKey, KeyRing, Principal, Scope

COOKIE_NAME = "tcc_session"
CSRF_HEADER = "X-CSRF-Token"
CONSOLE_SCOPES = frozenset({Scope.ADMIN, Scope.VIEWER})

_DERIVATION_LABEL = b"tcc-console-session-v1"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def session_secret(configured: str | None, api_keys: str | None) -> bytes:
    """The signing secret: the configured one, or one derived from the key configuration
    (which every process of a deployment shares; changing the keys logs everyone out)."""
    material = configured if configured else f"derived:{api_keys or ''}"
    return hmac.new(_DERIVATION_LABEL, material.encode(), hashlib.sha256).digest()


def key_digest(key: ApiKey) -> str:
    """Which configured key opened a session, as the log keeps it: a digest of the key's
    hash (not the hash itself), the same in every process whatever the signing secret."""
    return hashlib.sha256(_DERIVATION_LABEL + b"\x00key\x00" + key.sha256).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Session:
    name: str
    scope: Scope
    expires_at: float  # seconds since the epoch
    key_fingerprint: str
    session_id: str  # random; the log keeps only its digest

    @property
    def principal(self) -> Principal:
        return Principal(self.name, self.scope)

    @property
    def stored_id(self) -> str:
        """The session's id in the log: the SHA-256 of the cookie's random id."""
        return hashlib.sha256(self.session_id.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Issued:
    cookie: str
    session: Session


class Sessions:
    """Issues and checks session cookies and their CSRF tokens."""

    def __init__(self, secret: bytes, ttl_s: float, keyring: KeyRing) -> None:
        self._secret = secret
        self.ttl_s = ttl_s
        self._keyring = keyring

    def _sign(self, purpose: bytes, data: bytes) -> bytes:
        return hmac.new(self._secret, purpose + b"\x00" + data, hashlib.sha256).digest()

    def _fingerprint(self, key: ApiKey) -> str:
        # Ties a session to the key's hash without putting the hash in the cookie.
        return _b64(self._sign(b"key", key.sha256)[:12])

    def issue(self, key: ApiKey, now: float | None = None) -> Issued:
        session = Session(
            name=key.name,
            scope=key.scope,
            expires_at=(time.time() if now is None else now) + self.ttl_s,
            key_fingerprint=self._fingerprint(key),
            session_id=secrets.token_urlsafe(24),
        )
        payload = json.dumps(
            {
                "n": session.name,
                "s": session.scope.value,
                "e": int(session.expires_at),
                "k": session.key_fingerprint,
                "i": session.session_id,
            },
            separators=(",", ":"),
        ).encode()
        cookie = f"{_b64(payload)}.{_b64(self._sign(b'session', payload))}"
        return Issued(cookie, session)

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie stands for, or None: unsigned, tampered, expired, or its key
        is no longer configured (or not for the console). Whether it was ended since is
        the log's to say (SessionBook.is_live)."""
        if not cookie or len(cookie) > 1024:
            return None
        encoded, _, signature = cookie.partition(".")
        try:
            payload = _unb64(encoded)
            given = _unb64(signature)
        except (ValueError, binascii.Error):
            return None
        if not hmac.compare_digest(given, self._sign(b"session", payload)):
            return None
        try:
            fields = json.loads(payload)
            session = Session(
                name=str(fields["n"]),
                scope=Scope(fields["s"]),
                expires_at=float(fields["e"]),
                key_fingerprint=str(fields["k"]),
                session_id=str(fields["i"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires_at <= (time.time() if now is None else now):
            return None
        if session.scope not in CONSOLE_SCOPES or not self._still_configured(session):
            return None
        return session

    def _still_configured(self, session: Session) -> bool:
        return any(
            key.name == session.name
            and key.scope is session.scope
            and hmac.compare_digest(self._fingerprint(key), session.key_fingerprint)
            for key in self._keyring.keys
        )

    def csrf_token(self, cookie: str) -> str:
        return _b64(self._sign(b"csrf", cookie.encode()))

    def csrf_ok(self, cookie: str, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.csrf_token(cookie).encode()
        )

    def configured_keys(self) -> list[tuple[str, Scope, str]]:
        """The keys that may hold console sessions, as the log names them."""
        return [
            (key.name, key.scope, key_digest(key))
            for key in self._keyring.keys
            if key.scope in CONSOLE_SCOPES
        ]

    def key_for(self, presented: str) -> ApiKey | None:
        """The configured key a login form presented, if any. Compared against every key
        in constant time, like a bearer key."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: ApiKey | None = None
        for key in self._keyring.keys:
            if hmac.compare_digest(digest, key.sha256) and found is None:
                found = key
        return found
