"""DTM's HTTP protocol for TCC under /api/dtmsvr, so DTM's client SDKs work unchanged.

Same log, same state machine, same recovery: these handlers only translate DTM's requests
into calls to the service layer and its answers into DTM's envelope: 200
{"dtm_result": "SUCCESS"}, 409 {"dtm_result": "FAILURE", "message": ...}, 425
{"dtm_result": "ONGOING"}. Our records in DTM's words come from the dtm dialect.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import pydantic
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from coordinator.api.appkeys import COORDINATOR
from coordinator.api.body import BodyTooSlow
from coordinator.api.guard import caller
from coordinator.api.problems import BadRequest, describe_validation
from coordinator.api.schemas import Gid, ParticipantUrl, request_hash
from coordinator.api.wire import decode_cursor, encode_cursor, read_json_object
from coordinator.core import kinds
from coordinator.core.errors import (
    Conflict,
    DatabaseUnavailable,
    Forbidden,
    InvalidInput,
    LimitExceeded,
    NotFound,
    NotTrying,
)
from coordinator.core.limits import RETRY_INTERVAL_OPTION
from coordinator.core.records import ListFilter, NewBranch, OptionsUpdate, Transaction
from coordinator.core.states import Decision, GlobalStatus, TransactionKind, Verdict
from coordinator.core.urlpolicy import check_url_form
from coordinator.dialects.base import RESERVED_HEADERS
from coordinator.dialects.dtm import (
    BRANCH_HEADERS_OPTION,
    FAILURE,
    ONGOING,
    SUCCESS,
    action_outcomes,
    dtm_status,
    our_statuses,
    render_branches,
    render_transaction,
)
from coordinator.engine.service import BeginRequest, Decided

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
            RETRY_INTERVAL_OPTION: self.retry_interval or None,
            BRANCH_HEADERS_OPTION: self.branch_headers or None,
        }
        return {k: v for k, v in kept.items() if v is not None}

    def update(self) -> OptionsUpdate | None:
        """The options a submit sets again, if it carries any."""
        if not (self.stored() or self.request_timeout):
            return None
        return OptionsUpdate(self.stored(), self.request_timeout or None)


class DtmGlobalIn(DtmOptions):
    gid: Gid
    trans_type: str = "tcc"
    rollback_reason: str | None = Field(default=None, max_length=500)

    def to_request(self) -> BeginRequest:
        return BeginRequest(
            gid=self.gid,
            service=None,
            metadata={},
            timeout_s=self.timeout_to_fail or None,
            call_timeout_s=self.request_timeout or None,
            # DTM accepts a repeated prepare whatever its body, as long as it is still
            # prepared; the service is part of the request, so another's gid is taken.
            body_hash="dtm:prepare",
            dialect="dtm",
            options=self.stored(),
        )


class DtmBranchIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    gid: Gid
    branch_id: Gid
    trans_type: str = "tcc"
    data: str = ""
    confirm: ParticipantUrl
    cancel: ParticipantUrl

    def to_new(self) -> NewBranch:
        return NewBranch(
            branch_id=self.branch_id,
            name=self.branch_id,
            try_url=None,  # DTM clients call try themselves
            confirm_url=self.confirm,
            cancel_url=self.cancel,
            payload=None,
            request_hash=request_hash(
                {"data": self.data, "confirm": self.confirm, "cancel": self.cancel}
            ),
            data=self.data or None,
        )


class DtmStepsIn(DtmGlobalIn):
    """A saga's or message's prepare and submit: its steps (action URLs, a saga's
    compensations) and their payloads, and how they run."""

    steps: list[dict[str, str]] = Field(default_factory=list, max_length=1000)
    payloads: list[str] = Field(default_factory=list, max_length=1000)
    query_prepared: str | None = Field(default=None, max_length=2048)
    custom_data: str | None = Field(default=None, max_length=100_000)
    concurrent: bool = False
    retry_limit: int | None = Field(default=None, ge=0, le=10_000)
    passthrough_headers: list[str] = Field(default_factory=list, max_length=32)

    def kind(self) -> TransactionKind:
        return TransactionKind(self.trans_type)

    def to_steps_request(self, passed_through: dict[str, str]) -> BeginRequest:
        """The saga or message as the service takes it; ``passed_through``: the submit's own
        headers named by passthrough_headers, sent to every branch with branch_headers."""
        kind = self.kind()
        if not self.steps:
            raise BadRequest(f"steps: a {kind.value} needs at least one step")
        if len(self.payloads) > len(self.steps):
            raise BadRequest("payloads: more payloads than steps")
        branches = tuple(self._step(i, step, kind) for i, step in enumerate(self.steps))
        options = self.stored()
        if passed_through:
            options[BRANCH_HEADERS_OPTION] = {
                **options.get(BRANCH_HEADERS_OPTION, {}),
                **passed_through,
            }
        options.update(self._plan(kind))
        timeout_s = self.timeout_to_fail or None
        if kind is TransactionKind.SAGA:
            if timeout_s is not None:
                options[kinds.FORWARD_TIMEOUT_OPTION] = True
            if self.retry_limit:
                options[kinds.RETRY_LIMIT_OPTION] = self.retry_limit
        elif timeout_s is None:
            timeout_s = kinds.DEFAULT_PREPARED_TIMEOUT_S
        if self.query_prepared:
            try:
                check_url_form(self.query_prepared)
            except ValueError as exc:
                raise BadRequest(f"query_prepared: {exc}") from exc
            options[kinds.QUERY_URL_OPTION] = self.query_prepared
        return BeginRequest(
            gid=self.gid,
            service=None,
            metadata={},
            timeout_s=timeout_s,
            call_timeout_s=self.request_timeout or None,
            # A prepare and the submit that follows carry the same steps: one transaction.
            body_hash=f"dtm:{kind.value}",
            branches=branches,
            dialect="dtm",
            options=options,
            kind=kind,
        )

    def _step(self, i: int, step: dict[str, str], kind: TransactionKind) -> NewBranch:
        action = step.get("action")
        if not action:
            raise BadRequest(f"steps.{i}.action: required")
        compensate = step.get("compensate", "")
        if kind is TransactionKind.SAGA and not compensate:
            raise BadRequest(f"steps.{i}.compensate: required in a saga")
        for name, url in (("action", action), ("compensate", compensate)):
            if url:
                try:
                    check_url_form(url)
                except ValueError as exc:
                    raise BadRequest(f"steps.{i}.{name}: {exc}") from exc
        data = self.payloads[i] if i < len(self.payloads) else ""
        branch_id = f"{i + 1:02d}"  # DTM's ids for the steps: 01, 02, ...
        return NewBranch(
            branch_id=branch_id,
            name=branch_id,
            try_url=None,
            confirm_url=action,
            cancel_url=compensate if kind is TransactionKind.SAGA else "",
            payload=None,
            request_hash=request_hash({"action": action, "compensate": compensate, "data": data}),
            data=data or None,
        )

    def _plan(self, kind: TransactionKind) -> dict[str, Any]:
        """The order of the steps: a saga's custom_data (concurrent, and orders: a step's
        index -> the indexes it waits for, from 0) or a message's concurrent."""
        custom: dict[str, Any] = {}
        if self.custom_data:
            try:
                loaded = json.loads(self.custom_data)
            except ValueError as exc:
                raise BadRequest(f"custom_data: not JSON ({exc})") from exc
            custom = loaded if isinstance(loaded, dict) else {}
        concurrent = self.concurrent or bool(custom.get("concurrent"))
        plan: dict[str, Any] = {kinds.CONCURRENT_OPTION: concurrent}
        orders = custom.get("orders") or {}
        if kind is TransactionKind.SAGA and concurrent and orders:
            ids = [f"{i + 1:02d}" for i in range(len(self.steps))]
            try:
                after = {
                    ids[int(step)]: [ids[int(pre)] for pre in pres]
                    for step, pres in dict(orders).items()
                }
            except (ValueError, IndexError, TypeError) as exc:
                raise BadRequest("custom_data.orders: step indexes from 0, as numbers") from exc
            problem = kinds.check_graph(ids, after)
            if problem is not None:
                raise BadRequest(f"custom_data.orders: {problem}")
            plan[kinds.AFTER_OPTION] = after
        return plan


_KINDS = frozenset(kind.value for kind in TransactionKind)


def kind_of(trans_type: str) -> TransactionKind:
    if trans_type not in _KINDS:
        raise BadRequest(
            f"trans_type {trans_type!r} is not supported: this coordinator speaks DTM's tcc,"
            " saga and msg (not xa or workflow)"
        )
    return TransactionKind(trans_type)


def only_tcc(trans_type: str) -> None:
    if kind_of(trans_type) is not TransactionKind.TCC:
        raise BadRequest(
            f"trans_type {trans_type!r}: only a tcc transaction has branches to register"
        )


def _passed_through(request: web.Request, names: list[str]) -> dict[str, str]:
    """The submit's own headers that DTM's passthrough_headers names."""
    kept = {}
    for name in names:
        if not _HEADER_NAME.fullmatch(name) or name.lower() in RESERVED_HEADERS:
            raise BadRequest(f"passthrough_headers: {name!r} cannot be passed on")
        value = request.headers.get(name)
        if value is not None and _HEADER_VALUE.fullmatch(value):
            kept[name] = value
    return kept


# --- endpoints ---------------------------------------------------------------------------


@dtm_endpoint
async def new_gid(request: web.Request) -> web.Response:
    gid = request.app[COORDINATOR].new_gid(caller(request))
    return web.json_response({"gid": gid, "dtm_result": SUCCESS})


@dtm_endpoint
async def prepare(request: web.Request) -> web.Response:
    raw = await read_json_object(request)
    body = DtmStepsIn.model_validate(raw)
    kind = kind_of(body.trans_type)
    coordinator = request.app[COORDINATOR]
    if kind is TransactionKind.SAGA:
        raise BadRequest("trans_type 'saga' is not prepared: submit the saga with its steps")
    if kind is TransactionKind.MSG:
        steps = body.to_steps_request(_passed_through(request, body.passthrough_headers))
        begun = await coordinator.post_message(steps, caller(request), prepared=True)
        txn, created = begun.detail.transaction, begun.created
    else:
        txn, created = await coordinator.prepare(body.to_request(), caller(request))
    if not created and txn.status is not GlobalStatus.TRYING:
        return failure(f"current status '{dtm_status(txn.status)}', cannot prepare")
    return success()


@dtm_endpoint
async def register_branch(request: web.Request) -> web.Response:
    body = DtmBranchIn.model_validate(await read_json_object(request))
    only_tcc(body.trans_type)
    try:
        await request.app[COORDINATOR].register_branch(body.gid, body.to_new(), caller(request))
    except NotTrying as exc:
        return failure(f"current status: {dtm_status(exc.status)} cannot register branch")
    return success()


def _answer(decided: Decided, decision: Decision) -> web.Response:
    if decided.judgement.verdict is Verdict.REFUSE:
        verb = "submit" if decision is Decision.CONFIRM else "abort"
        return failure(
            f"trans type: 'tcc' current status '{dtm_status(decided.before.status)}', cannot"
            f" {verb}: {decided.judgement.reason}"
        )
    final = decided.after
    if (
        final is None
        or final.status is GlobalStatus.CONFIRMED
        or (decision is Decision.CANCEL and final.status is GlobalStatus.CANCELLED)
    ):
        return success()
    if final.status is GlobalStatus.CANCELLED:
        return failure(f"the transaction was cancelled ({final.cancel_reason})")
    return envelope(425, ONGOING, message=f"the transaction is {dtm_status(final.status)}")


def _steps_answer(decided: Decided, final: Transaction, *, waited: bool) -> web.Response:
    """A saga's or message's submit: refused, or SUCCESS; with wait_result, SUCCESS only
    once it succeeded, else 409 saying where it is (compensated, or still running)."""
    kind = final.kind.value
    if decided.judgement.verdict is Verdict.REFUSE:
        return failure(
            f"trans type: '{kind}' current status '{dtm_status(decided.before.status)}', cannot"
            f" submit: {decided.judgement.reason}"
        )
    if not waited or final.status is GlobalStatus.CONFIRMED:
        return success()
    if final.status is GlobalStatus.CANCELLED:
        return failure(f"the {kind} failed and was compensated ({final.cancel_reason})")
    return failure(f"the {kind} did not succeed in time: it is {dtm_status(final.status)}")


@dtm_endpoint
async def submit(request: web.Request) -> web.Response:
    raw = await read_json_object(request)
    body = DtmStepsIn.model_validate(raw)
    if kind_of(body.trans_type) is not TransactionKind.TCC:
        steps = body.to_steps_request(_passed_through(request, body.passthrough_headers))
        decided, final = await request.app[COORDINATOR].submit_dtm(
            steps, caller(request), body.update(), wait=body.wait_result
        )
        return _steps_answer(decided, final, waited=body.wait_result)
    decided = await request.app[COORDINATOR].submit(
        body.gid, caller(request), body.update(), wait=body.wait_result
    )
    return _answer(decided, Decision.CONFIRM)


@dtm_endpoint
async def abort(request: web.Request) -> web.Response:
    body = DtmGlobalIn.model_validate(await read_json_object(request))
    kind = kind_of(body.trans_type)
    if kind is TransactionKind.SAGA:
        return failure("a saga is not aborted: it compensates by itself when a step fails")
    if kind is TransactionKind.MSG:
        await request.app[COORDINATOR].decide_message(
            body.gid, Decision.CANCEL, caller(request), reason=body.rollback_reason
        )
        return success()
    decided = await request.app[COORDINATOR].abort(
        body.gid, caller(request), body.rollback_reason, wait=body.wait_result
    )
    return _answer(decided, Decision.CANCEL)


@dtm_endpoint
async def query(request: web.Request) -> web.Response:
    gid = request.query.get("gid", "")
    if not gid:
        raise BadRequest("no gid specified")
    try:
        # A compensated saga step's action row shows how the action had answered: read from
        # the whole timeline (the branch keeps only "cancelled").
        detail = await request.app[COORDINATOR].detail(gid, caller(request), whole=True)
    except NotFound:
        return web.json_response({"transaction": None, "branches": []})
    kind = detail.transaction.kind
    actions = action_outcomes(detail.events) if kind is TransactionKind.SAGA else None
    return web.json_response(
        {
            "transaction": render_transaction(detail.transaction),
            "branches": render_branches(detail.branches, kind, actions),
        }
    )


def _all_filter(request: web.Request) -> ListFilter:
    status_word = request.query.get("status", "")
    statuses = our_statuses(status_word) if status_word else None
    if status_word and not statuses:
        raise BadRequest(f"status: unknown status {status_word!r}")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError as exc:
        raise BadRequest("limit: must be a whole number") from exc
    if not 1 <= limit <= 1000:
        raise BadRequest("limit: must be between 1 and 1000")
    position = request.query.get("position", "")
    return ListFilter(
        statuses=statuses, after=decode_cursor(position) if position else None, limit=limit
    )


@dtm_endpoint
async def list_all(request: web.Request) -> web.Response:
    flt = _all_filter(request)
    page, more = await request.app[COORDINATOR].list_transactions(flt, caller(request))
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
