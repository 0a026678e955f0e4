"""Signing in to the console and out of it: a key checked once opens a session that names it.

The key itself goes no further than the check: not into the cookie, the page, the log or a
URL."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from enum import StrEnum
from urllib.parse import parse_qs

import structlog
from aiohttp import web

from coordinator.api.appkeys import COORDINATOR, SESSION_BOOK, SESSIONS, SETTINGS
from coordinator.api.console.pages import HOME, html_errors, see_other
from coordinator.api.console.render import render
from coordinator.api.gateway import external
from coordinator.api.guard import CONSOLE_LOGIN
from coordinator.api.problems import BadRequest
from coordinator.api.sessions import COOKIE_NAME, key_digest
from coordinator.api.wire import read_request
from coordinator.core.apikeys import Scope
from coordinator.core.records import NewSession
from coordinator.core.throttle import FailureWindow

log = structlog.get_logger(__name__)

LOGIN_FORM_MAX_BYTES = 8192
LOGIN_WINDOW_S = 300.0


# --- signing in and out --------------------------------------------------------------


def _safe_next(value: str | None) -> str:
    """Where to go after logging in: a console page of this server, nothing else. It goes
    into a Location header, so only visible ASCII (a URL as the browser sent it, with
    anything else percent-encoded): a CR or LF would split the header."""
    if (
        value
        and value.startswith("/ui/")
        and len(value) < 2000
        and all("!" <= c <= "~" for c in value)
        and "//" not in value
        and "\\" not in value
        and not value.startswith(CONSOLE_LOGIN)
    ):
        return value
    return HOME


async def login_form(request: web.Request) -> web.StreamResponse:
    if request.app[SETTINGS].insecure:
        return see_other(request, HOME)
    return render(request, "login.html", next=_safe_next(request.query.get("next")), message=None)


async def _read_form(request: web.Request) -> dict[str, str]:
    raw = await read_request(request)
    if len(raw) > LOGIN_FORM_MAX_BYTES:
        raise BadRequest("the form is too large")
    fields = parse_qs(raw.decode("utf-8", errors="replace"), max_num_fields=10)
    return {name: values[0] for name, values in fields.items()}


class Refusal(StrEnum):
    """Why a login was refused (the tcc_console_login_refusals label)."""

    WRONG_KEY = "wrong_key"
    SERVICE_KEY = "service_key"
    RATE_LIMITED = "rate_limited"
    BAD_FORM = "bad_form"


class LoginLimits:
    """Refused logins per client address (TCC_LOGIN_FAILURE_LIMIT in five minutes) and per
    key name (twice as many, whatever the address). Kept by each process: with --workers N a
    client may get N times as many tries, still a handful a minute."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.by_address = FailureWindow(limit, LOGIN_WINDOW_S, clock=clock)
        self.by_name = FailureWindow(2 * limit, LOGIN_WINDOW_S, clock=clock)

    def retry_after(self, address: str, name: str) -> float | None:
        waits = [self.by_address.retry_after(address), self.by_name.retry_after(name)]
        found = [w for w in waits if w is not None]
        return max(found) if found else None

    def failed(self, address: str, name: str) -> None:
        self.by_address.failed(address)
        self.by_name.failed(name)

    def succeeded(self, address: str) -> None:
        self.by_address.forget(address)


LOGIN_LIMITS = web.AppKey("login_limits", LoginLimits)


def _refuse(
    request: web.Request,
    reason: Refusal,
    status: int,
    message: str,
    next_page: str,
    *,
    headers: dict[str, str] | None = None,
    **logged: object,
) -> web.Response:
    request.app[COORDINATOR].metrics.login_refused(reason.value)
    log.warning("console_login_refused", reason=reason.value, remote=request.remote, **logged)
    return render(
        request, "login.html", status=status, headers=headers, next=next_page, message=message
    )


@html_errors
async def login(request: web.Request) -> web.StreamResponse:
    """Check a key once and open a session that names it. The key itself goes no further:
    not into the cookie, the page, the log or a URL. The form names the key (as
    TCC_API_KEYS does) and gives it, like a user name and a password; refusals are counted
    per client address and per key name, and past the limit the key is not even looked at."""
    if request.app[SETTINGS].insecure:
        return see_other(request, HOME)
    form = await _read_form(request)
    next_page = _safe_next(form.get("next"))
    presented = form.get("key", "").strip()
    name = form.get("name", "").strip()[:200]
    address = request.remote or "?"
    limits = request.app[LOGIN_LIMITS]
    wait = limits.retry_after(address, name)
    if wait is not None:
        seconds = math.ceil(wait)
        return _refuse(
            request,
            Refusal.RATE_LIMITED,
            429,
            f"Too many refused logins: try again in {seconds} seconds.",
            next_page,
            headers={"Retry-After": str(seconds)},
            key_name=name or None,
        )
    if not presented or not name:
        return _refuse(
            request, Refusal.BAD_FORM, 400, "Enter the key's name and the key.", next_page
        )
    key = request.app[SESSIONS].key_for(presented)
    if key is None or key.name != name:
        limits.failed(address, name)
        return _refuse(
            request,
            Refusal.WRONG_KEY,
            401,
            "No key of that name and value is configured on this coordinator.",
            next_page,
            key_name=name or None,
        )
    if key.scope is Scope.SERVICE:
        limits.failed(address, name)
        return _refuse(
            request,
            Refusal.SERVICE_KEY,
            403,
            f"{key.name!r} has a service key, which cannot open the console:"
            " log in with an admin or viewer key.",
            next_page,
            key_name=key.name,
        )
    limits.succeeded(address)
    issued = request.app[SESSIONS].issue(key)
    session = issued.session
    await request.app[SESSION_BOOK].open(
        NewSession(
            id=session.stored_id,
            key_name=key.name,
            scope=key.scope,
            key_digest=key_digest(key),
            remote=request.remote,
            ttl_s=request.app[SESSIONS].ttl_s,
        )
    )
    log.info("console_login", key_name=key.name, scope=key.scope.value, remote=request.remote)
    response = see_other(request, next_page)
    response.set_cookie(
        COOKIE_NAME,
        issued.cookie,
        max_age=int(request.app[SESSIONS].ttl_s),
        path=_cookie_path(request),
        secure=_over_https(request),
        httponly=True,
        samesite="Strict",
    )
    return response


@html_errors
async def logout(request: web.Request) -> web.StreamResponse:
    """End the session, on every coordinator (the log forgets it), not only in this
    browser. A session that is still valid must show the page's token (a plain form, so it
    travels as a field rather than a header)."""
    sessions = request.app[SESSIONS]
    cookie = request.cookies.get(COOKIE_NAME)
    form = await _read_form(request)
    session = sessions.read(cookie)
    if session is not None and cookie and not sessions.csrf_ok(cookie, form.get("csrf_token")):
        raise web.HTTPForbidden(text="the logout form's token is missing or wrong: reload")
    if session is not None:
        await request.app[SESSION_BOOK].end(session.stored_id, by=f"logout:{session.name}")
        log.info("console_logout", key_name=session.name)
    response = see_other(request, CONSOLE_LOGIN)
    response.del_cookie(
        COOKIE_NAME, path=_cookie_path(request), secure=_over_https(request), samesite="Strict"
    )
    return response


def _cookie_path(request: web.Request) -> str:
    """The session goes only to us: under a gateway's path prefix, to that path."""
    return external(request, "/")


def _over_https(request: web.Request) -> bool:
    # Behind a TLS-terminating proxy the request arrives over http; trusting the proxy's
    # word here can only add the Secure flag, never remove it.
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
