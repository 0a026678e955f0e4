"""The samples over HTTPS with client certificates required (participants/tls.py): a real
wallet process on 127.0.0.1 started with --tls-cert, --tls-key and --tls-client-ca answers a
client whose certificate its CA issued, and refuses, in the handshake, one with no certificate
or one from another CA. A bad TLS option is one line on stderr and exit status 2."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from coordinator.devtools.children import clean_env, free_port
from coordinator.devtools.localca import LocalCA
from participants.tls import ServerTls

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Certs:
    folder: Path
    ca: Path  # the CA the wallet trusts for clients (and that issued its server certificate)

    def path(self, name: str) -> Path:
        return self.folder / name

    def flags(self) -> list[str]:
        return [
            "--tls-cert",
            str(self.path("server.crt")),
            "--tls-key",
            str(self.path("server.key")),
            "--tls-client-ca",
            str(self.ca),
        ]

    def client(self, cert: str | None, *, tls_max: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        """A client that trusts the wallet's CA and presents ``cert`` (a name: <cert>.crt
        and <cert>.key in the folder), or nothing."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if tls_max is not None:
            context.maximum_version = tls_max
        if cert is not None:
            context.load_cert_chain(self.path(f"{cert}.crt"), self.path(f"{cert}.key"))
        return context


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("tls")
    ca, other = LocalCA.create("wallet's CA"), LocalCA.create("another CA")
    ca.write(folder / "ca.crt", folder / "ca.key")
    ca.issue("wallet", hosts=("localhost", "127.0.0.1")).write(
        folder / "server.crt", folder / "server.key"
    )
    ca.issue("coordinator", client=True).write(folder / "client.crt", folder / "client.key")
    other.issue("coordinator", client=True).write(folder / "stranger.crt", folder / "stranger.key")
    return Certs(folder, folder / "ca.crt")


@pytest.fixture
def wallet(database_url: str, certs: Certs, tmp_path: Path) -> Iterator[int]:
    """The wallet sample as a process, serving HTTPS on a free port; yields the port."""
    port = free_port()
    command = [sys.executable, "-m", "participants.wallet", "--database-url", database_url]
    log = tmp_path / "wallet.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*command, "--port", str(port), *certs.flags()],
            env=clean_env(),
            stdout=out,
            stderr=out,
        )
    try:
        _wait_until_it_answers(proc, port, certs.client("client"), log)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def _wait_until_it_answers(
    proc: subprocess.Popen[bytes], port: int, client: ssl.SSLContext, log: Path
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the wallet exited: {log.read_text()}"
        with contextlib.suppress(ConnectionRefusedError):  # not listening yet
            if _get_accounts(port, client)[1].startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.2)
    raise AssertionError(f"the wallet did not answer within 60 s: {log.read_text()}")


def _get_accounts(port: int, client: ssl.SSLContext) -> tuple[ssl.SSLError | None, bytes]:
    """GET /accounts over TLS on a plain socket: the client's handshake error, if its
    handshake failed, and the answer (b"": none, the connection was closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            tls = client.wrap_socket(raw, server_hostname="127.0.0.1")
        except ssl.SSLError as exc:
            return exc, b""
        answer = b""
        with tls:
            try:
                tls.sendall(
                    b"GET /accounts HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                )
                while chunk := tls.recv(65536):
                    answer += chunk
            except OSError:
                pass  # closed by the server (SSLEOFError, or reset): no answer
        return None, answer


async def test_a_client_certificate_from_its_ca__gets_an_answer(wallet: int, certs: Certs) -> None:
    failed, answer = await asyncio.to_thread(_get_accounts, wallet, certs.client("client"))
    assert failed is None
    assert answer.startswith(b"HTTP/1.1 200")
    assert b'"alice"' in answer
    # The way the coordinator calls it: aiohttp with the CA trusted and a certificate.
    connector = aiohttp.TCPConnector(ssl=certs.client("client"))
    async with (
        aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as h,
        h.get(f"https://127.0.0.1:{wallet}/accounts/alice") as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["id"] == "alice"


async def _refused(port: int, client: ssl.SSLContext, tls_max: ssl.TLSVersion | None) -> None:
    """The server refuses the client's certificate (or its lack of one) in the handshake. It
    sends no TLS alert (asyncio's SSL never does, cpython#98078), it closes the connection:
    over TLS 1.2 the client's handshake fails; over TLS 1.3 the client finishes its side first
    and then finds the connection closed, with no answer."""
    failed, answer = await asyncio.to_thread(_get_accounts, port, client)
    assert answer == b""
    if tls_max == ssl.TLSVersion.TLSv1_2:
        assert failed is not None


async def test_no_client_certificate__fails_the_handshake(wallet: int, certs: Certs) -> None:
    for tls_max in (None, ssl.TLSVersion.TLSv1_2):
        await _refused(wallet, certs.client(None, tls_max=tls_max), tls_max)
    connector = aiohttp.TCPConnector(ssl=certs.client(None))
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=10)
    ) as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"https://127.0.0.1:{wallet}/accounts") as resp:
                await resp.read()


async def test_a_client_certificate_from_another_ca__fails(wallet: int, certs: Certs) -> None:
    for tls_max in (None, ssl.TLSVersion.TLSv1_2):
        await _refused(wallet, certs.client("stranger", tls_max=tls_max), tls_max)


async def test_plain_http_gets_no_answer(wallet: int) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{wallet}/accounts") as resp:
                await resp.read()


def test_the_context__requires_a_client_certificate_and_tls_1_2_at_least(certs: Certs) -> None:
    context = ServerTls(certs.path("server.crt"), certs.path("server.key"), certs.ca).context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    without_ca = ServerTls(certs.path("server.crt"), certs.path("server.key")).context()
    assert without_ca.verify_mode == ssl.CERT_NONE  # HTTPS only: no client certificate asked


def _bad_options(certs: Certs) -> dict[str, tuple[list[str], str]]:
    """What is given, and what its one line says."""
    p = certs.path
    missing = str(p("nowhere.crt"))
    return {
        "missing certificate": (
            ["--tls-cert", missing, "--tls-key", str(p("server.key"))],
            f"--tls-cert {missing}: no such file",
        ),
        "key of another certificate": (
            ["--tls-cert", str(p("server.crt")), "--tls-key", str(p("client.key"))],
            f"--tls-key {p('client.key')} is not the key of the certificate in --tls-cert",
        ),
        "client CA without a certificate": (
            ["--tls-client-ca", str(certs.ca)],
            "--tls-client-ca needs --tls-cert, the server certificate",
        ),
        "client CA that holds no certificate": (
            [*certs.flags()[:4], "--tls-client-ca", str(p("ca.key"))],
            f"--tls-client-ca {p('ca.key')}: no PEM certificate in it",
        ),
        "missing key": (
            ["--tls-cert", str(p("server.crt")), "--tls-key", missing],
            f"--tls-key {missing}: no such file",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing certificate",
        "key of another certificate",
        "client CA without a certificate",
        "client CA that holds no certificate",
        "missing key",
    ],
)
def test_a_bad_tls_option__is_one_line_on_stderr_and_exit_2(certs: Certs, case: str) -> None:
    given, said = _bad_options(certs)[case]
    done = _run_wallet(given, clean_env())
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # one line: no usage, no traceback
    assert done.stderr.startswith("python -m participants.wallet: "), done.stderr
    assert said in done.stderr


def test_the_options_are_read_from_the_environment_too(certs: Certs) -> None:
    missing = certs.path("nowhere.crt")
    env = {**clean_env(), "TCC_SERVE_TLS_CERT": str(missing)}
    done = _run_wallet([], env)
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr.strip() == f"python -m participants.wallet: --tls-cert {missing}: no such file"
    )


def _run_wallet(flags: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # The options are checked before anything else: the database is never reached.
    command = [sys.executable, "-m", "participants.wallet", "--database-url"]
    return subprocess.run(
        [*command, "postgresql://127.0.0.1:1/nowhere", "--port", str(free_port()), *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
