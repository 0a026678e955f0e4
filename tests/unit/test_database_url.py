"""The log database's URL: the database_ssl* settings carried into its query as asyncpg reads
them, a parameter given twice differently (or a client key without its certificate) refused,
and no password, nor any part of one, in what is logged or in a refusal; TLS failures at start
worded for the database by the kind core.tls gives them."""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from structlog.testing import capture_logs

from coordinator.core.errors import UsageError
from coordinator.core.tls import TlsFailure, alert_failure, verify_failure
from coordinator.embedded import redact, resolve_database_url, with_tls_parameters
from coordinator.settings import Settings
from coordinator.txlog.connecting import start_failure

BASE = "postgresql://tcc:pw@db.example.com:5432/tcc"


def query_as_asyncpg_reads_it(url: str) -> dict[str, str]:
    """asyncpg (connect_utils) parses the query strictly and keeps the last of a name."""
    parsed = parse_qs(urlsplit(url).query, strict_parsing=True)
    return {name: values[-1] for name, values in parsed.items()}


def settings(**values: object) -> Settings:
    return Settings(**{"database_url": BASE, **values})  # type: ignore[arg-type]


def test_settings__reach_the_url_as_libpq_parameters() -> None:
    url = resolve_database_url(
        settings(
            database_sslmode="verify-full",
            database_sslrootcert="/etc/tcc/db-ca.pem",
            database_sslcert="/etc/tcc/client.pem",
            database_sslkey="/etc/tcc/client.key",
            database_sslpassword="key-password",
        )
    )
    assert url.startswith(BASE + "?")
    assert query_as_asyncpg_reads_it(url) == {
        "sslmode": "verify-full",
        "sslrootcert": "/etc/tcc/db-ca.pem",
        "sslcert": "/etc/tcc/client.pem",
        "sslkey": "/etc/tcc/client.key",
        "sslpassword": "key-password",
    }


def test_no_tls_settings__the_url_as_given() -> None:
    url = f"{BASE}?application_name=tcc"
    assert resolve_database_url(Settings(database_url=url)) == url


def test_odd_characters__come_back_exactly() -> None:
    odd = {"sslrootcert": "/certs/my CA+1 & more%.pem", "sslpassword": "p&ss=w+rd %20#?"}
    url = with_tls_parameters(BASE, odd)
    assert query_as_asyncpg_reads_it(url) == odd


def test_existing_query_and_fragment__kept() -> None:
    url = with_tls_parameters(f"{BASE}?application_name=tcc#x", {"sslmode": "require"})
    assert url == f"{BASE}?application_name=tcc&sslmode=require#x"
    assert with_tls_parameters(f"{BASE}?", {"sslmode": "require"}) == f"{BASE}?sslmode=require"


def test_same_value_in_both__once() -> None:
    url = f"{BASE}?sslmode=verify-full&sslrootcert=./ca.pem"
    given = {"sslmode": "verify-full", "sslrootcert": "ca.pem", "sslkey": "k.pem"}
    merged = with_tls_parameters(url, given)
    assert merged == f"{url}&sslkey=k.pem"


def test_resolving_twice__the_same_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """`tcc serve --workers N` hands its workers the resolved URL beside the same settings."""
    given = settings(
        database_sslmode="verify-ca",
        database_sslrootcert="/etc/tcc/db ca.pem",
        database_sslpassword="a&b",
    )
    once = resolve_database_url(given)
    twice = resolve_database_url(given.model_copy(update={"database_url": once}))
    assert twice == once


@pytest.mark.parametrize(
    ("url", "given", "words"),
    [
        (
            f"{BASE}?sslmode=require",
            {"sslmode": "verify-full"},
            "sslmode is given twice, differently: require in TCC_DATABASE_URL, verify-full in"
            " TCC_DATABASE_SSLMODE (--database-sslmode); give it in one place",
        ),
        (
            f"{BASE}?sslrootcert=/a.pem",
            {"sslrootcert": "/b.pem"},
            "sslrootcert is given twice, differently: /a.pem in TCC_DATABASE_URL, /b.pem in"
            " TCC_DATABASE_SSLROOTCERT",
        ),
    ],
)
def test_different_values__refused_naming_both(url: str, given: dict[str, str], words: str) -> None:
    with pytest.raises(UsageError) as refused:
        with_tls_parameters(url, given)
    assert words in str(refused.value)
    assert "\n" not in str(refused.value)


def test_different_key_passwords__refused_without_showing_either() -> None:
    with pytest.raises(UsageError) as refused:
        resolve_database_url(
            settings(database_url=f"{BASE}?sslpassword=first-secret", database_sslpassword="second")
        )
    message = str(refused.value)
    assert "sslpassword is given twice" in message
    assert "first-secret" not in message
    assert "second" not in message


def test_not_a_tls_parameter__refused() -> None:
    with pytest.raises(ValueError, match="not a TLS parameter"):
        with_tls_parameters(BASE, {"host": "elsewhere"})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (BASE, "postgresql://tcc:***@db.example.com:5432/tcc"),
        (
            f"{BASE}?sslmode=verify-full&sslpassword=key-secret&sslkey=/k.pem",
            "postgresql://tcc:***@db.example.com:5432/tcc?sslmode=verify-full&sslpassword=***"
            "&sslkey=/k.pem",
        ),
        (
            "postgresql://tcc@db/tcc?password=pw&ssl%70assword=key-secret",
            "postgresql://tcc@db/tcc?password=***&ssl%70assword=***",
        ),
        ("postgresql://u:p@ss@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
        ("postgresql://tcc@db/tcc?sslmode=require", "postgresql://tcc@db/tcc?sslmode=require"),
        ("postgresql://[::1/tcc", "(unparseable database URL)"),
    ],
)
def test_redact__hides_the_password_and_the_key_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_the_selected_database__logged_without_passwords() -> None:
    with capture_logs() as logs:
        url = resolve_database_url(
            settings(database_sslmode="verify-full", database_sslpassword="key-secret")
        )
    assert "key-secret" in url  # asyncpg needs it
    selected = [entry for entry in logs if entry["event"] == "database_selected"]
    assert len(selected) == 1
    assert "key-secret" not in str(logs)
    assert ":pw@" not in str(logs)
    assert selected[0]["url"].endswith("sslmode=verify-full&sslpassword=***")


def test_a_root_certificate_without_verification__warned() -> None:
    with capture_logs() as logs:
        resolve_database_url(settings(database_sslrootcert="/etc/tcc/db-ca.pem"))
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["database_tls_unverified"]


def test_refusal_line__names_the_database_without_passwords(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    url = f"{BASE}?sslmode=verify-full&sslrootcert={missing}&sslpassword=key-secret"
    refused = start_failure(url, FileNotFoundError(2, "No such file or directory"))
    assert str(refused) == (
        "cannot connect to the database at postgresql://tcc@db.example.com:5432/tcc over TLS"
        f" (sslmode=verify-full): sslrootcert {missing} (TCC_DATABASE_SSLROOTCERT) cannot be"
        " read: No such file or directory"
    )


# --- a password that the URL's syntax cuts in two ----------------------------------------

# sslpassword "top&secret" written without percent-encoding its &: asyncpg's strict parse
# refuses the field "secret"; "top&secret=1" parses, as sslpassword=top and a setting "secret".
UNENCODED_AMPERSAND = [
    f"{BASE}?sslmode=require&sslpassword=top&secret",
    f"{BASE}?sslmode=require&sslpassword=top&secret=1",
    f"{BASE}?sslpassword=top&secret=1&sslmode=require",
    f"{BASE}?password=top&secret",
]


@pytest.mark.parametrize("url", UNENCODED_AMPERSAND)
def test_redact__a_query_that_may_hold_part_of_a_password__hidden_whole(url: str) -> None:
    shown = redact(url)
    assert "secret" not in shown
    assert "top" not in shown
    assert shown == "postgresql://tcc:***@db.example.com:5432/tcc?***"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # Only libpq's parameters (and application_name) are shown; any other is a setting
        # sent to the server, or the tail of a password.
        (
            f"{BASE}?application_name=tcc&sslmode=verify-full&target_session_attrs=read-write",
            "postgresql://tcc:***@db.example.com:5432/tcc?application_name=tcc"
            "&sslmode=verify-full&target_session_attrs=read-write",
        ),
        (f"{BASE}?statement_timeout=5s", "postgresql://tcc:***@db.example.com:5432/tcc?***"),
        # A # in a value cuts the URL there: the rest is a fragment asyncpg ignores.
        (
            f"{BASE}?sslpassword=ab#cd",
            "postgresql://tcc:***@db.example.com:5432/tcc?sslpassword=***#***",
        ),
        # / ? # in the user's password end the host part early: the @ after it says so, and
        # nothing is shown but the scheme.
        ("postgresql://tcc:pa/ss@db/tcc", "postgresql://***"),
        ("postgresql://tcc:pa?ss=1@db/tcc", "postgresql://***"),
        ("postgresql://tcc:pa#ss@db/tcc", "postgresql://***"),
        ("postgresql://tcc@db/tcc?sslrootcert=/home/me@corp/ca.pem", "postgresql://***"),
        (
            "postgresql://tcc@db/tcc?sslrootcert=/home/me%40corp/ca.pem",
            "postgresql://tcc@db/tcc?sslrootcert=/home/me%40corp/ca.pem",
        ),
        # User info without a user or without a password, and a socket URL.
        ("postgresql://:pw@db/tcc", "postgresql://:***@db/tcc"),
        ("postgresql://tcc:@db/tcc", "postgresql://tcc:***@db/tcc"),
        ("postgresql:///tcc?host=/run/pg", "postgresql:///tcc?host=/run/pg"),
        (
            "postgresql://db/tcc?sslmode=require&sslmode=",
            "postgresql://db/tcc?sslmode=require&sslmode=",
        ),
    ],
)
def test_redact__shows_only_what_is_surely_not_a_password(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize("url", UNENCODED_AMPERSAND)
def test_an_unreadable_or_doubtful_query__the_start_error_echoes_none_of_it(url: str) -> None:
    """asyncpg's words quote the field ("bad query field: 'secret'"), and the server's the
    setting ('unrecognized configuration parameter "secret"'): neither is repeated."""
    for exc in (
        ValueError("bad query field: 'secret'"),
        asyncpg.UndefinedObjectError('unrecognized configuration parameter "secret"'),
    ):
        message = str(start_failure(url, exc))
        assert "secret" not in message
        assert "top" not in message
        assert message.startswith(
            "cannot connect to the database at postgresql://tcc@db.example.com:5432/tcc"
        )
        assert "percent-encode & and = inside values (as %26 and %3D)" in message
        assert "\n" not in message


def test_an_unreadable_query__the_exact_start_error() -> None:
    refused = start_failure(UNENCODED_AMPERSAND[0], ValueError("bad query field: 'secret'"))
    assert str(refused) == (
        "cannot connect to the database at postgresql://tcc@db.example.com:5432/tcc: the URL's"
        " query cannot be read (a parameter without =): percent-encode & and = inside values"
        " (as %26 and %3D)"
    )


def test_a_setting_the_server_refuses__named_by_its_sqlstate_only() -> None:
    refused = start_failure(
        f"{BASE}?statment_timeout=5s",
        asyncpg.UndefinedObjectError('unrecognized configuration parameter "statment_timeout"'),
    )
    assert str(refused) == (
        "cannot connect to the database at postgresql://tcc@db.example.com:5432/tcc: the server"
        " refused a setting from the URL's query (UndefinedObjectError, SQLSTATE 42704; its"
        " words are not repeated: they may quote the query, whose parameters other than"
        " libpq's go to the server as settings): check those parameters, and percent-encode &"
        " and = inside values (as %26 and %3D)"
    )


@pytest.mark.parametrize(
    ("url", "exc"),
    [
        # asyncpg reads host "tcc" and port "pa": int() says so.
        (
            "postgresql://tcc:pa/ss@db.example.com/tcc",
            ValueError("invalid literal for int() with base 10: 'pa'"),
        ),
        # asyncpg splits the user info at the first @: "ss:12@db" is its host and port.
        (
            "postgresql://tcc:p@ss:12@db/tcc",
            ValueError("invalid literal for int() with base 10: '12@db'"),
        ),
    ],
)
def test_a_password_cut_by_its_syntax__the_start_error_shows_no_part_of_it(
    url: str, exc: Exception
) -> None:
    where = "postgresql://***" if "/ss@" in url else "postgresql://tcc@db/tcc"
    assert str(start_failure(url, exc)) == (
        f"cannot connect to the database at {where}: the URL cannot be read: where its"
        " password ends is unclear (an @ after a / ? or #, or more than one @) —"
        " percent-encode @ / ? # inside the password (as %40 %2F %3F %23)"
    )


def test_not_a_url__the_start_error_says_where_to_look() -> None:
    url = "postgresql://tcc:p[w@db/tcc"  # urlsplit: "Invalid IPv6 URL"
    assert redact(url) == "(unparseable database URL)"
    assert str(start_failure(url, ValueError("Invalid IPv6 URL"))) == (
        "cannot connect to the database at (an unreadable URL): the URL cannot be read: its"
        " host part is malformed (e.g. a [ without its ]: inside the password, percent-encode"
        " [ and ] as %5B and %5D)"
    )


@pytest.mark.parametrize("url", UNENCODED_AMPERSAND[:1] + UNENCODED_AMPERSAND[3:])
def test_an_unreadable_query__refused_before_connecting(url: str) -> None:
    with capture_logs() as logs, pytest.raises(UsageError) as refused:
        resolve_database_url(settings(database_url=url, database_sslmode="require"))
    assert str(refused.value) == (
        "TCC_DATABASE_URL: its query cannot be read (a parameter without =): percent-encode &"
        " and = inside values (as %26 and %3D)"
    )
    assert "secret" not in str(logs)


@pytest.mark.parametrize("url", UNENCODED_AMPERSAND[1:3])
def test_a_doubtful_query__logged_hidden(url: str) -> None:
    with capture_logs() as logs:
        resolve_database_url(settings(database_url=url))
    assert "secret" not in str(logs)
    assert "top" not in str(logs)


# --- TLS failures: the kind is core.tls's, the words name the database's settings ---------


def tls_error(reason: str) -> ssl.SSLError:
    """An SSLError as the ssl module raises it for an alert or a local failure."""
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower().replace('_', ' ')} (_ssl.c:1000)")
    exc.reason = reason
    exc.library = "SSL"
    return exc


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    exc.verify_code = code
    exc.verify_message = message
    exc.reason = "CERTIFICATE_VERIFY_FAILED"
    return exc


TLS_URL = f"{BASE}?sslmode=verify-full&sslrootcert=/etc/tcc/ca.pem"
WITH_CERT = f"{TLS_URL}&sslcert=/etc/tcc/client.pem&sslkey=/etc/tcc/client.key"
WHERE = (
    "cannot connect to the database at postgresql://tcc@db.example.com:5432/tcc over TLS"
    " (sslmode=verify-full): "
)


@pytest.fixture(autouse=False)
def no_default_client_certificate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """asyncpg also presents PGSSLCERT or ~/.postgresql/postgresql.crt: neither here."""
    monkeypatch.delenv("PGSSLCERT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.mark.usefixtures("no_default_client_certificate")
def test_handshake_failure_with_a_client_certificate__does_not_ask_for_one() -> None:
    """TLS 1.2's catch-all alert: with a certificate presented, it says nothing about one."""
    refused = str(start_failure(WITH_CERT, tls_error("SSLV3_ALERT_HANDSHAKE_FAILURE")))
    assert "set TCC_DATABASE_SSLCERT" not in refused
    assert refused == WHERE + (
        "TLS handshake refused by the server (sslv3_alert_handshake_failure): no TLS version or"
        " cipher acceptable to both, or it refused the client certificate sslcert"
        " /etc/tcc/client.pem (TCC_DATABASE_SSLCERT) — see the server's log"
    )


@pytest.mark.usefixtures("no_default_client_certificate")
@pytest.mark.parametrize(
    ("reason", "cause"),
    [
        (
            "SSLV3_ALERT_HANDSHAKE_FAILURE",
            "TLS handshake refused by the server (sslv3_alert_handshake_failure): most often it"
            " requires a client certificate and none was presented — set TCC_DATABASE_SSLCERT"
            " and TCC_DATABASE_SSLKEY (else: no TLS version or cipher acceptable to both; see"
            " the server's log)",
        ),
        (
            "TLSV13_ALERT_CERTIFICATE_REQUIRED",
            "TLS handshake refused by the server (tlsv13_alert_certificate_required): it requires"
            " a client certificate and none was presented — set TCC_DATABASE_SSLCERT and"
            " TCC_DATABASE_SSLKEY",
        ),
    ],
)
def test_no_client_certificate__the_alert_asks_for_one(reason: str, cause: str) -> None:
    assert str(start_failure(TLS_URL, tls_error(reason))) == WHERE + cause


def test_a_default_client_certificate__counts_as_presented(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PGSSLCERT", str(tmp_path / "env.crt"))
    refused = str(start_failure(TLS_URL, tls_error("SSLV3_ALERT_HANDSHAKE_FAILURE")))
    assert f"or it refused the client certificate PGSSLCERT {tmp_path / 'env.crt'} —" in refused


ALERTS = [
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_HANDSHAKE_FAILURE",
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "TLSV1_ALERT_ACCESS_DENIED",
    "TLSV1_ALERT_DECRYPT_ERROR",
    "WRONG_VERSION_NUMBER",
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "UNSUPPORTED_PROTOCOL",
    "NO_PROTOCOLS_AVAILABLE",
    "SSLV3_ALERT_ILLEGAL_PARAMETER",
    "NO_SHARED_CIPHER",
    "TLSV1_ALERT_INTERNAL_ERROR",
]
# What the database's line says for each kind core.tls gives a participant's alert.
WORDS_BY_KIND = {
    TlsFailure.CLIENT_CERTIFICATE_MISSING: "TLS handshake refused by the server (",
    TlsFailure.CLIENT_CERTIFICATE_REJECTED: "the server refused the client certificate sslcert"
    " /etc/tcc/client.pem (TCC_DATABASE_SSLCERT) (",
    TlsFailure.PROTOCOL: "TLS handshake failed (",
    TlsFailure.OTHER: "TLS: ",
}


@pytest.mark.usefixtures("no_default_client_certificate")
@pytest.mark.parametrize("reason", ALERTS)
def test_every_alert__worded_by_the_kind_core_tls_gives_it(reason: str) -> None:
    kind = alert_failure(reason, "").kind
    refused = str(start_failure(WITH_CERT, tls_error(reason)))
    assert refused.startswith(WHERE + WORDS_BY_KIND[kind]), refused
    assert reason.lower() in refused or kind is TlsFailure.OTHER


@pytest.mark.parametrize(
    ("code", "message", "advice"),
    [
        (10, "certificate has expired", "the server's certificate must be renewed"),
        (9, "certificate is not yet valid", "the server's certificate must be renewed"),
        (62, "Hostname mismatch", "with sslmode=verify-full the URL's host (db.example.com)"),
        (64, "IP address mismatch", "with sslmode=verify-full the URL's host (db.example.com)"),
        (19, "self-signed certificate in certificate chain", "is the sslrootcert /etc/tcc/ca.pem"),
        (20, "unable to get local issuer certificate", "is the sslrootcert /etc/tcc/ca.pem"),
    ],
)
def test_every_verify_failure__worded_by_the_kind_core_tls_gives_it(
    code: int, message: str, advice: str
) -> None:
    refused = str(start_failure(TLS_URL, verify_error(code, message)))
    assert refused.startswith(WHERE + f"certificate verify failed: {message} — {advice}")
    assert verify_failure(code, message).kind is {
        10: TlsFailure.EXPIRED_CERTIFICATE,
        9: TlsFailure.EXPIRED_CERTIFICATE,
        62: TlsFailure.HOSTNAME_MISMATCH,
        64: TlsFailure.HOSTNAME_MISMATCH,
    }.get(code, TlsFailure.UNTRUSTED_CERTIFICATE)


# --- a client key without its certificate ------------------------------------------------


@pytest.mark.usefixtures("no_default_client_certificate")
@pytest.mark.parametrize(
    ("given", "where"),
    [
        (
            {"database_sslkey": "/etc/tcc/client.key"},
            "sslkey /etc/tcc/client.key (TCC_DATABASE_SSLKEY)",
        ),
        (
            {"database_url": f"{BASE}?sslmode=verify-full&sslkey=/etc/tcc/client.key"},
            "sslkey /etc/tcc/client.key (in TCC_DATABASE_URL)",
        ),
        (
            {"database_url": f"{BASE}?sslcert=&sslkey=/etc/tcc/client.key"},
            "sslkey /etc/tcc/client.key (in TCC_DATABASE_URL)",
        ),
    ],
)
def test_a_client_key_without_its_certificate__refused(given: dict[str, str], where: str) -> None:
    with pytest.raises(UsageError) as refused:
        resolve_database_url(settings(**given))
    assert str(refused.value) == (
        f"{where} is given without sslcert, the client certificate it is the key of: set"
        " TCC_DATABASE_SSLCERT (--database-sslcert) or sslcert in TCC_DATABASE_URL (a key"
        " alone is never used)"
    )


@pytest.mark.usefixtures("no_default_client_certificate")
def test_a_client_key_with_its_certificate_anywhere__accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = {"database_sslkey": "/etc/tcc/client.key"}
    resolve_database_url(settings(database_url=f"{BASE}?sslcert=/etc/tcc/c.pem", **key))
    resolve_database_url(settings(database_sslcert="/etc/tcc/c.pem", **key))
    # Where asyncpg looks for one by itself: PGSSLCERT, then ~/.postgresql/postgresql.crt.
    monkeypatch.setenv("PGSSLCERT", "/etc/tcc/c.pem")
    resolve_database_url(settings(**key))
    monkeypatch.delenv("PGSSLCERT")
    (tmp_path / ".postgresql").mkdir()
    (tmp_path / ".postgresql" / "postgresql.crt").write_text("")
    resolve_database_url(settings(**key))
