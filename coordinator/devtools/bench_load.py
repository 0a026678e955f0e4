"""The load side of `tcc bench`: closed-loop clients and the transactions they run.

A point is C asyncio workers in one event loop, each running one transaction after
another for a warm-up and then a measured window. Each runs in a thread of its own with a
fresh loop (uvloop when it is installed), so that the harness's own bookkeeping (reading
/proc, talking to Postgres) never shares a loop with the clients it times.

A transaction is one of the coordinator's modes (auto, interactive, dtm: two branches
each; saga, msg: two steps each), or the same participant calls made directly (the floor:
what the coordinator could never beat).

A msg transaction is a message accepted: the client's POST /v1/messages answers once the
message is logged and submitted, and its two deliveries run in the background after. Its
deliveries are measured from the log afterwards (bench.py), not by the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import resource
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from coordinator.core.states import Phase
from coordinator.dialects.base import protocol_headers

MODES = ("auto", "interactive", "dtm", "saga", "msg")
BRANCHES = ("b1", "b2")
PAYLOAD = {"amount": 1}
DTM_DATA = json.dumps(PAYLOAD)

# One transaction may take this long before it counts as an error: far above anything a
# healthy run sees, low enough that a hung coordinator cannot stall the benchmark.
TX_TIMEOUT_S = 30.0
# After a failed transaction a client pauses, so a refused connection cannot spin a core.
ERROR_PAUSE_S = 0.05
ERROR_SAMPLES = 5

Scenario = Callable[[aiohttp.ClientSession], Awaitable[None]]
Probe = Callable[[], dict[str, float]]


class UnexpectedAnswer(Exception):
    """A call answered something other than what a successful transaction gets."""


@dataclass
class LoadResult:
    measured: int = 0  # transactions completed inside the measured window
    total: int = 0  # every completed transaction: warm-up, window and the last in flight
    errors: int = 0  # failed transactions over the whole point
    error_samples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  # of `measured`, sorted
    window_s: float = 0.0
    # CPU seconds over the measured window: this load thread's, and the probe's figures.
    client_cpu_s: float = 0.0
    probe_delta: dict[str, float] = field(default_factory=dict)

    @property
    def tps(self) -> float:
        return self.measured / self.window_s if self.window_s > 0 else 0.0


@dataclass(frozen=True)
class Endpoints:
    participant: str  # base URL of the minimal participant
    coordinator: str = ""  # base URL of `tcc serve`; empty for the floor


# --- the coordinator's modes ------------------------------------------------------


def _branch_urls(base: str, branch_id: str) -> dict[str, str]:
    # Distinct paths per branch, as two services would have.
    return {phase: f"{base}/{branch_id}/{phase}" for phase in ("try", "confirm", "cancel")}


def _v1_branch(base: str, branch_id: str) -> dict[str, Any]:
    urls = _branch_urls(f"{base}/tcc", branch_id)
    return {
        "branch_id": branch_id,
        "try_url": urls["try"],
        "confirm_url": urls["confirm"],
        "cancel_url": urls["cancel"],
        "payload": PAYLOAD,
    }


async def _call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    expect: int,
    **kwargs: Any,
) -> Any:
    """One request; its JSON answer, or UnexpectedAnswer for any other status."""
    async with session.request(method, url, **kwargs) as resp:
        text = await resp.text()
        if resp.status != expect:
            path = url.split("/", 3)[-1].split("?")[0]
            raise UnexpectedAnswer(f"{method} /{path} -> {resp.status} {text[:160]}")
    return json.loads(text) if text else None


def _expect_field(data: Any, name: str, value: str, what: str) -> None:
    got = data.get(name) if isinstance(data, dict) else None
    if got != value:
        raise UnexpectedAnswer(f"{what}: {name} is {got!r}, not {value!r}")


def auto_mode(ends: Endpoints) -> Scenario:
    body = {"auto": True, "branches": [_v1_branch(ends.participant, b) for b in BRANCHES]}
    url = f"{ends.coordinator}/v1/transactions"

    async def run(session: aiohttp.ClientSession) -> None:
        data = await _call(session, "POST", url, 201, json=body)
        _expect_field(data, "status", "confirmed", "auto begin")

    return run


def interactive_mode(ends: Endpoints) -> Scenario:
    base = f"{ends.coordinator}/v1/transactions"
    branches = [_v1_branch(ends.participant, b) for b in BRANCHES]

    async def run(session: aiohttp.ClientSession) -> None:
        begun = await _call(session, "POST", base, 201, json={})
        gid = begun["gid"]
        for branch in branches:  # one after the other, as a client's code would
            await _call(session, "POST", f"{base}/{gid}/try", 200, json=branch)
        data = await _call(session, "POST", f"{base}/{gid}/confirm", 200, json={})
        _expect_field(data, "status", "confirmed", "confirm")

    return run


def _dtm_branch_urls(base: str, branch_id: str) -> dict[str, str]:
    return _branch_urls(f"{base}/dtm", branch_id)


def _dtm_params(gid: str, branch_id: str, op: str) -> dict[str, str]:
    return {"gid": gid, "trans_type": "tcc", "branch_id": branch_id, "op": op}


def dtm_mode(ends: Endpoints) -> Scenario:
    """DTM's TCC flow as its SDKs run it: the client registers each branch, then calls the
    branch's try itself, then submits and waits for the result."""
    api = f"{ends.coordinator}/api/dtmsvr"
    # DTM's SDKs number branches 01, 02, ...
    branches = [
        (f"{i:02d}", _dtm_branch_urls(ends.participant, b)) for i, b in enumerate(BRANCHES, 1)
    ]

    async def run(session: aiohttp.ClientSession) -> None:
        gid = (await _call(session, "GET", f"{api}/newGid", 200))["gid"]
        await _call(session, "POST", f"{api}/prepare", 200, json={"gid": gid, "trans_type": "tcc"})
        for branch_id, urls in branches:
            register = {
                "gid": gid,
                "branch_id": branch_id,
                "trans_type": "tcc",
                "status": "prepared",
                "data": DTM_DATA,
                "try": urls["try"],
                "confirm": urls["confirm"],
                "cancel": urls["cancel"],
            }
            await _call(session, "POST", f"{api}/registerBranch", 200, json=register)
            await _call(
                session,
                "POST",
                urls["try"],
                200,
                params=_dtm_params(gid, branch_id, "try"),
                data=DTM_DATA,
                headers={"Content-Type": "application/json"},
            )
        submit = {"gid": gid, "trans_type": "tcc", "wait_result": True}
        data = await _call(session, "POST", f"{api}/submit", 200, json=submit)
        _expect_field(data, "dtm_result", "SUCCESS", "submit")

    return run


def _step_url(base: str, kind: str, branch_id: str, phase: Phase) -> str:
    # Distinct paths per step and phase, as two services would have.
    return f"{base}/{kind}/{branch_id}/{phase.value}"


def saga_mode(ends: Endpoints) -> Scenario:
    """A saga of two steps in order, its client waiting until both actions are done."""
    steps = [
        {
            "branch_id": b,
            "action_url": _step_url(ends.participant, "saga", b, Phase.ACTION),
            "compensate_url": _step_url(ends.participant, "saga", b, Phase.COMPENSATE),
            "payload": PAYLOAD,
        }
        for b in BRANCHES
    ]
    body = {"steps": steps, "wait": True}
    url = f"{ends.coordinator}/v1/sagas"

    async def run(session: aiohttp.ClientSession) -> None:
        data = await _call(session, "POST", url, 201, json=body)
        _expect_field(data, "status", "confirmed", "saga")

    return run


# A message's answer comes once it is logged and submitted: its deliveries may be done already.
MESSAGE_ACCEPTED = ("confirming", "confirmed")


def msg_mode(ends: Endpoints) -> Scenario:
    """A message of two steps (delivered in order), not prepared: the client waits only
    until it is accepted."""
    steps = [
        {
            "branch_id": b,
            "url": _step_url(ends.participant, "msg", b, Phase.ACTION),
            "payload": PAYLOAD,
        }
        for b in BRANCHES
    ]
    body = {"steps": steps}
    url = f"{ends.coordinator}/v1/messages"

    async def run(session: aiohttp.ClientSession) -> None:
        data = await _call(session, "POST", url, 201, json=body)
        status = data.get("status") if isinstance(data, dict) else None
        if status not in MESSAGE_ACCEPTED:
            raise UnexpectedAnswer(f"message: status is {status!r}, not one of {MESSAGE_ACCEPTED}")

    return run


# --- the floor: the same participant calls, no coordinator ---------------------------


def _floor_gid() -> str:
    return uuid.uuid4().hex


async def _v1_participant_call(
    session: aiohttp.ClientSession, base: str, gid: str, branch_id: str, phase: Phase
) -> None:
    """The call the coordinator makes (its body and headers), made by the client itself."""
    body = {"gid": gid, "branch_id": branch_id, "phase": phase.value, "payload": PAYLOAD}
    url = _branch_urls(f"{base}/tcc", branch_id)[phase.value]
    await _call(
        session,
        "POST",
        url,
        200,
        data=json.dumps(body),
        headers=protocol_headers(gid, branch_id, phase),
    )


async def _dtm_participant_call(
    session: aiohttp.ClientSession, base: str, gid: str, branch_id: str, phase: Phase
) -> None:
    url = _dtm_branch_urls(base, branch_id)[phase.value]
    await _call(
        session,
        "POST",
        url,
        200,
        params=_dtm_params(gid, branch_id, phase.value),
        data=DTM_DATA,
        headers=protocol_headers(gid, branch_id, phase),
    )


async def _step_call(
    session: aiohttp.ClientSession, base: str, kind: str, gid: str, branch_id: str
) -> None:
    """A saga's action or a message's delivery, as the coordinator sends it."""
    phase = Phase.ACTION
    body = {"gid": gid, "branch_id": branch_id, "phase": phase.value, "payload": PAYLOAD}
    await _call(
        session,
        "POST",
        _step_url(base, kind, branch_id, phase),
        200,
        data=json.dumps(body),
        headers=protocol_headers(gid, branch_id, phase),
    )


def _steps_floor(kind: str, ends: Endpoints) -> Scenario:
    """A saga's two actions, or a message's two deliveries: one after the other, as the
    coordinator runs steps in order."""

    async def run(session: aiohttp.ClientSession) -> None:
        gid = _floor_gid()
        for b in BRANCHES:
            await _step_call(session, ends.participant, kind, gid, b)

    return run


def floor_scenario(mode: str, ends: Endpoints) -> Scenario:
    """Two tries and two confirms: the tries in parallel for auto (as the coordinator runs
    them), one after the other for interactive and dtm (as their clients do); confirms in
    parallel, as a phase-two round sends them. Saga and msg: their two steps' calls in
    order (a saga's actions, a message's deliveries)."""
    if mode in ("saga", "msg"):
        return _steps_floor(mode, ends)
    call = _dtm_participant_call if mode == "dtm" else _v1_participant_call
    base = ends.participant

    async def run(session: aiohttp.ClientSession) -> None:
        gid = _floor_gid()
        if mode == "auto":
            await asyncio.gather(*(call(session, base, gid, b, Phase.TRY) for b in BRANCHES))
        else:
            for b in BRANCHES:
                await call(session, base, gid, b, Phase.TRY)
        await asyncio.gather(*(call(session, base, gid, b, Phase.CONFIRM) for b in BRANCHES))

    return run


def coordinator_scenario(mode: str, ends: Endpoints) -> Scenario:
    factories = {
        "auto": auto_mode,
        "interactive": interactive_mode,
        "dtm": dtm_mode,
        "saga": saga_mode,
        "msg": msg_mode,
    }
    return factories[mode](ends)


# --- the closed loop ---------------------------------------------------------------


@dataclass
class _Tally:
    result: LoadResult
    measure_from: float
    measure_to: float

    def success(self, started: float, finished: float) -> None:
        self.result.total += 1
        if self.measure_from <= finished <= self.measure_to:
            self.result.measured += 1
            self.result.latencies_ms.append((finished - started) * 1000)

    def failure(self, exc: BaseException) -> None:
        self.result.errors += 1
        text = f"{type(exc).__name__}: {exc}"[:300]
        if len(self.result.error_samples) < ERROR_SAMPLES and text not in self.result.error_samples:
            self.result.error_samples.append(text)


def _thread_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


async def _client(
    scenario: Scenario, session: aiohttp.ClientSession, tally: _Tally, stop: threading.Event
) -> None:
    # Bounded in time: no new transaction starts after the window, and each one is cut
    # off at TX_TIMEOUT_S.
    while not stop.is_set() and time.perf_counter() < tally.measure_to:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(TX_TIMEOUT_S):
                await scenario(session)
        except Exception as exc:  # any failure is the point's error, counted and shown
            tally.failure(exc)
            await asyncio.sleep(ERROR_PAUSE_S)
            continue
        tally.success(started, time.perf_counter())


async def _window_probe(tally: _Tally, probe: Probe) -> None:
    """Samples CPU (this thread's and the probe's) at both edges of the measured window."""
    await asyncio.sleep(max(tally.measure_from - time.perf_counter(), 0))
    before, cpu_before = probe(), _thread_cpu_s()
    await asyncio.sleep(max(tally.measure_to - time.perf_counter(), 0))
    after, cpu_after = probe(), _thread_cpu_s()
    tally.result.client_cpu_s = cpu_after - cpu_before
    tally.result.probe_delta = {k: after[k] - before.get(k, 0.0) for k in after}


async def closed_loop(
    scenario: Scenario,
    concurrency: int,
    warmup_s: float,
    seconds: float,
    probe: Probe,
    stop: threading.Event,
) -> LoadResult:
    """`concurrency` clients back to back; figures over the window after the warm-up."""
    start = time.perf_counter()
    tally = _Tally(LoadResult(window_s=seconds), start + warmup_s, start + warmup_s + seconds)
    # Auto's floor has two calls in flight per client: room for both, and a little more.
    connector = aiohttp.TCPConnector(limit=2 * concurrency + 8, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=TX_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        window = asyncio.create_task(_window_probe(tally, probe))
        await asyncio.gather(*(_client(scenario, session, tally, stop) for _ in range(concurrency)))
        # The clients end after the window, unless told to stop: then the probe is moot. Else
        # the probe's last sample is waited for: on a busy machine the clients' last answers
        # may come before the probe has woken at the window's end.
        if stop.is_set():
            window.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await window
    tally.result.latencies_ms.sort()
    return tally.result


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        # A dependency where it builds (not on Windows): the harness runs without it too.
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def uses_uvloop() -> bool:
    return _loop_factory() is not asyncio.new_event_loop


def run_point(
    scenario: Scenario,
    concurrency: int,
    warmup_s: float,
    seconds: float,
    probe: Probe,
    stop: threading.Event,
) -> LoadResult:
    """Blocking: one point in a fresh event loop (run it in a thread of its own)."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(closed_loop(scenario, concurrency, warmup_s, seconds, probe, stop))
