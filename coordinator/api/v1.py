"""The /v1 handlers: parse the request, make one call to the service, render the answer."""

from __future__ import annotations

from datetime import UTC

from aiohttp import web

from coordinator import metrics
from coordinator.api.appkeys import COORDINATOR, SETTINGS
from coordinator.api.gateway import external, prefix_of
from coordinator.api.guard import actor, caller, is_operator
from coordinator.api.openapi import document_json
from coordinator.api.problems import BadRequest, problem
from coordinator.api.schemas import (
    BeginIn,
    BranchIn,
    BranchOut,
    EmptyIn,
    EventOut,
    EventPageOut,
    EventsQuery,
    ListQuery,
    MessageIn,
    OverviewOut,
    OverviewQuery,
    ParticipantIn,
    ParticipantListOut,
    ParticipantOut,
    ParticipantReplyOut,
    ReasonIn,
    ResolveIn,
    SagaIn,
    TransactionOut,
    TransactionPageOut,
    TryBranchIn,
    TryOut,
    detail_json,
)
from coordinator.api.wire import (
    decode_cursor,
    encode_cursor,
    json_response,
    path_branch,
    path_gid,
    path_participant,
    read_body,
)
from coordinator.core import jsonsafe, states
from coordinator.core.records import ListFilter, TransactionDetail
from coordinator.core.states import Decision, TryReport
from coordinator.engine.service import USAGE_WINDOW_S, Begun, TryResult


def detail_response(detail: TransactionDetail, status: int = 200) -> web.Response:
    return web.Response(status=status, body=detail_json(detail), content_type="application/json")


def _detail_response(detail: TransactionDetail, *, settled_only: bool = True) -> web.Response:
    """200 once phase two is over; 202 while the coordinator is still working on it."""
    final = detail.transaction.status in states.FINAL_STATUSES
    return detail_response(detail, 200 if final or not settled_only else 202)


# --- transactions ------------------------------------------------------------------


async def begin(request: web.Request) -> web.Response:
    body = await read_body(request, BeginIn)
    begun = await request.app[COORDINATOR].begin(body.to_request(), caller(request))
    if not begun.created:
        status = 200  # an identical repeat
    elif body.auto and begun.detail.transaction.status not in states.FINAL_STATUSES:
        status = 202  # decided; phase two still retrying
    else:
        status = 201
    response = detail_response(begun.detail, status)
    response.headers["Location"] = external(
        request, f"/v1/transactions/{begun.detail.transaction.gid}"
    )
    return response


async def register_branch(request: web.Request) -> web.Response:
    gid = path_gid(request)
    body = await read_body(request, BranchIn)
    coordinator = request.app[COORDINATOR]
    branch, created = await coordinator.register_branch(gid, body.to_new(), caller(request))
    return json_response(BranchOut.of(branch), 201 if created else 200)


async def try_branch(request: web.Request) -> web.Response:
    gid = path_gid(request)
    body = await read_body(request, TryBranchIn)
    result = await request.app[COORDINATOR].try_branch(gid, body.to_new(), caller(request))
    return _try_response(result)


_TRY_PROBLEMS = {
    TryReport.REFUSED: (409, "the participant refused the try of branch {}"),
    TryReport.CANCELLED: (409, "branch {} was cancelled"),
    TryReport.FAILED: (502, "the try of branch {} failed"),
}


def _try_response(result: TryResult) -> web.Response:
    reply = result.reply
    out = TryOut(
        verdict=result.report,
        transaction_status=result.transaction_status,
        branch=BranchOut.of(result.branch),
        participant=None
        if reply is None
        else ParticipantReplyOut(
            http_status=reply.http_status,
            body=reply.body,
            error=reply.error,
            latency_ms=reply.latency_ms,
        ),
    )
    if result.report is TryReport.TRIED:
        return json_response(out, 200)
    if result.report is TryReport.PENDING:
        return json_response(out, 202)
    status, text = _TRY_PROBLEMS[result.report]
    detail = text.format(repr(result.branch.branch_id))
    return problem(
        status,
        f"{detail}; the transaction is {result.transaction_status.value}",
        **out.model_dump(mode="json"),
    )


async def confirm(request: web.Request) -> web.Response:
    gid = path_gid(request)
    await read_body(request, EmptyIn)
    return _detail_response(await request.app[COORDINATOR].confirm(gid, caller(request)))


async def cancel(request: web.Request) -> web.Response:
    gid = path_gid(request)
    body = await read_body(request, ReasonIn)
    who = actor(request) if body.reason is not None and is_operator(request) else None
    detail = await request.app[COORDINATOR].cancel(
        gid, caller(request), actor=who, reason=body.reason
    )
    return _detail_response(detail)


async def retry(request: web.Request) -> web.Response:
    gid = path_gid(request)
    body = await read_body(request, ReasonIn)
    detail = await request.app[COORDINATOR].retry(
        gid, caller(request), actor=actor(request), reason=body.reason
    )
    return _detail_response(detail)


async def resolve(request: web.Request) -> web.Response:
    gid = path_gid(request)
    body = await read_body(request, ResolveIn)
    detail = await request.app[COORDINATOR].resolve(
        gid, caller(request), actor=actor(request), note=body.note
    )
    return _detail_response(detail, settled_only=False)


async def resolve_branch(request: web.Request) -> web.Response:
    gid = path_gid(request)
    branch_id = path_branch(request)
    body = await read_body(request, ResolveIn)
    detail = await request.app[COORDINATOR].resolve_branch(
        gid, branch_id, caller(request), actor=actor(request), note=body.note
    )
    return _detail_response(detail, settled_only=False)


# --- sagas and messages ---------------------------------------------------------------


def _begun_response(request: web.Request, begun: Begun, *, settled: bool) -> web.Response:
    """201 for a new one (202 while it still runs, when it was waited for), 200 for an
    identical repeat; Location names it."""
    gid = begun.detail.transaction.gid
    if not begun.created:
        status = 200
    elif settled and begun.detail.transaction.status not in states.FINAL_STATUSES:
        status = 202
    else:
        status = 201
    response = detail_response(begun.detail, status)
    response.headers["Location"] = external(request, f"/v1/transactions/{gid}")
    return response


async def begin_saga(request: web.Request) -> web.Response:
    body = await read_body(request, SagaIn)
    begun = await request.app[COORDINATOR].begin_saga(
        body.to_request(), caller(request), wait=body.wait
    )
    return _begun_response(request, begun, settled=body.wait)


async def post_message(request: web.Request) -> web.Response:
    body = await read_body(request, MessageIn)
    begun = await request.app[COORDINATOR].post_message(
        body.to_request(), caller(request), prepared=body.prepared
    )
    return _begun_response(request, begun, settled=False)


async def submit_message(request: web.Request) -> web.Response:
    gid = path_gid(request)
    await read_body(request, EmptyIn)
    detail = await request.app[COORDINATOR].decide_message(gid, Decision.CONFIRM, caller(request))
    return detail_response(detail)


async def abort_message(request: web.Request) -> web.Response:
    gid = path_gid(request)
    body = await read_body(request, ReasonIn)
    detail = await request.app[COORDINATOR].decide_message(
        gid, Decision.CANCEL, caller(request), reason=body.reason
    )
    return detail_response(detail)


# --- participants -----------------------------------------------------------------------


async def register_participant(request: web.Request) -> web.Response:
    name = path_participant(request)
    body = await read_body(request, ParticipantIn)
    registered, created = await request.app[COORDINATOR].register_participant(
        body.to_new(name), caller(request)
    )
    response = json_response(ParticipantOut.of(registered), 201 if created else 200)
    response.headers["Location"] = external(request, f"/v1/participants/{name}")
    return response


async def list_participants(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    rows = await coordinator.participants(caller(request))
    return json_response(ParticipantListOut.of(rows, USAGE_WINDOW_S))


async def get_participant(request: web.Request) -> web.Response:
    name = path_participant(request)
    registered = await request.app[COORDINATOR].participant(name, caller(request))
    return json_response(ParticipantOut.of(registered))


async def remove_participant(request: web.Request) -> web.Response:
    name = path_participant(request)
    removed = await request.app[COORDINATOR].remove_participant(name, caller(request))
    return json_response(ParticipantOut.of(removed))


async def reset_breaker(request: web.Request) -> web.Response:
    name = path_participant(request)
    await read_body(request, EmptyIn)
    reset = await request.app[COORDINATOR].reset_breaker(
        name, caller(request), actor=actor(request)
    )
    return json_response(ParticipantOut.of(reset))


async def overview(request: web.Request) -> web.Response:
    query = OverviewQuery.model_validate(dict(request.query))
    seen = await request.app[COORDINATOR].overview(caller(request), query.window_s)
    return json_response(OverviewOut.of(seen))


async def get_transaction(request: web.Request) -> web.Response:
    gid = path_gid(request)
    detail = await request.app[COORDINATOR].detail(gid, caller(request))
    return detail_response(detail)


async def list_events(request: web.Request) -> web.Response:
    gid = path_gid(request)
    query = EventsQuery.model_validate(dict(request.query))
    events, more = await request.app[COORDINATOR].events(
        gid, caller(request), int(query.cursor or 0), query.limit
    )
    out = EventPageOut(
        events=[EventOut.of(e) for e in events],
        next_cursor=str(events[-1].id) if more else None,
    )
    return json_response(out)


def _list_filter(query: ListQuery) -> ListFilter:
    if query.service is not None:
        jsonsafe.check_storable({"service": query.service})
    for name, value in (("created_from", query.created_from), ("created_to", query.created_to)):
        if value is not None and value.tzinfo is None:
            raise BadRequest(f"{name}: give a time zone, e.g. 2026-01-01T00:00:00Z")
        if value is not None:
            try:
                value.astimezone(UTC)
            except OverflowError as exc:
                raise BadRequest(f"{name}: out of range") from exc
    return ListFilter(
        statuses=(query.status,) if query.status else None,
        service=query.service,
        created_from=query.created_from,
        created_to=query.created_to,
        after=decode_cursor(query.cursor) if query.cursor else None,
        limit=query.limit,
        dialect=query.dialect,
        kind=query.kind,
        gid_prefix=query.gid_prefix,
    )


async def list_transactions(request: web.Request) -> web.Response:
    flt = _list_filter(ListQuery.model_validate(dict(request.query)))
    page, more = await request.app[COORDINATOR].list_transactions(flt, caller(request))
    next_cursor = encode_cursor(page[-1].created_at, page[-1].gid) if more else None
    out = TransactionPageOut(
        transactions=[TransactionOut.of(t) for t in page], next_cursor=next_cursor
    )
    return json_response(out)


# --- health and documents ----------------------------------------------------------------


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(text=document_json(prefix_of(request)), content_type="application/json")


async def metrics_scrape(request: web.Request) -> web.Response:
    body = await request.app[COORDINATOR].metrics_exposition()
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    problems = await request.app[COORDINATOR].ready()
    if problems:
        return problem(503, "; ".join(problems))
    ready: dict[str, str] = {"status": "ready", "database": "ok", "migrations": "current"}
    if request.app[SETTINGS].insecure:
        ready["warning"] = "running without authentication (--insecure): development only"
    return web.json_response(ready)
