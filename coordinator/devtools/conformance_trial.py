"""One scenario's run (a Trial): the calls it makes on its own gid, what it saw, and its
result: FAIL when anything it saw breaks the protocol, "not observable" when the point of
the scenario is an effect only the check URL could show and it was not given (or the tool
cannot bring the case about), pass otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from coordinator.core.states import Phase, TransactionKind
from coordinator.devtools.conformance_advice import forward_advice
from coordinator.devtools.conformance_probe import Holding, Probe, Reply, snippet


class Result(StrEnum):
    PASS = "pass"
    FAIL = "FAIL"
    NOT_OBSERVABLE = "not observable"


@dataclass(frozen=True, slots=True)
class Evidence:
    step: str  # a phase, "check" or "note"
    text: str  # one line, as the report prints it
    detail: dict[str, Any]  # the same for --json


@dataclass(frozen=True, slots=True)
class Finding:
    name: str
    title: str
    expectation: str
    result: Result
    gid: str | None  # None: it made no call of its own
    evidence: tuple[Evidence, ...]
    advice: tuple[str, ...]  # what to fix (a FAIL)
    unseen: tuple[str, ...]  # what could not be seen (not observable)


class Trial:
    """One scenario's run: its gid and branch, the calls made and what they showed."""

    def __init__(self, probe: Probe, gid: str, earlier: list[Reply]) -> None:
        self.probe = probe
        self.gid = gid
        self.txn, self.branch = probe.records(gid)
        self.earlier = earlier  # every reply of the scenarios run before this one
        self.replies: list[Reply] = []
        self.evidence: list[Evidence] = []
        self.advice: list[str] = []
        self.unseen: list[str] = []
        self._said_unchecked = False

    @property
    def kind(self) -> TransactionKind:
        return self.probe.target.kind

    @property
    def checking(self) -> bool:
        return self.probe.target.check_url is not None

    # --- calls -------------------------------------------------------------------

    async def call(self, phase: Phase) -> Reply:
        return self.record(await self.probe.send(self.txn, self.branch, phase))

    async def at_once(self, phase: Phase, count: int) -> list[Reply]:
        replies = await asyncio.gather(
            *(self.probe.send(self.txn, self.branch, phase) for _ in range(count))
        )
        return [self.record(r) for r in replies]

    def start(self, phase: Phase, limit_s: float) -> asyncio.Task[Reply]:
        """The call in the background; record its reply once it is in."""
        return self.probe.start(self.txn, self.branch, phase, limit_s)

    async def malformed(self, phase: Phase) -> Reply:
        return self.record(await self.probe.send_malformed(self.txn, self.branch, phase))

    async def forward(self) -> bool:
        """The try (a saga step: its action), which the rest of the scenario needs done."""
        phase = Phase.TRY if self.kind is TransactionKind.TCC else Phase.ACTION
        reply = await self.call(phase)
        if not reply.ok:
            self.fail(forward_advice(reply))
        return reply.ok

    def record(self, reply: Reply) -> Reply:
        self.replies.append(reply)
        result = reply.result
        detail = {
            "phase": reply.phase.value,
            "malformed": reply.malformed,
            "http_status": result.http_status,
            "body": snippet(result.text, 500) if result.http_status is not None else None,
            "error": result.error if result.http_status is None else None,
            "reading": reply.reading.value,
            "latency_ms": result.latency_ms,
        }
        self.evidence.append(Evidence(reply.phase.value, reply.describe(), detail))
        return reply

    # --- what the check URL shows --------------------------------------------------

    async def expect(
        self,
        when: str,
        *,
        advice: str,
        held: bool | None = None,
        applied: int | None = None,
        undone: int | None = None,
        unseen: str | None = None,
    ) -> None:
        """Compare what the check URL shows ``when`` with what should be. ``unseen``: the
        scenario's point, when it is an effect: without the check URL (or its ``undone``,
        when that is the point) the scenario is not observable rather than passed."""
        if not self.checking:
            if unseen is not None:
                self.not_observable(f"{unseen}: only the check URL can show it (--check-url)")
            elif not self._said_unchecked:
                self._said_unchecked = True
                self.note("effects not checked: no --check-url")
            return
        holding = await self._look(when)
        if holding is None:
            return
        wrong = []
        if held is not None and holding.held is not held:
            wrong.append(f"held={str(holding.held).lower()} (expected {str(held).lower()})")
        if applied is not None and holding.applied != applied:
            wrong.append(f"applied={holding.applied} (expected {applied})")
        if undone is not None and holding.undone is None and unseen is not None:
            self.not_observable(f"{unseen}: the check URL does not report undone")
        elif undone is not None and holding.undone is not None and holding.undone != undone:
            wrong.append(f"undone={holding.undone} (expected {undone})")
        if wrong:
            self.fail(f"{when} the check URL shows {', '.join(wrong)}: {advice}")

    async def _look(self, when: str) -> Holding | None:
        got = await self.probe.check(self.gid)
        if isinstance(got, str):
            self.evidence.append(Evidence("check", f"check {when}: {got}", {"problem": got}))
            self.fail(
                f"the check URL {got}: it must answer 200 with"
                ' {"held": true|false, "applied": N} for any gid and branch_id'
                " (docs/participants.md)"
            )
            return None
        detail = {"when": when, "held": got.held, "applied": got.applied, "undone": got.undone}
        self.evidence.append(Evidence("check", f"check {when}: {got.describe()}", detail))
        return got

    # --- verdicts -----------------------------------------------------------------

    def note(self, text: str) -> None:
        self.evidence.append(Evidence("note", text, {"note": text}))

    def fail(self, advice: str) -> None:
        self.advice.append(advice)

    def not_observable(self, why: str) -> None:
        self.unseen.append(why)

    def finding(self, scenario: Scenario) -> Finding:
        if self.advice:
            result = Result.FAIL
        elif self.unseen:
            result = Result.NOT_OBSERVABLE
        else:
            result = Result.PASS
        return Finding(
            scenario.name,
            scenario.title,
            scenario.expectation,
            result,
            self.gid if self.replies else None,
            tuple(self.evidence),
            tuple(self.advice),
            tuple(self.unseen),
        )


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str  # stable, for --only and --json
    title: str
    expectation: str
    play: Callable[[Trial], Awaitable[None]] = field(repr=False)
