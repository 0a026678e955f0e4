"""W3C trace context on the way in: a request's `traceparent` / `tracestate` (on either API)
is the current context while it is handled, so a begin joins the caller's trace."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from coordinator import tracing


@web.middleware
async def trace_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = tracing.attach_incoming(request.headers)
    try:
        return await handler(request)
    finally:
        if token is not None:
            tracing.detach(token)
