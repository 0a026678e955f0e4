"""DTM's HTTP protocol for TCC under /api/dtmsvr, so DTM's client SDKs work unchanged.

Same log, same state machine, same recovery: these handlers only translate DTM's
requests and answers. Replies use DTM's envelope: 200 {"dtm_result": "SUCCESS"},
409 {"dtm_result": "FAILURE", "message": ...}, 425 {"dtm_result": "ONGOING"}.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib import metadata
from typing import Any

import pydantic
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from coordinator.api import guard
from coordinator.api.appkeys import ENGINE, POLICY, SETTINGS, STORE
from coordinator.api.body import BodyTooSlow
from coordinator.api.guard import gid_for_begin, owned, require_admin, service_for_begin
from coordinator.api.problems import BadRequest, describe_validation
from coordinator.api.schemas import Gid, ParticipantUrl, request_hash
from coordinator.api.v1 import decode_cursor, encode_cursor, read_json_object
from coordinator.core.errors import (
    Conflict,
    DatabaseUnavailable,
    Forbidden,
    InvalidInput,
    LimitExceeded,
    NotFound,
)
from coordinator.core.records import Branch, NewBranch, NewTransaction, Transaction
from coordinator.core.states import Decision, GlobalStatus, Verdict
from coordinator.core.urlpolicy import PolicyError
from coordinator.dialects import dtm as dtm_protocol
from coordinator.dialects.dtm import FAILURE, ONGOING, SUCCESS
from coordinator.txlog.postgres import ListFilter

Handler = Callable[[web.Request], Awaitable[web.Response]]

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]{0,2000}")


def envelope(status: int, result: str, **fields: Any) -> web.Response:
    return web.json_response({"dtm_result": result, **fields}, status=status)


def failure(message: str, status: int = 409) -> web.Response:
    return envelope(status, FAILURE, message=message)


def success() -> web.Response:
    # Never put the word FAILURE in a success body: DTM clients search for it.
    return envelope(200, SUCCESS)


# The core's names for the options a DTM client sets under other names.
_DTM_FIELD_NAMES = {"timeout_s": "timeout_to_fail", "call_timeout_s": "request_timeout"}


def in_dtm_words(message: str) -> str:
    field, sep, rest = message.partition(":")
    return f"{_DTM_FIELD_NAMES.get(field, field)}{sep}{rest}"


def dtm_endpoint(handler: Handler) -> Handler:
    """Errors in DTM's envelope rather than problem+json."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except pydantic.ValidationError as exc:
            return failure(describe_validation(exc)[0], status=400)
        except LimitExceeded as exc:
            return failure(in_dtm_words(str(exc)), status=400)
        except (BadRequest, InvalidInput) as exc:
            return failure(str(exc), status=400)
        except BodyTooSlow as exc:
            response = failure(str(exc), status=408)
            response.force_close()
            return response
        except DatabaseUnavailable:
            response = failure("the transaction log is unavailable; retry shortly", status=503)
            response.headers["Retry-After"] = "1"
            return response
        except (Conflict, NotFound) as exc:
            return failure(str(exc))
        except Forbidden as exc:
            return failure(str(exc), status=403)

    return wrapped


# --- request bodies: unknown fields are ignored, as DTM does --------------------------


class DtmOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    timeout_to_fail: float | None = Field(default=None, ge=0)
    request_timeout: float | None = Field(default=None, ge=0)
    retry_interval: float | None = Field(default=None, ge=0)
    branch_headers: dict[str, str] | None = Field(default=None, max_length=32)
    wait_result: bool = False

    @pydantic.field_validator("timeout_to_fail", "request_timeout", "retry_interval")
    @classmethod
    def _not_vanishing(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < 0.01:
            raise ValueError("must be 0 (the default) or at least 0.01 seconds")
        return value

    @pydantic.field_validator("branch_headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, text in (value or {}).items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if not _HEADER_VALUE.fullmatch(text):
                raise ValueError(f"the value of {name!r} has characters a header cannot carry")
        return value

    def stored(self) -> dict[str, Any]:
        """The options kept with the transaction."""
        kept = {
            "retry_interval": self.retry_interval or None,
            "branch_headers": self.branch_headers or None,
        }
        return {k: v for k, v in kept.items() if v is not None}


class DtmGlobalIn(DtmOptions):
    gid: Gid
    trans_type: str = "tcc"
    rollback_reason: str | None = Field(default=None, max_length=500)


class DtmBranchIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    gid: Gid
    branch_id: Gid
    trans_type: str = "tcc"
    data: str = ""
    confirm: ParticipantUrl
    cancel: ParticipantUrl


def only_tcc(trans_type: str) -> None:
    if trans_type != "tcc":
        raise BadRequest(
            f"trans_type {trans_type!r} is not supported: this coordinator speaks DTM's TCC"
        )


def dtm_status(status: GlobalStatus) -> str:
    return dtm_protocol.DTM_STATUS[status]


# --- endpoints ---------------------------------------------------------------------------


@dtm_endpoint
async def new_gid(request: web.Request) -> web.Response:
    return web.json_response({"gid": guard.new_gid(request), "dtm_result": SUCCESS})


@dtm_endpoint
async def prepare(request: web.Request) -> web.Response:
    body = DtmGlobalIn.model_validate(await read_json_object(request))
    only_tcc(body.trans_type)
    settings = request.app[SETTINGS]
    timeout_s = body.timeout_to_fail or settings.default_timeout_s
    call_timeout_s = body.request_timeout or None
    service = service_for_begin(request, None)
    new = NewTransaction(
        gid=gid_for_begin(request, body.gid),
        service=service,
        metadata={},
        timeout_s=timeout_s,
        call_timeout_s=call_timeout_s,
        # DTM accepts a repeated prepare whatever its body, as long as it is still prepared;
        # the service is part of it, so another service's gid is a plain conflict.
        request_hash=f"dtm:prepare:{service}",
        dialect="dtm",
        options=body.stored(),
    )
    txn, created = await request.app[ENGINE].begin(new)
    if not created and txn.status is not GlobalStatus.TRYING:
        return failure(f"current status '{dtm_status(txn.status)}', cannot prepare")
    return success()


@dtm_endpoint
async def register_branch(request: web.Request) -> web.Response:
    body = DtmBranchIn.model_validate(await read_json_object(request))
    only_tcc(body.trans_type)
    for field, url in (("confirm", body.confirm), ("cancel", body.cancel)):
        try:
            request.app[POLICY].check_url(url)
        except PolicyError as exc:
            raise InvalidInput(f"{field}: {exc}") from exc
    await owned(request, body.gid)
    new = NewBranch(
        branch_id=body.branch_id,
        name=body.branch_id,
        try_url=None,  # DTM clients call try themselves
        confirm_url=body.confirm,
        cancel_url=body.cancel,
        payload=None,
        request_hash=request_hash(
            {"data": body.data, "confirm": body.confirm, "cancel": body.cancel}
        ),
        data=body.data or None,
    )
    try:
        await request.app[ENGINE].register(body.gid, new)
    except Conflict as exc:
        txn = await request.app[STORE].get(body.gid)
        if txn.status is not GlobalStatus.TRYING:
            return failure(f"current status: {dtm_status(txn.status)} cannot register branch")
        return failure(str(exc))
    return success()


async def _decide(request: web.Request, decision: Decision) -> web.Response:
    body = DtmGlobalIn.model_validate(await read_json_object(request))
    only_tcc(body.trans_type)
    engine = request.app[ENGINE]
    txn = await owned(request, body.gid)
    if decision is Decision.CONFIRM and (body.stored() or body.request_timeout):
        await engine.set_options(body.gid, body.stored(), body.request_timeout or None)
    if decision is Decision.CONFIRM:
        reason = None
    elif body.rollback_reason:
        reason = f"client: {body.rollback_reason}"
    else:
        reason = "client"
    result = await engine.decide(body.gid, decision, reason=reason)
    if result.judgement.verdict is Verdict.REFUSE:
        verb = "submit" if decision is Decision.CONFIRM else "abort"
        return failure(
            f"trans type: 'tcc' current status '{dtm_status(txn.status)}', cannot {verb}:"
            f" {result.judgement.reason}"
        )
    if not body.wait_result:
        return success()
    final = await engine.wait_for(body.gid)
    if final.status is GlobalStatus.CONFIRMED or (
        decision is Decision.CANCEL and final.status is GlobalStatus.CANCELLED
    ):
        return success()
    if final.status is GlobalStatus.CANCELLED:
        return failure(f"the transaction was cancelled ({final.cancel_reason})")
    return envelope(425, ONGOING, message=f"the transaction is {dtm_status(final.status)}")


@dtm_endpoint
async def submit(request: web.Request) -> web.Response:
    return await _decide(request, Decision.CONFIRM)


@dtm_endpoint
async def abort(request: web.Request) -> web.Response:
    return await _decide(request, Decision.CANCEL)


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def render_transaction(t: Transaction) -> dict[str, Any]:
    return {
        "gid": t.gid,
        "trans_type": "tcc",
        "status": dtm_status(t.status),
        "protocol": "http",
        "create_time": _time(t.created_at),
        "update_time": _time(t.updated_at),
        "finish_time": _time(t.finished_at) if t.status is GlobalStatus.CONFIRMED else None,
        "rollback_time": _time(t.finished_at) if t.status is GlobalStatus.CANCELLED else None,
        "rollback_reason": t.cancel_reason or "",
        "next_cron_time": _time(t.next_attempt_at),
        "timeout_to_fail": t.timeout_s,
        "request_timeout": t.call_timeout_s or 0,
        "retry_interval": t.options.get("retry_interval", 0),
        "branch_headers": dtm_protocol.redacted(t.options).get("branch_headers") or {},
        "dialect": t.dialect,  # ours: 'dtm' when it came in through this API
    }


def render_branches(branches: list[Branch]) -> list[dict[str, Any]]:
    rows = []
    for b in branches:
        for op, url in (("cancel", b.cancel_url), ("confirm", b.confirm_url)):
            status = dtm_protocol.branch_op_status(b.status, op)
            rows.append(
                {
                    "gid": b.gid,
                    "branch_id": b.branch_id,
                    "op": op,
                    "url": url,
                    "bin_data": base64.b64encode((b.data or "").encode()).decode(),
                    "status": status,
                    "create_time": _time(b.created_at),
                    "update_time": _time(b.updated_at),
                    "finish_time": _time(b.updated_at) if status == "succeed" else None,
                }
            )
    return rows


@dtm_endpoint
async def query(request: web.Request) -> web.Response:
    gid = request.query.get("gid", "")
    if not gid:
        raise BadRequest("no gid specified")
    try:
        await owned(request, gid)
        detail = await request.app[STORE].detail(gid)
    except NotFound:
        return web.json_response({"transaction": None, "branches": []})
    return web.json_response(
        {
            "transaction": render_transaction(detail.transaction),
            "branches": render_branches(detail.branches),
        }
    )


@dtm_endpoint
async def list_all(request: web.Request) -> web.Response:
    require_admin(request, "listing transactions")
    status_word = request.query.get("status", "")
    statuses = dtm_protocol.our_statuses(status_word) if status_word else None
    if status_word and not statuses:
        raise BadRequest(f"status: unknown status {status_word!r}")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError as exc:
        raise BadRequest("limit: must be a whole number") from exc
    if not 1 <= limit <= 1000:
        raise BadRequest("limit: must be between 1 and 1000")
    position = request.query.get("position", "")
    rows = await request.app[STORE].list(
        ListFilter(
            statuses=statuses,
            after=decode_cursor(position) if position else None,
            limit=limit + 1,
        )
    )
    page, more = rows[:limit], len(rows) > limit
    return web.json_response(
        {
            "transactions": [render_transaction(t) for t in page],
            "next_position": encode_cursor(page[-1].created_at, page[-1].gid) if more else "",
        }
    )


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": f"tcc-coordinator {metadata.version('tcc-coordinator')}"})


async def ping(request: web.Request) -> web.Response:
    return web.json_response({"msg": "pong"})


def setup_dtm_routes(app: web.Application) -> None:
    prefix = "/api/dtmsvr"
    app.router.add_get(f"{prefix}/newGid", new_gid)
    app.router.add_post(f"{prefix}/prepare", prepare)
    app.router.add_post(f"{prefix}/registerBranch", register_branch)
    app.router.add_post(f"{prefix}/registerTccBranch", register_branch)  # older SDKs
    app.router.add_post(f"{prefix}/submit", submit)
    app.router.add_post(f"{prefix}/abort", abort)
    app.router.add_get(f"{prefix}/query", query)
    app.router.add_get(f"{prefix}/all", list_all)
    app.router.add_get(f"{prefix}/version", version)
    app.router.add_get("/api/ping", ping)
