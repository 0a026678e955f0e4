"""Immutable records of the transaction log, as the rest of the coordinator sees them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from coordinator.core.states import BranchStatus, BranchView, GlobalStatus


@dataclass(frozen=True, slots=True)
class Branch:
    gid: str
    branch_id: str
    position: int
    name: str
    try_url: str | None
    confirm_url: str
    cancel_url: str
    payload: Any
    status: BranchStatus
    attempts: int
    last_http_status: int | None
    last_error: str | None
    last_latency_ms: float | None
    next_retry_at: datetime | None
    created_at: datetime
    updated_at: datetime
    data: str | None = None  # DTM dialect: the body of its confirm/cancel calls

    @property
    def view(self) -> BranchView:
        return BranchView(
            self.branch_id, self.status, coordinator_runs_try=self.try_url is not None
        )


@dataclass(frozen=True, slots=True)
class Transaction:
    gid: str
    status: GlobalStatus
    dialect: str
    service: str | None
    metadata: dict[str, Any]
    timeout_s: float
    call_timeout_s: float | None
    deadline: datetime
    cancel_reason: str | None
    created_at: datetime
    updated_at: datetime
    decided_at: datetime | None
    finished_at: datetime | None
    phase_attempts: int
    next_attempt_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    options: dict[str, Any] = field(default_factory=dict)  # protocol options (DTM's)


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    at: datetime
    kind: str
    branch_id: str | None
    phase: str | None
    http_status: int | None
    latency_ms: float | None
    error: str | None
    detail: dict[str, Any] = field(default_factory=dict)
    repeats: int = 1  # identical failures in a row are one event
    last_at: datetime | None = None  # when the last repeat happened


@dataclass(frozen=True, slots=True)
class TransactionDetail:
    """A transaction with everything an admin wants to see about it."""

    transaction: Transaction
    branches: list[Branch]
    events: list[Event]  # the first page of the timeline
    more_events: bool = False


@dataclass(frozen=True, slots=True)
class NewBranch:
    """A branch as a client registers it."""

    branch_id: str
    name: str
    try_url: str | None
    confirm_url: str
    cancel_url: str
    payload: Any
    request_hash: str
    data: str | None = None


@dataclass(frozen=True, slots=True)
class NewTransaction:
    gid: str
    service: str | None
    metadata: dict[str, Any]
    timeout_s: float
    call_timeout_s: float | None
    request_hash: str
    dialect: str = "tcc"
    branches: list[NewBranch] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Lease:
    """A claim on one transaction's phase-two work; writes are fenced by its token."""

    gid: str
    token: str
