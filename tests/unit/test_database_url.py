"""The log database's URL: the database_ssl* settings carried into its query as asyncpg reads
them, a parameter given twice differently refused, and no password in what is logged."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from structlog.testing import capture_logs

from coordinator.core.errors import UsageError
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
