"""The /v1 API's request and response bodies. Requests are strict: unknown fields are refused."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    model_validator,
)

from coordinator.core import states
from coordinator.core.records import Branch, Event, NewBranch, NewTransaction, Transaction
from coordinator.core.states import BranchStatus, GlobalStatus, TryReport
from coordinator.core.urlpolicy import check_url_form
from coordinator.dialects import dtm as dtm_protocol

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


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BranchIn(Strict):
    """A branch whose try the caller runs itself (POST .../branches)."""

    branch_id: Gid = Field(description="Unique within the transaction; same charset as a gid")
    name: ShortText | None = Field(default=None, description="Human name; defaults to branch_id")
    confirm_url: ParticipantUrl
    cancel_url: ParticipantUrl
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

    def to_new(self) -> NewBranch:
        return NewBranch(
            branch_id=self.branch_id,
            name=self.name or self.branch_id,
            try_url=getattr(self, "try_url", None),
            confirm_url=self.confirm_url,
            cancel_url=self.cancel_url,
            payload=self.payload,
            request_hash=request_hash(self.model_dump(mode="json")),
        )


class TryBranchIn(BranchIn):
    """A branch whose try the coordinator calls (POST .../try, and auto begins)."""

    try_url: ParticipantUrl


class BeginIn(Strict):
    gid: Gid | None = Field(default=None, description="Generated when omitted")
    service: ShortText | None = Field(default=None, description="Name of the calling service")
    timeout_s: float | None = Field(default=None, gt=0, description="Seconds until the deadline")
    call_timeout_s: float | None = Field(
        default=None, gt=0, description="Timeout of each participant call"
    )
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

    def to_new(self, gid: str, default_timeout_s: float) -> NewTransaction:
        """The transaction to log, under ``gid`` (the one asked for, or a generated one)."""
        return NewTransaction(
            gid=gid,
            service=self.service,
            metadata=self.metadata,
            timeout_s=self.timeout_s or default_timeout_s,
            call_timeout_s=self.call_timeout_s,
            request_hash=request_hash(self.model_dump(mode="json", exclude={"gid"})),
            branches=[b.to_new() for b in self.branches],
        )


class EmptyIn(Strict):
    """Confirm and cancel take no fields; an empty body or {} is fine."""


def request_hash(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- responses -----------------------------------------------------------------


class BranchOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    branch_id: str
    name: str
    status: BranchStatus
    try_url: str | None
    confirm_url: str
    cancel_url: str
    payload: JsonValue
    data: str | None = Field(description="DTM dialect: the body of confirm/cancel calls")
    attempts: int
    last_http_status: int | None
    last_error: str | None
    last_latency_ms: float | None
    next_retry_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, b: Branch) -> BranchOut:
        return cls.model_validate(b, from_attributes=True)


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    kind: str
    branch_id: str | None
    phase: str | None
    http_status: int | None
    latency_ms: float | None
    error: str | None
    detail: dict[str, JsonValue]
    repeats: int = Field(description="How many identical events in a row this one stands for")
    last_at: datetime | None = Field(description="When the last repeat happened (repeats > 1)")

    @classmethod
    def of(cls, e: Event) -> EventOut:
        return cls.model_validate(e, from_attributes=True)


class TransactionOut(BaseModel):
    gid: str
    status: GlobalStatus
    dialect: str
    service: str | None
    metadata: dict[str, JsonValue]
    timeout_s: float
    call_timeout_s: float | None
    deadline: datetime
    cancel_reason: str | None
    created_at: datetime
    updated_at: datetime
    decided_at: datetime | None
    finished_at: datetime | None
    phase_attempts: int
    next_retry_at: datetime | None = Field(description="Next phase-two round, while one is due")
    options: dict[str, JsonValue] = Field(description="Protocol options, e.g. DTM's")

    @classmethod
    def of(cls, t: Transaction) -> TransactionOut:
        in_phase_two = t.status in states.PHASE_TWO_STATUSES
        return cls(
            gid=t.gid,
            status=t.status,
            dialect=t.dialect,
            service=t.service,
            metadata=t.metadata,
            timeout_s=t.timeout_s,
            call_timeout_s=t.call_timeout_s,
            deadline=t.deadline,
            cancel_reason=t.cancel_reason,
            created_at=t.created_at,
            updated_at=t.updated_at,
            decided_at=t.decided_at,
            finished_at=t.finished_at,
            phase_attempts=t.phase_attempts,
            next_retry_at=t.next_attempt_at if in_phase_two else None,
            options=dtm_protocol.redacted(t.options),
        )


class TransactionDetailOut(TransactionOut):
    branches: list[BranchOut]
    events: list[EventOut] = Field(description="The timeline, oldest first (its first page)")
    events_next_cursor: str | None = Field(
        description="Set when the timeline goes on: GET .../events?cursor=... for the rest"
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
