"""Signing in to the console and out of it: a key checked once opens a session that names it.

The key itself goes no further than the check: not into the cookie, the page, the log or a
URL."""

from __future__ import annotations

from urllib.parse import parse_qs

import structlog
from aiohttp import web

from coordinator.api.appkeys import SESSIONS, SETTINGS
from coordinator.api.console.pages import HOME, html_errors, see_other
from coordinator.api.console.render import render
from coordinator.api.guard import CONSOLE_LOGIN
from coordinator.api.problems import BadRequest
from coordinator.api.sessions import COOKIE_NAME
from coordinator.api.wire import read_request
from coordinator.core.apikeys import Scope

log = structlog.get_logger(__name__)

LOGIN_FORM_MAX_BYTES = 8192


# --- signing in and out --------------------------------------------------------------


def _safe_next(value: str | None) -> str:
    """Where to go after logging in: a console page of this server, nothing else."""
    if (
        value
        and value.startswith("/ui/")
        and len(value) < 2000
        and "//" not in value
        and "\\" not in value
        and not value.startswith(CONSOLE_LOGIN)
    ):
        return value
    return HOME


async def login_form(request: web.Request) -> web.StreamResponse:
    if request.app[SETTINGS].insecure:
        return see_other(HOME)
    return render(request, "login.html", next=_safe_next(request.query.get("next")), message=None)


async def _read_form(request: web.Request) -> dict[str, str]:
    raw = await read_request(request)
    if len(raw) > LOGIN_FORM_MAX_BYTES:
        raise BadRequest("the form is too large")
    fields = parse_qs(raw.decode("utf-8", errors="replace"), max_num_fields=10)
    return {name: values[0] for name, values in fields.items()}


@html_errors
async def login(request: web.Request) -> web.StreamResponse:
    """Check a key once and open a session that names it. The key itself goes no further:
    not into the cookie, the page, the log or a URL."""
    if request.app[SETTINGS].insecure:
        return see_other(HOME)
    form = await _read_form(request)
    next_page = _safe_next(form.get("next"))
    presented = form.get("key", "").strip()
    key = request.app[SESSIONS].key_for(presented) if presented else None
    if key is None or key.scope is Scope.SERVICE:
        if key is None:
            status, message = (
                (401, "That key is not configured on this coordinator.")
                if presented
                else (400, "Enter an API key.")
            )
            log.warning("console_login_refused", reason="unknown key", remote=request.remote)
        else:
            status = 403
            message = (
                f"{key.name!r} has a service key, which cannot open the console:"
                " log in with an admin or viewer key."
            )
            log.warning("console_login_refused", reason="service key", key_name=key.name)
        return render(request, "login.html", status=status, next=next_page, message=message)
    issued = request.app[SESSIONS].issue(key)
    log.info("console_login", key_name=key.name, scope=key.scope.value, remote=request.remote)
    response = see_other(next_page)
    response.set_cookie(
        COOKIE_NAME,
        issued.cookie,
        max_age=int(request.app[SESSIONS].ttl_s),
        path="/",
        secure=_over_https(request),
        httponly=True,
        samesite="Strict",
    )
    return response


@html_errors
async def logout(request: web.Request) -> web.StreamResponse:
    """End the session in this browser. A session that is still valid must show the page's
    token (a plain form, so it travels as a field rather than a header)."""
    sessions = request.app[SESSIONS]
    cookie = request.cookies.get(COOKIE_NAME)
    form = await _read_form(request)
    session = sessions.read(cookie)
    if session is not None and cookie and not sessions.csrf_ok(cookie, form.get("csrf_token")):
        raise web.HTTPForbidden(text="the logout form's token is missing or wrong: reload")
    if session is not None:
        log.info("console_logout", key_name=session.name)
    response = see_other(CONSOLE_LOGIN)
    response.del_cookie(COOKIE_NAME, path="/", secure=_over_https(request), samesite="Strict")
    return response


def _over_https(request: web.Request) -> bool:
    # Behind a TLS-terminating proxy the request arrives over http; trusting the proxy's
    # word here can only add the Secure flag, never remove it.
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
