"""Behind a gateway: the client's address, scheme, host and the path prefix we are served
under, as our trusted proxies tell them (coordinator/core/forwarding.py), or TCC_PATH_PREFIX.

The first middleware: every later one, every handler and every log line see the request as the
client made it (``request.remote`` is the client, ``request.secure`` true over https at the
gateway). The gateway strips the prefix before passing a request on (nginx: ``location /tcc/ {
proxy_pass http://coordinators/; }``), so routes stay as they are; what the coordinator sends
back for the browser to follow (console links, redirects, the session cookie's Path, OpenAPI's
``servers``) carries the prefix again through ``external``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from coordinator.core.forwarding import IpNetwork, resolve

TRUSTED_PROXIES = web.AppKey("trusted_proxies", tuple[IpNetwork, ...])
PATH_PREFIX = web.AppKey("path_prefix", str)  # configured: TCC_PATH_PREFIX, or ""
PREFIX = web.RequestKey("prefix", str)  # this request's, forwarded or configured

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    seen = resolve(request.remote, request.headers, request.app[TRUSTED_PROXIES])
    if seen is None:
        request[PREFIX] = request.app[PATH_PREFIX]
        return await handler(request)
    changes: dict[str, Any] = {"remote": seen.client}
    if seen.scheme:
        changes["scheme"] = seen.scheme
    if seen.host:
        changes["host"] = seen.host
    forwarded = request.clone(**changes)
    forwarded[PREFIX] = seen.prefix or request.app[PATH_PREFIX]
    return await handler(forwarded)


def prefix_of(request: web.Request) -> str:
    """The path prefix the client reaches us under ("" when none)."""
    found: str | None = request.get(PREFIX)
    return found if found is not None else request.app.get(PATH_PREFIX, "")


def external(request: web.Request, path: str) -> str:
    """A path of ours ("/ui/...") as the client must ask for it."""
    return prefix_of(request) + path
