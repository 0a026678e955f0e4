"""`tcc bench --storm`: a participant goes down under load and comes back. What does it get
when it does, with its circuit breaker and without? (issue 20: the retry storm.)

The same scenario runs once per breaker setting (off, then on), each on a fresh database
with fresh processes:

1. The counting participant (storm_participant.py: answers 200 at once and writes down when
   each call arrived) and `tcc serve`, TCC_BREAKER on or off. The participant is registered
   (PUT /v1/participants/storm: its base URL, and in the breaker-on run its health URL), so
   every branch, given by URLs under that base, belongs to it.
2. C clients each run auto transactions (POST /v1/transactions, "auto": true, two branches)
   one after the other: healthy, for --seconds.
3. The participant is killed (SIGKILL: its port refuses connections) for --outage-s while
   the clients go on. Each new transaction's tries fail, so it cancels, and its cancels
   cannot be delivered: hundreds of transactions pile up in phase two.
4. The load stops and the participant is started again on the same port: every call it
   receives from then on is the backlog's. Its record says when each one arrived.
5. The harness waits (bounded) until no transaction is left unfinished, then reads the log,
   the coordinator's metrics and the record, and checks that nothing was lost.

Every setting is the default but one: TCC_CONFIRM_WAIT_S=1 (an auto begin's answer waits for
phase two at most 1 s instead of 10), so that a few clients begin hundreds of transactions
during the outage rather than one each every 10 s. The retry schedule (backoff from 0.5 s,
doubling, up to 60 s, full jitter) and the breaker's thresholds, open times and ramp are
the defaults.

Everything listens on 127.0.0.1; every wait is bounded; every child process and temporary
folder is gone at the end, also after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from coordinator.core.breaker import BreakerPolicy
from coordinator.core.errors import UsageError
from coordinator.core.states import (
    ACTIVE_STATUSES,
    PARKED_STATUSES,
    GlobalStatus,
    Phase,
)
from coordinator.devtools import bench_procs, storm_calls
from coordinator.devtools.bench import MAX_CONCURRENCY, MAX_WORKERS, BenchError, stoppable
from coordinator.devtools.bench_db import drop_database, recreate_database, with_database
from coordinator.devtools.children import Managed, clean_env, free_port
from coordinator.devtools.storm_calls import Arrival, RampSecond
from coordinator.devtools.storm_participant import HEALTH
from coordinator.devtools.storm_report import SERIES_S, render
from coordinator.embedded import EmbeddedServer, redact
from coordinator.engine.participants import REFRESH_S
from coordinator.settings import Settings
from coordinator.txlog import migrator

RUNS = ("off", "on")
DEFAULT_OUTAGE_S = 60.0
DEFAULT_CLIENTS = 8
DEFAULT_SECONDS = 10
MAX_OUTAGE_S = 3600.0
PARTICIPANT = "storm"
BRANCHES = ("b1", "b2")
# The one setting changed from the defaults, and why.
CHANGED = {
    "TCC_CONFIRM_WAIT_S": (
        "1",
        "an auto begin's answer waits for phase two at most 1 s instead of 10, so that a few"
        " clients begin hundreds of transactions during the outage",
    )
}
# A client's request may take this long (an auto begin answers within about a second).
REQUEST_TIMEOUT_S = 30.0
ERROR_PAUSE_S = 0.05
ERROR_SAMPLES = 5
DRAIN_POLL_S = 0.5
# Past this long after the return, the harness stops waiting for the backlog (the longest a
# breaker stays open, TCC_BREAKER_MAX_OPEN_S, twice, and the ramp, and the longest retry).
DRAIN_LIMIT_S = 900.0

Say = Callable[[str], None]


@dataclass(frozen=True)
class StormConfig:
    outage_s: float = DEFAULT_OUTAGE_S
    clients: int = DEFAULT_CLIENTS
    seconds: int = DEFAULT_SECONDS  # healthy load before the outage
    workers: int = 1
    runs: tuple[str, ...] = RUNS
    database_url: str | None = None
    out_dir: Path | None = None


def default_settings() -> Settings:
    """The settings' defaults, whatever this process's environment says."""
    return Settings.model_construct()


def coordinator_env(breaker: bool, database_url: str, port: int, workers: int) -> dict[str, str]:
    """`tcc serve`'s environment: the defaults but for CHANGED, on loopback."""
    return {
        **clean_env(),
        "TCC_DATABASE_URL": database_url,
        "TCC_HOST": "127.0.0.1",
        "TCC_PORT": str(port),
        "TCC_WORKERS": str(workers),
        "TCC_INSECURE": "true",  # a private run on loopback
        "TCC_PARTICIPANT_ALLOW": "127.0.0.0/8",
        "TCC_LOG_LEVEL": "warning",
        "TCC_LOG_FORMAT": "json",
        "TCC_MIGRATE": "false",
        "TCC_BREAKER": "true" if breaker else "false",
        **{name: value for name, (value, _) in CHANGED.items()},
    }


# --- one run ------------------------------------------------------------------------------


@dataclass
class Check:
    ok: bool
    what: str


@dataclass
class _Load:
    """What the clients saw."""

    requests: int = 0
    answers: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)  # gids answered 200, 201 or 202

    def failed(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(what)


@dataclass
class RunResult:
    """One run: its moments on this machine's clock (seconds since the epoch), what the log,
    the metrics and the participant's record say, and the checks."""

    breaker: bool
    database: str
    started_at: float = 0.0
    killed_at: float = 0.0
    returned_at: float = 0.0  # the participant listened again
    ramp_started_at: float | None = None  # the breaker closed after a probe (breaker on)
    drained_at: float | None = None  # the last transaction finished
    load: _Load = field(default_factory=_Load)
    transactions: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)  # by phase, the coordinator's metrics
    held: dict[str, int] = field(default_factory=dict)  # by phase
    breaker_moves: dict[str, int] = field(default_factory=dict)
    breaker_row: dict[str, Any] = field(default_factory=dict)
    arrivals: list[Arrival] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "breaker on" if self.breaker else "breaker off"

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def after_return(self) -> list[Arrival]:
        return [a for a in storm_calls.calls(self.arrivals) if a.at >= self.returned_at]

    def phase_two_after_return(self) -> list[float]:
        return [a.at for a in self.after_return() if a.phase_two]

    def ramp(self, policy: BreakerPolicy, coordinators: int, seconds: int) -> list[RampSecond]:
        if self.ramp_started_at is None:
            return []
        return storm_calls.ramp_seconds(
            self.phase_two_after_return(),
            self.returned_at,
            self.ramp_started_at,
            policy,
            coordinators,
            seconds,
        )


class StormRun:
    """The scenario once, on a migrated database of its own (``database_url``)."""

    def __init__(
        self,
        config: StormConfig,
        breaker: bool,
        database_url: str,
        work: Path,
        say: Say,
    ) -> None:
        self.config = config
        self.breaker = breaker
        self.url = database_url
        self.say = say
        tag = "on" if breaker else "off"
        self.tag = tag
        self.work = work / f"breaker-{tag}"
        self.work.mkdir(parents=True, exist_ok=True)
        self.record = self.work / "calls.tsv"
        self.result = RunResult(breaker, database_url.rsplit("/", 1)[-1].split("?")[0])
        self.procs: list[Managed] = []
        self.participant: Managed | None = None
        self.coordinator_url = ""
        self.participant_url = ""

    def _say(self, line: str) -> None:
        self.say(f"storm ({self.result.name}): {line}")

    # --- processes -----------------------------------------------------------------

    async def _start(self) -> None:
        python = sys.executable
        participant_port, port = free_port(), free_port()
        self.participant_url = f"http://127.0.0.1:{participant_port}"
        self.coordinator_url = f"http://127.0.0.1:{port}"
        self.participant = Managed(
            "participant",
            [
                python,
                "-m",
                "coordinator.devtools.storm_participant",
                "--port",
                str(participant_port),
                "--record",
                str(self.record),
            ],
            clean_env(),
            self.work,
        )
        coordinator = Managed(
            "coordinator",
            [python, "-m", "coordinator.cli", "serve"],
            coordinator_env(self.breaker, self.url, port, self.config.workers),
            self.work,
        )
        self.procs = [self.participant, coordinator]
        for proc in self.procs:
            proc.start()
        await bench_procs.wait_ready(self.participant, self.participant_url + "/ready")
        await bench_procs.wait_ready(coordinator, self.coordinator_url + "/readyz")

    async def _register(self, http: aiohttp.ClientSession) -> None:
        body = {"base_url": f"{self.participant_url}/tcc"}
        if self.breaker:
            body["health_url"] = f"{self.participant_url}/health"
        url = f"{self.coordinator_url}/v1/participants/{PARTICIPANT}"
        async with http.put(url, json=body) as resp:
            if resp.status not in (200, 201):
                raise BenchError(f"registering the participant: {resp.status} {await resp.text()}")
        # Every coordinator reads the registry again each REFRESH_S: then every new branch
        # under the base URL belongs to the participant.
        await asyncio.sleep(2 * REFRESH_S + 0.5)

    async def stop(self) -> None:
        for proc in reversed(self.procs):
            await asyncio.to_thread(bench_procs.stop_tree, proc)
        self.procs = []

    # --- the load --------------------------------------------------------------------

    def _body(self, gid: str) -> dict[str, Any]:
        base = f"{self.participant_url}/tcc"
        return {
            "gid": gid,
            "service": "storm",
            "auto": True,
            "branches": [
                {
                    "branch_id": b,
                    "try_url": f"{base}/{b}/try",
                    "confirm_url": f"{base}/{b}/confirm",
                    "cancel_url": f"{base}/{b}/cancel",
                    "payload": {"amount": 1},
                }
                for b in BRANCHES
            ],
        }

    async def _client(self, http: aiohttp.ClientSession, index: int, stop: asyncio.Event) -> None:
        load = self.result.load
        url = f"{self.coordinator_url}/v1/transactions"
        for n in itertools.count(1):
            if stop.is_set():
                return
            gid = f"storm-{self.tag}-{index:03d}-{n:06d}"
            load.requests += 1
            try:
                async with http.post(url, json=self._body(gid)) as resp:
                    text = await resp.text()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                load.failed(f"{gid}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            load.answers[status] += 1
            if status in (200, 201, 202):
                load.acknowledged.add(gid)
            else:
                load.failed(f"{gid}: {status} {text[:160]}")
                await asyncio.sleep(ERROR_PAUSE_S)

    # --- the log ---------------------------------------------------------------------

    async def _unfinished(self, db: asyncpg.Connection) -> int:
        statuses = [s.value for s in ACTIVE_STATUSES]
        return int(
            await db.fetchval(
                "SELECT count(*) FROM tcc_transactions WHERE status = ANY($1::text[])", statuses
            )
        )

    async def _drain(self, db: asyncpg.Connection) -> None:
        """Wait until no transaction is left to finish (bounded)."""
        deadline = time.monotonic() + DRAIN_LIMIT_S
        said = time.monotonic()
        while time.monotonic() < deadline:
            left = await self._unfinished(db)
            if not left:
                return
            if time.monotonic() - said >= 10:
                self._say(f"{left} transactions still unfinished ...")
                said = time.monotonic()
            await asyncio.sleep(DRAIN_POLL_S)
        self._say(f"gave up waiting after {DRAIN_LIMIT_S:g} s")

    @staticmethod
    async def _clock_offset(db: asyncpg.Connection) -> float:
        """The log's clock minus this machine's, in seconds (0 on the same machine, nearly)."""
        before = time.time()
        theirs = float(await db.fetchval("SELECT extract(epoch FROM clock_timestamp())"))
        after = time.time()
        return theirs - (before + after) / 2

    async def _read_log(self, db: asyncpg.Connection) -> None:
        r = self.result
        offset = await self._clock_offset(db)

        def theirs(at: float) -> datetime.datetime:
            return datetime.datetime.fromtimestamp(at + offset, datetime.UTC)

        row = await db.fetchrow(
            """
            SELECT count(*) AS begun,
                   count(*) FILTER (WHERE status = $1) AS confirmed,
                   count(*) FILTER (WHERE status = $2) AS cancelled,
                   count(*) FILTER (WHERE status = ANY($3::text[])) AS unfinished,
                   count(*) FILTER (WHERE status = ANY($4::text[])) AS parked,
                   count(*) FILTER (WHERE created_at < $5) AS begun_before_outage,
                   count(*) FILTER (WHERE created_at >= $5) AS begun_during_outage,
                   count(*) FILTER (WHERE decided_at <= $5
                                      AND (finished_at IS NULL OR finished_at > $5))
                       AS in_phase_two_at_kill,
                   count(*) FILTER (WHERE decided_at <= $6
                                      AND (finished_at IS NULL OR finished_at > $6))
                       AS in_phase_two_at_return,
                   count(*) FILTER (WHERE created_at <= $6
                                      AND (finished_at IS NULL OR finished_at > $6))
                       AS unfinished_at_return,
                   extract(epoch FROM max(finished_at)) AS last_finished
            FROM tcc_transactions
            """,
            GlobalStatus.CONFIRMED.value,
            GlobalStatus.CANCELLED.value,
            [s.value for s in ACTIVE_STATUSES],
            [s.value for s in PARKED_STATUSES],
            theirs(r.killed_at),
            theirs(r.returned_at),
        )
        assert row is not None
        r.transactions = {k: int(v) for k, v in row.items() if k != "last_finished"}
        if row["last_finished"] is not None and not r.transactions["unfinished"]:
            r.drained_at = float(row["last_finished"]) - offset
        breaker = await db.fetchrow(
            """
            SELECT breaker_state, breaker_opens, extract(epoch FROM ramp_started_at) AS ramp
            FROM tcc_participants WHERE name = $1
            """,
            PARTICIPANT,
        )
        if breaker is not None:
            r.breaker_row = {"state": breaker["breaker_state"], "opens": breaker["breaker_opens"]}
            if breaker["ramp"] is not None:
                r.ramp_started_at = float(breaker["ramp"]) - offset
        await self._check_log(db)

    async def _check_log(self, db: asyncpg.Connection) -> None:
        """Nothing lost: every transaction a client was answered for is in the log and
        finished, every branch is the participant's, and each got its phase-two call."""
        r, checks = self.result, self.result.checks
        t = r.transactions
        logged = {
            row["gid"]: row["status"]
            for row in await db.fetch("SELECT gid, status FROM tcc_transactions")
        }
        missing = r.load.acknowledged - logged.keys()
        checks.append(
            Check(
                not missing,
                f"every transaction a client was answered for is in the log"
                f" ({len(r.load.acknowledged):,})"
                if not missing
                else f"{len(missing)} transactions answered to a client are not in the log,"
                f" e.g. {sorted(missing)[:3]}",
            )
        )
        checks.append(
            Check(
                t["unfinished"] == 0 and t["parked"] == 0,
                f"every transaction finished: {t['unfinished']} unfinished, {t['parked']} parked,"
                f" of {t['begun']:,}",
            )
        )
        branches = await db.fetch("SELECT gid, branch_id, participant FROM tcc_branches")
        strangers = sum(1 for b in branches if b["participant"] != PARTICIPANT)
        checks.append(
            Check(
                strangers == 0,
                f"every branch belongs to the registered participant ({len(branches):,};"
                f" {strangers} not)",
            )
        )
        got = {(a.phase, a.gid, a.branch) for a in r.arrivals}
        confirms = cancels = 0
        undelivered, crossed = [], []
        for b in branches:
            status = logged.get(b["gid"])
            key = (b["gid"], b["branch_id"])
            if status == GlobalStatus.CONFIRMED.value:
                confirms += 1
                if (Phase.CONFIRM.value, *key) not in got:
                    undelivered.append(key)
                if (Phase.CANCEL.value, *key) in got:
                    crossed.append(key)
            elif status == GlobalStatus.CANCELLED.value:
                cancels += 1
                if (Phase.CANCEL.value, *key) not in got:
                    undelivered.append(key)
                if (Phase.CONFIRM.value, *key) in got:
                    crossed.append(key)
        checks.append(
            Check(
                not undelivered,
                f"the participant received the confirm of every confirmed branch ({confirms:,})"
                f" and the cancel of every cancelled one ({cancels:,})"
                if not undelivered
                else f"{len(undelivered)} branches never got their phase-two call, e.g."
                f" {undelivered[:3]}",
            )
        )
        checks.append(
            Check(
                not crossed,
                "no branch got both a confirm and a cancel"
                if not crossed
                else f"{len(crossed)} branches got both, e.g. {crossed[:3]}",
            )
        )

    # --- the coordinator's metrics -----------------------------------------------------

    async def _read_metrics(self, http: aiohttp.ClientSession) -> None:
        async with http.get(f"{self.coordinator_url}/metrics") as resp:
            text = await resp.text()
        r = self.result
        sent: Counter[str] = Counter()
        held: Counter[str] = Counter()
        moves: Counter[str] = Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if labels.get("participant") != PARTICIPANT:
                    continue
                if sample.name == "tcc_participant_calls_total":
                    sent[labels["phase"]] += int(sample.value)
                elif sample.name == "tcc_participant_calls_held_total":
                    held[labels["phase"]] += int(sample.value)
                elif sample.name == "tcc_breaker_transitions_total":
                    moves[labels["event"]] += int(sample.value)
        r.sent, r.held, r.breaker_moves = dict(sent), dict(held), dict(moves)

    # --- the whole ---------------------------------------------------------------------

    async def run(self) -> RunResult:
        r = self.result
        c = self.config
        try:
            await self._start()
            assert self.participant is not None
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
            connector = aiohttp.TCPConnector(limit=c.clients + 4)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
                await self._register(http)
                db = await asyncpg.connect(self.url)
                try:
                    await self._scenario(http, db)
                    await self._read_metrics(http)
                    r.arrivals = storm_calls.read_record(self.record)
                    await self._read_log(db)
                finally:
                    await db.close()
        finally:
            await self.stop()
        self._check_calls()
        return r

    async def _scenario(self, http: aiohttp.ClientSession, db: asyncpg.Connection) -> None:
        r, c = self.result, self.config
        assert self.participant is not None
        stop = asyncio.Event()
        r.started_at = time.time()
        self._say(f"{c.clients} clients, healthy for {c.seconds} s ...")
        clients = [asyncio.create_task(self._client(http, i, stop)) for i in range(c.clients)]
        try:
            await asyncio.sleep(c.seconds)
            r.killed_at = time.time()
            await asyncio.to_thread(self.participant.kill)
            self._say(f"participant killed; down for {c.outage_s:g} s while the load goes on ...")
            await asyncio.sleep(c.outage_s)
            stop.set()
            self.participant.start()
            await bench_procs.wait_ready(self.participant, self.participant_url + "/ready")
        finally:
            stop.set()
            done, pending = await asyncio.wait(clients, timeout=REQUEST_TIMEOUT_S + 5)
            for task in pending:
                task.cancel()
            for task in done:
                if not task.cancelled() and (exc := task.exception()) is not None:
                    raise exc
        starts = storm_calls.starts(storm_calls.read_record(self.record))
        r.returned_at = starts[-1] if len(starts) > 1 else time.time()
        left = await self._unfinished(db)
        self._say(f"participant back; the load stopped; {left} transactions unfinished ...")
        await self._drain(db)
        self._say("every transaction finished" if not await self._unfinished(db) else "stopped")

    def _check_calls(self) -> None:
        """With the breaker: no phase-two call before it closed, and within the ramp after."""
        r = self.result
        if not self.breaker:
            return
        if r.ramp_started_at is None:
            r.checks.append(Check(False, "the breaker never recovered (no ramp in the log)"))
            return
        early = [at for at in r.phase_two_after_return() if at < r.ramp_started_at]
        r.checks.append(
            Check(
                not early,
                "no confirm or cancel reached the participant before its breaker closed"
                f" ({r.ramp_started_at - r.returned_at:.1f} s after its return)"
                if not early
                else f"{len(early)} confirms or cancels reached it before its breaker closed",
            )
        )
        policy = default_settings().breaker_policy
        seconds = ramp_window(r, policy)
        over = [s for s in r.ramp(policy, self.config.workers, seconds) if not s.within]
        r.checks.append(
            Check(
                not over,
                "the confirms and cancels it received stayed within the ramp, every second"
                if not over
                else "over the ramp in "
                + ", ".join(f"second {s.second}: {s.received} > {s.allowed}" for s in over[:5]),
            )
        )


def ramp_window(r: RunResult, policy: BreakerPolicy) -> int:
    """Whole seconds after the return until the ramp is over (at least SERIES_S)."""
    if r.ramp_started_at is None:
        return SERIES_S
    end = r.ramp_started_at + policy.ramp_s - r.returned_at
    return max(SERIES_S, int(end) + 1)


# --- the report ----------------------------------------------------------------------------


def run_json(r: RunResult, config: StormConfig) -> dict[str, Any]:
    """One run's figures, times in seconds after the participant was killed or came back."""
    policy = default_settings().breaker_policy
    after = r.after_return()
    phase_two = r.phase_two_after_return()
    everything = [a.at for a in after if a.phase != HEALTH]
    series = storm_calls.per_second(phase_two, r.returned_at, SERIES_S)
    horizon = r.drained_at if r.drained_at is not None else (after[-1].at if after else 0.0)
    full = max(SERIES_S, int(horizon - r.returned_at) + 1)
    received_while_down = [
        a for a in storm_calls.calls(r.arrivals) if r.killed_at <= a.at < r.returned_at
    ]
    sent = sum(v for k, v in r.sent.items() if k in storm_calls.PHASE_TWO or k == "try")
    received = sum(
        v
        for k, v in storm_calls.by_phase(r.arrivals).items()
        if k in storm_calls.PHASE_TWO or k == "try"
    )

    def since_return(at: float | None) -> float | None:
        return None if at is None else round(at - r.returned_at, 2)

    out: dict[str, Any] = {
        "run": r.name,
        "breaker": r.breaker,
        "database": r.database,
        "outage_s": round(r.returned_at - r.killed_at, 2),
        "healthy_s": round(r.killed_at - r.started_at, 2),
        "transactions": r.transactions,
        "load": {
            "requests": r.load.requests,
            "answers": {str(k): v for k, v in sorted(r.load.answers.items())},
            "errors": r.load.errors,
            "error_samples": r.load.error_samples,
        },
        "calls_received": storm_calls.by_phase(r.arrivals),
        "calls_received_while_down": len(received_while_down),
        "calls_sent": r.sent,
        "calls_that_found_no_one": max(sent - received, 0),
        "calls_held": r.held,
        "breaker_moves": r.breaker_moves,
        "breaker_at_end": r.breaker_row,
        "after_return": {
            "calls_by_phase": storm_calls.by_phase(after),
            "first_phase_two_call_s": since_return(phase_two[0] if phase_two else None),
            "ramp_started_s": since_return(r.ramp_started_at),
            "drained_s": since_return(r.drained_at),
            "phase_two_per_s": series,
            "phase_two_per_s_max": max(series, default=0),
            "phase_two_per_s_p50": storm_calls.median(series),
            "all_calls_per_s": storm_calls.per_second(everything, r.returned_at, SERIES_S),
            "phase_two_per_s_until_drained": storm_calls.per_second(phase_two, r.returned_at, full),
        },
        "checks": [dataclasses.asdict(c) for c in r.checks],
        "ok": r.ok,
    }
    if r.ramp_started_at is not None:
        seconds = ramp_window(r, policy)
        out["ramp"] = {
            "start_per_s": policy.ramp_start_per_s,
            "ramp_s": policy.ramp_s,
            "coordinators": config.workers,
            "arrival_slack_s": storm_calls.ARRIVAL_SLACK_S,
            "seconds": [dataclasses.asdict(s) for s in r.ramp(policy, config.workers, seconds)],
        }
    return out


def settings_json(config: StormConfig) -> dict[str, Any]:
    s = default_settings()
    p = s.breaker_policy
    return {
        "outage_s": config.outage_s,
        "clients": config.clients,
        "healthy_s": config.seconds,
        "workers": config.workers,
        "branches_per_transaction": len(BRANCHES),
        "changed": {name: {"value": v, "why": why} for name, (v, why) in CHANGED.items()},
        "retry": {
            "initial_s": s.retry_initial_s,
            "coefficient": s.retry_coefficient,
            "max_s": s.retry_max_s,
            "recovery_interval_s": s.recovery_interval_s,
            "recovery_batch": s.recovery_batch,
        },
        "breaker": {
            "failures": p.failures,
            "error_rate": p.error_rate,
            "window_s": p.window_s,
            "min_calls": p.min_calls,
            "open_s": p.open_s,
            "max_open_s": p.max_open_s,
            "ramp_s": p.ramp_s,
            "ramp_start_per_s": p.ramp_start_per_s,
        },
    }


# --- the command ---------------------------------------------------------------------------


class Storm:
    """Both runs: our own embedded Postgres (or --database-url), a database per run."""

    def __init__(self, config: StormConfig, say: Say) -> None:
        self.config = config
        self.say = say
        self.work = Path(tempfile.mkdtemp(prefix="tcc-storm-"))
        self.server: EmbeddedServer | None = None
        self.results: list[RunResult] = []

    async def _admin_url(self) -> str:
        if self.config.database_url is not None:
            return self.config.database_url
        self.say("storm: starting an embedded Postgres ...")
        try:
            self.server = await asyncio.to_thread(
                EmbeddedServer, self.work / "pgdata", delete_on_close=True
            )
        except Exception as exc:  # the wheel raises plain errors from initdb / pg_ctl
            raise BenchError(f"cannot start the embedded Postgres: {exc}") from exc
        return self.server.url

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        started_at = datetime.datetime.now(datetime.UTC)
        admin = await self._admin_url()
        try:
            conn = await asyncpg.connect(admin, timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise BenchError(f"cannot connect to {redact(admin)}: {exc}") from exc
        try:
            postgres = await conn.fetchval("SHOW server_version")
            for tag in self.config.runs:
                name = f"tcc_bench_storm_{tag}"
                await recreate_database(conn, name)
                try:
                    url = with_database(admin, name)
                    await migrator.migrate(url)
                    run = StormRun(self.config, tag == "on", url, self.work, self.say)
                    self.results.append(await run.run())
                finally:
                    await drop_database(conn, name)
        finally:
            await conn.close()
        return {
            "command": "tcc bench --storm",
            "started_at": started_at.isoformat(timespec="seconds"),
            "elapsed_s": round(time.monotonic() - started, 1),
            "machine": {
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "postgres": postgres,
                "database": "embedded" if self.server is not None else redact(admin),
            },
            "settings": settings_json(self.config),
            "runs": [run_json(r, self.config) for r in self.results],
            "ok": bool(self.results) and all(r.ok for r in self.results),
        }

    async def close(self) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.close)
        out = self.config.out_dir
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            for folder in self.work.glob("breaker-*"):
                shutil.copytree(folder, out / folder.name, dirs_exist_ok=True)
        shutil.rmtree(self.work, ignore_errors=True)


def config_for_storm(args: argparse.Namespace) -> StormConfig:
    for flag, value in (("--prune", args.prune), ("--soak", args.soak), ("--reads", args.reads)):
        if value is not None:
            raise UsageError(f"--storm and {flag} are separate runs: give one of them")
    if args.modes is not None or args.profile or args.short:
        raise UsageError(
            "--storm runs auto transactions, unprofiled: leave out --modes, --profile and --short"
        )
    outage = DEFAULT_OUTAGE_S if args.outage_s is None else args.outage_s
    if not 1 <= outage <= MAX_OUTAGE_S:
        raise UsageError(f"--outage-s must be between 1 and {MAX_OUTAGE_S:g}")
    clients = DEFAULT_CLIENTS
    if args.concurrency is not None:
        try:
            clients = int(args.concurrency)
        except ValueError:
            raise UsageError(
                "--storm takes one number of clients in --concurrency, e.g. 8"
            ) from None
    if not 1 <= clients <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
    seconds = DEFAULT_SECONDS if args.seconds is None else args.seconds
    if not 1 <= seconds <= 3600:
        raise UsageError("--seconds must be between 1 and 3600")
    if not 1 <= args.workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be between 1 and {MAX_WORKERS}")
    url = args.database_url
    if url is not None and not url.startswith(("postgres://", "postgresql://")):
        raise UsageError("--database-url must be a postgresql:// URL")
    if url is not None and URL(url).path.lstrip("/").startswith("tcc_bench_"):
        # Each run drops and recreates a database of that name.
        raise UsageError("--database-url must not name one of the tcc_bench_* databases")
    out = Path(args.out).expanduser() if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    return StormConfig(
        outage_s=outage,
        clients=clients,
        seconds=seconds,
        workers=args.workers,
        database_url=url,
        out_dir=out,
    )


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run_storm(config: StormConfig, *, as_json: bool) -> int:
    storm = Storm(config, _stderr)
    try:
        report = await storm.run()
    finally:
        await storm.close()
    text = json.dumps(report, indent=2)
    if config.out_dir is not None:
        path = config.out_dir / "storm.json"
        path.write_text(text + "\n")
        _stderr(f"storm: JSON, logs and each run's record of calls in {config.out_dir}")
    print(text if as_json else render(report))
    return 0 if report["ok"] else 1


async def storm_main(args: argparse.Namespace) -> int:
    """`tcc bench --storm`: input checked before anything starts; SIGTERM stops it as
    Ctrl-C does, children and temporary folders included."""
    config = config_for_storm(args)
    return await stoppable(run_storm(config, as_json=args.json))
