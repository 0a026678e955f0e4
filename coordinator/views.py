"""Thin HTTP handlers: parse, call the engine once, render."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from coordinator import migrator, states
from coordinator.exceptions import InvalidInput, LimitExceeded
from coordinator.guard import owned, principal_of, require_admin, service_for_begin
from coordinator.keys import ENGINE, POLICY, SETTINGS, STORE
from coordinator.models import Transaction, TransactionDetail
from coordinator.problems import BadRequest, problem
from coordinator.schemas import (
    BeginIn,
    BranchIn,
    BranchOut,
    EmptyIn,
    EventOut,
    ParticipantReplyOut,
    TransactionDetailOut,
    TransactionOut,
    TransactionPageOut,
    TryBranchIn,
    TryOut,
    is_valid_gid,
)
from coordinator.states import GlobalStatus, TryVerdict
from coordinator.store import ListFilter
from coordinator.urlpolicy import PolicyError

M = TypeVar("M", bound=BaseModel)


MAX_JSON_DEPTH = 32


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_storable(data: Any) -> None:
    """Refuse what JSON allows but the log cannot hold: NUL characters, infinite
    numbers, absurd nesting. Iterative, so hostile depth cannot exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        where = path or "(body)"
        if depth > MAX_JSON_DEPTH:
            raise InvalidInput(f"{where}: nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, str) and "\x00" in value:
            raise InvalidInput(f"{where}: contains a NUL character")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput(f"{where}: number out of range")
        if isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    raise InvalidInput(f"{where}: a key contains a NUL character")
                stack.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}.{i}", depth + 1) for i, item in enumerate(value))


async def read_body(request: web.Request, model: type[M]) -> M:
    raw = await request.read()  # aiohttp raises 413 past client_max_size
    if not raw.strip():
        raw = b"{}"
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except RecursionError as exc:
        raise BadRequest("the body is nested too deeply") from exc
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    check_storable(data)
    return model.model_validate_json(raw)  # JSON mode: error messages speak JSON


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
    )


def outcome_status(status: GlobalStatus) -> int:
    """200 once phase two is over; 202 while the coordinator is still working on it."""
    return 200 if status in states.FINAL_STATUSES else 202


# --- transactions ------------------------------------------------------------------


async def begin(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    engine = request.app[ENGINE]
    body = await read_body(request, BeginIn)
    for field, value, limit in (
        ("timeout_s", body.timeout_s, settings.max_timeout_s),
        ("call_timeout_s", body.call_timeout_s, settings.max_call_timeout_s),
    ):
        if value is not None and value > limit:
            raise LimitExceeded(f"{field}: must be at most {limit:g} seconds")
    if len(body.branches) > settings.max_branches:
        raise LimitExceeded(f"branches: at most {settings.max_branches} per transaction")
    check_size("metadata", body.metadata, settings.max_metadata_bytes)
    for i, branch in enumerate(body.branches):
        check_branch(request, branch, f"branches.{i}.")
    body = body.model_copy(update={"service": service_for_begin(request, body.service)})
    new = body.to_new(settings.default_timeout_s)
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


def check_size(field: str, value: Any, limit: int) -> None:
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > limit:
        raise LimitExceeded(f"{field}: {size} bytes of JSON; at most {limit} are accepted")


def check_branch(request: web.Request, branch: BranchIn, prefix: str = "") -> None:
    """Participant URLs against the policy, and the payload against its size limit."""
    policy = request.app[POLICY]
    for field in ("try_url", "confirm_url", "cancel_url"):
        url = getattr(branch, field, None)
        if url is None:
            continue
        try:
            policy.check_url(url)
        except PolicyError as exc:
            raise InvalidInput(f"{prefix}{field}: {exc}") from exc
    check_size(f"{prefix}payload", branch.payload, request.app[SETTINGS].max_payload_bytes)


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
                verdict=states.recorded_try_verdict(branch.status, branch.last_http_status),
                transaction_status=txn.status,
                branch=BranchOut.of(branch),
                participant=None,
            )
            return _try_response(out)
        outcome = rerun
    txn = await engine.store.get(gid)
    out = TryOut(
        verdict=outcome.verdict.value,
        transaction_status=txn.status,
        branch=BranchOut.of(outcome.branch) if outcome.branch else None,
        participant=ParticipantReplyOut(
            http_status=outcome.result.http_status,
            body=outcome.result.body,
            error=outcome.result.error,
            latency_ms=outcome.result.latency_ms,
        ),
    )
    return _try_response(out)


def _try_response(out: TryOut) -> web.Response:
    if out.verdict == TryVerdict.TRIED.value:
        return json_response(out, 200)
    if out.verdict == "pending":
        return json_response(out, 202)
    branch_id = out.branch.branch_id if out.branch else "?"
    status, detail = {
        TryVerdict.REFUSED.value: (409, f"the participant refused the try of branch {branch_id!r}"),
        "cancelled": (409, f"branch {branch_id!r} was cancelled"),
    }.get(out.verdict, (502, f"the try of branch {branch_id!r} failed"))
    return problem(
        status,
        f"{detail}; the transaction is {out.transaction_status.value}",
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
        check_storable({"service": query.service})
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
    from coordinator.openapi import document_json  # it imports this module's models

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
