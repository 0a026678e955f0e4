"""The first connections to the log database, and one line that says why they failed.

A coordinator that cannot reach its database at start (nothing listens, a wrong password, a
TLS handshake that cannot succeed) is refused with a DatabaseUnavailable whose message names
the cause in words and what to look at; the command line prints it as it stands. Once started,
an outage is another matter: the log's queries retry (see PostgresLog.connection).

The DSN's TLS parameters are libpq's, as asyncpg reads them from the query string: sslmode,
sslrootcert, sslcert, sslkey, sslpassword. A message may name the files, never the password.
"""

from __future__ import annotations

import errno
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import asyncpg

from coordinator.core.errors import DatabaseUnavailable

# How long one connection may take to be made (TCP, TLS, authentication).
CONNECT_TIMEOUT_S = 10.0

# Errors that mean "the database is not there right now", not "the query is wrong".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    # Seen when the server goes away in the middle of a statement ("cannot switch to state").
    asyncpg.InternalClientError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    TimeoutError,
)

# What a first connection can end in because of where or how it connects: the above, the
# server refusing who we are (pg_hba.conf, password, client certificate) or the database's
# name, and a DSN asyncpg cannot read (ValueError; TLS errors are ValueErrors too).
START_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    ValueError,
)

# The settings that give each TLS file, for the hints.
_SETTING = {
    "sslmode": "TCC_DATABASE_SSLMODE",
    "sslrootcert": "TCC_DATABASE_SSLROOTCERT",
    "sslcert": "TCC_DATABASE_SSLCERT",
    "sslkey": "TCC_DATABASE_SSLKEY",
    "sslpassword": "TCC_DATABASE_SSLPASSWORD",
}
_FILES = ("sslrootcert", "sslcert", "sslkey")

# OpenSSL's verify codes (X509_V_ERR_*) with advice of their own.
_NOT_YET_VALID, _EXPIRED = 9, 10
_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH = 62, 64
_FILE_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR}


@dataclass(frozen=True, slots=True)
class Target:
    """Where a DSN points and how, as a message may show it (no password, no query)."""

    where: str
    host: str
    tls: dict[str, str]  # the DSN's sslmode and TLS files (never its sslpassword)

    @classmethod
    def of(cls, dsn: str) -> Target:
        try:
            parts = urlsplit(dsn)
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
        except ValueError:
            return cls("(an unreadable URL)", "", {})
        userinfo, at, hosts = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        where = f"{parts.scheme}://{user}{at}{hosts}{parts.path}"
        tls = {name: query[name] for name in ("sslmode", *_FILES) if query.get(name)}
        return cls(where, query.get("host") or _first_host(hosts), tls)

    @property
    def how(self) -> str:
        mode = self.tls.get("sslmode")
        if mode in ("require", "verify-ca", "verify-full"):
            return f" over TLS (sslmode={mode})"
        if mode == "disable":
            return " without TLS (sslmode=disable)"
        return f" (sslmode={mode})" if mode else ""

    def named(self, parameter: str) -> str:
        """``sslrootcert /etc/ca.pem (TCC_DATABASE_SSLROOTCERT)``"""
        return f"{parameter} {self.tls[parameter]} ({_SETTING[parameter]})"


def _first_host(hosts: str) -> str:
    """``db1`` of ``db1:5432,db2:5432``; ``::1`` of ``[::1]:5432``."""
    first = hosts.split(",")[0]
    if first.startswith("["):
        return first[1:].partition("]")[0]
    return first.partition(":")[0]


def start_failure(dsn: str, exc: BaseException) -> DatabaseUnavailable:
    """The error a command stops with when its first connection failed with ``exc``: one
    line, naming the database (without its password), how it was reached, and the cause."""
    target = Target.of(dsn)
    cause = " ".join(_cause(target, exc).split())  # one line, whatever the library said
    return DatabaseUnavailable(
        f"cannot connect to the database at {target.where}{target.how}: {cause}"
    )


async def connect_at_start(dsn: str) -> asyncpg.Connection:
    """One connection, or DatabaseUnavailable saying why there is none."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    except START_ERRORS as exc:
        raise start_failure(dsn, exc) from exc
    return conn


def _cause(target: Target, exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _verify_failed(target, exc)
    if isinstance(exc, ssl.SSLError):
        return _tls_error(target, exc)
    if isinstance(exc, asyncpg.ClientConfigurationError):
        text = str(exc.args[0]) if exc.args else str(exc)  # without asyncpg's HINT
        if "root certificate file" in text:
            mode = target.tls.get("sslmode", "verify-full")
            return (
                f"{text} — set {_SETTING['sslrootcert']} to the CA certificate that signed the"
                f" server's certificate (sslmode={mode} checks the server against it)"
            )
        return f"the URL's parameters: {text}"
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return _refused_by_server(target, exc)
    if isinstance(exc, asyncpg.ConnectionDoesNotExistError):
        hint = (
            f" (a server that requires client certificates does this when it does not trust"
            f" the CA that issued {target.named('sslcert')}: see its log)"
            if "sslcert" in target.tls
            else " (see its log)"
        )
        return f"the server closed the connection while it was being made{hint}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: is the database running, and listening on that host and port?"
    if isinstance(exc, socket.gaierror):
        return f"the host name {target.host!r} cannot be resolved ({exc.strerror or exc})"
    if isinstance(exc, TimeoutError):
        return (
            f"no answer within {CONNECT_TIMEOUT_S:.0f} s (is the host right, and does a"
            " firewall let the port through?)"
        )
    if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc):
        mode = target.tls.get("sslmode", "require")
        return (
            f"the server does not offer TLS (it rejected the SSL upgrade) and sslmode={mode}"
            " requires it: turn ssl on in the server, or check the host and port"
        )
    if isinstance(exc, OSError) and exc.errno in _FILE_ERRNOS:
        unreadable = _unreadable_file(target)
        if unreadable is not None:
            return unreadable
    if type(exc) is ValueError:
        return f"the URL cannot be read: {exc}"
    return str(exc) or type(exc).__name__


def _verify_failed(target: Target, exc: ssl.SSLCertVerificationError) -> str:
    what = f"certificate verify failed: {(exc.verify_message or str(exc)).rstrip('.')}"
    if exc.verify_code in (_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH):
        return (
            f"{what} — with sslmode=verify-full the URL's host ({target.host}) must be a name"
            " the server's certificate was issued for"
        )
    if exc.verify_code in (_EXPIRED, _NOT_YET_VALID):
        return f"{what} — the server's certificate must be renewed (or the clocks disagree)"
    if "sslrootcert" in target.tls:
        return (
            f"{what} — is the {target.named('sslrootcert')} the CA that signed the server's"
            " certificate?"
        )
    return f"{what} — set {_SETTING['sslrootcert']} to the CA that signed the server's certificate"


def _tls_error(target: Target, exc: ssl.SSLError) -> str:
    reason = (exc.reason or "").upper()
    if reason == "KEY_VALUES_MISMATCH" and "sslcert" in target.tls:
        key = target.named("sslkey") if "sslkey" in target.tls else "the key"
        return (
            f"the client key does not belong to the client certificate: {key} is not the key"
            f" of {target.named('sslcert')}"
        )
    if reason == "NO_CERTIFICATE_OR_CRL_FOUND" and "sslrootcert" in target.tls:
        return f"{target.named('sslrootcert')} holds no PEM certificate"
    if "PEM lib" in str(exc) and "sslcert" in target.tls:
        key = f" and its key {target.named('sslkey')}" if "sslkey" in target.tls else ""
        return (
            f"cannot load the client certificate {target.named('sslcert')}{key}: they are not"
            " a PEM certificate and key, or the key is encrypted and its password"
            f" ({_SETTING['sslpassword']}) is missing or wrong"
        )
    if reason in ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE"):
        return (
            f"TLS handshake refused by the server ({reason.lower()}): it requires a client"
            f" certificate — set {_SETTING['sslcert']} and {_SETTING['sslkey']}"
        )
    if reason == "TLSV1_ALERT_UNKNOWN_CA":
        return (
            "the server does not trust the CA that issued our client certificate"
            f" ({target.named('sslcert') if 'sslcert' in target.tls else 'sslcert'})"
        )
    if reason == "WRONG_VERSION_NUMBER":
        return "TLS handshake failed: the other end does not speak TLS (is this a Postgres port?)"
    return f"TLS: {exc.reason or exc}"


def _refused_by_server(target: Target, exc: asyncpg.InvalidAuthorizationSpecificationError) -> str:
    text = str(exc)
    if "requires a valid client certificate" in text:
        return (
            f"{text} — the server's pg_hba.conf asks for one: set {_SETTING['sslcert']} and"
            f" {_SETTING['sslkey']}"
        )
    if "certificate authentication failed" in text:
        return f"{text} — the client certificate's common name must be the database user"
    if "no encryption" in text:
        return (
            f"{text} — the server takes only TLS connections from here: set"
            f" {_SETTING['sslmode']}=verify-full and {_SETTING['sslrootcert']}"
        )
    return text


def _unreadable_file(target: Target) -> str | None:
    """The first TLS file the DSN names that cannot be read, in words (asyncpg's own error
    for it says "No such file or directory" without naming the file)."""
    for parameter in _FILES:
        path = target.tls.get(parameter)
        if path is None:
            continue
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as exc:
            return f"{target.named(parameter)} cannot be read: {exc.strerror or exc}"
    return None
