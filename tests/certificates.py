"""Certificates for the TLS tests: a CA made for the test and what it issues, as files, and
OpenSSL's own test server (which, unlike an asyncio one, sends its alert when it refuses a
client certificate)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.devtools.localca import LocalCA
from tests.helpers import eventually
from tests.participant_server import FakeParticipant
from tests.processes import free_port


@dataclass
class Pki:
    """A CA and everything it issued for one test, as files."""

    root: Path
    ca: LocalCA
    other_ca: LocalCA

    def path(self, name: str) -> Path:
        return self.root / name

    def issue_server(
        self,
        name: str,
        hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> tuple[Path, Path]:
        cert, key = self.path(f"{name}.crt"), self.path(f"{name}.key")
        issued = self.ca.issue(name, hosts=hosts, not_before=not_before, not_after=not_after)
        issued.write(cert, key)
        return cert, key

    def issue_client(self, name: str, *, ca: LocalCA | None = None) -> tuple[Path, Path]:
        cert, key = self.path(f"{name}.crt"), self.path(f"{name}.key")
        (ca or self.ca).issue(name, client=True).write(cert, key)
        return cert, key

    def server_context(
        self, cert: Path, key: Path, *, require_client: bool = True
    ) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        if require_client:
            context.load_verify_locations(cafile=self.path("ca.crt"))
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, other = LocalCA.create("test CA"), LocalCA.create("another CA")
    ca.write(tmp_path / "ca.crt", tmp_path / "ca.key")
    other.write(tmp_path / "other-ca.crt", tmp_path / "other-ca.key")
    return Pki(tmp_path, ca, other)


@pytest.fixture
async def mtls_participant(pki: Pki) -> AsyncIterator[FakeParticipant]:
    """A participant serving https, requiring a client certificate from the test CA."""
    fake = FakeParticipant(pki.server_context(*pki.issue_server("participant")))
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@contextlib.asynccontextmanager
async def openssl_server(pki: Pki, *options: str) -> AsyncIterator[str]:
    """OpenSSL's test server on 127.0.0.1, requiring a client certificate of the test CA:
    unlike an asyncio server, it sends its alert when it refuses one."""
    cert, key = pki.issue_server("openssl")
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        "openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert),
        "-key", str(key), "-CAfile", str(pki.path("ca.crt")), "-Verify", "1",
        "-verify_return_error", "-www", *options,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await eventually(lambda: port_open(port), bool, timeout_s=20)
        yield f"https://127.0.0.1:{port}/"
    finally:
        process.kill()
        await process.wait()


async def port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True
