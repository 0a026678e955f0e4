"""The aiohttp application: one factory; the coordinator runs inside its cleanup context."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from coordinator.api.appkeys import (
    ALLOWED_HOSTS,
    COORDINATOR,
    KEYRING,
    SESSION_BOOK,
    SESSIONS,
    SETTINGS,
)
from coordinator.api.console.login import LOGIN_LIMITS, LoginLimits
from coordinator.api.gateway import PATH_PREFIX, TRUSTED_PROXIES, gateway_middleware
from coordinator.api.guard import auth_middleware
from coordinator.api.problems import problem_middleware
from coordinator.api.routes import setup_routes
from coordinator.api.sessions import Sessions, session_secret
from coordinator.api.tracecontext import trace_context_middleware
from coordinator.core.apikeys import KeyRing, parse_keys
from coordinator.core.forwarding import clean_prefix, parse_trusted
from coordinator.core.hosts import parse_allowed_hosts
from coordinator.core.urlpolicy import ParticipantPolicy
from coordinator.engine.runtime import Runtime, running
from coordinator.logs import guard_server_logs
from coordinator.settings import Settings

log = structlog.get_logger(__name__)

RUNTIME = web.AppKey("runtime", Runtime)


async def stop_claiming(app: web.Application) -> None:
    """On shutdown, before in-flight requests get their grace: claim no new work."""
    app[RUNTIME].recovery.stop()


def create_app(settings: Settings, database_url: str, *, recovery: bool = True) -> web.Application:
    app = web.Application(
        middlewares=[
            gateway_middleware,
            trace_context_middleware,
            problem_middleware,
            auth_middleware,
        ],
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
    app[ALLOWED_HOSTS] = parse_allowed_hosts(settings.allowed_hosts)
    app[TRUSTED_PROXIES] = parse_trusted(settings.trusted_proxies)
    app[PATH_PREFIX] = clean_prefix(settings.path_prefix)
    app[LOGIN_LIMITS] = LoginLimits(settings.login_failure_limit)
    app[SESSIONS] = Sessions(
        session_secret(settings.session_secret, settings.api_keys),
        settings.console_session_ttl_s,
        app[KEYRING],
    )

    async def coordinator(app: web.Application) -> AsyncIterator[None]:
        async with running(settings, database_url, recovery=recovery) as runtime:
            app[RUNTIME] = runtime
            app[COORDINATOR] = runtime.coordinator
            app[SESSION_BOOK] = runtime.sessions
            if not settings.insecure:
                # A key removed from the configuration ends its sessions everywhere, and
                # putting it back later does not revive them.
                await runtime.sessions.keep_only_keys(app[SESSIONS].configured_keys())
            _warn_about_open_doors(settings)
            yield

    app.cleanup_ctx.append(coordinator)
    app.on_shutdown.append(stop_claiming)
    setup_routes(app, dtm_api=settings.dtm_api)
    return app


def _warn_about_open_doors(settings: Settings) -> None:
    if settings.insecure:
        log.warning(
            "insecure_mode",
            message="running WITHOUT authentication: anyone who can reach this port can "
            "read and decide every transaction; never do this outside local development",
        )
    elif not settings.session_secret:
        log.warning(
            "console_session_secret_derived",
            message="console sessions are signed with a secret derived from TCC_API_KEYS:"
            " set TCC_SESSION_SECRET so that reading the key configuration (hashes only) is"
            " not enough to forge a console session",
        )
    warning = ParticipantPolicy.from_config(settings.participant_allow).startup_warning
    if warning:
        log.warning("participant_policy_open", message=warning)
