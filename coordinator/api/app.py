"""The aiohttp application: one factory, resources opened and closed in cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web

from coordinator.api.appkeys import ENGINE, POLICY, SETTINGS, STORE
from coordinator.api.dtm import setup_dtm_routes
from coordinator.api.guard import KEYRING, auth_middleware
from coordinator.api.problems import problem_middleware
from coordinator.api.routes import setup_routes
from coordinator.core.apikeys import KeyRing, parse_keys
from coordinator.core.urlpolicy import ParticipantPolicy, PolicyResolver
from coordinator.engine.driver import Engine
from coordinator.engine.recovery import Recovery
from coordinator.logs import guard_server_logs
from coordinator.outbound import ParticipantCaller
from coordinator.settings import Settings
from coordinator.txlog import migrator
from coordinator.txlog.postgres import Store, connect_pool

log = structlog.get_logger(__name__)

RECOVERY_TASK = web.AppKey("recovery_task", asyncio.Task[None])
RECOVERY = web.AppKey("recovery", Recovery)


async def stop_claiming(app: web.Application) -> None:
    """On shutdown, before in-flight requests get their grace: claim no new work."""
    app[RECOVERY].stop()


def create_app(settings: Settings, database_url: str, *, recovery: bool = True) -> web.Application:
    app = web.Application(
        middlewares=[problem_middleware, auth_middleware],
        client_max_size=settings.max_body_bytes,
        handler_args={
            "max_headers": settings.max_headers,
            "max_field_size": settings.max_header_bytes,
            "max_line_size": settings.max_header_bytes,
            # aiohttp's own idle timer (75 s under web.run_app), from the connection's start
            # and after each response.
            "keepalive_timeout": settings.keepalive_timeout_s,
            # How long an unread request body is drained after the response before the
            # connection is closed (aiohttp: 10 s), so a refused upload frees its slot soon.
            "lingering_time": 2.0,
        },
    )
    guard_server_logs()
    app[SETTINGS] = settings
    app[KEYRING] = KeyRing(parse_keys(settings.api_keys or ""))
    policy = ParticipantPolicy.from_config(settings.participant_allow)
    app[POLICY] = policy

    async def resources(app: web.Application) -> AsyncIterator[None]:
        if settings.migrate:
            await migrator.migrate(database_url)
        pool = await connect_pool(database_url, settings.pool_min_size, settings.pool_max_size)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                # Bounded, so the open-file budget (coordinator/server.py) holds.
                limit=settings.max_participant_connections,
                limit_per_host=100,
                resolver=PolicyResolver(policy),
            ),
        )
        store = Store(pool)
        caller = ParticipantCaller(session, settings.max_response_bytes, policy)
        engine = Engine(store, caller, settings)
        app[STORE], app[ENGINE] = store, engine
        loop = Recovery(engine)
        task = asyncio.create_task(loop.run_forever(), name="recovery")
        app[RECOVERY_TASK] = task
        app[RECOVERY] = loop
        log.info("coordinator_started", owner=engine.owner, recovery=recovery)
        if settings.insecure:
            log.warning(
                "insecure_mode",
                message="running WITHOUT authentication: anyone who can reach this port can "
                "read and decide every transaction; never do this outside local development",
            )
        if policy.startup_warning:
            log.warning("participant_policy_open", message=policy.startup_warning)
        if not recovery:
            loop.stop()
        try:
            yield
        finally:
            loop.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await engine.shutdown(settings.shutdown_grace_s)
            await session.close()
            await pool.close()
            log.info("coordinator_stopped", owner=engine.owner)

    app.cleanup_ctx.append(resources)
    app.on_shutdown.append(stop_claiming)
    setup_routes(app)
    if settings.dtm_api:
        setup_dtm_routes(app)
    return app
