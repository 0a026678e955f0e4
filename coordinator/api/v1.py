"""Thin HTTP handlers: parse, call the engine once, render."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from coordinator.api.appkeys import ENGINE, POLICY, SETTINGS, STORE
from coordinator.api.body import read_body_bytes
from coordinator.api.guard import (
    gid_for_begin,
    owned,
    principal_of,
    require_admin,
    service_for_begin,
)
from coordinator.api.problems import BadRequest, problem
from coordinator.api.schemas import (
    BeginIn,
    BranchIn,
    BranchOut,
    EmptyIn,
    EventOut,
    EventPageOut,
    ParticipantReplyOut,
    TransactionDetailOut,
    TransactionOut,
    TransactionPageOut,
    TryBranchIn,
    TryOut,
    is_valid_gid,
)
from coordinator.core import jsonsafe, states
from coordinator.core.errors import InvalidInput
from coordinator.core.records import Transaction, TransactionDetail
from coordinator.core.states import GlobalStatus, TryReport
from coordinator.core.urlpolicy import PolicyError
from coordinator.txlog import migrator
from coordinator.txlog.postgres import ListFilter

M = TypeVar("M", bound=BaseModel)


async def read_request(request: web.Request) -> bytes:
    """The raw body, bounded in size and in how slowly it may arrive."""
    settings = request.app[SETTINGS]
    return await read_body_bytes(
        request,
        max_bytes=settings.max_body_bytes,
        grace_s=settings.body_grace_s,
        min_bytes_per_s=settings.body_min_bytes_per_s,
    )


def parse_object(raw: bytes) -> dict[str, Any]:
    """A body as a JSON object the log can hold (an empty body is {})."""
    try:
        data = jsonsafe.parse(raw)
    except jsonsafe.UnreadableJson as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    jsonsafe.check_storable(data)
    return data


async def read_json_object(request: web.Request) -> dict[str, Any]:
    raw = await read_request(request)
    return parse_object(raw if raw.strip() else b"{}")


async def read_body(request: web.Request, model: type[M]) -> M:
    raw = await read_request(request)
    if not raw.strip():
        raw = b"{}"
    parse_object(raw)
    # JSON mode keeps JSON's rules (strict types, error messages that speak JSON).
    return model.model_validate_json(raw)


def path_gid(request: web.Request) -> str:
    gid = request.match_info["gid"]
    if not is_valid_gid(gid):
        raise BadRequest("gid must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return gid


def json_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=model.model_dump_json(), content_type="application/json"
    )


def render_detail(detail: TransactionDetail) -> TransactionDetailOut:
    base = TransactionOut.of(detail.transaction)
    return TransactionDetailOut(
        **base.model_dump(),
        branches=[BranchOut.of(b) for b in detail.branches],
        events=[EventOut.of(e) for e in detail.events],
        events_next_cursor=str(detail.events[-1].id) if detail.more_events else None,
    )


def outcome_status(status: GlobalStatus) -> int:
    """200 once phase two is over; 202 while the coordinator is still working on it."""
    return 200 if status in states.FINAL_STATUSES else 202


# --- transactions ------------------------------------------------------------------


async def begin(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    engine = request.app[ENGINE]
    body = await read_body(request, BeginIn)
    for i, branch in enumerate(body.branches):
        check_branch(request, branch, f"branches.{i}.")
    body = body.model_copy(update={"service": service_for_begin(request, body.service)})
    new = body.to_new(gid_for_begin(request, body.gid), settings.default_timeout_s)
    txn, created = await engine.begin(new)
    location = {"Location": f"/v1/transactions/{txn.gid}"}
    if not created:
        detail = await engine.store.detail(txn.gid)
        response = json_response(render_detail(detail), 200)
    elif body.auto:
        detail = await engine.store.detail(txn.gid)
        final = await engine.run_auto(txn, detail.branches)
        detail = await engine.store.detail(final.gid)
        response = json_response(
            render_detail(detail), 201 if final.status in states.FINAL_STATUSES else 202
        )
    else:
        detail = await engine.store.detail(txn.gid)
        response = json_response(render_detail(detail), 201)
    response.headers.update(location)
    return response


def check_branch(request: web.Request, branch: BranchIn, prefix: str = "") -> None:
    """Participant URLs against the policy."""
    policy = request.app[POLICY]
    for field in ("try_url", "confirm_url", "cancel_url"):
        url = getattr(branch, field, None)
        if url is None:
            continue
        try:
            policy.check_url(url)
        except PolicyError as exc:
            raise InvalidInput(f"{prefix}{field}: {exc}") from exc


async def register_branch(request: web.Request) -> web.Response:
    gid = path_gid(request)
    body = await read_body(request, BranchIn)
    check_branch(request, body)
    await owned(request, gid)
    branch, created = await request.app[ENGINE].register(gid, body.to_new())
    return json_response(BranchOut.of(branch), 201 if created else 200)


async def try_branch(request: web.Request) -> web.Response:
    gid = path_gid(request)
    engine = request.app[ENGINE]
    body = await read_body(request, TryBranchIn)
    check_branch(request, body)
    await owned(request, gid)
    branch, created = await engine.register(gid, body.to_new())
    txn = await engine.store.get(gid)
    if created:
        outcome = await engine.try_branch(txn, branch)
    else:
        # A repeat: report what the log knows. The try runs again only if its first
        # answer was never logged and it is older than a call can take.
        rerun = await engine.retry_stale_try(txn, branch)
        if rerun is None:
            out = TryOut(
                verdict=states.recorded_try_report(branch.status, branch.last_http_status),
                transaction_status=txn.status,
                branch=BranchOut.of(branch),
                participant=None,
            )
            return _try_response(out)
        outcome = rerun
    txn = await engine.store.get(gid)
    out = TryOut(
        verdict=outcome.report,
        transaction_status=txn.status,
        branch=BranchOut.of(outcome.branch),
        participant=ParticipantReplyOut(
            http_status=outcome.result.http_status,
            body=outcome.result.body,
            error=outcome.result.error,
            latency_ms=outcome.result.latency_ms,
        ),
    )
    return _try_response(out)


_TRY_PROBLEMS = {
    TryReport.REFUSED: (409, "the participant refused the try of branch {}"),
    TryReport.CANCELLED: (409, "branch {} was cancelled"),
    TryReport.FAILED: (502, "the try of branch {} failed"),
}


def _try_response(out: TryOut) -> web.Response:
    if out.verdict is TryReport.TRIED:
        return json_response(out, 200)
    if out.verdict is TryReport.PENDING:
        return json_response(out, 202)
    status, text = _TRY_PROBLEMS[out.verdict]
    branch_id = out.branch.branch_id if out.branch else "?"
    return problem(
        status,
        f"{text.format(repr(branch_id))}; the transaction is {out.transaction_status.value}",
        **out.model_dump(mode="json"),
    )


async def _decide(
    request: web.Request, take: Callable[[str], Awaitable[Transaction]]
) -> web.Response:
    gid = path_gid(request)
    await read_body(request, EmptyIn)
    await owned(request, gid)
    txn = await take(gid)
    detail = await request.app[STORE].detail(txn.gid)
    return json_response(render_detail(detail), outcome_status(txn.status))


async def confirm(request: web.Request) -> web.Response:
    return await _decide(request, request.app[ENGINE].confirm)


async def cancel(request: web.Request) -> web.Response:
    return await _decide(request, request.app[ENGINE].cancel)


async def retry(request: web.Request) -> web.Response:
    gid = path_gid(request)
    await read_body(request, EmptyIn)
    require_admin(request, "retrying a parked transaction")
    actor = principal_of(request).name or "api (insecure)"
    txn = await request.app[ENGINE].retry(gid, actor=f"api:{actor}")
    detail = await request.app[STORE].detail(txn.gid)
    return json_response(render_detail(detail), outcome_status(txn.status))


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    note: str = Field(min_length=1, max_length=500, description="What was done by hand, and why")


async def resolve(request: web.Request) -> web.Response:
    gid = path_gid(request)
    body = await read_body(request, ResolveIn)
    require_admin(request, "resolving a parked transaction")
    actor = principal_of(request).name or "api (insecure)"
    txn = await request.app[STORE].resolve_parked(gid, actor=f"api:{actor}", note=body.note)
    detail = await request.app[STORE].detail(txn.gid)
    return json_response(render_detail(detail))


async def get_transaction(request: web.Request) -> web.Response:
    gid = path_gid(request)
    await owned(request, gid)
    detail = await request.app[STORE].detail(gid)
    return json_response(render_detail(detail))


class EventsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cursor: str | None = Field(default=None, max_length=20, pattern=r"^[0-9]{1,19}$")
    limit: int = Field(default=200, ge=1, le=1000)


async def list_events(request: web.Request) -> web.Response:
    gid = path_gid(request)
    query = EventsQuery.model_validate(dict(request.query))
    await owned(request, gid)
    events, more = await request.app[STORE].events(gid, int(query.cursor or 0), query.limit)
    out = EventPageOut(
        events=[EventOut.of(e) for e in events],
        next_cursor=str(events[-1].id) if more else None,
    )
    return json_response(out)


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    status: GlobalStatus | None = None
    service: str | None = Field(default=None, min_length=1, max_length=200)
    created_from: datetime | None = None
    created_to: datetime | None = None
    cursor: str | None = Field(default=None, max_length=400)
    limit: int = Field(default=50, ge=1, le=500)


def encode_cursor(created_at: datetime, gid: str) -> str:
    raw = json.dumps([created_at.isoformat(), gid]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, gid = json.loads(raw)
        if not isinstance(gid, str) or not is_valid_gid(gid):
            raise ValueError("bad gid")
        return datetime.fromisoformat(created_at), gid
    except (ValueError, TypeError, binascii.Error) as exc:
        raise BadRequest("cursor: not a cursor this API returned") from exc


async def list_transactions(request: web.Request) -> web.Response:
    require_admin(request, "listing transactions")
    query = ListQuery.model_validate(dict(request.query))
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
    rows = await request.app[STORE].list(
        ListFilter(
            statuses=(query.status,) if query.status else None,
            service=query.service,
            created_from=query.created_from,
            created_to=query.created_to,
            after=decode_cursor(query.cursor) if query.cursor else None,
            limit=query.limit + 1,  # one more tells whether there is a next page
        )
    )
    page, more = rows[: query.limit], len(rows) > query.limit
    next_cursor = encode_cursor(page[-1].created_at, page[-1].gid) if more else None
    out = TransactionPageOut(
        transactions=[TransactionOut.of(t) for t in page], next_cursor=next_cursor
    )
    return json_response(out)


# --- health ----------------------------------------------------------------------------


async def openapi_document(request: web.Request) -> web.Response:
    from coordinator.api.openapi import document_json  # it imports this module's models

    return web.Response(text=document_json(), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    gauges = {
        "tcc_active_rounds": (
            "Phase-two rounds running in this process",
            float(engine.active_drives),
        )
    }
    return web.Response(text=engine.metrics.render(gauges), content_type="text/plain")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    async with store.connection() as conn:
        pending = await migrator.pending_migrations(conn)
    if pending:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
        return problem(503, f"migrations not applied: {names}")
    ready: dict[str, str] = {"status": "ready", "database": "ok", "migrations": "current"}
    if request.app[SETTINGS].insecure:
        ready["warning"] = "running without authentication (--insecure): development only"
    return web.json_response(ready)
