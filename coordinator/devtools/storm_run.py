"""One run of `tcc bench --storm`'s scenario (storm.py tells the whole): the counting
participant and `tcc serve` on a migrated database of the run's own, the load, the kill, the
restart, the wait for the backlog; then what the log, the coordinator's metrics and the
participant's record say, the checks that nothing was lost and, with the breaker, that the
participant's return stayed within the ramp.

Times are seconds since the epoch on this machine's clock; the log's are put on it (its
clock's offset is measured at the end of the run).
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from coordinator.core.breaker import BreakerPolicy
from coordinator.core.states import (
    ACTIVE_STATUSES,
    PARKED_STATUSES,
    GlobalStatus,
    Phase,
)
from coordinator.devtools import bench_procs, storm_calls
from coordinator.devtools.bench import BenchError
from coordinator.devtools.children import Managed, clean_env, free_port
from coordinator.devtools.storm_calls import Arrival, RampSecond, RampSoFar
from coordinator.devtools.storm_report import SERIES_S
from coordinator.engine.participants import REFRESH_S
from coordinator.settings import Settings

RUNS = ("off", "on")  # the breaker off, then on
DEFAULT_OUTAGE_S = 60.0
DEFAULT_CLIENTS = 8
DEFAULT_SECONDS = 10
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

    def ramp_so_far(self, policy: BreakerPolicy, coordinators: int) -> list[RampSoFar]:
        if self.ramp_started_at is None:
            return []
        return storm_calls.ramp_so_far(
            self.phase_two_after_return(), self.ramp_started_at, policy, coordinators
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
        # A finished transaction's branch got its own phase's call, and never the other's.
        due = {
            GlobalStatus.CONFIRMED.value: (Phase.CONFIRM.value, Phase.CANCEL.value),
            GlobalStatus.CANCELLED.value: (Phase.CANCEL.value, Phase.CONFIRM.value),
        }
        finished = dict.fromkeys(due, 0)
        undelivered, crossed = [], []
        for b in branches:
            status = logged.get(b["gid"])
            if status not in due:
                continue
            finished[status] += 1
            key = (b["gid"], b["branch_id"])
            own, other = due[status]
            if (own, *key) not in got:
                undelivered.append(key)
            if (other, *key) in got:
                crossed.append(key)
        confirms = finished[GlobalStatus.CONFIRMED.value]
        cancels = finished[GlobalStatus.CANCELLED.value]
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
        beyond = [s for s in r.ramp_so_far(policy, self.config.workers) if not s.within]
        r.checks.append(
            Check(
                not beyond,
                "and from the ramp's start to the end of each of its seconds, within what it"
                " allowed in all that time"
                if not beyond
                else "over the ramp from its start: "
                + ", ".join(f"by {s.until_s} s {s.received} > {s.allowed}" for s in beyond[:5]),
            )
        )


def ramp_window(r: RunResult, policy: BreakerPolicy) -> int:
    """Whole seconds after the return until the ramp is over (at least SERIES_S)."""
    if r.ramp_started_at is None:
        return SERIES_S
    end = r.ramp_started_at + policy.ramp_s - r.returned_at
    return max(SERIES_S, int(end) + 1)
