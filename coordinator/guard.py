"""Authentication middleware and the ownership checks the handlers use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from coordinator.auth import INSECURE, KeyRing, Principal, bearer_token
from coordinator.exceptions import Forbidden, NotFound
from coordinator.keys import SETTINGS, STORE
from coordinator.models import Transaction
from coordinator.problems import problem

KEYRING = web.AppKey("keyring", KeyRing)
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


def principal_of(request: web.Request) -> Principal:
    principal: Principal | None = request.get(PRINCIPAL)
    return principal or INSECURE


def require_admin(request: web.Request, action: str) -> None:
    if not principal_of(request).is_admin:
        raise Forbidden(f"{action} needs an admin key")


def service_for_begin(request: web.Request, asked: str | None) -> str | None:
    """A service key begins transactions as itself; an admin may name any service."""
    principal = principal_of(request)
    if principal.is_admin:
        return asked
    if asked is not None and asked != principal.name:
        raise Forbidden(f"the key of {principal.name!r} cannot begin transactions as {asked!r}")
    return principal.name


async def owned(request: web.Request, gid: str) -> Transaction:
    """The transaction, if the caller may see it; another service's is simply not found."""
    txn = await request.app[STORE].get(gid)
    if not principal_of(request).may_see(txn.service):
        raise NotFound(f"no transaction {gid!r}")
    return txn
