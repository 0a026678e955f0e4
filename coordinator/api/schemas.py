"""The /v1 API's request and response bodies. Requests are strict: unknown fields are refused."""

from __future__ import annotations

import hashlib
import json
import re
import typing
from datetime import datetime
from typing import Annotated, Any

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    StringConstraints,
    ValidationError,
    create_model,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails

from coordinator.core import kinds, states
from coordinator.core.records import (
    Branch,
    CoordinatorSeen,
    Event,
    NewBranch,
    NewParticipant,
    Overview,
    Participant,
    ParticipantUsage,
    Transaction,
    TransactionDetail,
    shown_fields,
)
from coordinator.core.states import GlobalStatus, Phase, TransactionKind, TryReport
from coordinator.core.urlpolicy import check_url_form
from coordinator.dialects.registry import dialect
from coordinator.engine.service import BeginRequest

GID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_GID_RE = re.compile(GID_PATTERN)

Gid = Annotated[str, StringConstraints(pattern=GID_PATTERN)]


def is_valid_gid(value: str) -> bool:
    return _GID_RE.fullmatch(value) is not None


def _participant_url(value: str) -> str:
    """Refuse what no allowlist could make callable; the rules are applied in the view."""
    check_url_form(value)  # its PolicyError is a ValueError: a 422 naming the field
    return value


ParticipantUrl = Annotated[
    str, StringConstraints(min_length=1, max_length=2048), AfterValidator(_participant_url)
]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200)]
# Steps a saga or message may have in one request, before TCC_MAX_BRANCHES is applied (a bound
# the body's validation needs for itself).
MAX_STEPS = 1000
CallTimeout = Annotated[float | None, Field(gt=0, description="Timeout of each participant call")]
# A registered participant's name: the charset of a gid.
ParticipantName = Annotated[str, StringConstraints(pattern=GID_PATTERN)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BranchIn(Strict):
    """A branch whose try the caller runs itself (POST .../branches)."""

    branch_id: Gid = Field(description="Unique within the transaction; same charset as a gid")
    name: ShortText | None = Field(default=None, description="Human name; defaults to branch_id")
    participant: ParticipantName | None = Field(
        default=None,
        description="A registered participant: its URLs are used for those not given here",
    )
    confirm_url: ParticipantUrl | None = Field(
        default=None, description="Needed unless the branch names a participant"
    )
    cancel_url: ParticipantUrl | None = Field(
        default=None, description="Needed unless the branch names a participant"
    )
    payload: JsonValue = Field(default=None, description="Sent to every phase of the branch")

    @model_validator(mode="before")
    @classmethod
    def _no_try_url_here(cls, data: Any) -> Any:
        if cls is BranchIn and isinstance(data, dict) and "try_url" in data:
            raise ValueError(
                "try_url is not taken here: this registers a branch whose try you run"
                " yourself; POST .../try has the coordinator call it"
            )
        return data

    @model_validator(mode="after")
    def _urls_or_a_participant(self) -> BranchIn:
        """Without a registered participant's name, its URLs are required as ever (the
        same error as any missing field: "Field required", at the field)."""
        if self.participant is None:
            missing = [f for f in self._own_url_fields() if getattr(self, f) is None]
            if missing:
                raise ValidationError.from_exception_data(
                    type(self).__name__,
                    [InitErrorDetails(type="missing", loc=(f,), input=None) for f in missing],
                )
        return self

    @model_serializer(mode="wrap")
    def _leave_out_what_was_not_given(self, handler: SerializerFunctionWrapHandler) -> Any:
        """The participant (a later field) and URLs left to it are left out when not
        given: the digest of a request made before they existed stays the same."""
        data = handler(self)
        for key in ("participant", "try_url", "confirm_url", "cancel_url"):
            if key in data and data[key] is None:
                del data[key]
        return data

    @classmethod
    def _own_url_fields(cls) -> tuple[str, ...]:
        return ("confirm_url", "cancel_url")

    def _try_url(self) -> str | None:
        return None  # the client runs the try

    def to_new(self) -> NewBranch:
        # "" leaves the URL to the named participant (NewBranch.with_participant).
        return NewBranch(
            branch_id=self.branch_id,
            name=self.name or self.branch_id,
            try_url=self._try_url(),
            confirm_url=self.confirm_url or "",
            cancel_url=self.cancel_url or "",
            payload=self.payload,
            request_hash=request_hash(self.model_dump(mode="json")),
            participant=self.participant,
        )


class TryBranchIn(BranchIn):
    """A branch whose try the coordinator calls (POST .../try, and auto begins)."""

    try_url: ParticipantUrl | None = Field(
        default=None, description="Needed unless the branch names a participant"
    )

    @classmethod
    def _own_url_fields(cls) -> tuple[str, ...]:
        return ("try_url", "confirm_url", "cancel_url")

    def _try_url(self) -> str | None:
        return self.try_url or ""


class BeginIn(Strict):
    gid: Gid | None = Field(default=None, description="Generated when omitted")
    service: ShortText | None = Field(default=None, description="Name of the calling service")
    timeout_s: float | None = Field(default=None, gt=0, description="Seconds until the deadline")
    call_timeout_s: CallTimeout = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    auto: bool = Field(default=False, description="Run tries and phase two in this request")
    branches: list[TryBranchIn] = Field(default_factory=list)

    @model_validator(mode="after")
    def _branches_need_auto(self) -> BeginIn:
        if self.branches and not self.auto:
            raise ValueError('branches in a begin need "auto": true (or register them later)')
        if self.auto and not self.branches:
            raise ValueError('"auto": true needs at least one branch')
        ids = [b.branch_id for b in self.branches]
        if len(ids) != len(set(ids)):
            raise ValueError("branch_id values must be unique")
        return self

    def to_request(self) -> BeginRequest:
        return BeginRequest(
            gid=self.gid,
            service=self.service,
            metadata=self.metadata,
            timeout_s=self.timeout_s,
            call_timeout_s=self.call_timeout_s,
            # The gid and the service are the coordinator's to settle; the rest must match
            # on a repeat.
            body_hash=request_hash(self.model_dump(mode="json", exclude={"gid", "service"})),
            branches=tuple(b.to_new() for b in self.branches),
            auto=self.auto,
        )


class SagaStepIn(Strict):
    branch_id: Gid = Field(description="Unique within the saga; same charset as a gid")
    name: ShortText | None = Field(default=None, description="Human name; defaults to branch_id")
    action_url: ParticipantUrl = Field(description="POSTed to run the step")
    compensate_url: ParticipantUrl = Field(description="POSTed to undo it")
    payload: JsonValue = Field(default=None, description="Sent with the action and compensation")
    after: list[Gid] = Field(
        default_factory=list,
        max_length=100,
        description="The steps this one waits for (a graph of steps); runs at once when empty",
    )

    def to_new(self) -> NewBranch:
        return NewBranch(
            branch_id=self.branch_id,
            name=self.name or self.branch_id,
            try_url=None,
            confirm_url=self.action_url,
            cancel_url=self.compensate_url,
            payload=self.payload,
            request_hash=request_hash(self.model_dump(mode="json")),
        )


def _unique_steps(ids: list[str]) -> None:
    if len(ids) != len(set(ids)):
        raise ValueError("branch_id values must be unique")


class SagaIn(Strict):
    """A saga: its steps' actions run in order (or, with ``after`` or ``concurrent``, as a
    graph); when an action fails for good, the steps that may have started are compensated
    in reverse order."""

    gid: Gid | None = Field(default=None, description="Generated when omitted")
    service: ShortText | None = Field(default=None, description="Name of the calling service")
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    steps: list[SagaStepIn] = Field(min_length=1, max_length=MAX_STEPS)
    concurrent: bool = Field(
        default=False, description="Steps without `after` run at once rather than in order"
    )
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="No round of actions starts after this many seconds: the saga compensates"
        " instead",
    )
    call_timeout_s: CallTimeout = None
    retry_limit: int | None = Field(
        default=None,
        ge=1,
        le=10000,
        description="Rounds of actions before the saga compensates instead of retrying",
    )
    wait: bool = Field(
        default=True, description="Answer once the saga has ended (bounded), else at once"
    )

    @model_validator(mode="after")
    def _a_graph_that_runs(self) -> SagaIn:
        ids = [step.branch_id for step in self.steps]
        _unique_steps(ids)
        after = {step.branch_id: step.after for step in self.steps if step.after}
        problem = kinds.check_graph(ids, after)
        if problem is not None:
            raise ValueError(problem)
        return self

    def to_request(self) -> BeginRequest:
        after = {step.branch_id: step.after for step in self.steps if step.after}
        options: dict[str, Any] = {kinds.CONCURRENT_OPTION: self.concurrent}
        if after:
            options[kinds.AFTER_OPTION] = after
        if self.retry_limit is not None:
            options[kinds.RETRY_LIMIT_OPTION] = self.retry_limit
        if self.timeout_s is not None:
            options[kinds.FORWARD_TIMEOUT_OPTION] = True
        return BeginRequest(
            gid=self.gid,
            service=self.service,
            metadata=self.metadata,
            timeout_s=self.timeout_s,
            call_timeout_s=self.call_timeout_s,
            body_hash=request_hash(
                self.model_dump(mode="json", exclude={"gid", "service", "wait"})
            ),
            branches=tuple(step.to_new() for step in self.steps),
            options=options,
            kind=TransactionKind.SAGA,
        )


class MessageStepIn(Strict):
    branch_id: Gid = Field(description="Unique within the message; same charset as a gid")
    name: ShortText | None = Field(default=None, description="Human name; defaults to branch_id")
    url: ParticipantUrl = Field(description="POSTed the payload, at least once")
    payload: JsonValue = Field(default=None)

    def to_new(self) -> NewBranch:
        return NewBranch(
            branch_id=self.branch_id,
            name=self.name or self.branch_id,
            try_url=None,
            confirm_url=self.url,
            cancel_url="",  # a message is never compensated
            payload=self.payload,
            request_hash=request_hash(self.model_dump(mode="json")),
        )


class MessageIn(Strict):
    """A reliable message: each step's URL is POSTed its payload at least once, in order
    (or at once with ``concurrent``), retried until it answers 2xx or parks. ``prepared``
    holds it until POST .../submit; if neither submit nor abort comes within ``timeout_s``,
    the coordinator asks ``query_url``."""

    gid: Gid | None = Field(default=None, description="Generated when omitted")
    service: ShortText | None = Field(default=None, description="Name of the calling service")
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    steps: list[MessageStepIn] = Field(min_length=1, max_length=MAX_STEPS)
    concurrent: bool = Field(default=False, description="Deliver the steps at once")
    prepared: bool = Field(default=False, description="Hold it until submitted")
    query_url: ParticipantUrl | None = Field(
        default=None,
        description="A prepared message's service, asked GET ?gid= when it is not submitted"
        " in time: 2xx delivers, 409 aborts, anything else asks again later",
    )
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="How long a prepared message waits for its submit (35 s when omitted)",
    )
    call_timeout_s: CallTimeout = None

    @model_validator(mode="after")
    def _prepared_needs_a_query_url(self) -> MessageIn:
        _unique_steps([step.branch_id for step in self.steps])
        if self.prepared and not self.query_url:
            raise ValueError("a prepared message needs a query_url the coordinator can ask")
        return self

    def to_request(self) -> BeginRequest:
        options: dict[str, Any] = {kinds.CONCURRENT_OPTION: self.concurrent}
        if self.query_url:
            options[kinds.QUERY_URL_OPTION] = self.query_url
        timeout_s = self.timeout_s
        if timeout_s is None and self.prepared:
            timeout_s = kinds.DEFAULT_PREPARED_TIMEOUT_S
        return BeginRequest(
            gid=self.gid,
            service=self.service,
            metadata=self.metadata,
            timeout_s=timeout_s,
            call_timeout_s=self.call_timeout_s,
            body_hash=request_hash(self.model_dump(mode="json", exclude={"gid", "service"})),
            branches=tuple(step.to_new() for step in self.steps),
            options=options,
            kind=TransactionKind.MSG,
        )


class ParticipantIn(Strict):
    """A participant's registration (PUT /v1/participants/{name})."""

    base_url: ParticipantUrl | None = Field(
        default=None, description="Its phase URLs are <base>/try, /confirm, /cancel"
    )
    try_url: ParticipantUrl | None = Field(default=None, description="Else <base>/try")
    confirm_url: ParticipantUrl | None = Field(default=None, description="Else <base>/confirm")
    cancel_url: ParticipantUrl | None = Field(default=None, description="Else <base>/cancel")
    health_url: ParticipantUrl | None = Field(
        default=None,
        description="GET answers 2xx when it is up: the breaker probes it (else one real call)",
    )
    call_timeout_s: CallTimeout = None
    tls_profile: str | None = Field(
        default=None,
        max_length=64,
        description="The TLS profile its https calls use: a directory under each coordinator's"
        " TCC_PARTICIPANT_TLS_PROFILES_DIR (its CA bundle and client certificate)",
    )
    owner_service: ShortText | None = Field(
        default=None, description="The service that owns it (a service key: its own name)"
    )

    def to_new(self, name: str) -> NewParticipant:
        return NewParticipant.of(
            name,
            base_url=self.base_url,
            try_url=self.try_url,
            confirm_url=self.confirm_url,
            cancel_url=self.cancel_url,
            health_url=self.health_url,
            call_timeout_s=self.call_timeout_s,
            tls_profile=self.tls_profile,
            owner_service=self.owner_service,
            registered_by=None,
        )


class EmptyIn(Strict):
    """Confirm and cancel take no fields; an empty body or {} is fine."""


class ResolveIn(Strict):
    note: str = Field(min_length=1, max_length=500, description="What was done by hand, and why")


class ReasonIn(Strict):
    """Retry and cancel: an operator says why (stored in the timeline with who did it)."""

    reason: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="Why (an operator's action; on cancel it makes an admin's operator cancel)",
    )


class OverviewQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    window_s: float = Field(default=900, ge=60, le=86400, description="Seconds looked back")


class EventsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cursor: str | None = Field(default=None, max_length=20, pattern=r"^[0-9]{1,19}$")
    limit: int = Field(default=200, ge=1, le=1000)


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    status: GlobalStatus | None = None
    service: str | None = Field(default=None, min_length=1, max_length=200)
    created_from: datetime | None = None
    created_to: datetime | None = None
    cursor: str | None = Field(default=None, max_length=400)
    limit: int = Field(default=50, ge=1, le=500)
    dialect: str | None = Field(default=None, pattern=r"^[a-z]{1,20}$")
    kind: TransactionKind | None = Field(default=None, description="tcc, saga or msg")
    gid_prefix: str | None = Field(
        default=None, pattern=GID_PATTERN, description="Only gids that begin so"
    )


def request_hash(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- responses: built from the records' own fields ------------------------------------


def _api_type(hint: Any) -> Any:
    """A record field's type as JSON carries it."""
    if hint is Any:
        return JsonValue
    if typing.get_origin(hint) is dict:
        return dict[str, JsonValue]
    return hint


_SHOWN_NAMES: dict[type[Any], tuple[str, ...]] = {
    kind: tuple(f.name for f in shown_fields(kind))
    for kind in (Transaction, Branch, Event, CoordinatorSeen, Participant)
}


def shown_names(record: type[Any]) -> tuple[str, ...]:
    return _SHOWN_NAMES[record]


def record_fields(record: type[Any], *, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The fields a record shows, with their documentation, as pydantic field definitions."""
    hints = typing.get_type_hints(record)
    return {
        f.name: (_api_type(hints[f.name]), Field(description=f.metadata["doc"]))
        for f in shown_fields(record)
        if f.name not in skip
    }


# The response models are built from records the coordinator made itself: already of the
# right types, so they are constructed without validating them again.


class _BranchBase(BaseModel):
    @classmethod
    def of(cls, b: Branch) -> _BranchBase:
        return cls.model_construct(**{name: getattr(b, name) for name in shown_names(Branch)})


class _EventBase(BaseModel):
    @classmethod
    def of(cls, e: Event) -> _EventBase:
        return cls.model_construct(**{name: getattr(e, name) for name in shown_names(Event)})


class _TransactionBase(BaseModel):
    next_retry_at: datetime | None = Field(description="Next phase-two round, while one is due")

    @classmethod
    def of(cls, t: Transaction) -> _TransactionBase:
        return cls.model_construct(**cls.values_of(t))

    @classmethod
    def values_of(cls, t: Transaction) -> dict[str, Any]:
        values = {name: getattr(t, name) for name in shown_names(Transaction)}
        values["options"] = dialect(t.dialect).shown_options(t.options)
        values["next_retry_at"] = (
            t.next_attempt_at if t.status in states.PHASE_TWO_STATUSES else None
        )
        return values


BranchOut = create_model("BranchOut", __base__=_BranchBase, **record_fields(Branch))
EventOut = create_model("EventOut", __base__=_EventBase, **record_fields(Event))
TransactionOut = create_model(
    "TransactionOut", __base__=_TransactionBase, **record_fields(Transaction)
)
TransactionDetailOut = create_model(
    "TransactionDetailOut",
    __base__=TransactionOut,
    branches=(list[BranchOut], ...),
    events=(
        list[EventOut],
        Field(description="The timeline, oldest first (its first page)"),
    ),
    events_next_cursor=(
        str | None,
        Field(description="Set when the timeline goes on: GET .../events?cursor=... for the rest"),
    ),
)


def detail_json(detail: TransactionDetail) -> bytes:
    """A transaction detail as TransactionDetailOut's JSON, straight from the records (the
    hot path's answer: no model is built). Values orjson cannot write (integers beyond 64
    bits in a payload) go through the model instead; a test keeps the two identical."""
    body = {
        **_TransactionBase.values_of(detail.transaction),
        "branches": [_shown(b, Branch) for b in detail.branches],
        "events": [_shown(e, Event) for e in detail.events],
        "events_next_cursor": str(detail.events[-1].id) if detail.more_events else None,
    }
    try:
        return orjson.dumps(body, option=orjson.OPT_UTC_Z)
    except TypeError:
        return render_detail(detail).model_dump_json().encode()


def _shown(record: Any, kind: type[Any]) -> dict[str, Any]:
    return {name: getattr(record, name) for name in shown_names(kind)}


def render_detail(detail: TransactionDetail) -> BaseModel:
    return TransactionDetailOut.model_construct(
        **_TransactionBase.values_of(detail.transaction),
        branches=[BranchOut.of(b) for b in detail.branches],
        events=[EventOut.of(e) for e in detail.events],
        events_next_cursor=str(detail.events[-1].id) if detail.more_events else None,
    )


class EventPageOut(BaseModel):
    events: list[EventOut]
    next_cursor: str | None


class ParticipantReplyOut(BaseModel):
    http_status: int | None
    body: JsonValue
    error: str | None
    latency_ms: float


class TryOut(BaseModel):
    verdict: TryReport
    transaction_status: GlobalStatus
    branch: BranchOut | None
    participant: ParticipantReplyOut | None


class TransactionPageOut(BaseModel):
    transactions: list[TransactionOut]
    next_cursor: str | None


CoordinatorOut = create_model("CoordinatorOut", **record_fields(CoordinatorSeen))


class _ParticipantBase(BaseModel):
    @classmethod
    def of(cls, p: Participant) -> _ParticipantBase:
        return cls.model_validate({name: getattr(p, name) for name in shown_names(Participant)})


ParticipantOut = create_model(
    "ParticipantOut", __base__=_ParticipantBase, **record_fields(Participant)
)


class PhaseUsageOut(BaseModel):
    phase: Phase
    calls: int
    errors: int = Field(description="Calls that failed (no answer, 5xx, 429)")
    latency_ms_avg: float | None
    latency_ms_max: float | None


class ParticipantUsageOut(BaseModel):
    calls_per_minute: float = Field(description="Over the window")
    error_rate: float | None = Field(description="Failed calls / calls over the window")
    calls_by_minute: list[int] = Field(description="One per minute, oldest first")
    phases: list[PhaseUsageOut] = Field(description="By phase, over the window")
    waiting: int = Field(
        description="Transactions in phase two or parked with a branch on it not yet done"
    )

    @classmethod
    def of(cls, u: ParticipantUsage) -> ParticipantUsageOut:
        calls = sum(p.calls for p in u.phases)
        errors = sum(p.errors for p in u.phases)
        return cls(
            calls_per_minute=round(calls / max(len(u.calls_by_minute), 1), 2),
            error_rate=round(errors / calls, 4) if calls else None,
            calls_by_minute=u.calls_by_minute,
            phases=[PhaseUsageOut.model_validate(p, from_attributes=True) for p in u.phases],
            waiting=u.waiting,
        )


class ParticipantUsedOut(ParticipantOut):
    usage: ParticipantUsageOut


class ParticipantListOut(BaseModel):
    participants: list[ParticipantUsedOut]
    window_s: float

    @classmethod
    def of(
        cls, rows: list[tuple[Participant, ParticipantUsage]], window_s: float
    ) -> ParticipantListOut:
        return cls(
            participants=[
                ParticipantUsedOut(
                    **ParticipantOut.of(p).model_dump(), usage=ParticipantUsageOut.of(u)
                )
                for p, u in rows
            ],
            window_s=window_s,
        )


class MinuteTallyOut(BaseModel):
    minute: datetime
    begun: int
    confirmed: int
    cancelled: int
    parked: int


class OverviewOut(BaseModel):
    unfinished: dict[GlobalStatus, int] = Field(description="Every open transaction, by status")
    recent: dict[GlobalStatus, int] = Field(description="Begun in the window, by status now")
    per_minute: list[MinuteTallyOut]
    parked: list[TransactionOut]
    retrying_long: list[TransactionOut]
    oldest_unfinished: list[TransactionOut]
    near_deadline: list[TransactionOut]
    parked_branches: dict[str, BranchOut] = Field(
        description="Per parked transaction listed: the first branch still waiting (why)"
    )
    coordinators: list[CoordinatorOut] = Field(
        description="The coordinator processes seen on the log in the last 15 minutes"
    )
    window_s: float
    generated_at: datetime

    @classmethod
    def of(cls, o: Overview) -> OverviewOut:
        def rows(txns: list[Transaction]) -> list[Any]:
            return [TransactionOut.of(t) for t in txns]

        return cls(
            unfinished=o.unfinished,
            recent=o.recent,
            per_minute=[
                MinuteTallyOut.model_validate(m, from_attributes=True) for m in o.per_minute
            ],
            parked=rows(o.parked),
            retrying_long=rows(o.retrying_long),
            oldest_unfinished=rows(o.oldest_unfinished),
            near_deadline=rows(o.near_deadline),
            parked_branches={gid: BranchOut.of(b) for gid, b in o.parked_branches.items()},
            coordinators=[
                CoordinatorOut.model_validate(c, from_attributes=True) for c in o.coordinators
            ],
            window_s=o.window_s,
            generated_at=o.generated_at,
        )
