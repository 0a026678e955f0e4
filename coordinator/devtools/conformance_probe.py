"""How `tcc conformance` talks to a participant: exactly as the coordinator does.

Each call is shaped by the coordinator's own dialect from a Transaction and a Branch record
made up for it, sent by the coordinator's own caller (no redirects, a capped reply, one
timeout), and read with the dialect's own judgement: a try by `states.judge_try`, every
other phase by the dialect's `judge_phase_two`. Nothing here decides what a participant
ought to answer; that is the scenarios' business (conformance_scenarios.py).

The check URL is ours: `GET <check-url>?gid=G&branch_id=B` answers what that branch holds
and what became of it (docs/participants.md, "Checking a participant").
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeGuard

import aiohttp

from coordinator.core.errors import CoordinatorError
from coordinator.core.records import Branch, CallResult, OutboundCall, Transaction
from coordinator.core.states import (
    BranchStatus,
    GlobalStatus,
    Phase,
    TransactionKind,
    TryVerdict,
    judge_try,
)
from coordinator.dialects.base import CallOutcome
from coordinator.dialects.registry import dialect
from coordinator.outbound import HttpCaller

# As much of a reply as the coordinator keeps by default (TCC_MAX_RESPONSE_BYTES).
REPLY_BYTES = 65_536
# The branch every scenario uses (DTM numbers its branches so).
BRANCH_ID = "01"
# The service that "began" the made-up transactions, and the branch's name (no call carries
# either: they only make the records whole).
SERVICE = "tcc-conformance"
# Their timeout: the dialects never read it, nor the deadline made from it.
RECORD_TIMEOUT_S = 60.0


class Dialect(StrEnum):
    """The dialects as the command line names them; `value` is not the registry's name."""

    V1 = "v1"
    DTM = "dtm"

    @property
    def registry_name(self) -> str:
        """The coordinator's name for it (coordinator.dialects.registry)."""
        return "tcc" if self is Dialect.V1 else "dtm"


class Unreachable(CoordinatorError):
    """The participant (or the coordinator asked for its URLs) does not answer at all."""


class CheckUrlError(CoordinatorError):
    """The check URL does not keep its contract, before any scenario ran."""


@dataclass(frozen=True, slots=True)
class Target:
    """The participant under test. URLs are kept as a Branch keeps them: a saga step's
    action is its confirm URL and its compensation its cancel URL, with no try URL."""

    kind: TransactionKind  # TCC or SAGA
    try_url: str | None
    confirm_url: str
    cancel_url: str
    payload: Any
    dialect: Dialect
    timeout_s: float
    check_url: str | None = None
    source: str = "the command line"  # where the URLs came from, for the report

    @property
    def urls(self) -> dict[str, str]:
        """The participant's URLs by the phase the command line names them after."""
        if self.kind is TransactionKind.SAGA:
            return {"action": self.confirm_url, "compensate": self.cancel_url}
        assert self.try_url is not None
        return {"try": self.try_url, "confirm": self.confirm_url, "cancel": self.cancel_url}


@dataclass(frozen=True, slots=True)
class Reply:
    """One call and how the coordinator reads its answer."""

    phase: Phase
    result: CallResult
    reading: TryVerdict | CallOutcome  # judge_try's for a try, the dialect's for the rest
    ok: bool  # tried (a try) or done (any other phase)
    malformed: bool = False  # a call made unreadable on purpose

    @property
    def head(self) -> str:
        """The status, or why there was none."""
        result = self.result
        if result.http_status is None:
            return f"no answer ({result.error})"
        return str(result.http_status)

    def describe(self) -> str:
        """One line: the call, its answer and how the coordinator reads it."""
        result = self.result
        what = f"{self.phase.value} (malformed)" if self.malformed else self.phase.value
        body = f" {snippet(result.text)}" if result.http_status is not None else ""
        return f"{what}: {self.head}{body} -> {self.reading.value}, {result.latency_ms:.0f} ms"

    @property
    def timed_out(self) -> bool:
        # The caller's own words for a call that got no answer in time (coordinator.outbound).
        error = self.result.error or ""
        return self.result.http_status is None and error.startswith("timed out")


@dataclass(frozen=True, slots=True)
class Holding:
    """What the check URL says about a branch."""

    held: bool  # the try's reservation is in place now
    applied: int  # times confirm (a saga step: its action) took effect
    undone: int | None  # times cancel (compensate) gave something back; None: not reported

    def describe(self) -> str:
        undone = "" if self.undone is None else f" undone={self.undone}"
        return f"held={str(self.held).lower()} applied={self.applied}{undone}"


class Probe:
    """Calls one participant the coordinator's way, over one client session."""

    def __init__(self, target: Target, session: aiohttp.ClientSession) -> None:
        self.target = target
        self.session = session
        self.caller = HttpCaller(session, REPLY_BYTES)
        self._dialect = dialect(target.dialect.registry_name)

    def records(self, gid: str) -> tuple[Transaction, Branch]:
        """A transaction and its one branch as the log would hand them to the dialect, which
        reads the gid, the kind, the options and the branch's URLs, payload and data."""
        t = self.target
        now = datetime.now(UTC)
        txn = Transaction(
            gid=gid,
            status=GlobalStatus.TRYING,
            dialect=t.dialect.registry_name,
            service=SERVICE,
            metadata={},
            timeout_s=RECORD_TIMEOUT_S,
            call_timeout_s=t.timeout_s,
            deadline=now + timedelta(seconds=RECORD_TIMEOUT_S),
            cancel_reason=None,
            created_at=now,
            updated_at=now,
            decided_at=None,
            finished_at=None,
            phase_attempts=0,
            next_attempt_at=None,
            lease_owner=None,
            lease_expires_at=None,
            options={},
            traceparent=None,
            tracestate=None,
            kind=t.kind,
        )
        # DTM's participants get the payload as the raw body (the branch's data).
        data = None
        if t.dialect is Dialect.DTM and t.payload is not None:
            data = json.dumps(t.payload)
        branch = Branch(
            gid=gid,
            branch_id=BRANCH_ID,
            position=0,
            name=SERVICE,
            try_url=t.try_url,
            confirm_url=t.confirm_url,
            cancel_url=t.cancel_url,
            payload=t.payload,
            status=BranchStatus.REGISTERED,
            attempts=0,
            last_http_status=None,
            last_error=None,
            last_latency_ms=None,
            next_retry_at=None,
            created_at=now,
            updated_at=now,
            data=data,
        )
        return txn, branch

    def call_for(self, txn: Transaction, branch: Branch, phase: Phase) -> OutboundCall:
        return self._dialect.participant_call(txn, branch, phase)

    async def send(self, txn: Transaction, branch: Branch, phase: Phase) -> Reply:
        return await self.send_call(phase, self.call_for(txn, branch, phase))

    async def send_malformed(self, txn: Transaction, branch: Branch, phase: Phase) -> Reply:
        """The phase's call with a body that is no JSON and no gid in the query: a call
        nobody can read, with the coordinator's headers."""
        call = dataclasses.replace(
            self.call_for(txn, branch, phase), body=b"{this is not JSON", params=None
        )
        reply = await self.send_call(phase, call)
        return dataclasses.replace(reply, malformed=True)

    def start(
        self, txn: Transaction, branch: Branch, phase: Phase, limit_s: float
    ) -> asyncio.Task[Reply]:
        """The call, in the background and given up to ``limit_s`` instead of the timeout:
        to see when a call the coordinator would have given up on ends after all."""
        return asyncio.create_task(
            self.send_call(phase, self.call_for(txn, branch, phase), limit_s)
        )

    async def send_call(
        self, phase: Phase, call: OutboundCall, timeout_s: float | None = None
    ) -> Reply:
        result = await self.caller.send(call, timeout_s or self.target.timeout_s)
        if phase is Phase.TRY:
            verdict = judge_try(result.http_status)
            return Reply(phase, result, verdict, verdict is TryVerdict.TRIED)
        outcome = self._dialect.judge_phase_two(phase, result)
        return Reply(phase, result, outcome, outcome is CallOutcome.DONE)

    async def check(self, gid: str) -> Holding | str:
        """What the check URL says about the branch, or what is wrong with its answer."""
        assert self.target.check_url is not None
        params = {"gid": gid, "branch_id": BRANCH_ID}
        try:
            async with asyncio.timeout(self.target.timeout_s):
                async with self.session.get(
                    self.target.check_url, params=params, allow_redirects=False
                ) as response:
                    status, text = response.status, await response.text()
        except TimeoutError:
            return f"no answer within {self.target.timeout_s:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            return f"no answer: {type(exc).__name__}: {exc}"
        return holding_of(status, text)


def holding_of(status: int, text: str) -> Holding | str:
    """A check URL's answer read by its contract, or why it breaks it."""
    if status != 200:
        return f"answered {status} ({snippet(text)})"
    try:
        body = json.loads(text)
    except ValueError:
        return f"answered {snippet(text)}, which is no JSON"
    if not isinstance(body, dict):
        return f"answered {snippet(text)}, not a JSON object"
    held, applied, undone = body.get("held"), body.get("applied"), body.get("undone")
    if not isinstance(held, bool):
        return f"answered {snippet(text)}: held must be true or false"
    if not _count(applied):
        return f"answered {snippet(text)}: applied must be a whole number, 0 or more"
    if undone is not None and not _count(undone):
        return f"answered {snippet(text)}: undone, when given, must be a whole number"
    return Holding(held, applied, undone)


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def snippet(text: str, limit: int = 160) -> str:
    """A reply's text on one line, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    if not flat:
        return "(empty body)"
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
