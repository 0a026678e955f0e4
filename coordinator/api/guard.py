"""Authentication middleware and the ownership checks the handlers use."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from coordinator.api.appkeys import SETTINGS, STORE
from coordinator.api.problems import problem
from coordinator.core.apikeys import INSECURE, KeyRing, Principal, bearer_token
from coordinator.core.errors import Forbidden, InvalidInput, NotFound
from coordinator.core.records import Transaction

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


def _namespace(request: web.Request) -> str | None:
    if not request.app[SETTINGS].gid_namespaces:
        return None
    return principal_of(request).gid_namespace


def new_gid(request: web.Request) -> str:
    """A fresh gid, inside the caller's namespace when it has one."""
    return f"{_namespace(request) or ''}{uuid.uuid4().hex}"


def gid_for_begin(request: web.Request, asked: str | None) -> str:
    """The gid a begin may use: the one asked for if it lies in the caller's namespace
    (so that no service can take, or learn of, another's gids), or a fresh one."""
    if asked is None:
        return new_gid(request)
    prefix = _namespace(request)
    if prefix is not None and not (asked.startswith(prefix) and len(asked) > len(prefix)):
        raise InvalidInput(
            f"gid: the gids of service {prefix[:-1]!r} begin with {prefix!r} (each service"
            " has its own namespace); omit gid to have one generated"
        )
    return asked


async def owned(request: web.Request, gid: str) -> Transaction:
    """The transaction, if the caller may see it; another service's is simply not found
    (outside the caller's namespace without even asking the log)."""
    prefix = _namespace(request)
    if prefix is not None and not gid.startswith(prefix):
        raise NotFound(f"no transaction {gid!r}")
    txn = await request.app[STORE].get(gid)
    if not principal_of(request).may_see(txn.service):
        raise NotFound(f"no transaction {gid!r}")
    return txn
