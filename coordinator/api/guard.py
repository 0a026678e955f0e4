"""Authentication: who is calling. What they may do is the service layer's to decide."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from coordinator.api.appkeys import KEYRING, SETTINGS
from coordinator.api.problems import problem
from coordinator.core.apikeys import INSECURE, Principal, bearer_token

PRINCIPAL = web.RequestKey("principal", Principal)

HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
OPEN_PATHS = frozenset({"/openapi.json", "/api/ping"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    path = request.path
    needs_key = not (path in OPEN_PATHS or (path in HEALTH_PATHS and not settings.protect_health))
    if settings.insecure:
        request[PRINCIPAL] = INSECURE
    elif needs_key:
        token = bearer_token(request.headers.get("Authorization"))
        principal = request.app[KEYRING].identify(token) if token else None
        if principal is None:
            detail = "missing API key" if token is None else "unknown API key"
            return problem(
                401,
                f"{detail}: send Authorization: Bearer <key>",
                headers={"WWW-Authenticate": 'Bearer realm="tcc-coordinator"'},
            )
        request[PRINCIPAL] = principal
    return await handler(request)


def caller(request: web.Request) -> Principal:
    principal: Principal | None = request.get(PRINCIPAL)
    return principal or INSECURE


def actor(request: web.Request) -> str:
    """Who did an operator action, for the audit trail."""
    return f"api:{caller(request).name or 'api (insecure)'}"
