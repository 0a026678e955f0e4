"""The console's handlers: parse the request, make one call to the service, render a page.

A page asked for with ``?fragment=1`` renders only its live part, which the script fetches
every few seconds and swaps in: the same handler, the same one call, the same URL (so the
list's filters, which live in the URL, are kept)."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from coordinator.api.appkeys import COORDINATOR, SETTINGS
from coordinator.api.console import health, views, words
from coordinator.api.console.filters import PAGE_SIZES, read_list_form
from coordinator.api.console.render import PAGE_HEADERS, render, static_files
from coordinator.api.gateway import external
from coordinator.api.guard import caller
from coordinator.api.problems import PROBLEM_JSON, BadRequest, problem_middleware
from coordinator.api.wire import encode_cursor, path_gid
from coordinator.core.records import Transaction
from coordinator.core.states import FINAL_STATUSES, GlobalStatus, TransactionKind, decision_of
from coordinator.dialects.registry import dialect as dialect_named
from coordinator.dialects.registry import names as dialect_names
from coordinator.engine.service import USAGE_WINDOW_S

log = structlog.get_logger(__name__)

OVERVIEW_WINDOW_S = 900
EVENTS_PER_PAGE = 200
LIVE_REFRESH_S = 4
HOME = "/ui/"

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


def see_other(request: web.Request, location: str) -> web.Response:
    """Send the browser to one of our paths (under the gateway's prefix, if any)."""
    return web.Response(
        status=303, headers={**PAGE_HEADERS, "Location": external(request, location)}
    )


async def to_home(request: web.Request) -> web.StreamResponse:
    return see_other(request, HOME)


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
        kinds=list(TransactionKind),
        dialects=dialect_names(),
        page_sizes=PAGE_SIZES,
    )


@html_errors
async def transaction(request: web.Request) -> web.StreamResponse:
    gid = path_gid(request)
    detail = await request.app[COORDINATOR].detail(gid, caller(request), EVENTS_PER_PAGE)
    txn = detail.transaction
    trace = views.trace_id(txn.traceparent)
    options = dialect_named(txn.dialect).shown_options(txn.options)
    return _live(
        request,
        "transaction.html",
        "transaction_live.html",
        detail=detail,
        txn=txn,
        final=txn.status in FINAL_STATUSES,
        decision=decision_of(txn.status),
        options=options,
        kind=txn.kind,
        steps=words.has_steps(txn.kind),
        step_urls={b.branch_id: words.step_urls(txn.kind, b) for b in detail.branches},
        step_order=words.step_order(txn.kind, txn.options),
        waits_for=words.waits_for(txn.options),
        retry_limit=words.retry_limit(txn.options),
        bounded_forward=words.bounded_forward(txn.options),
        decided_label=words.decision_label(txn.kind, decision_of(txn.status)),
        actions=views.transaction_actions(txn),
        branch_actions={b.branch_id: views.branch_action(txn, b) for b in detail.branches},
        parked=views.parked(detail),
        by_hand=views.resolved_by_hand(detail),
        resolved=views.transaction_by_hand(detail),
        timeline=views.timeline_rows(detail.events, 1, txn.created_at, txn.kind),
        later_events=(
            views.later_events_url(gid, detail.events, 1, txn.created_at, txn.kind)
            if detail.more_events and detail.events
            else None
        ),
        trace_id=trace,
        trace_url=views.trace_url(request.app[SETTINGS].trace_url_template, trace),
    )


@html_errors
async def participants(request: web.Request) -> web.StreamResponse:
    found = await request.app[COORDINATOR].participants(caller(request))
    settings = request.app[SETTINGS]
    return _live(
        request,
        "participants.html",
        "participants_live.html",
        rows=health.participant_rows(found, settings.breaker_policy.ramp_s, datetime.now(UTC)),
        breakers_on=settings.breaker,
        window_s=USAGE_WINDOW_S,
        health_words=health.HEALTH_WORDS,
        health_means=health.HEALTH_MEANS,
        health_tones=health.HEALTH_TONES,
    )


def _number(request: web.Request, name: str, digits: int, what: str) -> int | None:
    text = request.query.get(name)
    if text is None:
        return None
    if not text.isdigit() or len(text) > digits:
        raise BadRequest(f"{name}: {what}")
    return int(text)


@html_errors
async def timeline(request: web.Request) -> web.StreamResponse:
    """The rest of a long timeline, a page at a time (the transaction page shows the first).
    The link that leads here says where the page starts (``after``, an event id), and, to
    go on with the first page's numbers and times, the number of its first row (``seq``)
    and when the transaction began (``begun``, in milliseconds since 1970), and, to go on
    in its words, a saga's or message's kind (``kind``)."""
    gid = path_gid(request)
    after = _number(request, "after", 19, "the id of the last event seen") or 0
    first_seq = _number(request, "seq", 9, "the number of the page's first event")
    begun_ms = _number(request, "begun", 15, "when the transaction began, in ms since 1970")
    begun_at = None
    if begun_ms is not None:
        try:
            begun_at = datetime.fromtimestamp(begun_ms / 1000, UTC)
        except (ValueError, OverflowError, OSError):
            raise BadRequest("begun: a time before the year 10000, in ms since 1970") from None
    kind = None
    if "kind" in request.query:
        kind = words.kind_of(request.query["kind"])
        if kind is None:
            raise BadRequest(f"kind: one of {', '.join(k.value for k in TransactionKind)}")
    events, more = await request.app[COORDINATOR].events(
        gid, caller(request), after, EVENTS_PER_PAGE
    )
    return render(
        request,
        "timeline.html",
        gid=gid,
        kind=kind,
        timeline=views.timeline_rows(events, first_seq, begun_at, kind),
        later_events=(
            views.later_events_url(gid, events, first_seq, begun_at, kind)
            if more and events
            else None
        ),
    )


# --- files ---------------------------------------------------------------------------


FAVICON = "favicon.svg"


async def static_file(request: web.Request) -> web.StreamResponse:
    return _static(request, request.match_info["name"])


async def favicon(request: web.Request) -> web.StreamResponse:
    """The console's icon where browsers look for it without a page's link (/favicon.ico)."""
    return _static(request, FAVICON)


def _static(request: web.Request, name: str) -> web.StreamResponse:
    found = static_files().get(name)
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
