"""The first connections to the log database, and one line that says why they failed.

A coordinator that cannot reach its database at start (nothing listens, a wrong password, a
TLS handshake that cannot succeed) is refused with a DatabaseUnavailable whose message names
the cause in words and what to look at; the command line prints it as it stands. Once started,
an outage is another matter: the log's queries retry (see PostgresLog.connection).

The DSN's TLS parameters are libpq's, as asyncpg reads them from the query string: sslmode,
sslrootcert, sslcert, sslkey, sslpassword. A message may name the files, never a password:
neither the user's, nor ``password=`` or ``sslpassword=`` in the query, nor anything that may
be part of one (DatabaseUrl says what is surely not).

What a TLS failure *is* (an untrusted or expired certificate, a client certificate missing or
refused, no common protocol) is core.tls's to say, as it says it for participant calls; this
module words each kind for the database: which setting to look at.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import asyncpg

from coordinator.core.errors import DatabaseUnavailable
from coordinator.core.tls import TlsFailure, alert_failure, verify_failure

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
# server refusing who we are (pg_hba.conf, password, client certificate), the database's
# name or a setting the URL's query sends it (any PostgresError), and a DSN asyncpg cannot
# read (ValueError; TLS errors are ValueErrors too).
START_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.PostgresError,
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
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_FILE_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR}

# The query parameters asyncpg reads itself (libpq's names): any other goes to the server as
# a setting. A log line shows their values, but for the secrets' (SECRET_PARAMETERS).
_LIBPQ_PARAMETERS = frozenset(
    {
        "host",
        "port",
        "dbname",
        "database",
        "user",
        "password",
        "passfile",
        "service",
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "sslnegotiation",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
    }
)
# Shown too: a setting every server knows.
_SHOWN_PARAMETERS = _LIBPQ_PARAMETERS | {"application_name"}
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})

PERCENT_ENCODE_VALUES = "percent-encode & and = inside values (as %26 and %3D)"
UNREADABLE_QUERY = f"cannot be read (a parameter without =): {PERCENT_ENCODE_VALUES}"
_UNCLEAR_PASSWORD = (
    "the URL cannot be read: where its password ends is unclear (an @ after a / ? or #, or"
    " more than one @) — percent-encode @ / ? # inside the password (as %40 %2F %3F %23)"
)
_HIDDEN = "***"


@dataclass(frozen=True, slots=True)
class DatabaseUrl:
    """A database URL read as asyncpg reads it, and what of it a log line or a message may
    show: never a password, nor what may be part of one.

    A password written without percent-encoding can spill out of its place: a ``/ ? #`` in
    the user's password ends the host part early (an ``@`` then follows it), an ``&`` in
    ``sslpassword=`` makes its tail a parameter of its own (a field asyncpg cannot read, or a
    setting it sends the server). Whatever may hold such a tail is not shown.
    """

    scheme: str
    # The user info's name, before its first ":" ("" when there is no user info); None: the
    # host part cannot be told apart from a password (an @ after a / ? or #).
    user: str | None
    userinfo: bool  # the URL has one (``user@``, ``user:password@``)
    password: bool  # and it has a password (shown as ***)
    hosts_path: str  # ``hosts/path``, after the user info's last @
    host: str  # the first host asyncpg connects to ("" when unclear)
    # The query's fields in order: (name decoded, value decoded, the field as written);
    # None: asyncpg cannot read the query (its strict parse fails).
    fields: tuple[tuple[str, str, str], ...] | None
    fragment: bool
    # The user info holds more than one @: asyncpg splits it at the first, so what it says
    # of the host may quote the password.
    at_signs: bool

    @classmethod
    def read(cls, dsn: str) -> DatabaseUrl | None:
        """None: not a URL at all (urlsplit refuses it)."""
        try:
            parts = urlsplit(dsn)
        except ValueError:
            return None
        fields: tuple[tuple[str, str, str], ...] | None = ()
        if parts.query:
            try:
                pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
            except ValueError:
                fields = None
            else:  # strict: a pair for each &-separated field, in order
                raw = parts.query.split("&")
                fields = tuple((n, v, r) for (n, v), r in zip(pairs, raw, strict=True))
        fragment = bool(parts.fragment)
        if "@" in parts.path + parts.query + parts.fragment:
            return cls(parts.scheme, None, False, False, "", "", fields, fragment, at_signs=True)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        return cls(
            parts.scheme,
            user,
            userinfo=bool(at),
            password=bool(colon),
            hosts_path=hosts + parts.path,
            host=_values(fields or ()).get("host") or _first_host(hosts),
            fields=fields,
            fragment=fragment,
            at_signs="@" in userinfo,
        )

    @property
    def where(self) -> str:
        """``scheme://user@hosts/path``: without the password, the query or the fragment."""
        return self._authority(password=False)

    def _authority(self, *, password: bool) -> str:
        if self.user is None:
            return f"{self.scheme}://{_HIDDEN}"
        shown = f"{self.user}:{_HIDDEN}" if password and self.password else self.user
        return f"{self.scheme}://{shown}{'@' if self.userinfo else ''}{self.hosts_path}"

    @property
    def query(self) -> dict[str, str]:
        """The query as asyncpg reads it: decoded, blank values dropped, the last of a name
        kept ({} when it cannot be read)."""
        return _values(self.fields or ())

    @property
    def settings_sent(self) -> bool:
        """The query has parameters that are not libpq's: asyncpg sends them to the server
        as settings, and any of them may be the tail of a password."""
        return any(name not in _SHOWN_PARAMETERS for name, _, _ in self.fields or ())

    @property
    def plain(self) -> bool:
        """Nothing may have spilled out of a password: what asyncpg or the server says of
        the URL may be repeated."""
        return (
            self.user is not None
            and not self.at_signs
            and self.fields is not None
            and not self.settings_sent
        )

    def shown(self) -> str:
        """The URL without its passwords, for logs."""
        shown = self._authority(password=True)
        if self.user is None:
            return shown
        if self.fields is None or self.settings_sent:
            shown += f"?{_HIDDEN}"
        elif self.fields:
            shown += "?" + "&".join(
                f"{raw.partition('=')[0]}={_HIDDEN}" if name in SECRET_PARAMETERS else raw
                for name, _, raw in self.fields
            )
        return shown + (f"#{_HIDDEN}" if self.fragment else "")

    def unreadable(self) -> str | None:
        """Why asyncpg's words about this URL are not repeated, as a cause, or None: they
        may be (the URL is plain)."""
        if self.user is None or self.at_signs:
            return _UNCLEAR_PASSWORD
        if self.fields is None:
            return f"the URL's query {UNREADABLE_QUERY}"
        if self.settings_sent:
            return (
                "asyncpg cannot read the URL (its words are not repeated: they may quote the"
                " query, whose parameters other than libpq's go to the server as settings):"
                f" check those parameters, and {PERCENT_ENCODE_VALUES}"
            )
        return None


def redact(dsn: str) -> str:
    """The URL without its password, its ``password=`` or its ``sslpassword=`` (nor anything
    that may be part of them), for logs."""
    url = DatabaseUrl.read(dsn)
    return "(unparseable database URL)" if url is None else url.shown()


def _values(fields: tuple[tuple[str, str, str], ...]) -> dict[str, str]:
    return {name: value for name, value, _ in fields if value}


def _first_host(hosts: str) -> str:
    """``db1`` of ``db1:5432,db2:5432``; ``::1`` of ``[::1]:5432``."""
    first = hosts.split(",")[0]
    if first.startswith("["):
        return first[1:].partition("]")[0]
    return first.partition(":")[0]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a DSN points and how, as a message may show it (no password, no query)."""

    url: DatabaseUrl | None  # None: not a URL at all
    where: str
    host: str
    tls: dict[str, str]  # the DSN's sslmode and TLS files (never its sslpassword)

    @classmethod
    def of(cls, dsn: str) -> Target:
        url = DatabaseUrl.read(dsn)
        if url is None:
            return cls(None, "(an unreadable URL)", "", {})
        query = url.query
        tls = {name: query[name] for name in ("sslmode", *_FILES) if name in query}
        return cls(url, url.where, url.host, tls)

    @property
    def how(self) -> str:
        mode = self.tls.get("sslmode")
        if mode not in _SSLMODES:
            return ""  # (asyncpg refuses it: the cause says so)
        if mode in ("require", "verify-ca", "verify-full"):
            return f" over TLS (sslmode={mode})"
        if mode == "disable":
            return " without TLS (sslmode=disable)"
        return f" (sslmode={mode})"

    def named(self, parameter: str) -> str:
        """``sslrootcert /etc/ca.pem (TCC_DATABASE_SSLROOTCERT)``"""
        return f"{parameter} {self.tls[parameter]} ({_SETTING[parameter]})"

    def unreadable(self) -> str | None:
        if self.url is None:
            return (
                "the URL cannot be read: its host part is malformed (e.g. a [ without its ]:"
                " inside the password, percent-encode [ and ] as %5B and %5D)"
            )
        return self.url.unreadable()

    def client_certificate(self) -> str | None:
        """The client certificate asyncpg presents, as a message names it, or None: none.
        It looks where libpq looks: sslcert, PGSSLCERT, ~/.postgresql/postgresql.crt."""
        if "sslcert" in self.tls:
            return self.named("sslcert")
        return default_client_certificate()


def default_client_certificate() -> str | None:
    """The client certificate asyncpg presents when the URL names none, or None."""
    if path := os.environ.get("PGSSLCERT"):
        return f"PGSSLCERT {path}"
    try:
        default = Path.home() / ".postgresql" / "postgresql.crt"
    except (RuntimeError, KeyError):
        return None
    return str(default) if default.exists() else None


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
        if "root certificate file" in text:  # (its path: a file's name is no secret)
            mode = target.tls.get("sslmode", "verify-full")
            return (
                f"{text} — set {_SETTING['sslrootcert']} to the CA certificate that signed the"
                f" server's certificate (sslmode={mode} checks the server against it)"
            )
        return target.unreadable() or f"the URL's parameters: {text}"
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
    if isinstance(exc, asyncpg.PostgresError) and not isinstance(
        exc, asyncpg.PostgresConnectionError | asyncpg.InvalidCatalogNameError
    ):
        return _setting_refused(target, exc)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: is the database running, and listening on that host and port?"
    if isinstance(exc, socket.gaierror):
        name = f"the host name {target.host!r}" if target.host else "the database's host name"
        return f"{name} cannot be resolved ({exc.strerror or exc})"
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
    if type(exc) is ValueError:  # asyncpg's reading of the URL: it may quote any part
        return target.unreadable() or f"the URL cannot be read: {exc}"
    return str(exc) or type(exc).__name__


def _setting_refused(target: Target, exc: asyncpg.PostgresError) -> str:
    """The server refused the connection for a reason of its own: most often a setting the
    URL's query sent it (``unrecognized configuration parameter "…"``), which its words
    quote: they are repeated only when no part of a password can be among them."""
    if target.url is not None and target.url.plain:
        return str(exc)
    return (
        f"the server refused a setting from the URL's query ({type(exc).__name__}, SQLSTATE"
        f" {exc.sqlstate}; its words are not repeated: they may quote the query, whose"
        " parameters other than libpq's go to the server as settings): check those"
        f" parameters, and {PERCENT_ENCODE_VALUES}"
    )


def _verify_failed(target: Target, exc: ssl.SSLCertVerificationError) -> str:
    """The server's certificate failed our verification: core.tls says which way."""
    message = (exc.verify_message or str(exc)).rstrip(".")
    what = f"certificate verify failed: {message}"
    kind = verify_failure(getattr(exc, "verify_code", None) or 0, message).kind
    if kind is TlsFailure.HOSTNAME_MISMATCH:
        return (
            f"{what} — with sslmode=verify-full the URL's host ({target.host}) must be a name"
            " the server's certificate was issued for"
        )
    if kind is TlsFailure.EXPIRED_CERTIFICATE:
        return f"{what} — the server's certificate must be renewed (or the clocks disagree)"
    if "sslrootcert" in target.tls:
        return (
            f"{what} — is the {target.named('sslrootcert')} the CA that signed the server's"
            " certificate?"
        )
    return f"{what} — set {_SETTING['sslrootcert']} to the CA that signed the server's certificate"


# TLS 1.2's catch-all alert: most often a client certificate wanted, but not only that.
_HANDSHAKE_FAILURE = "SSLV3_ALERT_HANDSHAKE_FAILURE"


def _tls_error(target: Target, exc: ssl.SSLError) -> str:
    """Our own TLS files refused as they were loaded, or the handshake refused: core.tls
    says what kind of refusal an alert is."""
    reason = getattr(exc, "reason", None) or ""
    own = _own_files_refused(target, exc, reason.upper())
    if own is not None:
        return own
    kind = alert_failure(reason, str(exc)).kind
    alert = reason.lower()
    certificate = target.client_certificate()
    if kind is TlsFailure.CLIENT_CERTIFICATE_MISSING:
        if certificate is not None:
            return (
                f"TLS handshake refused by the server ({alert}): no TLS version or cipher"
                f" acceptable to both, or it refused the client certificate {certificate} —"
                " see the server's log"
            )
        wanted = f"set {_SETTING['sslcert']} and {_SETTING['sslkey']}"
        if reason.upper() == _HANDSHAKE_FAILURE:
            return (
                f"TLS handshake refused by the server ({alert}): most often it requires a"
                f" client certificate and none was presented — {wanted} (else: no TLS version"
                " or cipher acceptable to both; see the server's log)"
            )
        return (
            f"TLS handshake refused by the server ({alert}): it requires a client certificate"
            f" and none was presented — {wanted}"
        )
    if kind is TlsFailure.CLIENT_CERTIFICATE_REJECTED:
        refused = f"the client certificate {certificate}" if certificate else "our certificate"
        return (
            f"the server refused {refused} ({alert}): is it issued by a CA the server trusts"
            " (its ssl_ca_file), unexpired and unrevoked, and is the key its own?"
        )
    if kind is TlsFailure.PROTOCOL:
        return (
            f"TLS handshake failed ({alert}): the server and the coordinator have no TLS"
            " version or cipher in common, or the other end does not speak TLS (are the URL's"
            " host and port the Postgres server's?)"
        )
    return f"TLS: {reason or exc}"


def _own_files_refused(target: Target, exc: ssl.SSLError, reason: str) -> str | None:
    """The TLS files the URL names, refused by OpenSSL as asyncpg loaded them (before any
    handshake), in words that name them; None: not that."""
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
    return None


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
