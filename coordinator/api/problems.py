"""RFC 9457 problem details: every error the HTTP API returns goes through here."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
import structlog
from aiohttp import web

from coordinator.api.body import BodyTooLarge, BodyTooSlow
from coordinator.core.errors import (
    CircuitOpen,
    Conflict,
    CoordinatorError,
    DatabaseUnavailable,
    Forbidden,
    InvalidInput,
    LimitExceeded,
    NotFound,
)

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    421: "Misdirected Request",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class BadRequest(CoordinatorError):
    """The request cannot be read at all (400)."""


def problem(
    status: int,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> web.Response:
    body = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        **extensions,
    }
    return web.Response(
        status=status,
        text=json.dumps(body, default=str),
        content_type=PROBLEM_JSON,
        headers=headers,
    )


def describe_validation(exc: pydantic.ValidationError) -> tuple[str, list[dict[str, str]]]:
    errors = []
    for err in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(p) for p in err["loc"]) or "(body)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        errors.append({"field": field, "message": message})
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return detail, errors


_DOMAIN_STATUS: list[tuple[type[CoordinatorError], int]] = [
    (BadRequest, 400),
    (BodyTooSlow, 408),
    (BodyTooLarge, 413),
    (NotFound, 404),
    (Forbidden, 403),
    (Conflict, 409),
    (LimitExceeded, 422),
    (InvalidInput, 422),
    (DatabaseUnavailable, 503),
    (CircuitOpen, 503),
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except pydantic.ValidationError as exc:
        detail, errors = describe_validation(exc)
        return problem(422, detail, errors=errors)
    except DatabaseUnavailable as exc:
        # Nothing half-written: each write is one database transaction.
        log.warning("database_unavailable", path=request.path, error=str(exc))
        return problem(
            503, "the transaction log is unavailable; retry shortly", headers={"Retry-After": "1"}
        )
    except CoordinatorError as exc:
        for kind, status in _DOMAIN_STATUS:
            if isinstance(exc, kind):
                response = problem(status, str(exc))
                if isinstance(exc, CircuitOpen):
                    response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_in_s)))
                if status == 408:
                    response.force_close()  # the rest of a dribbled body is not worth waiting for
                return response
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 405:
            detail = f"{request.method} is not allowed on {request.path}"
        elif exc.status == 404:
            detail = f"no route for {request.path}"
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return problem(exc.status, detail, headers=headers)
    except Exception:
        log.exception("request_crashed", path=request.path, method=request.method)
        return problem(500, "internal error; the coordinator log has the details")
