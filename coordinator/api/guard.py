"""Authentication: who is calling. What they may do is the service layer's to decide.

First of all, the ``Host`` a request names must be one this coordinator answers to
(coordinator/core/hosts.py): always checked without keys, where a page could otherwise reach a
local coordinator by DNS rebinding, and with keys when TCC_ALLOWED_HOSTS is set. Without keys
(``--insecure``, `tcc up`) every request is the insecure admin, except that a change sent by
another site's page (its ``Origin``, or ``Sec-Fetch-Site: cross-site``) is refused: no page on
the web may drive a developer's local coordinator.

Two credentials are accepted. An API key in ``Authorization: Bearer`` works everywhere; the
browser never sends it by itself, so such requests need no protection against cross-site
forgery. The console's session cookie (coordinator.api.sessions) is sent by the browser on
its own: it is accepted only on the console's pages and on /v1, and a change made with it
(an unsafe method) must come from this server's origin and carry the page's CSRF token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from yarl import URL

from coordinator.api.appkeys import ALLOWED_HOSTS, KEYRING, SESSION_BOOK, SESSIONS, SETTINGS
from coordinator.api.gateway import external
from coordinator.api.problems import problem
from coordinator.api.sessions import COOKIE_NAME, CSRF_HEADER, Session
from coordinator.core.apikeys import INSECURE, Principal, bearer_token

PRINCIPAL = web.RequestKey("principal", Principal)
SESSION = web.RequestKey("session", Session)  # set when the session cookie authenticated

HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
OPEN_PATHS = frozenset({"/openapi.json", "/api/ping", "/favicon.ico"})

CONSOLE_PREFIX = "/ui/"
CONSOLE_LOGIN = "/ui/login"
CONSOLE_LOGOUT = "/ui/logout"
CONSOLE_STATIC = "/ui/static/"
# The console marks its own /v1 calls, so that an insecure coordinator's audit trail can
# tell them from scripts' (with a session, the session says who it was).
CONSOLE_CLIENT_HEADER = "X-TCC-Client"

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tcc-coordinator"'}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    path = request.path
    if settings.insecure or settings.allowed_hosts:
        refusal = _unknown_host(request)
        if refusal is not None:
            return refusal
    if settings.insecure:
        if request.method in UNSAFE_METHODS and (reason := _cross_site(request)):
            return problem(
                403,
                f"{reason}: a coordinator without authentication takes changes only from"
                " its own pages and from clients that are not browsers",
            )
        request[PRINCIPAL] = INSECURE
        return await handler(request)
    if path == "/ui" or path.startswith(CONSOLE_PREFIX):
        return await _console_page(request, handler)
    if path in OPEN_PATHS or (path in HEALTH_PATHS and not settings.protect_health):
        return await handler(request)
    header = request.headers.get("Authorization")
    if header is None and path.startswith("/v1/") and COOKIE_NAME in request.cookies:
        refusal = await _authenticate_by_session(request)
        return refusal or await handler(request)
    token = bearer_token(header)
    principal = request.app[KEYRING].identify(token) if token else None
    if principal is None:
        detail = "missing API key" if token is None else "unknown API key"
        return problem(
            401, f"{detail}: send Authorization: Bearer <key>", headers=_BEARER_CHALLENGE
        )
    request[PRINCIPAL] = principal
    return await handler(request)


async def _console_page(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path.startswith(CONSOLE_STATIC):
        return await handler(request)
    if path in (CONSOLE_LOGIN, CONSOLE_LOGOUT):
        # No session to protect yet (login), or one being thrown away (logout, which checks
        # the form's token itself); still, a form posted from another site is refused.
        if request.method in UNSAFE_METHODS and (reason := _cross_site(request)):
            return problem(403, reason)
        return await handler(request)
    refusal = await _authenticate_by_session(request)
    if refusal is None:
        return await handler(request)
    if refusal.status == 401 and _wants_a_page(request):
        raise web.HTTPSeeOther(external(request, login_location(request.path_qs)))
    return refusal


def _unknown_host(request: web.Request) -> web.Response | None:
    """421 when the request names a host this coordinator does not answer to. A request
    without Host is let through: every browser sends one."""
    host = request.headers.get("Host")
    if host is None or request.app[ALLOWED_HOSTS].permits(host):
        return None
    return problem(
        421,
        f"this coordinator does not answer to the host {host[:100]!r}; if that name is"
        " yours, add it to TCC_ALLOWED_HOSTS (only localhost, loopback and IP addresses are"
        " answered otherwise, so that no web page can reach it by DNS rebinding)",
    )


async def _authenticate_by_session(request: web.Request) -> web.Response | None:
    """Sets the session's principal, or answers why not (401, or 403 for a forgery). The
    cookie must be sound and the log must still hold the session (not logged out, not
    revoked); a forgery is refused before the log is asked."""
    cookie = request.cookies.get(COOKIE_NAME)
    sessions = request.app[SESSIONS]
    session = sessions.read(cookie)
    if cookie is None or session is None:
        what = "no console session" if cookie is None else "the console session has ended"
        return problem(
            401,
            f"{what}: log in at {CONSOLE_LOGIN}, or send Authorization: Bearer <key>",
            headers=_BEARER_CHALLENGE,
        )
    if request.method in UNSAFE_METHODS:
        reason = _cross_site(request)
        if reason is None and not sessions.csrf_ok(cookie, request.headers.get(CSRF_HEADER)):
            given = request.headers.get(CSRF_HEADER)
            reason = (
                f"missing {CSRF_HEADER} header: a change made with a console session must"
                " carry the token of the console's page"
                if given is None
                else f"wrong {CSRF_HEADER}: reload the console's page and try again"
            )
        if reason is not None:
            return problem(403, reason)
    if not await request.app[SESSION_BOOK].is_live(session.stored_id):
        return problem(
            401,
            f"the console session has ended (logged out or revoked): log in at {CONSOLE_LOGIN}",
            headers=_BEARER_CHALLENGE,
        )
    request[PRINCIPAL] = session.principal
    request[SESSION] = session
    return None


def _cross_site(request: web.Request) -> str | None:
    """Why a request that changes something looks sent by another site, or None."""
    origin = request.headers.get("Origin")
    if origin is not None and not same_origin(origin, request.host):
        return f"cross-site request refused: its Origin {origin[:100]!r} is not this server"
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return "cross-site request refused (Sec-Fetch-Site: cross-site)"
    return None


def same_origin(origin: str, host_header: str) -> bool:
    """Whether an Origin header names the host the request was sent to. The scheme's
    default port fills in a missing one on either side, so a TLS proxy in front (Host
    ``tcc.example.com``, Origin ``https://tcc.example.com``) is recognised."""
    try:
        given = URL(origin)
        sent_to = URL(f"{given.scheme}://{host_header}")
    except ValueError:
        return False
    if given.scheme not in ("http", "https") or not given.host or given.path not in ("", "/"):
        return False
    return (given.host, given.port) == (sent_to.host, sent_to.port)


def _wants_a_page(request: web.Request) -> bool:
    """A browser navigating (not the console's script fetching a fragment)."""
    return (
        request.method in ("GET", "HEAD")
        and "text/html" in request.headers.get("Accept", "")
        and "fragment" not in request.query
    )


def login_location(next_path: str) -> str:
    """Where a page without a session sends the browser: the login form, which comes back
    to the page afterwards."""
    if next_path in ("/ui", "/ui/"):
        return CONSOLE_LOGIN
    return str(URL(CONSOLE_LOGIN).with_query(next=next_path))


def caller(request: web.Request) -> Principal:
    principal: Principal | None = request.get(PRINCIPAL)
    return principal or INSECURE


def is_operator(request: web.Request) -> bool:
    """Whether a request is an operator's (an admin key, a console session, or the console
    of a coordinator without keys) rather than a client's: a cancel with a reason is then
    an operator's cancel. A script calling a coordinator without keys is a client."""
    if request.get(SESSION) is not None:
        return True
    principal = caller(request)
    if principal.name is None:
        return request.headers.get(CONSOLE_CLIENT_HEADER) == "console"
    return principal.is_admin


def actor(request: web.Request) -> str:
    """Who did an operator action, and from which address (the client's, behind a trusted
    gateway), for the audit trail: ``console:ops (203.0.113.7)``."""
    session: Session | None = request.get(SESSION)
    principal = caller(request)
    if session is not None:
        who = f"console:{session.name}"
    elif principal.name is None and request.headers.get(CONSOLE_CLIENT_HEADER) == "console":
        who = "console (insecure)"
    else:
        who = f"api:{principal.name or 'api (insecure)'}"
    return f"{who} ({request.remote})" if request.remote else who
