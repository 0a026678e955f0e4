"""The console's handlers: parse the request, make one call to the service, render a page.

A page asked for with ``?fragment=1`` renders only its live part, which the script fetches
every few seconds and swaps in: the same handler, the same one call, the same URL (so the
list's filters, which live in the URL, are kept)."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import structlog
from aiohttp import web

from coordinator.api.appkeys import COORDINATOR, SESSIONS, SETTINGS
from coordinator.api.console import views
from coordinator.api.console.filters import PAGE_SIZES, read_list_form
from coordinator.api.console.render import PAGE_HEADERS, render, static_files
from coordinator.api.guard import CONSOLE_LOGIN, caller
from coordinator.api.problems import PROBLEM_JSON, BadRequest, problem_middleware
from coordinator.api.sessions import COOKIE_NAME
from coordinator.api.wire import encode_cursor, path_gid, read_request
from coordinator.core.apikeys import Scope
from coordinator.core.records import Transaction
from coordinator.core.states import FINAL_STATUSES, GlobalStatus
from coordinator.dialects.registry import dialect as dialect_named
from coordinator.dialects.registry import names as dialect_names

log = structlog.get_logger(__name__)

OVERVIEW_WINDOW_S = 900
EVENTS_PER_PAGE = 200
LIVE_REFRESH_S = 4
HOME = "/ui/"
LOGIN_FORM_MAX_BYTES = 8192

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def html_errors(handler: Handler) -> Handler:
    """Errors as a page: the problem the API would answer (same status, same words),
    rendered for people."""

    @functools.wraps(handler)
    async def page(request: web.Request) -> web.StreamResponse:
        response = await problem_middleware(request, handler)
        if not isinstance(response, web.Response) or response.content_type != PROBLEM_JSON:
            return response
        body = json.loads(response.text or "{}")
        kept = {k: v for k, v in response.headers.items() if k in ("Retry-After", "Allow")}
        return render(
            request,
            "error.html",
            status=response.status,
            headers=kept,
            title=body.get("title", "Error"),
            detail=body.get("detail", ""),
        )

    return page


def _live(request: web.Request, page: str, fragment: str, **context: Any) -> web.Response:
    template = fragment if "fragment" in request.query else page
    return render(request, template, live_refresh_s=LIVE_REFRESH_S, **context)


# --- pages ---------------------------------------------------------------------------


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={**PAGE_HEADERS, "Location": location})


async def to_home(request: web.Request) -> web.StreamResponse:
    return _see_other(HOME)


@html_errors
async def overview(request: web.Request) -> web.StreamResponse:
    found = await request.app[COORDINATOR].overview(caller(request), window_s=OVERVIEW_WINDOW_S)
    return _live(
        request,
        "overview.html",
        "overview_live.html",
        overview=found,
        unfinished_order=views.UNFINISHED_ORDER,
        recent_order=views.RECENT_ORDER,
        chart=views.throughput_chart(found.per_minute),
        attention=views.attention_lists(found),
    )


@html_errors
async def transactions(request: web.Request) -> web.StreamResponse:
    asked = read_list_form(request.query)
    rows: list[Transaction] = []
    more = False
    if asked.filter is not None:
        rows, more = await request.app[COORDINATOR].list_transactions(asked.filter, caller(request))
    next_query = (
        asked.form.query(cursor=encode_cursor(rows[-1].created_at, rows[-1].gid)) if more else None
    )
    return _live(
        request,
        "transactions.html",
        "transactions_live.html",
        status=400 if asked.errors else 200,
        asked=asked,
        rows=rows,
        next_query=next_query,
        first_query=asked.form.query(cursor=None) if asked.form.cursor else None,
        statuses=list(GlobalStatus),
        dialects=dialect_names(),
        page_sizes=PAGE_SIZES,
    )


@html_errors
async def transaction(request: web.Request) -> web.StreamResponse:
    gid = path_gid(request)
    detail = await request.app[COORDINATOR].detail(gid, caller(request), EVENTS_PER_PAGE)
    txn = detail.transaction
    return _live(
        request,
        "transaction.html",
        "transaction_live.html",
        detail=detail,
        txn=txn,
        final=txn.status in FINAL_STATUSES,
        options=dialect_named(txn.dialect).shown_options(txn.options),
        actions=views.transaction_actions(txn),
        branch_actions={b.branch_id: views.branch_action(txn, b) for b in detail.branches},
        later_events=detail.events[-1].id if detail.more_events and detail.events else None,
    )


@html_errors
async def timeline(request: web.Request) -> web.StreamResponse:
    """The rest of a long timeline, a page at a time (the transaction page shows the first)."""
    gid = path_gid(request)
    after = request.query.get("after", "0")
    if not after.isdigit() or len(after) > 19:
        raise BadRequest("after: the id of the last event seen")
    events, more = await request.app[COORDINATOR].events(
        gid, caller(request), int(after), EVENTS_PER_PAGE
    )
    return render(
        request,
        "timeline.html",
        gid=gid,
        events=events,
        later_events=events[-1].id if more and events else None,
    )


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
        return _see_other(HOME)
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
        return _see_other(HOME)
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
    response = _see_other(next_page)
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
    response = _see_other(CONSOLE_LOGIN)
    response.del_cookie(COOKIE_NAME, path="/", secure=_over_https(request), samesite="Strict")
    return response


def _over_https(request: web.Request) -> bool:
    # Behind a TLS-terminating proxy the request arrives over http; trusting the proxy's
    # word here can only add the Secure flag, never remove it.
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


# --- files ---------------------------------------------------------------------------


async def static_file(request: web.Request) -> web.StreamResponse:
    found = static_files().get(request.match_info["name"])
    if found is None:
        raise web.HTTPNotFound()
    versioned = request.query.get("v") == found.version
    return web.Response(
        body=found.body,
        content_type=found.content_type,
        charset="utf-8",
        headers={
            "Cache-Control": "public, max-age=31536000, immutable" if versioned else "no-cache",
            "X-Content-Type-Options": "nosniff",
        },
    )
