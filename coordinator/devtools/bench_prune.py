"""`tcc bench --prune N`: deleting a big old log while the coordinator serves load.

Fills a fresh database with N finished transactions (confirmed, one in 33 cancelled; two
branches and two timeline entries each) begun 31 to 61 days ago, as `tcc bench --reads` fills
its log, and KEEP old ones that pruning must leave: parked, unfinished, or finished less than
30 days ago. Then, with the minimal participant and `tcc serve` started as `tcc bench` starts
them, auto-mode load from C clients runs all along, through three phases:

1. the load alone (the baseline);
2. the same load while `tcc prune --older-than 30d` runs in a subprocess, as an operator runs
   it (Upkeep.prune: batches of PRUNE_BATCH, PRUNE_PAUSE_S apart), until it exits;
3. the load alone again.

Each phase reports the load's transactions/s and latency percentiles (every transaction counts
in the phase it finished in), the CPU of Postgres and of the coordinator, the slowest statement
Postgres ran (pg_stat_statements; for phase 2 also the prune's batch statements) and whether
any backend waited on a lock (pg_stat_activity, sampled). At the end the result is checked:
exactly N deleted and none left to prune, the old ones that must stay all there as they were,
every transaction of the load there and confirmed, no branch or timeline entry without its
transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import re
import resource
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from coordinator.core.errors import UsageError
from coordinator.devtools import bench_procs, bench_reads
from coordinator.devtools.bench import (
    MAX_CONCURRENCY,
    SHORT_SECONDS,
    SHORT_WARMUP_S,
    Bench,
    BenchConfig,
    BenchError,
    _database_name,
    config_from_args,
    stoppable,
)
from coordinator.devtools.bench_db import Stats, recreate_database, statements_setup, with_database
from coordinator.devtools.bench_load import Endpoints, Scenario, coordinator_scenario, run_point
from coordinator.devtools.bench_report import latency_summary
from coordinator.devtools.children import clean_env
from coordinator.engine.upkeep import PRUNE_BATCH, PRUNE_PAUSE_S
from coordinator.report import columns
from coordinator.txlog import migrator
from coordinator.txlog.queries import q

MIN_ROWS = 1000
MODE = "auto"
OLDER_THAN = "30d"
OLDER_THAN_S = 30 * 86_400.0
FILL_AGE_S = 31 * 86_400.0  # the newest of the fill: a day past the retention
KEEP = 1000
DEFAULT_CLIENTS = 16
DEFAULT_SECONDS = 25
DEFAULT_WARMUP_S = 3.0
SAMPLE_EVERY_S = 0.1
CPU_EVERY = 5  # samples: reading /proc costs more than asking Postgres
PROGRESS_EVERY_S = 20.0
# The prune's time limit: N at this many transactions/s, and ten minutes more.
SLOWEST_PRUNE_RATE = 100
TABLES = ("tcc_transactions", "tcc_branches", "tcc_events")


def _statement_marker(name: str) -> str:
    """The start of a named query's SQL, comments left out and spaces collapsed as in
    _STATEMENTS: how its line in pg_stat_statements is found."""
    sql = " ".join(line for line in q(name).splitlines() if not line.lstrip().startswith("--"))
    return " ".join(sql.split())[:48]


PRUNE_STATEMENT = _statement_marker("prune_finished")
QUERY_CHARS = 70

Say = Callable[[str], None]

# KEEP old transactions that pruning must leave, numbered after the fill's (so that
# bench_reads.add_branches_and_events gives them theirs), begun 31-60 days ago: parked ones,
# unfinished ones whose next look is due only after the run (recovery leaves them as they
# are), and confirmed ones that finished 29 days ago. $1 the first number, $2 the last.
_KEEP = """
INSERT INTO tcc_transactions (
    gid, status, service, request_hash, timeout_s, deadline, next_attempt_at, created_at,
    updated_at, decided_at, finished_at, phase_started_at, phase_attempts, branch_count)
SELECT svc || '-' || lpad(n::text, 9, '0'), status, svc, 'bench', 60, created + interval '60 s',
       CASE WHEN status IN ('trying', 'confirming', 'cancelling')
            THEN now() + interval '1 day' END,
       created, coalesce(finished, created + interval '40 ms'),
       CASE WHEN status <> 'trying' THEN created + interval '20 ms' END,
       finished,
       CASE WHEN status <> 'trying' THEN created + interval '20 ms' END,
       12, 2
FROM generate_series($1::int, $2::int) AS n,
     LATERAL (SELECT (ARRAY['shop', 'bank', 'stock', 'travel', 'billing'])[1 + n % 5] AS svc,
                     (ARRAY['failed_to_confirm', 'failed_to_cancel', 'trying', 'confirming',
                            'cancelling', 'confirmed'])[1 + n % 6] AS status,
                     now() - interval '31 days' - (n % 30) * interval '1 day' AS created) s,
     LATERAL (SELECT CASE WHEN status = 'confirmed' THEN now() - interval '29 days' END
              AS finished) f
"""

# The old ones by status: $1 seconds; $2 only those numbered above it (the fill's numbers
# are 1 to N: the ones to keep), or 0 for all.
_OLD_BY_STATUS = """
SELECT status, count(*) AS n FROM tcc_transactions
WHERE created_at < now() - make_interval(secs => $1)
  AND ($2::int = 0 OR split_part(gid, '-', 2)::int > $2)
GROUP BY status ORDER BY status
"""

_OLD_CHILDREN = """
SELECT (SELECT count(*) FROM tcc_branches b JOIN tcc_transactions t USING (gid)
        WHERE t.created_at < now() - make_interval(secs => $1)) AS branches,
       (SELECT count(*) FROM tcc_events e JOIN tcc_transactions t USING (gid)
        WHERE t.created_at < now() - make_interval(secs => $1)) AS events
"""

_LOAD_ROWS = """
SELECT count(*) AS transactions,
       count(*) FILTER (WHERE status = 'confirmed') AS confirmed,
       (SELECT count(*) FROM tcc_branches b JOIN tcc_transactions t USING (gid)
        WHERE t.created_at >= $1) AS branches
FROM tcc_transactions WHERE created_at >= $1
"""

_ORPHANS = """
SELECT (SELECT count(*) FROM tcc_branches b
        WHERE NOT EXISTS (SELECT 1 FROM tcc_transactions t WHERE t.gid = b.gid)) AS branches,
       (SELECT count(*) FROM tcc_events e
        WHERE NOT EXISTS (SELECT 1 FROM tcc_transactions t WHERE t.gid = e.gid)) AS events
"""

_TABLES = """
SELECT relname, n_live_tup, n_dead_tup, autovacuum_count, pg_total_relation_size(relid) AS bytes
FROM pg_stat_user_tables WHERE relname = ANY($1::text[]) ORDER BY relname
"""

# Backends of the bench's database waiting on a lock (which, and what they ran), and what
# autovacuum is doing there.
_ACTIVITY = """
SELECT count(*) FILTER (WHERE wait_event_type = 'Lock') AS waiting,
       coalesce(array_agg(DISTINCT wait_event || ': ' || left(regexp_replace(query, '\\s+', ' ',
                'g'), 60)) FILTER (WHERE wait_event_type = 'Lock'), '{}') AS waits,
       coalesce(array_agg(DISTINCT query) FILTER (WHERE backend_type = 'autovacuum worker'),
                '{}') AS vacuums
FROM pg_stat_activity WHERE datid = $1
"""

_STATEMENTS = """
SELECT regexp_replace(query, '\\s+', ' ', 'g') AS query, calls, rows,
       total_exec_time, max_exec_time
FROM pg_stat_statements WHERE dbid = $1
"""


# --- what is measured --------------------------------------------------------------------


@dataclass
class _Samples:
    """Every transaction of the load: when it ended, and how long it took."""

    done: list[tuple[float, float]] = field(default_factory=list)  # (perf_counter, ms)
    failed: list[float] = field(default_factory=list)  # perf_counter

    def window(self, start: float, end: float) -> tuple[list[float], int]:
        # Copies first: the load's thread appends meanwhile.
        done, failed = list(self.done), list(self.failed)
        latencies = sorted(ms for at, ms in done if start <= at < end)
        return latencies, sum(1 for at in failed if start <= at < end)


def _recorded(scenario: Scenario, samples: _Samples) -> Scenario:
    """The scenario, noting when each transaction ended: the load runs through every phase
    and each one takes the transactions that ended in it."""

    async def run(session: aiohttp.ClientSession) -> None:
        started = time.perf_counter()
        try:
            await scenario(session)
        except BaseException:  # a timeout arrives as a cancellation
            samples.failed.append(time.perf_counter())
            raise
        ended = time.perf_counter()
        samples.done.append((ended, (ended - started) * 1000))

    return run


class _TreeCpu:
    """CPU seconds of a process tree over a stretch, those of processes that came and went
    meanwhile included as far as seen (a backend's CPU is gone from /proc once it exits):
    each process counts from its CPU when first seen (0 if born after the first sample) to
    its CPU when last seen."""

    def __init__(self, root: int | None) -> None:
        self.root = root if bench_procs.has_proc() else None
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.sampled = False

    def sample(self) -> None:
        if self.root is None:
            return
        for pid in bench_procs.process_tree(self.root):
            cpu = bench_procs.cpu_seconds([pid])  # 0 if it just exited: last keeps the max
            self.first.setdefault(pid, cpu if not self.sampled else 0.0)
            self.last[pid] = max(self.last.get(pid, 0.0), cpu)
        self.sampled = True

    @property
    def seconds(self) -> float | None:
        if self.root is None:
            return None
        return sum(last - self.first[pid] for pid, last in self.last.items())


@dataclass
class _Watch:
    """pg_stat_activity, sampled every SAMPLE_EVERY_S through a phase, and the CPU of
    Postgres every CPU_EVERY samples."""

    database: _TreeCpu
    samples: int = 0
    lock_samples: int = 0  # samples in which a backend waited on a lock
    max_waiting: int = 0
    waits: set[str] = field(default_factory=set)
    vacuums: set[str] = field(default_factory=set)

    def add(self, row: asyncpg.Record) -> None:
        self.samples += 1
        if row["waiting"]:
            self.lock_samples += 1
            self.max_waiting = max(self.max_waiting, int(row["waiting"]))
        self.waits.update(row["waits"])
        self.vacuums.update(v.removeprefix("autovacuum: ") for v in row["vacuums"])


@dataclass
class _Mark:
    """A phase boundary: when, and the CPU seconds of the coordinator then."""

    at: float
    coordinator_cpu_s: float


@dataclass
class StatementFigures:
    calls: int
    rows: int
    total_ms: float
    mean_ms: float
    max_ms: float


@dataclass
class PhaseResult:
    name: str
    seconds: float
    transactions: int
    tps: float
    errors: int
    latency_ms: dict[str, float | None]
    database_cores: float | None
    coordinator_cores: float | None
    slowest_statement_ms: float | None  # None: pg_stat_statements not available
    slowest_statement: str | None
    activity_samples: int
    lock_wait_samples: int
    max_backends_waiting: int
    lock_waits: list[str]
    autovacuum: list[str]


@dataclass
class PruneResult:
    command: str
    seconds: float
    cpu_s: float  # the `tcc prune` process's own
    deleted: int | None  # what `tcc prune` said
    output: str
    batches: StatementFigures | None  # prune_finished, from pg_stat_statements


@dataclass
class Check:
    ok: bool
    what: str


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _one(conn: asyncpg.Connection, query: str, *args: Any) -> asyncpg.Record:
    row = await conn.fetchrow(query, *args)
    assert row is not None  # each of these statements returns one row
    return row


async def _by_status(conn: asyncpg.Connection, above: int) -> dict[str, int]:
    rows = await conn.fetch(_OLD_BY_STATUS, OLDER_THAN_S, above)
    return {r["status"]: int(r["n"]) for r in rows}


# --- the run ---------------------------------------------------------------------------


class PruneBench(Bench):
    """`tcc bench`'s Postgres, participant and coordinator (one, auto mode), one database."""

    null_coordinators = ()

    def __init__(self, config: BenchConfig, rows: int, say: Say) -> None:
        super().__init__(config, say)
        self.rows = rows
        # The coordinator's and the participant's logs: kept with --out, else gone at the end.
        self._out = config.out_dir or self.work / "out"
        self.database = _database_name(MODE)
        self.url = ""
        self.fill_s = 0.0
        self.samples = _Samples()
        self.phases: list[PhaseResult] = []
        self.prune: PruneResult | None = None
        self.tables: dict[str, dict[str, dict[str, int]]] = {}
        self.checks: list[Check] = []
        self.load_errors: list[str] = []

    # --- the log ------------------------------------------------------------------------

    async def _prepare(self, conn: asyncpg.Connection) -> None:
        note, self.created_extension = await statements_setup(conn)
        self.stats = Stats(conn, note)
        try:
            await recreate_database(conn, self.database)
        except asyncpg.PostgresError as exc:
            raise BenchError(f"cannot create the database {self.database}: {exc}") from exc
        self.databases.append(self.database)
        self.oids[self.database] = await self.stats.oid(self.database)
        self.url = with_database(self.admin_url, self.database)
        await migrator.migrate(self.url)
        self.machine = {
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "postgres": await conn.fetchval("SHOW server_version"),
        }
        db = await asyncpg.connect(self.url)
        try:
            started = time.perf_counter()
            first, last = self.rows + 1, self.rows + KEEP
            await db.execute(_KEEP, first, last)
            await bench_reads.add_branches_and_events(db, first, last)
            await bench_reads.fill(db, self.rows, self.say, age_s=FILL_AGE_S, finished_only=True)
            self.fill_s = time.perf_counter() - started
        finally:
            await db.close()

    # --- the phases -----------------------------------------------------------------------

    def _mark(self) -> _Mark:
        root = bench_procs.pid_of(self.procs.coordinators[MODE])
        return _Mark(time.perf_counter(), bench_procs.tree_cpu_seconds(root))

    def _new_watch(self) -> _Watch:
        postmaster = self.server.postmaster_pid if self.server is not None else None
        watch = _Watch(_TreeCpu(postmaster))
        watch.database.sample()
        return watch

    async def _watch(
        self,
        watch: _Watch,
        done: Callable[[], bool],
        now_and_then: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Sample until done; now_and_then every PROGRESS_EVERY_S (on the same connection,
        so one after the other)."""
        assert self.conn is not None
        oid = self.oids[self.database]
        every = round(PROGRESS_EVERY_S / SAMPLE_EVERY_S)
        while not done():
            watch.add(await _one(self.conn, _ACTIVITY, oid))
            if watch.samples % CPU_EVERY == 0:
                watch.database.sample()
            if now_and_then is not None and watch.samples % every == 0:
                await now_and_then()
            await asyncio.sleep(SAMPLE_EVERY_S)
        watch.database.sample()

    async def _statements(self) -> list[asyncpg.Record]:
        assert self.conn is not None
        assert self.stats is not None
        if not self.stats.counts_statements:
            return []
        return list(await self.conn.fetch(_STATEMENTS, self.oids[self.database]))

    def _phase(
        self,
        name: str,
        marks: tuple[_Mark, _Mark],
        window: tuple[float, float],
        watch: _Watch,
        statements: list[asyncpg.Record],
    ) -> PhaseResult:
        """The load's figures over the window, the CPU's between the marks."""
        start, end = marks
        seconds = window[1] - window[0]
        latencies, errors = self.samples.window(*window)
        summary = latency_summary(latencies)
        summary["max"] = round(latencies[-1], 3) if latencies else None
        others = [s for s in statements if PRUNE_STATEMENT not in s["query"]]
        # None without pg_stat_statements (no statements then).
        slowest = max(others, key=lambda s: s["max_exec_time"], default=None)

        def cores(cpu_s: float | None) -> float | None:
            return None if cpu_s is None else round(cpu_s / (end.at - start.at), 2)

        phase = PhaseResult(
            name=name,
            seconds=round(seconds, 2),
            transactions=len(latencies),
            tps=round(len(latencies) / seconds, 2),
            errors=errors,
            latency_ms=summary,
            database_cores=cores(watch.database.seconds),
            coordinator_cores=cores(end.coordinator_cpu_s - start.coordinator_cpu_s),
            slowest_statement_ms=round(slowest["max_exec_time"], 2) if slowest else None,
            slowest_statement=slowest["query"][:QUERY_CHARS] if slowest else None,
            activity_samples=watch.samples,
            lock_wait_samples=watch.lock_samples,
            max_backends_waiting=watch.max_waiting,
            lock_waits=sorted(watch.waits),
            autovacuum=sorted(watch.vacuums),
        )
        p50 = summary["p50"]
        self.say(
            f"bench: {name}: {phase.seconds:.1f} s, {phase.tps:.1f} tx/s"
            + (f", p50 {p50:.1f} ms" if p50 is not None else "")
        )
        return phase

    async def _alone(self, name: str, seconds: float) -> None:
        assert self.stats is not None
        self.say(f"bench: {name} for {seconds:g} s ...")
        await self.stats.start(self.oids[self.database])  # pg_stat_statements from now
        start = self._mark()
        watch = self._new_watch()
        await self._watch(watch, lambda: time.perf_counter() >= start.at + seconds)
        end = self._mark()
        statements = await self._statements()
        self.phases.append(self._phase(name, (start, end), (start.at, end.at), watch, statements))

    async def _run_prune(self) -> tuple[str, float, float, float]:
        """`tcc prune` as an operator runs it: its output, when it started and ended, and
        the CPU seconds it took."""
        env = {**clean_env(), "TCC_DATABASE_URL": self.url}
        command = [sys.executable, "-m", "coordinator.cli", "prune", "--older-than", OLDER_THAN]
        limit_s = self.rows / SLOWEST_PRUNE_RATE + 600
        started, cpu_before = time.perf_counter(), _children_cpu_s()
        proc = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=limit_s)
        except TimeoutError:
            raise BenchError(f"tcc prune did not finish in {limit_s:.0f} s") from None
        finally:
            if proc.returncode is None:  # timed out or cancelled: never leave it running
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        ended = time.perf_counter()
        text = out.decode(errors="replace").strip()
        if proc.returncode != 0:
            raise BenchError(f"tcc prune exited with {proc.returncode}: {text[-300:]}")
        # The only child that ends meanwhile (the participant and `tcc serve` run on).
        return text, started, ended, _children_cpu_s() - cpu_before

    async def _during_prune(self) -> None:
        assert self.stats is not None
        name = f"load + tcc prune {OLDER_THAN}"
        self.say(f"bench: `tcc prune --older-than {OLDER_THAN}` under load ...")
        await self.stats.start(self.oids[self.database])
        start = self._mark()
        task = asyncio.create_task(self._run_prune())
        watch = self._new_watch()
        try:
            await self._watch(watch, task.done, self._count_pruned)
            output, began, ended, cpu_s = await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        end = self._mark()
        statements = await self._statements()
        # The load's figures over the prune's lifetime: from its start until it exited.
        self.phases.append(self._phase(name, (start, end), (began, ended), watch, statements))
        said = re.search(r"deleted (\d+) finished transactions", output)
        batches = next((s for s in statements if PRUNE_STATEMENT in s["query"]), None)
        self.prune = PruneResult(
            command=f"tcc prune --older-than {OLDER_THAN}",
            seconds=round(ended - began, 2),
            cpu_s=round(cpu_s, 2),
            deleted=int(said[1]) if said else None,
            output=output,
            batches=None
            if batches is None
            else StatementFigures(
                calls=int(batches["calls"]),
                rows=int(batches["rows"]),
                total_ms=round(batches["total_exec_time"], 1),
                mean_ms=round(batches["total_exec_time"] / max(batches["calls"], 1), 2),
                max_ms=round(batches["max_exec_time"], 2),
            ),
        )

    async def _count_pruned(self) -> None:
        """How many the prune has deleted so far (its batch statements' rows)."""
        batches = [s for s in await self._statements() if PRUNE_STATEMENT in s["query"]]
        if batches:
            self.say(f"bench: {int(batches[0]['rows']):,} of {self.rows:,} deleted ...")

    async def _table_sizes(self, db: asyncpg.Connection) -> dict[str, dict[str, int]]:
        rows = await db.fetch(_TABLES, list(TABLES))
        return {
            r["relname"]: {
                "live_rows": int(r["n_live_tup"]),
                "dead_rows": int(r["n_dead_tup"]),
                "autovacuums": int(r["autovacuum_count"]),
                "bytes": int(r["bytes"]),
            }
            for r in rows
        }

    async def _measure(self) -> None:
        db = await asyncpg.connect(self.url)
        try:
            prunable = int(await db.fetchval(q("count_prunable"), OLDER_THAN_S))
            if prunable != self.rows:
                raise BenchError(f"the fill left {prunable} to prune, not {self.rows}")
            keep = await _by_status(db, self.rows)
            since = await db.fetchval("SELECT now()")
            self.tables["before"] = await self._table_sizes(db)
            await self._load_through_phases()
            self.tables["after"] = await self._table_sizes(db)
            await self._verify(db, keep, since)
        finally:
            await db.close()

    async def _load_through_phases(self) -> None:
        c = self.config
        ends = Endpoints(self.procs.urls["participant"], self.procs.urls[MODE])
        scenario = _recorded(coordinator_scenario(MODE, ends), self.samples)
        stop = threading.Event()
        self._stops.append(stop)
        # A bound on the load, however long the prune takes: the stop event ends it sooner.
        bound_s = c.warmup_s + 2 * c.seconds + self.rows / SLOWEST_PRUNE_RATE + 900
        load = asyncio.create_task(
            asyncio.to_thread(run_point, scenario, c.concurrency[0], 0.0, bound_s, dict, stop)
        )
        try:
            self.say(
                f"bench: {c.concurrency[0]} clients in {MODE} mode; warming up for"
                f" {c.warmup_s:g} s ..."
            )
            await asyncio.sleep(c.warmup_s)
            await self._alone("load alone", c.seconds)
            await self._during_prune()
            await self._alone("load after", c.seconds)
        finally:
            stop.set()
            result = await load
        self.load_errors = result.error_samples

    # --- the checks -------------------------------------------------------------------------

    async def _verify(
        self, db: asyncpg.Connection, keep: dict[str, int], since: datetime.datetime
    ) -> None:
        assert self.prune is not None
        n = self.rows
        checks = self.checks
        said = self.prune.deleted
        told = "nothing it deleted" if said is None else f"it deleted {said:,}"
        checks.append(Check(said == n, f"tcc prune said {told}, of the {n:,} to delete"))
        left = int(await db.fetchval(q("count_prunable"), OLDER_THAN_S))
        checks.append(Check(left == 0, f"left to prune: {left}"))
        old = await _by_status(db, 0)
        shown = ", ".join(f"{s} {c}" for s, c in sorted(keep.items()))
        checks.append(
            Check(
                old == keep,
                f"the {sum(keep.values()):,} old ones to keep are there as they were ({shown})"
                if old == keep
                else f"old ones left, by status: {old}; expected {keep}",
            )
        )
        children = await _one(db, _OLD_CHILDREN, OLDER_THAN_S)
        kept = sum(keep.values())
        checks.append(
            Check(
                children["branches"] == 2 * kept and children["events"] == 2 * kept,
                f"their branches {children['branches']:,} and timeline entries"
                f" {children['events']:,} (two each)",
            )
        )
        load = await _one(db, _LOAD_ROWS, since)
        done, failed = len(self.samples.done), len(self.samples.failed)
        complete = (
            load["confirmed"] >= done
            and done <= load["transactions"] <= done + failed
            and load["branches"] == 2 * load["transactions"]
        )
        checks.append(
            Check(
                complete,
                f"the load's transactions: {load['transactions']:,} in the log,"
                f" {load['confirmed']:,} confirmed, {load['branches']:,} branches; the clients"
                f" saw {done:,} confirmed" + (f" and {failed} fail" if failed else ""),
            )
        )
        orphans = await _one(db, _ORPHANS)
        checks.append(
            Check(
                orphans["branches"] == 0 and orphans["events"] == 0,
                f"branches without a transaction: {orphans['branches']}, timeline entries"
                f" without one: {orphans['events']}",
            )
        )

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    # --- the whole ------------------------------------------------------------------------

    async def run_prune(self) -> dict[str, Any]:
        started = time.monotonic()
        started_at = datetime.datetime.now(datetime.UTC)
        try:
            conn = await self._connect()
            await self._prepare(conn)
            await self._start_processes()
            await self._measure()
        finally:
            await self._stop()
        return self._prune_report(started_at, time.monotonic() - started)

    def _prune_report(self, started_at: datetime.datetime, elapsed_s: float) -> dict[str, Any]:
        c = self.config
        return {
            **self.report_head("tcc bench --prune", started_at, elapsed_s),
            "settings": {
                "database": self.database_shown(),
                "transactions_to_prune": self.rows,
                "old_ones_to_keep": KEEP,
                "fill_age_days": [
                    FILL_AGE_S / 86_400,
                    (FILL_AGE_S + bench_reads.SPREAD_S) / 86_400,
                ],
                "older_than": OLDER_THAN,
                "mode": MODE,
                "clients": c.concurrency[0],
                "workers": c.workers,
                "seconds": c.seconds,
                "warmup_s": c.warmup_s,
                "prune_batch": PRUNE_BATCH,
                "prune_pause_s": PRUNE_PAUSE_S,
                "sample_every_s": SAMPLE_EVERY_S,
            },
            "fill_s": round(self.fill_s, 1),
            "phases": [dataclasses.asdict(p) for p in self.phases],
            "prune": dataclasses.asdict(self.prune) if self.prune else None,
            "tables": self.tables,
            "load_error_samples": self.load_errors,
            "checks": [dataclasses.asdict(ch) for ch in self.checks],
            "ok": self.ok,
        }


# --- the report --------------------------------------------------------------------------

NOTES = """\
tx/s, latencies, errors: the load's transactions that ended in the phase (the load runs
  through all three; the second phase lasts as long as `tcc prune` ran, its start-up included).
db cores, coordinator cores: CPU seconds per second of every Postgres process (backends that
  came and went included; n/a with --database-url) and of `tcc serve`.
slowest stmt: the longest a statement other than the prune's took in Postgres
  (pg_stat_statements max_exec_time over the phase).
lock waits: samples of pg_stat_activity in which a backend of the database waited on a lock."""


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _mb(size: int) -> str:
    return f"{size / 2**20:,.0f} MB"


def render_prune(report: dict[str, Any]) -> str:
    s, m = report["settings"], report["machine"]
    rows = s["transactions_to_prune"]
    low, high = s["fill_age_days"]
    lines = [
        f"tcc bench --prune {rows:,}: {m['cpu_count']} CPUs, Python {m['python']}, Postgres"
        f" {m['postgres']}, tcc serve --workers {s['workers']}, {s['mode']} mode,"
        f" {s['clients']} clients",
        f"log: {rows:,} finished transactions begun {low:g}-{high:g} days ago (2 branches and"
        f" 2 timeline entries each) and {s['old_ones_to_keep']:,} old ones to keep (parked,"
        f" unfinished, finished 29 days ago); written in {report['fill_s']:.0f} s",
        "",
    ]
    table = [
        [
            "phase",
            "seconds",
            "tx/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "errors",
            "db cores",
            "coordinator cores",
            "slowest stmt ms",
            "lock waits",
        ]
    ]
    for p in report["phases"]:
        lat = p["latency_ms"]
        table.append(
            [
                p["name"],
                _num(p["seconds"]),
                _num(p["tps"]),
                _num(lat["p50"]),
                _num(lat["p95"]),
                _num(lat["p99"]),
                _num(lat["max"]),
                str(p["errors"]),
                _num(p["database_cores"], 2),
                _num(p["coordinator_cores"], 2),
                _num(p["slowest_statement_ms"]),
                f"{p['lock_wait_samples']}/{p['activity_samples']}",
            ]
        )
    lines.append(columns(table))
    prune = report["prune"]
    if prune is not None:
        rate = rows / prune["seconds"] if prune["seconds"] else 0.0
        lines += [
            "",
            f"pruning: `{prune['command']}` in a subprocess, as an operator runs it (batches of"
            f" {s['prune_batch']}, {s['prune_pause_s']:g} s apart)",
            f"  {rows:,} transactions with {2 * rows:,} branches and {2 * rows:,} timeline"
            f" entries deleted in {prune['seconds']:,.1f} s: {rate:,.0f} transactions/s"
            f" ({5 * rate:,.0f} rows/s); the `tcc prune` process used {prune['cpu_s']:.1f} s"
            " of CPU",
        ]
        b = prune["batches"]
        if b is not None:
            lines.append(
                f"  batch statements (pg_stat_statements): {b['calls']:,} deleting"
                f" {b['rows']:,}, mean {b['mean_ms']:.1f} ms, longest {b['max_ms']:.1f} ms,"
                f" {b['total_ms'] / 1000:,.1f} s in all"
            )
        else:
            lines.append("  batch statements: n/a (no pg_stat_statements on this server)")
    during = next((p for p in report["phases"] if "prune" in p["name"]), None)
    if during is not None:
        waits = (
            "none seen"
            if not during["lock_wait_samples"]
            else f"in {during['lock_wait_samples']} samples, up to"
            f" {during['max_backends_waiting']} backends: {'; '.join(during['lock_waits'])}"
        )
        lines.append(
            f"  lock waits while pruning: {waits} ({during['activity_samples']:,} samples of"
            f" pg_stat_activity, every {s['sample_every_s']:g} s)"
        )
        vacuums = ", ".join(during["autovacuum"]) or "none seen"
        lines.append(f"  autovacuum while pruning: {vacuums}")
        if during["slowest_statement"]:
            lines.append(
                f"  slowest other statement while pruning: {during['slowest_statement_ms']:.1f}"
                f" ms: {during['slowest_statement']}"
            )
    before, after = report["tables"].get("before"), report["tables"].get("after")
    if before and after:
        sizes = ", ".join(
            f"{name} {_mb(before[name]['bytes'])} -> {_mb(after[name]['bytes'])}"
            for name in TABLES
            if name in before and name in after
        )
        lines.append(f"  tables with their indexes, before -> after the run: {sizes}")
    lines += ["", "checks:"]
    lines += [f"  {'ok  ' if ch['ok'] else 'FAIL'}  {ch['what']}" for ch in report["checks"]]
    if report["load_error_samples"]:
        lines += ["", "load errors:", *(f"  {e}" for e in report["load_error_samples"])]
    return "\n".join([*lines, "", NOTES])


# --- the command ---------------------------------------------------------------------------


def _clients(text: str | None) -> int:
    if text is None:
        return DEFAULT_CLIENTS
    try:
        clients = int(text)
    except ValueError:
        raise UsageError("--prune takes one number of clients in --concurrency, e.g. 16") from None
    if not 1 <= clients <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
    return clients


def config_for_prune(args: argparse.Namespace) -> BenchConfig:
    if args.prune < MIN_ROWS:
        raise UsageError(f"--prune needs at least {MIN_ROWS} transactions")
    if args.reads is not None:
        raise UsageError("--prune and --reads are separate runs: give one of them")
    if args.modes is not None:
        raise UsageError("--prune drives auto mode only: leave out --modes")
    clients = _clients(args.concurrency)
    # --workers, --seconds, --warmup-s, --database-url, --out, --short: checked as for a run.
    config = config_from_args(
        argparse.Namespace(**{**vars(args), "concurrency": None, "modes": None})
    )
    if args.short:
        seconds, warmup = SHORT_SECONDS, SHORT_WARMUP_S
    else:
        seconds = DEFAULT_SECONDS if args.seconds is None else config.seconds
        warmup = DEFAULT_WARMUP_S if args.warmup_s is None else config.warmup_s
    return dataclasses.replace(
        config, concurrency=(clients,), modes=(MODE,), seconds=seconds, warmup_s=warmup
    )


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run_prune_bench(config: BenchConfig, rows: int, *, as_json: bool) -> int:
    bench = PruneBench(config, rows, _stderr)
    report = await bench.run_prune()
    text = json.dumps(report, indent=2)
    if config.out_dir is not None:
        path = Path(config.out_dir) / "bench-prune.json"
        path.write_text(text + "\n")
        _stderr(f"bench: JSON in {path}")
    print(text if as_json else render_prune(report))
    errors = sum(p["errors"] for p in report["phases"])
    if errors:
        _stderr(f"bench: {errors} transactions of the load failed")
    if not report["ok"]:
        _stderr("bench: the checks after pruning failed")
    return 0 if report["ok"] and not errors else 1


async def prune_main(args: argparse.Namespace) -> int:
    """`tcc bench --prune N`: input checked before anything starts; SIGTERM stops it as
    Ctrl-C does, children and temporary folders included."""
    config = config_for_prune(args)
    return await stoppable(run_prune_bench(config, args.prune, as_json=args.json))
