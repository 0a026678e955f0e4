"""TLS to the log database, against a real Debian Postgres 15 started here with ssl=on and a
throwaway CA: verify-full works (from the URL or from the settings) and really is TLS; what
cannot work (another CA, a host the certificate does not name, no client certificate where
one is required, a missing file, a server without TLS, a server that shares no cipher) is
refused at start in one line, and a key password cut in two by an unencoded & is neither
logged nor printed; a query that cannot be read, or a client key without its certificate, is
refused before connecting (exit 2)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization

from coordinator.devtools.localca import LocalCA
from tests.helpers import eventually
from tests.participant_server import FakeParticipant
from tests.processes import CoordinatorProcess, free_port, run_tcc_async, tcc_env

PG_BIN = Path("/usr/lib/postgresql/15/bin")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (PG_BIN / "postgres").exists(),
        reason=f"needs Debian's PostgreSQL 15 server ({PG_BIN / 'postgres'}: apt-get install"
        " postgresql-15)",
    ),
]

# The roles the coordinator connects as: over TLS with nothing more, and with a client
# certificate (pg_hba.conf `cert`: the certificate's common name is the role).
ROLE = "tcc"
CERT_ROLE = "tcc_cert"
KEY_PASSWORD = "correct horse battery staple"

# Every wait below is bounded; a slow machine only makes them longer, never wrong.
COMMAND_TIMEOUT_S = 90.0


def _server_user() -> str | None:
    """Postgres refuses to run as root: then it runs as an unprivileged user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    pytest.skip("running as root with neither a postgres nor a nobody user to run Postgres as")


class Postgres:
    """A throwaway Postgres 15 on 127.0.0.1 (and a Unix socket for the test's own admin
    connection), in a directory of its own owned by the user it runs as."""

    def __init__(
        self,
        ca: LocalCA | None,
        *,
        names: tuple[str, ...] = ("localhost",),
        conf: tuple[str, ...] = (),
    ) -> None:
        self.user = _server_user()
        self.conf = conf  # more lines of postgresql.conf
        self.dir = Path(tempfile.mkdtemp(prefix="tcc-pg-tls-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.ca = ca
        self.names = names
        self.started = False

    def _run(self, *args: str | Path) -> None:
        result = subprocess.run(
            [str(a) for a in args],
            user=self.user,
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}{self.log()}")

    def _own(self, path: Path) -> None:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "server.log").read_text(errors="replace")
        return ""

    def start(self) -> None:
        self._own(self.dir)
        self._run(
            PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        conf = [
            f"port = {self.port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.dir}'",
            "fsync = off",
            "max_connections = 60",
        ]
        hba = ["local all all trust"]
        if self.ca is not None:
            # The server's certificate names localhost only (not 127.0.0.1): verify-full on
            # 127.0.0.1 is a host name mismatch.
            self.ca.issue("localhost", hosts=self.names).write(
                self.dir / "server.crt", self.dir / "server.key"
            )
            (self.dir / "ca.crt").write_bytes(self.ca.cert_pem)
            for name in ("server.crt", "server.key", "ca.crt"):
                self._own(self.dir / name)
            conf += [
                "ssl = on",
                f"ssl_cert_file = '{self.dir / 'server.crt'}'",
                f"ssl_key_file = '{self.dir / 'server.key'}'",
                # Client certificates are checked against the same CA.
                f"ssl_ca_file = '{self.dir / 'ca.crt'}'",
            ]
            # TCP only over TLS (no hostnossl line): a plain connection is refused outright.
            hba += [
                f"hostssl all {CERT_ROLE} 127.0.0.1/32 cert",
                "hostssl all all 127.0.0.1/32 trust",
            ]
        else:
            hba += ["host all all 127.0.0.1/32 trust"]
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n".join([*conf, *self.conf]) + "\n")
        (self.data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        self._run(
            PG_BIN / "pg_ctl", "-D", self.data, "-l", self.dir / "server.log", "-w", "-t",
            str(int(COMMAND_TIMEOUT_S)), "start",
        )  # fmt: skip
        self.started = True

    def stop(self) -> None:
        try:
            if self.started:
                try:
                    self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
                except (RuntimeError, subprocess.TimeoutExpired):
                    self._kill_postmaster()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
            os.kill(pid, signal.SIGKILL)

    async def admin(self, database: str = "postgres") -> asyncpg.Connection:
        """The superuser over the Unix socket (no TLS, no certificate: not what is tested)."""
        conn: asyncpg.Connection = await asyncpg.connect(
            host=str(self.dir), port=self.port, user="postgres", database=database, timeout=30
        )
        return conn

    def url(self, database: str, *, role: str = ROLE, host: str = "localhost", **query: Any) -> str:
        params = "&".join(f"{name}={value}" for name, value in query.items())
        return f"postgresql://{role}@{host}:{self.port}/{database}" + (
            f"?{params}" if params else ""
        )


@dataclass
class Files:
    """The client's side: the CA to trust, a client certificate, and wrong ones."""

    ca: Path
    other_ca: Path
    client_cert: Path
    client_key: Path
    encrypted_key: Path
    other_client_cert: Path
    other_client_key: Path


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create("tcc database test CA")


@pytest.fixture(scope="module")
def postgres(ca: LocalCA) -> Iterator[Postgres]:
    server = Postgres(ca)
    try:
        server.start()

        async def roles() -> None:
            conn = await server.admin()
            try:
                for role in (ROLE, CERT_ROLE):
                    await conn.execute(f"CREATE ROLE {role} LOGIN")
            finally:
                await conn.close()

        asyncio.run(roles())
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def files(ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> Files:
    folder = tmp_path_factory.mktemp("client-tls")
    (folder / "ca.crt").write_bytes(ca.cert_pem)
    other = LocalCA.create("another CA")
    (folder / "other-ca.crt").write_bytes(other.cert_pem)
    client = ca.issue(CERT_ROLE, client=True)
    client.write(folder / "client.crt", folder / "client.key")
    key = serialization.load_pem_private_key(client.key_pem, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
    )
    (folder / "encrypted.key").write_bytes(encrypted)
    (folder / "encrypted.key").chmod(0o600)
    other.issue(CERT_ROLE, client=True).write(folder / "other.crt", folder / "other.key")
    return Files(
        ca=folder / "ca.crt",
        other_ca=folder / "other-ca.crt",
        client_cert=folder / "client.crt",
        client_key=folder / "client.key",
        encrypted_key=folder / "encrypted.key",
        other_client_cert=folder / "other.crt",
        other_client_key=folder / "other.key",
    )


@pytest.fixture
async def database(postgres: Postgres) -> AsyncIterator[str]:
    """A new, empty database owned by the plain role (and usable by the certificate one)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await postgres.admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}" OWNER {ROLE}')
        await conn.execute(f'GRANT ALL ON DATABASE "{name}" TO {CERT_ROLE}')
    finally:
        await conn.close()
    conn = await postgres.admin(name)
    try:
        await conn.execute(f"GRANT ALL ON SCHEMA public TO {CERT_ROLE}")
    finally:
        await conn.close()
    yield name
    conn = await postgres.admin()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def session_is_tls(url: str) -> bool:
    """Whether asyncpg, given the URL the coordinator is given, makes a TLS connection."""
    conn = await asyncpg.connect(url, timeout=30)
    try:
        return bool(await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
    finally:
        await conn.close()


async def backends_over_tls(postgres: Postgres, database: str) -> tuple[int, int]:
    """The client connections to ``database`` (the coordinator's), and how many are TLS."""
    conn = await postgres.admin()
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS backends, count(*) FILTER (WHERE s.ssl) AS over_tls"
            " FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
            " WHERE a.datname = $1 AND a.backend_type = 'client backend'",
            database,
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row["backends"]), int(row["over_tls"])


async def run_a_transaction(base: str, participant: FakeParticipant, gid: str) -> None:
    async with aiohttp.ClientSession() as http:

        async def post(path: str, body: object = None) -> tuple[int, Any]:
            async with http.post(base + path, json=body or {}) as resp:
                return resp.status, await resp.json(content_type=None)

        async def status() -> str:
            async with http.get(f"{base}/v1/transactions/{gid}") as resp:
                assert resp.status == 200
                return str((await resp.json())["status"])

        assert (await post("/v1/transactions", {"gid": gid}))[0] == 201
        for branch in ("pay", "stock"):
            code, out = await post(f"/v1/transactions/{gid}/try", participant.branch(branch))
            assert code == 200, out
        code, out = await post(f"/v1/transactions/{gid}/confirm")
        assert code in (200, 202), out
        await eventually(status, lambda s: s == "confirmed", timeout_s=60)
    assert {c.branch_id for c in participant.calls_for("confirm", gid=gid)} == {"pay", "stock"}


async def migrate_and_serve_a_transaction(
    postgres: Postgres,
    database: str,
    url: str,
    participant: FakeParticipant,
    log_dir: Path,
    **settings: object,
) -> None:
    code, out, err = await run_tcc_async(
        "migrate", env=tcc_env(url, **settings), timeout_s=COMMAND_TIMEOUT_S
    )
    assert code == 0, err
    assert "applied 0001_transaction_log" in out
    coordinator = CoordinatorProcess(url, log_dir, **settings)
    try:
        await coordinator.start(timeout_s=COMMAND_TIMEOUT_S)
        await run_a_transaction(coordinator.base, participant, f"tls-{database}")
        backends, over_tls = await backends_over_tls(postgres, database)
        assert backends >= 1
        assert over_tls == backends
    finally:
        coordinator.stop()


async def test_verify_full_in_the_url__migrates_and_runs_a_transaction_over_tls(
    postgres: Postgres, files: Files, database: str, participant: FakeParticipant, tmp_path: Path
) -> None:
    url = postgres.url(database, sslmode="verify-full", sslrootcert=files.ca)
    assert await session_is_tls(url)
    await migrate_and_serve_a_transaction(postgres, database, url, participant, tmp_path)


async def test_verify_full_in_the_settings__the_same_with_two_workers(
    postgres: Postgres, files: Files, database: str, participant: FakeParticipant, tmp_path: Path
) -> None:
    """TCC_DATABASE_SSLMODE/SSLROOTCERT instead of URL parameters; with --workers 2 the
    parent migrates, then hands its workers the URL and the same settings again."""
    await migrate_and_serve_a_transaction(
        postgres,
        database,
        postgres.url(database),
        participant,
        tmp_path,
        database_sslmode="verify-full",
        database_sslrootcert=files.ca,
        workers=2,
    )


async def test_client_certificate_required__works_with_one(
    postgres: Postgres, files: Files, database: str, participant: FakeParticipant, tmp_path: Path
) -> None:
    url = postgres.url(database, role=CERT_ROLE)
    await migrate_and_serve_a_transaction(
        postgres,
        database,
        url,
        participant,
        tmp_path,
        database_sslmode="verify-full",
        database_sslrootcert=files.ca,
        database_sslcert=files.client_cert,
        database_sslkey=files.client_key,
    )


async def test_client_certificate_with_an_encrypted_key__works_and_its_password_is_not_logged(
    postgres: Postgres, files: Files, database: str
) -> None:
    env = tcc_env(
        postgres.url(database, role=CERT_ROLE),
        database_sslmode="verify-full",
        database_sslrootcert=files.ca,
        database_sslcert=files.client_cert,
        database_sslkey=files.encrypted_key,
        database_sslpassword=KEY_PASSWORD,
    )
    code, out, err = await run_tcc_async("migrate", env=env, timeout_s=COMMAND_TIMEOUT_S)
    assert code == 0, err
    code, out, err = await run_tcc_async(
        "list", "--log-level", "info", env=env, timeout_s=COMMAND_TIMEOUT_S
    )
    assert code == 0, err
    assert "database_selected" in err  # the URL was logged, without the key's password
    assert KEY_PASSWORD not in out + err
    assert KEY_PASSWORD.replace(" ", "%20") not in out + err


def one_line(code: int, err: str, command: str) -> str:
    """The refusal: exit 1 and a single line on stderr, no traceback."""
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tcc {command}: cannot connect to the database at "), err
    return lines[0]


async def refused(command: list[str], url: str, **settings: object) -> str:
    # Warnings and errors are still logged: any of them would be a second line.
    env = tcc_env(url, log_level="warning", port=free_port(), **settings)
    code, _, err = await run_tcc_async(*command, env=env, timeout_s=COMMAND_TIMEOUT_S)
    line = one_line(code, err, command[0])
    print(line)  # what an operator sees (pytest -s)
    return line


@pytest.mark.parametrize(
    "command",
    [["serve"], ["serve", "--workers", "2"], ["migrate"], ["list"]],
    ids=["serve", "serve-workers", "migrate", "list"],
)
async def test_a_root_certificate_from_another_ca__refused_in_one_line(
    postgres: Postgres, files: Files, database: str, command: list[str]
) -> None:
    line = await refused(
        command,
        postgres.url(database),
        database_sslmode="verify-full",
        database_sslrootcert=files.other_ca,
    )
    assert "over TLS (sslmode=verify-full): certificate verify failed:" in line
    assert f"is the sslrootcert {files.other_ca} (TCC_DATABASE_SSLROOTCERT) the CA" in line


async def test_verify_full_on_a_host_the_certificate_does_not_name__refused(
    postgres: Postgres, files: Files, database: str
) -> None:
    """The certificate names localhost; asyncpg checks 127.0.0.1 against its IP addresses."""
    url = postgres.url(database, host="127.0.0.1", sslmode="verify-full", sslrootcert=files.ca)
    line = await refused(["serve"], url)
    assert "certificate verify failed: IP address mismatch" in line
    assert "the URL's host (127.0.0.1) must be a name the server's certificate was issued" in line
    # verify-ca checks the CA only: the same host is then fine.
    assert await session_is_tls(
        postgres.url(database, host="127.0.0.1", sslmode="verify-ca", sslrootcert=files.ca)
    )


async def test_no_client_certificate_where_one_is_required__refused(
    postgres: Postgres, files: Files, database: str
) -> None:
    line = await refused(
        ["serve"],
        postgres.url(database, role=CERT_ROLE),
        database_sslmode="verify-full",
        database_sslrootcert=files.ca,
    )
    assert "connection requires a valid client certificate" in line
    assert "set TCC_DATABASE_SSLCERT and TCC_DATABASE_SSLKEY" in line


@pytest.mark.parametrize(
    ("key", "password", "words"),
    [
        ("other_client_key", None, "the client key does not belong to the client certificate"),
        ("encrypted_key", "wrong password", "the key is encrypted and its password"),
    ],
    ids=["key-of-another-certificate", "wrong-key-password"],
)
async def test_a_client_key_that_cannot_be_used__refused(
    postgres: Postgres, files: Files, database: str, key: str, password: str | None, words: str
) -> None:
    settings: dict[str, object] = {}
    if password is not None:
        settings["database_sslpassword"] = password
    line = await refused(
        ["serve"],
        postgres.url(database, role=CERT_ROLE),
        database_sslmode="verify-full",
        database_sslrootcert=files.ca,
        database_sslcert=files.client_cert,
        database_sslkey=getattr(files, key),
        **settings,
    )
    assert words in line
    assert "wrong password" not in line


async def test_a_client_certificate_from_another_ca__refused(
    postgres: Postgres, files: Files, database: str
) -> None:
    line = await refused(
        ["migrate"],
        postgres.url(database, role=CERT_ROLE),
        database_sslmode="verify-full",
        database_sslrootcert=files.ca,
        database_sslcert=files.other_client_cert,
        database_sslkey=files.other_client_key,
    )
    # The server closes the connection, or (as TLS 1.3 may have it) says unknown_ca.
    assert f"sslcert {files.other_client_cert} (TCC_DATABASE_SSLCERT)" in line
    assert "the CA that issued" in line or "(tlsv1_alert_unknown_ca): is it issued by a CA" in line


async def test_the_root_certificate_file_missing__refused(
    postgres: Postgres, files: Files, database: str, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.crt"
    line = await refused(
        ["serve"], postgres.url(database, sslmode="verify-full", sslrootcert=missing)
    )
    assert f"sslrootcert {missing} (TCC_DATABASE_SSLROOTCERT) cannot be read" in line


async def test_tls_asked_of_a_server_without_it__refused() -> None:
    plain = Postgres(None)
    try:
        plain.start()
        line = await refused(["serve"], plain.url("postgres", role="postgres", sslmode="require"))
        assert "the server does not offer TLS" in line
    finally:
        plain.stop()


async def test_plain_tcp_to_the_tls_only_server__refused(postgres: Postgres, database: str) -> None:
    line = await refused(["migrate"], postgres.url(database, sslmode="disable"))
    assert "no encryption" in line
    assert "set TCC_DATABASE_SSLMODE=verify-full" in line


async def test_no_cipher_in_common__the_handshake_failure_does_not_ask_for_a_certificate_given(
    ca: LocalCA, files: Files
) -> None:
    """TLS 1.2's handshake_failure alert says only that the server refused the handshake:
    here because it offers a cipher this coordinator does not (SHA-1), while a client
    certificate is configured. The line must not ask for one."""
    strict = Postgres(
        ca, conf=("ssl_max_protocol_version = 'TLSv1.2'", "ssl_ciphers = 'ECDHE-ECDSA-AES128-SHA'")
    )
    try:
        strict.start()
        tls = {"database_sslmode": "verify-full", "database_sslrootcert": files.ca}
        url = strict.url("postgres", role="postgres")
        line = await refused(
            ["serve"],
            url,
            database_sslcert=files.client_cert,
            database_sslkey=files.client_key,
            **tls,
        )
        assert "set TCC_DATABASE_SSLCERT" not in line
        assert line.endswith(
            "TLS handshake refused by the server (sslv3_alert_handshake_failure): no TLS version"
            " or cipher acceptable to both, or it refused the client certificate sslcert"
            f" {files.client_cert} (TCC_DATABASE_SSLCERT) — see the server's log"
        )
        # Without a client certificate the same alert most often means that one is wanted.
        line = await refused(["serve"], url, **tls)
        assert "most often it requires a client certificate and none was presented" in line
    finally:
        strict.stop()


# An sslpassword whose & was not percent-encoded: "pass-head&pass-tail=1" reaches asyncpg as
# sslpassword=pass-head and a setting pass-tail, which the server refuses by its name.
HEAD, TAIL = "pass-head", "pass-tail"


async def test_a_key_password_cut_by_its_ampersand__no_part_of_it_logged_or_printed(
    postgres: Postgres, files: Files, database: str
) -> None:
    url = postgres.url(database, sslmode="verify-full", sslrootcert=files.ca)
    url += f"&sslpassword={HEAD}&{TAIL}=1"
    line = await refused(["serve"], url)
    assert HEAD not in line
    assert TAIL not in line
    assert "the server refused a setting from the URL's query (UndefinedObjectError" in line
    assert "percent-encode & and = inside values (as %26 and %3D)" in line
    # What is logged of the URL at start (database_selected) hides the whole query.
    code, out, err = await run_tcc_async(
        "list", "--log-level", "info", env=tcc_env(url), timeout_s=COMMAND_TIMEOUT_S
    )
    assert code == 1, err
    assert '"database_selected"' in err
    assert f"/{database}?***" in err
    assert HEAD not in out + err
    assert TAIL not in out + err


@pytest.mark.parametrize(
    ("query", "settings", "words"),
    [
        (
            f"sslmode=require&sslpassword={HEAD}&{TAIL}",
            {},
            "TCC_DATABASE_URL: its query cannot be read (a parameter without =): percent-encode"
            " & and = inside values (as %26 and %3D)",
        ),
        (
            "sslmode=require",
            {"database_sslkey": "/etc/tcc/client.key"},
            "sslkey /etc/tcc/client.key (TCC_DATABASE_SSLKEY) is given without sslcert, the"
            " client certificate it is the key of: set TCC_DATABASE_SSLCERT (--database-sslcert)"
            " or sslcert in TCC_DATABASE_URL (a key alone is never used)",
        ),
    ],
    ids=["unreadable-query", "key-without-certificate"],
)
async def test_a_database_url_that_cannot_be_meant__refused_before_connecting(
    query: str, settings: dict[str, object], words: str, tmp_path: Path
) -> None:
    """Exit 2 and one line, as for a parameter given twice: nothing is tried."""
    env = tcc_env(
        f"postgresql://tcc@127.0.0.1:{free_port()}/tcc?{query}", log_level="warning", **settings
    )
    env.pop("PGSSLCERT", None)
    env["HOME"] = str(tmp_path)  # no ~/.postgresql/postgresql.crt
    for command in (["serve"], ["migrate"]):
        code, _, err = await run_tcc_async(*command, env=env, timeout_s=COMMAND_TIMEOUT_S)
        assert code == 2, err
        assert err.strip() == f"tcc {command[0]}: {words}"
        assert HEAD not in err
        assert TAIL not in err
