"""The whole local stack: embedded Postgres, the coordinator and the samples.

`tcc up` runs it on fixed ports until Ctrl-C, with the mail path (the notify sample and a
local SMTP sink the order's confirmation mails end in); `tcc demo` runs a private one on free
ports, without the mail path, and drives scenarios against it. Each service is a real child
process, so the demo can kill, pause and restart one for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import aiohttp

from coordinator.api.server import port_problem
from coordinator.core.errors import ServiceStartError, StartRefused
from coordinator.devtools.children import Managed, clean_env
from coordinator.embedded import EmbeddedServer
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


class Stack:
    def __init__(self, data_dir: Path, ports: Ports, *, temporary: bool = False) -> None:
        self.data_dir = data_dir
        self.ports = ports
        self.temporary = temporary
        self.log_dir = data_dir.parent / "logs"
        self.mail_dir = data_dir.parent / "mail"  # the SMTP sink's store
        self.database: EmbeddedServer | None = None
        self.services: dict[str, Managed] = {}

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{getattr(self.ports, service)}"

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
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
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
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
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
