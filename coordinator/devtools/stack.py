"""The whole local stack: embedded Postgres, the coordinator and the samples.

`tcc up` runs it on fixed ports until Ctrl-C, with the mail path (the notify sample and a
local SMTP sink the order's confirmation mails end in); `tcc demo` runs a private one on free
ports, without the mail path, and drives scenarios against it. Each service is a real child
process, so the demo can kill, pause and restart one for real. With ``tls`` (`tcc up --tls`)
the samples serve HTTPS and require a client certificate, all issued by a local CA (StackCerts).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import ssl
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from coordinator.api.server import port_problem
from coordinator.core.errors import ServiceStartError, StartRefused
from coordinator.devtools.children import Managed, clean_env, log_path_of
from coordinator.devtools.localca import LocalCA
from coordinator.embedded import EmbeddedServer
from coordinator.tlsfiles import ParticipantTls
from coordinator.txlog import migrator


@dataclass(frozen=True)
class Ports:
    coordinator: int = 36789
    wallet: int = 8101
    inventory: int = 8102
    order: int = 8103
    # The mail path: started only when both are given (tcc up gives them, the demo does not).
    notify: int | None = None
    mailsink: int | None = None

    def by_service(self) -> dict[str, int]:
        return {
            field.name: getattr(self, field.name)
            for field in fields(self)
            if getattr(self, field.name) is not None
        }

    @property
    def mail(self) -> bool:
        return self.notify is not None and self.mailsink is not None


# Where each service answers once it is up.
_READY_PATHS = {
    "coordinator": "/readyz",
    "wallet": "/accounts",
    "inventory": "/items",
    "order": "/orders",
    "notify": "/mails",
}


# The samples that are TCC participants (the order service begins transactions; notify is a
# message's step).
_REGISTERED = ("wallet", "inventory")

# With tls, the samples that serve HTTPS and require a client certificate: every one the
# coordinator calls (wallet and inventory as registered participants, the order for its own
# branch, notify for the mail's message step). The coordinator itself stays on plain HTTP.
HTTPS_SERVICES = ("wallet", "inventory", "order", "notify")

# What the samples' server certificate names: the addresses the stack's URLs use.
_SAMPLE_HOSTS = ("localhost", "127.0.0.1")
# A certificate kept from an earlier run is remade when it expires within this.
_RENEW_WITHIN = dt.timedelta(days=1)


@dataclass(frozen=True)
class StackCerts:
    """`tcc up --tls`'s certificates, in one folder beside the data dir: a local CA, the
    samples' server certificate, the coordinator's client certificate, and one for the
    developer (curl, and tcc up's own checks). Made on the first run and kept for the next
    ones while they are good (issued by the CA in the folder, with their key, for the right
    use and hosts, not expiring within a day); whatever is not is made again."""

    folder: Path
    made: tuple[str, ...] = ()  # the certificates this run made (none: all kept)

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    def cert(self, name: str) -> Path:
        """``name``: samples (server), coordinator or developer (clients)."""
        return self.folder / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.folder / f"{name}.key"

    @classmethod
    def ensure(cls, folder: Path) -> StackCerts:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # the CA's key is in it
        certs, made = cls(folder), []
        ca = _kept_ca(certs.ca, certs.ca_key)
        if ca is None:
            ca = LocalCA.create("tcc up local CA")
            ca.write(certs.ca, certs.ca_key)
            made.append(certs.ca.name)
        for name, hosts in (("samples", _SAMPLE_HOSTS), ("coordinator", ()), ("developer", ())):
            cert, key = certs.cert(name), certs.key(name)
            if not _still_good(cert, key, ca, hosts):
                ca.issue(f"tcc up {name}", hosts=hosts, client=not hosts).write(cert, key)
                made.append(cert.name)
        return cls(folder, tuple(made))

    def client_context(self) -> ssl.SSLContext:
        """What tcc up's own calls to the samples use: the local CA trusted, the developer's
        certificate presented."""
        developer = ParticipantTls(
            ca=self.ca, cert=self.cert("developer"), key=self.key("developer")
        )
        return developer.context()  # (as the coordinator's own calls are made)


def _fresh(cert: x509.Certificate) -> bool:
    now = dt.datetime.now(dt.UTC)
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - now > _RENEW_WITHIN


def _same_key(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    """Whether ``key`` is the private half of the certificate's public key."""
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def _kept_ca(cert_path: Path, key_path: Path) -> LocalCA | None:
    """The CA an earlier run made, if it is still good."""
    try:
        ca = LocalCA.load(cert_path, key_path)
        is_ca = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (OSError, ValueError, TypeError, IndexError, x509.ExtensionNotFound):
        return None
    good = is_ca and _fresh(ca.cert) and _same_key(ca.cert, ca.key)
    return ca if good else None


def _still_good(cert_path: Path, key_path: Path, ca: LocalCA, hosts: tuple[str, ...]) -> bool:
    """A server certificate for all of ``hosts``, or a client one when there are none."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca.cert)
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        names: set[str] = set()
        if hosts:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = {*san.get_values_for_type(x509.DNSName)}
            names |= {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    usage = ExtendedKeyUsageOID.SERVER_AUTH if hosts else ExtendedKeyUsageOID.CLIENT_AUTH
    return _fresh(cert) and _same_key(cert, key) and usage in usages and names >= {*hosts}


class Stack:
    def __init__(
        self, data_dir: Path, ports: Ports, *, temporary: bool = False, tls: bool = False
    ) -> None:
        self.data_dir = data_dir
        self.ports = ports
        self.temporary = temporary
        self.tls = tls
        self.log_dir = data_dir.parent / "logs"
        self.mail_dir = data_dir.parent / "mail"  # the SMTP sink's store
        self.tls_dir = data_dir.parent / "tls"  # with tls: the local CA and its certificates
        self.certs: StackCerts | None = None  # with tls, once start() made or found them
        self.database: EmbeddedServer | None = None
        self.services: dict[str, Managed] = {}

    def log_path(self, service: str) -> Path:
        return log_path_of(self.log_dir, service)

    def url(self, service: str) -> str:
        scheme = "https" if self.tls and service in HTTPS_SERVICES else "http"
        return f"{scheme}://127.0.0.1:{getattr(self.ports, service)}"

    def session(self, timeout_s: float) -> aiohttp.ClientSession:
        """A client for the stack's services; with tls it trusts the local CA and presents
        the developer's certificate (the samples answer nobody else)."""
        if self.certs is None:
            return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            connector=aiohttp.TCPConnector(ssl=self.certs.client_context()),
        )

    def check_ports(self) -> None:
        """Refuse to start, in one line, if a port of the stack is taken (naming who holds it)
        or given to two services: better than Postgres and three children started in vain."""
        problems: list[str] = []
        owners: dict[int, str] = {}
        for name, port in self.ports.by_service().items():
            if port in owners:
                problems.append(f"port {port} is given to both {owners[port]} and {name}")
            elif problem := port_problem("127.0.0.1", port, label=name):
                problems.append(problem)
            owners.setdefault(port, name)
        if problems:
            raise StartRefused("; ".join(problems))

    async def start(self, coordinator_env: dict[str, str] | None = None) -> None:
        """Start everything; ``coordinator_env``: TCC_* settings for the coordinator that
        override the stack's own (tcc up passes on what it was given)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        tls_env: dict[str, str] = {}
        sample_flags: list[str] = []
        if self.tls:
            self.certs = certs = await asyncio.to_thread(StackCerts.ensure, self.tls_dir)
            tls_env = {
                "TCC_PARTICIPANT_TLS_CA": str(certs.ca),
                "TCC_PARTICIPANT_TLS_CERT": str(certs.cert("coordinator")),
                "TCC_PARTICIPANT_TLS_KEY": str(certs.key("coordinator")),
            }
            sample_flags = [
                "--tls-cert",
                str(certs.cert("samples")),
                "--tls-key",
                str(certs.key("samples")),
                "--tls-client-ca",
                str(certs.ca),
            ]
        self.database = await asyncio.to_thread(
            EmbeddedServer, self.data_dir, delete_on_close=self.temporary
        )
        db = self.database.url
        await migrator.migrate(db)
        python = sys.executable
        coordinator_env = {
            **clean_env(),
            "TCC_DATABASE_URL": db,
            "TCC_PORT": str(self.ports.coordinator),
            "TCC_LOG_FORMAT": "json",
            "TCC_MIGRATE": "false",
            # Local development only: no API keys, participants on loopback.
            "TCC_INSECURE": "true",
            "TCC_PARTICIPANT_ALLOW": "127.0.0.0/8",
            # Local development: recover quickly after the demo's kills.
            "TCC_RECOVERY_INTERVAL_S": "0.5",
            "TCC_LEASE_TTL_S": "5",
            "TCC_RETRY_MAX_S": "2",
            # ... and let a participant the demo restarts back in soon (a probe after 2 s).
            "TCC_BREAKER_OPEN_S": "2",
            "TCC_BREAKER_RAMP_S": "5",
            # With tls: trust the local CA, present the coordinator's client certificate.
            **tls_env,
            **(coordinator_env or {}),
        }
        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            "coordinator": ([python, "-m", "coordinator.cli", "serve"], coordinator_env),
            "wallet": (
                [
                    python,
                    "-m",
                    "participants.wallet",
                    "--database-url",
                    db,
                    "--port",
                    str(self.ports.wallet),
                    *sample_flags,
                ],
                clean_env(),
            ),
            "inventory": (
                [
                    python,
                    "-m",
                    "participants.inventory",
                    "--database-url",
                    db,
                    "--port",
                    str(self.ports.inventory),
                    *sample_flags,
                ],
                clean_env(),
            ),
        }
        order_flags: list[str] = []
        if self.ports.mail:
            commands["mailsink"] = (
                [
                    python,
                    "-m",
                    "participants.mailsink",
                    "--port",
                    str(self.ports.mailsink),
                    "--store",
                    str(self.mail_dir),
                ],
                clean_env(),
            )
            commands["notify"] = (
                [
                    python,
                    "-m",
                    "participants.notify",
                    "--database-url",
                    db,
                    "--port",
                    str(self.ports.notify),
                    "--smtp-host",
                    "127.0.0.1",
                    "--smtp-port",
                    str(self.ports.mailsink),
                    "--coordinator-url",
                    self.url("coordinator"),
                    *sample_flags,
                ],
                clean_env(),
            )
            order_flags = ["--notify-url", self.url("notify")]
        commands["order"] = (
            [
                python,
                "-m",
                "participants.order",
                "--database-url",
                db,
                "--port",
                str(self.ports.order),
                "--coordinator-url",
                self.url("coordinator"),
                "--wallet-url",
                self.url("wallet"),
                "--inventory-url",
                self.url("inventory"),
                *order_flags,
                *sample_flags,
            ],
            clean_env(),
        )
        for name, (command, env) in commands.items():
            self.services[name] = Managed(name, command, env, self.log_dir)
            self.services[name].start()
        await self.wait_ready()
        await self.register_participants()

    async def register_participants(self) -> None:
        """The TCC samples in the coordinator's registry, as a service would register its
        own: the console's Participants page shows them, their breakers guard them, and
        `tcc conformance --participant wallet` finds them."""
        async with self.session(10) as http:
            for name in _REGISTERED:
                body = {
                    "base_url": f"{self.url(name)}/tcc",
                    "health_url": self.url(name) + _READY_PATHS[name],
                    "owner_service": name,
                }
                url = f"{self.url('coordinator')}/v1/participants/{name}"
                async with http.put(url, json=body) as resp:
                    if resp.status not in (200, 201):
                        detail = await resp.text()
                        raise ServiceStartError(f"registering {name} failed: {detail[:300]}")

    async def wait_ready(self, *names: str, timeout_s: float = 60) -> None:
        pending = set(names or self.services)
        deadline = time.monotonic() + timeout_s
        async with self.session(2) as http:
            while pending and time.monotonic() < deadline:
                for name in sorted(pending):
                    if not self.services[name].alive:
                        raise ServiceStartError(
                            f"{name} exited at start-up; see {self.services[name].log_path}"
                        )
                    if name == "mailsink":
                        if await _smtp_answers(getattr(self.ports, name)):
                            pending.discard(name)
                        continue
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with http.get(self.url(name) + _READY_PATHS[name]) as resp:
                            if resp.status == 200:
                                pending.discard(name)
                if pending:
                    await asyncio.sleep(0.2)
        if pending:
            raise ServiceStartError(f"not ready after {timeout_s:g}s: {sorted(pending)}")

    def dead(self) -> list[str]:
        return [name for name, proc in self.services.items() if not proc.alive]

    async def restart(self, name: str) -> None:
        self.services[name].start()
        await self.wait_ready(name)

    async def stop(self) -> None:
        for proc in reversed(list(self.services.values())):
            await asyncio.to_thread(proc.terminate)
        if self.database is not None:
            await asyncio.to_thread(self.database.close)


async def _smtp_answers(port: int) -> bool:
    """True when an SMTP server on 127.0.0.1:port greets (220) and says goodbye."""
    try:
        async with asyncio.timeout(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, family=socket.AF_INET)
            try:
                greeting = await reader.readline()
                writer.write(b"QUIT\r\n")
                await writer.drain()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return greeting.startswith(b"220")
