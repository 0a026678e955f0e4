"""A participant caller with scripted replies, and the requests the engine tests send."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from coordinator.core.records import CallResult, NewBranch, OutboundCall
from coordinator.core.states import Phase
from coordinator.engine.service import BeginRequest

GID = "g1"


def reply(status: int | None, text: str = "", latency_ms: float = 1.0) -> CallResult:
    """A participant's answer as the HTTP caller would give it (None: no answer at all)."""
    error = None
    if status is None:
        error = "ConnectionRefusedError: connection refused"
    elif not 200 <= status < 300:
        error = f"HTTP {status}: {text or '(empty body)'}"
    return CallResult(status, text or None, error, latency_ms, text)


OK = reply(200, '{"dtm_result": "SUCCESS"}')


class Held:
    """A reply held back until released: meanwhile the call is in flight."""

    def __init__(self, result: CallResult = OK) -> None:
        self.result = result
        self.entered = asyncio.Event()
        self._released = asyncio.Event()

    def release(self) -> None:
        self._released.set()

    async def answer(self) -> CallResult:
        self.entered.set()
        await self._released.wait()
        return self.result


class ScriptedCaller:
    """Replies scripted per URL and phase, in order, the last one repeating; an unscripted
    call gets OK. Every call made is kept in ``calls``."""

    def __init__(self) -> None:
        self.calls: list[OutboundCall] = []
        self._scripts: dict[tuple[str, Phase | None], list[CallResult | Held]] = {}

    def script(self, url: str, phase: Phase | None, *replies: CallResult | Held) -> None:
        """Answer the next calls of ``phase`` to ``url`` with ``replies`` (replacing any
        script left); phase None: calls that are not a participant's (an alert webhook)."""
        assert replies, "script at least one reply"
        self._scripts[(url, phase)] = list(replies)

    async def send(self, call: OutboundCall, timeout_s: float) -> CallResult:
        self.calls.append(call)
        queue = self._scripts.get((call.url, phase_of(call)))
        if not queue:
            return OK
        scripted = queue.pop(0) if len(queue) > 1 else queue[0]
        return await scripted.answer() if isinstance(scripted, Held) else scripted

    def made(self, phase: Phase | None, url: str | None = None) -> list[OutboundCall]:
        """The calls of ``phase`` made (to ``url``, if given), oldest first."""
        return [c for c in self.calls if phase_of(c) is phase and (url is None or c.url == url)]


def phase_of(call: OutboundCall) -> Phase | None:
    # Every dialect names the phase in this header (coordinator.dialects.base); an alert
    # webhook's call has none.
    phase = call.headers.get("X-TCC-Phase")
    return Phase(phase) if phase is not None else None


class CeilingDraws(random.Random):
    """Backoff "randomness" that always draws the longest delay allowed, so retry times
    can be asserted exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


# --- requests ------------------------------------------------------------------------


def url(branch_id: str, phase: Phase) -> str:
    return f"http://127.0.0.1:9001/{branch_id}/{phase.value}"


def branch(branch_id: str, *, with_try: bool = True, data: str | None = None) -> NewBranch:
    return NewBranch(
        branch_id=branch_id,
        name=branch_id,
        try_url=url(branch_id, Phase.TRY) if with_try else None,
        confirm_url=url(branch_id, Phase.CONFIRM),
        cancel_url=url(branch_id, Phase.CANCEL),
        payload={"branch": branch_id},
        request_hash=f"hash-{branch_id}",
        data=data,
    )


def begin_request(
    *branches: NewBranch,
    auto: bool = False,
    timeout_s: float | None = None,
    dialect: str = "tcc",
    options: dict[str, Any] | None = None,
    gid: str = GID,
) -> BeginRequest:
    return BeginRequest(
        gid=gid,
        service=None,
        metadata={},
        timeout_s=timeout_s,
        call_timeout_s=None,
        body_hash=f"body-{gid}",
        branches=branches,
        auto=auto,
        dialect=dialect,
        options=options,
    )
