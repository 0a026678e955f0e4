"""`tcc bench`: how fast the coordinator is, beside what it could never beat.

It starts its own embedded Postgres (or uses --database-url), the minimal participant
(participants/minimal.py) in a process of its own, and `tcc serve --workers N` exactly as a
user runs it, one per mode, each on a database of its own. Then, for each number of clients,
it drives closed-loop load through each mode (auto, interactive, dtm: two branches each;
saga, msg: two steps each), and beside them, with the same clients and time:

- the participant floor: the same participant calls made directly, no coordinator;
- the database ceiling: pgbench writing the least a logged transaction needs;
- the null coordinators (null_coordinator.py), each a process of its own taking auto mode's
  begin: `null http` makes the participant calls only, `null log` also writes the least a
  durable coordinator must (one INSERT before the tries, one UPDATE before the confirms,
  each its own synchronous commit) in a database of its own, counted as the modes' are.

Why a coordinator and a database per mode: Postgres publishes a busy backend's commit
counts only once it has been idle for 10 s, so a point's commits can be read only after
that long. Separate databases let the other modes, the floor and the ceiling run in the
meantime instead of the benchmark sleeping.

A msg point counts messages accepted; their deliveries go on after the answer. Once its load
has stopped, the harness waits (bounded) until the log holds none left to deliver, so that
the point's statements and commits include every delivery and the next point runs on a
quiet machine; then it reads the deliveries' lag and rate from the log (created_at and
finished_at of each message). Its own polls are taken out of the counts.

Every loop is bounded in time, everything listens on 127.0.0.1, and every child process
and temporary folder is gone at the end, also after Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
from yarl import URL

from coordinator.core.errors import CoordinatorError, UsageError
from coordinator.core.states import ACTIVE_STATUSES, GlobalStatus, TransactionKind
from coordinator.devtools import bench_db, bench_procs, bench_profile, bench_reads
from coordinator.devtools.bench_db import CEILING_DB, SETTLE_S, Counters, Stats, with_database
from coordinator.devtools.bench_load import (
    MODES,
    Endpoints,
    LoadResult,
    Probe,
    Scenario,
    coordinator_scenario,
    floor_scenario,
    run_point,
    uses_uvloop,
)
from coordinator.devtools.bench_report import (
    CEILING,
    COORDINATOR,
    DELIVERY_NOTES,
    FLOOR,
    NULL,
    NULL_MODES,
    PROFILE_NOTES,
    TABLE_NOTES,
    Deliveries,
    Point,
    add_ratios,
    delivery_table,
    draw_chart,
    latency_summary,
    points_json,
    profile_table,
    report_json,
    table,
)
from coordinator.devtools.children import Managed, clean_env, free_port
from coordinator.devtools.null_coordinator import DATABASE_ENV as NULL_DATABASE_ENV
from coordinator.embedded import EmbeddedServer, redact

DEFAULT_CONCURRENCY = (1, 16, 64)
DEFAULT_SECONDS = 10
DEFAULT_WARMUP_S = 2.0
SHORT_CONCURRENCY = (1, 4)
SHORT_SECONDS = 1
SHORT_WARMUP_S = 0.5
# Before the first point, each log is given this much unmeasured load at PRIME_CLIENTS and
# then analyzed (see Bench._prime).
PRIME_S = 2.0
SHORT_PRIME_S = 0.5
PRIME_CLIENTS = 16
MAX_CONCURRENCY = 256
MAX_WORKERS = 16
# Connections beyond the pools and pgbench: the harness, migrations, a margin.
SPARE_CONNECTIONS = 20
# A msg point's deliveries after its load: polled this often, for at most this long.
DRAIN_POLL_S = 0.25
DRAIN_LIMIT_S = 120.0
# Marks the harness's own queries in a point's database (found again in pg_stat_statements
# and pg_stat_activity, so that they are kept out of the point's counts).
HARNESS_TAG = "tcc-bench-harness"
DRAIN_QUERY = (
    f"/* {HARNESS_TAG} */ SELECT count(*) FROM tcc_transactions WHERE status = ANY($1::text[])"
)

Say = Callable[[str], None]


class BenchError(CoordinatorError):
    """The benchmark could not run (a process did not start, the database refused)."""


@dataclass(frozen=True)
class BenchConfig:
    database_url: str | None = None
    workers: int = 1
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    modes: tuple[str, ...] = MODES
    seconds: int = DEFAULT_SECONDS
    warmup_s: float = DEFAULT_WARMUP_S
    out_dir: Path | None = None
    short: bool = False
    profile: bool = False  # py-spy on each coordinator and null log point (bench_profile.py)


# --- the command line -------------------------------------------------------------------


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{flag} takes whole numbers separated by commas, e.g. 1,16,64") from None
    if not values:
        raise UsageError(f"{flag} needs at least one value")
    return values


def _concurrency(text: str | None) -> tuple[int, ...]:
    if text is None:
        return DEFAULT_CONCURRENCY
    values = _int_list(text, "--concurrency")
    if any(not 1 <= c <= MAX_CONCURRENCY for c in values):
        raise UsageError(f"--concurrency values must be between 1 and {MAX_CONCURRENCY}")
    return tuple(sorted(set(values)))


def _modes(text: str | None) -> tuple[str, ...]:
    if text is None:
        return MODES
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in MODES]
    if unknown or not names:
        raise UsageError(f"--modes takes some of {','.join(MODES)}; not {','.join(unknown)}")
    return tuple(m for m in MODES if m in names)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    if args.short and any(v is not None for v in (args.concurrency, args.seconds, args.warmup_s)):
        raise UsageError("--short sets --concurrency, --seconds and --warmup-s itself")
    if not 1 <= args.workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be between 1 and {MAX_WORKERS}")
    seconds = SHORT_SECONDS if args.short else args.seconds
    seconds = DEFAULT_SECONDS if seconds is None else seconds
    if not 1 <= seconds <= 3600:
        raise UsageError("--seconds must be between 1 and 3600")
    warmup = SHORT_WARMUP_S if args.short else args.warmup_s
    warmup = DEFAULT_WARMUP_S if warmup is None else warmup
    if not 0 <= warmup <= 600:
        raise UsageError("--warmup-s must be between 0 and 600")
    url, out = checked_target(args)
    if args.profile:
        bench_profile.py_spy()  # missing: one clear line before anything starts
    return BenchConfig(
        database_url=url,
        workers=args.workers,
        concurrency=SHORT_CONCURRENCY if args.short else _concurrency(args.concurrency),
        modes=_modes(args.modes),
        seconds=seconds,
        warmup_s=warmup,
        out_dir=out,
        short=args.short,
        profile=args.profile,
    )


# --- the run -------------------------------------------------------------------------------


@dataclass
class _MessageWindow:
    """A msg point's times on Postgres' clock (read in the admin database), and how its
    deliveries were waited for."""

    measured_from: datetime.datetime
    measured_to: datetime.datetime
    load_ended: datetime.datetime
    drained_after_s: float
    polls: int


@dataclass
class _Pending:
    """A coordinator point whose database figures are read once Postgres has published
    them (SETTLE_S after its load stopped, or after a msg point's deliveries ended)."""

    point: Point
    oid: int
    before: Counters
    transactions: int
    ready_at: float
    messages: _MessageWindow | None = None


def checked_target(args: argparse.Namespace) -> tuple[str | None, Path | None]:
    """``--database-url`` and ``--out`` as a bench run (and the storm) may use them."""
    url: str | None = args.database_url
    if url is not None and not url.startswith(("postgres://", "postgresql://")):
        raise UsageError("--database-url must be a postgresql:// URL")
    if url is not None and URL(url).path.lstrip("/").startswith("tcc_bench_"):
        # Each run drops and recreates databases of that name.
        raise UsageError("--database-url must not name one of the tcc_bench_* databases")
    out = Path(args.out).expanduser() if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    return url, out


def _per_tx(amount: float | None, transactions: int, scale: float = 1.0) -> float | None:
    if amount is None or transactions <= 0:
        return None
    return round(amount * scale / transactions, 4)


def _database_name(mode: str) -> str:
    return f"tcc_bench_{mode}"


# The database of the null coordinator that writes (null log).
NULL_LOG_DB = _database_name("null_log")


@dataclass
class _Processes:
    participant: Managed | None = None
    coordinators: dict[str, Managed] = field(default_factory=dict)
    nulls: dict[str, Managed] = field(default_factory=dict)  # by NULL_MODES
    urls: dict[str, str] = field(default_factory=dict)

    def all(self) -> list[Managed]:
        found = [*self.coordinators.values(), *self.nulls.values()]
        return found + ([self.participant] if self.participant is not None else [])


class Bench:
    # The null coordinators this run starts (a subclass measuring something else starts none).
    null_coordinators: tuple[str, ...] = NULL_MODES

    def __init__(self, config: BenchConfig, say: Say) -> None:
        self.config = config
        self.say = say
        self.work = Path(tempfile.mkdtemp(prefix="tcc-bench-"))
        # Made when first needed, so that a run refused at once leaves no folder behind.
        self._out = config.out_dir
        self.server: EmbeddedServer | None = None
        self.admin_url = ""
        self.conn: asyncpg.Connection | None = None
        self.stats: Stats | None = None
        self.created_extension = False
        self.databases: list[str] = []
        self.oids: dict[str, int] = {}
        self.procs = _Processes()
        self.pool_size = bench_db.pool_size(max(config.concurrency), config.workers)
        self.points: list[Point] = []
        self.machine: dict[str, Any] = {}
        self._stops: list[threading.Event] = []

    # --- set-up ----------------------------------------------------------------------

    def _connections_needed(self) -> int:
        # Each coordinator holds its pool and a half-size one for writes that need no flush.
        per_worker = self.pool_size + max(2, self.pool_size // 2)
        pools = len(self.config.modes) * self.config.workers * per_worker + self.pool_size
        return pools + max(self.config.concurrency) + SPARE_CONNECTIONS

    async def _start_embedded(self) -> None:
        self.say("bench: starting an embedded Postgres with pg_stat_statements ...")
        server = await asyncio.to_thread(EmbeddedServer, self.work / "pgdata", delete_on_close=True)
        self.server = server
        conn = await asyncpg.connect(server.url)
        try:
            await bench_db.enable_statements_embedded(conn)
            await bench_db.set_max_connections(conn, self._connections_needed())
        finally:
            await conn.close()
        # Both settings take effect only at start-up.
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        self.admin_url = server.url

    async def _check_external_connections(self, conn: asyncpg.Connection) -> None:
        allowed = int(await conn.fetchval("SHOW max_connections"))
        used = int(await conn.fetchval("SELECT count(*) FROM pg_stat_activity"))
        free = allowed - used
        if free >= self._connections_needed():
            return
        share = len(self.config.modes) * self.config.workers + 1  # and null log's pool
        pool = (free - max(self.config.concurrency) - SPARE_CONNECTIONS) // share
        if pool < 2:
            raise UsageError(
                f"the server at --database-url has {free} free connections, too few for this"
                " run: lower --concurrency or --workers"
            )
        self.pool_size = pool

    @property
    def out(self) -> Path:
        if self._out is None:
            self._out = Path(tempfile.mkdtemp(prefix="tcc-bench-results-"))
        self._out.mkdir(parents=True, exist_ok=True)
        return self._out

    async def _connect(self) -> asyncpg.Connection:
        if self.config.database_url is None:
            try:
                await self._start_embedded()
            except Exception as exc:  # the wheel raises plain errors from initdb / pg_ctl
                raise BenchError(f"cannot start the embedded Postgres: {exc}") from exc
        else:
            self.admin_url = self.config.database_url
        try:
            conn = await asyncpg.connect(self.admin_url, timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise BenchError(f"cannot connect to {redact(self.admin_url)}: {exc}") from exc
        self.conn = conn
        if self.config.database_url is not None:
            await self._check_external_connections(conn)
        return conn

    async def _prepare_databases(self, conn: asyncpg.Connection) -> None:
        note, self.created_extension = await bench_db.statements_setup(conn)
        self.stats = Stats(conn, note)
        names = [*(_database_name(m) for m in self.config.modes), NULL_LOG_DB, CEILING_DB]
        for name in names:
            try:
                await bench_db.recreate_database(conn, name)
            except asyncpg.PostgresError as exc:
                raise BenchError(f"cannot create the database {name}: {exc}") from exc
            self.databases.append(name)
            self.oids[name] = await self.stats.oid(name)
        await bench_db.create_ceiling_schema(with_database(self.admin_url, CEILING_DB))
        (self.work / "ceiling.sql").write_text(bench_db.CEILING_SCRIPT)
        self.machine = {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "postgres": await conn.fetchval("SHOW server_version"),
            "postgres_max_connections": int(await conn.fetchval("SHOW max_connections")),
            "uvloop": uses_uvloop(),
        }

    def _coordinator_env(self, mode: str, port: int) -> dict[str, str]:
        return {
            **clean_env(),
            "TCC_DATABASE_URL": with_database(self.admin_url, _database_name(mode)),
            "TCC_HOST": "127.0.0.1",
            "TCC_PORT": str(port),
            "TCC_WORKERS": str(self.config.workers),
            "TCC_POOL_MAX_SIZE": str(self.pool_size),
            "TCC_INSECURE": "true",  # a private run on loopback
            "TCC_PARTICIPANT_ALLOW": "127.0.0.0/8",
            "TCC_LOG_LEVEL": "warning",
            "TCC_LOG_FORMAT": "json",
        }

    async def _start_processes(self) -> None:
        log_dir = self.out / "logs"
        log_dir.mkdir(exist_ok=True)
        python = sys.executable
        port = free_port()
        participant = Managed(
            "participant",
            [python, "-m", "participants.minimal", "--port", str(port)],
            clean_env(),
            log_dir,
        )
        self.procs.participant = participant
        self.procs.urls["participant"] = f"http://127.0.0.1:{port}"
        for mode in self.config.modes:
            port = free_port()
            self.procs.coordinators[mode] = Managed(
                f"coordinator-{mode}",
                [python, "-m", "coordinator.cli", "serve"],
                self._coordinator_env(mode, port),
                log_dir,
            )
            self.procs.urls[mode] = f"http://127.0.0.1:{port}"
        for variant in self.null_coordinators:
            port = free_port()
            env = clean_env()
            if variant == "log":  # in the environment: a password is not for ps to show
                env[NULL_DATABASE_ENV] = with_database(self.admin_url, NULL_LOG_DB)
            self.procs.nulls[variant] = Managed(
                f"null-{variant}",
                [
                    python,
                    "-m",
                    "coordinator.devtools.null_coordinator",
                    "--port",
                    str(port),
                    "--pool-size",
                    str(self.pool_size),
                ],
                env,
                log_dir,
            )
            self.procs.urls[f"null {variant}"] = f"http://127.0.0.1:{port}"
        nulls = " and the null coordinators" if self.null_coordinators else ""
        self.say(
            f"bench: starting the participant, {len(self.config.modes)} x"
            f" `tcc serve --workers {self.config.workers}`{nulls} ..."
        )
        for proc in self.procs.all():
            proc.start()
        await bench_procs.wait_ready(participant, self.procs.urls["participant"] + "/")
        for mode, proc in self.procs.coordinators.items():
            await bench_procs.wait_ready(proc, self.procs.urls[mode] + "/readyz")
        for variant, proc in self.procs.nulls.items():
            await bench_procs.wait_ready(proc, self.procs.urls[f"null {variant}"] + "/readyz")

    # --- the points -------------------------------------------------------------------

    async def _load(self, scenario: Scenario, clients: int, probe: Probe) -> LoadResult:
        stop = threading.Event()
        self._stops.append(stop)
        try:
            return await asyncio.to_thread(
                run_point,
                scenario,
                clients,
                self.config.warmup_s,
                float(self.config.seconds),
                probe,
                stop,
            )
        finally:
            stop.set()  # on cancellation, the clients stop starting transactions

    def _database_cpu(self) -> float:
        """CPU of our embedded Postgres: its postmaster and every backend."""
        assert self.server is not None
        return bench_procs.tree_cpu_seconds(self.server.postmaster_pid)

    def _participant_cpu(self) -> float:
        assert self.procs.participant is not None
        return bench_procs.tree_cpu_seconds(bench_procs.pid_of(self.procs.participant))

    def _load_point(self, kind: str, mode: str, clients: int, result: LoadResult) -> Point:
        n = result.measured
        point = Point(
            kind=kind,
            mode=mode,
            concurrency=clients,
            seconds=result.window_s,
            transactions=n,
            tps=round(result.tps, 2),
            errors=result.errors,
            error_samples=result.error_samples,
            latency_ms=latency_summary(result.latencies_ms),
            coordinator_cpu_ms_per_tx=_per_tx(result.probe_delta.get("coordinator"), n, 1000),
            participant_cpu_ms_per_tx=_per_tx(result.probe_delta.get("participant"), n, 1000),
            client_cpu_ms_per_tx=_per_tx(result.client_cpu_s, n, 1000),
            database_cpu_ms_per_tx=_per_tx(result.probe_delta.get("database"), n, 1000),
        )
        self._progress(point)
        return point

    def _progress(self, p: Point) -> None:
        p50 = p.latency_ms.get("p50")
        latency = f", p50 {p50:.2f} ms" if p50 is not None else ""
        errors = f", {p.errors} errors: {p.error_samples[0]}" if p.errors else ""
        self.say(
            f"bench: {p.label:<17} {p.concurrency:>3} clients: {p.tps:9.1f} tx/s{latency}{errors}"
        )

    async def _coordinator_point(self, mode: str, clients: int) -> _Pending:
        proc, database = self.procs.coordinators[mode], _database_name(mode)
        return await self._logged_point(COORDINATOR, mode, proc, database, clients)

    async def _null_log_point(self, clients: int) -> _Pending:
        proc = self.procs.nulls["log"]
        return await self._logged_point(NULL, "log", proc, NULL_LOG_DB, clients)

    async def _prime(self) -> None:
        """Give every log some transactions, then VACUUM ANALYZE it. A fresh database's tables have
        no statistics: the generic plans the coordinator's connections keep for the hot
        statements are then made for empty tables (sequential scans), and they stay until
        autovacuum first analyzes the tables, up to a minute later (which invalidates them).
        A point measured in that minute measured a cold start, by chance; a log in service
        has history, so every point is measured on analyzed tables. The vacuum is the one the
        priming's rows would otherwise set off in the middle of the first point (its CPU
        counted as the point's database CPU)."""
        prime_s = SHORT_PRIME_S if self.config.seconds <= SHORT_SECONDS else PRIME_S
        self.say(f"bench: priming each log ({prime_s:g} s of load), then VACUUM ANALYZE ...")
        targets = [
            (self.procs.urls[mode], mode, _database_name(mode)) for mode in self.config.modes
        ]
        if "log" in self.procs.nulls:
            targets.append((self.procs.urls["null log"], "auto", NULL_LOG_DB))
        for url, mode, database in targets:
            ends = Endpoints(self.procs.urls["participant"], url)
            started = await self._postgres_now()
            stop = threading.Event()
            self._stops.append(stop)
            try:
                await asyncio.to_thread(
                    run_point,
                    coordinator_scenario(mode, ends),
                    PRIME_CLIENTS,
                    0.0,
                    prime_s,
                    dict,  # no probe: nothing of this load is reported
                    stop,
                )
            finally:
                stop.set()
            if mode == TransactionKind.MSG.value and database != NULL_LOG_DB:
                await self._drain(mode, started)  # its deliveries are not a point's
            await bench_db.vacuum_analyze(with_database(self.admin_url, database))
        # Postgres publishes its counts a moment late: the priming's must not reach a point.
        await asyncio.sleep(SETTLE_S)

    async def _null_http_point(self, clients: int) -> Point:
        root = bench_procs.pid_of(self.procs.nulls["http"])
        ends = Endpoints(self.procs.urls["participant"], self.procs.urls["null http"])
        result = await self._load(coordinator_scenario("auto", ends), clients, self._probe(root))
        point = self._load_point(NULL, "http", clients, result)
        self._add_rss(point, root)
        return point

    @staticmethod
    def _add_rss(point: Point, root: int | None) -> None:
        rss = bench_procs.tree_rss(root)
        if rss is not None:
            point.rss_mb_largest = round(rss[0] / 2**20, 1)
            point.rss_mb_sum = round(rss[1] / 2**20, 1)

    def _probe(self, root: int | None) -> Probe:
        def probe() -> dict[str, float]:
            seen = {
                "coordinator": bench_procs.tree_cpu_seconds(root),
                "participant": self._participant_cpu(),
            }
            if self.server is not None:  # a database of ours: its processes are measurable
                seen["database"] = self._database_cpu()
            return seen

        return probe

    async def _logged_point(
        self, kind: str, mode: str, proc: Managed, database: str, clients: int
    ) -> _Pending:
        """A point of a coordinator that writes to a database of its own (a mode, or null
        log: it takes auto mode's begin), read once Postgres has published its counts."""
        assert self.stats is not None
        oid = self.oids[database]
        before = await self.stats.start(oid)
        root = bench_procs.pid_of(proc)

        url = self.procs.urls[mode if kind == COORDINATOR else f"null {mode}"]
        ends = Endpoints(self.procs.urls["participant"], url)
        scenario = coordinator_scenario(mode if kind == COORDINATOR else "auto", ends)
        started = await self._postgres_now()
        profile = self._start_profile(root, f"{kind}-{mode}-{clients}")
        result = await self._load(scenario, clients, self._probe(root))
        messages = None
        if kind == COORDINATOR and mode == TransactionKind.MSG.value:
            messages = await self._drain(mode, started)
        ready_at = time.monotonic() + SETTLE_S
        point = self._load_point(kind, mode, clients, result)
        self._add_rss(point, root)
        if profile is not None:
            await self._add_profile(point, profile)
        return _Pending(point, oid, before, result.total, ready_at, messages)

    def _start_profile(
        self, root: int | None, point_name: str
    ) -> asyncio.Task[dict[bench_profile.Part, float] | str] | None:
        """--profile: py-spy on the point's coordinator over its measured window."""
        if not self.config.profile or root is None:
            return None
        folder = self.out / "profiles"
        folder.mkdir(exist_ok=True)
        return asyncio.create_task(
            bench_profile.record(
                root,
                self.config.warmup_s,
                float(self.config.seconds),
                folder / f"{point_name.replace(' ', '-')}.raw",
            )
        )

    @staticmethod
    async def _add_profile(
        point: Point, profile: asyncio.Task[dict[bench_profile.Part, float] | str]
    ) -> None:
        shares = await profile
        if isinstance(shares, str):
            point.profile_error = shares
        else:
            point.cpu_parts_ms = bench_profile.ms_per_tx(shares, point.coordinator_cpu_ms_per_tx)

    async def _postgres_now(self) -> datetime.datetime:
        """Postgres' clock, read in the admin database (not counted for any point)."""
        assert self.conn is not None
        now: datetime.datetime = await self.conn.fetchval("SELECT clock_timestamp()")
        return now

    async def _point_connection(self, mode: str) -> asyncpg.Connection:
        """The harness's own connection to a point's database, named so it can be told apart."""
        return await asyncpg.connect(
            with_database(self.admin_url, _database_name(mode)),
            timeout=10,
            server_settings={"application_name": HARNESS_TAG},
        )

    async def _harness_gone(self, oid: int, timeout_s: float = 10.0) -> None:
        """A backend publishes its commit counts as it exits: wait until ours has."""
        assert self.conn is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            left = await self.conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datid = $1 AND application_name = $2",
                oid,
                HARNESS_TAG,
            )
            if not left:
                return
            await asyncio.sleep(0.05)

    async def _drain(self, mode: str, started: datetime.datetime) -> _MessageWindow:
        """After a msg point's load: wait (bounded) until the log holds no message left to
        deliver. Each poll is one statement and one commit in the point's database; they are
        counted here and taken out when the point's figures are read."""
        load_ended = await self._postgres_now()
        measured_from = started + datetime.timedelta(seconds=self.config.warmup_s)
        measured_to = measured_from + datetime.timedelta(seconds=self.config.seconds)
        began = time.monotonic()
        active = [s.value for s in ACTIVE_STATUSES]
        polls = 0
        conn = await self._point_connection(mode)
        try:
            while True:
                polls += 1
                left = await conn.fetchval(DRAIN_QUERY, active)
                if not left or time.monotonic() - began > DRAIN_LIMIT_S:
                    break
                await asyncio.sleep(DRAIN_POLL_S)
        finally:
            await conn.close()
        drained_after = time.monotonic() - began
        if left:
            self.say(f"bench: {left} messages still not delivered after {DRAIN_LIMIT_S:g} s")
        return _MessageWindow(measured_from, measured_to, load_ended, drained_after, polls)

    async def _floor_point(self, mode: str, clients: int) -> Point:
        ends = Endpoints(self.procs.urls["participant"])
        result = await self._load(
            floor_scenario(mode, ends), clients, lambda: {"participant": self._participant_cpu()}
        )
        return self._load_point(FLOOR, mode, clients, result)

    async def _ceiling_point(self, clients: int) -> Point:
        assert self.stats is not None
        oid = self.oids[CEILING_DB]
        before = await self.stats.start(oid)
        prefix = self.work / "pgbench" / f"clients-{clients}" / "tx"
        prefix.parent.mkdir(parents=True)
        try:
            result = await bench_db.run_pgbench(
                with_database(self.admin_url, CEILING_DB),
                clients,
                self.config.seconds,
                self.work / "ceiling.sql",
                prefix,
            )
        except (RuntimeError, OSError, TimeoutError) as exc:
            raise BenchError(f"the ceiling's pgbench failed: {exc!s:.300}") from exc
        await self.stats.wait_disconnected(oid)  # pgbench's backends publish as they exit
        usage = await self.stats.usage_since(oid, before)
        point = Point(
            kind=CEILING,
            mode="",
            concurrency=clients,
            seconds=float(self.config.seconds),
            transactions=result.transactions,
            tps=round(result.tps, 2),
            errors=result.failed,
            latency_ms=latency_summary(result.latencies_ms),
            statements_per_tx=_per_tx(usage.statements, result.transactions),
            commits_per_tx=_per_tx(usage.commits, result.transactions),
            rollbacks_per_tx=_per_tx(usage.rollbacks, result.transactions),
            counted_transactions=result.transactions,
        )
        self._progress(point)
        return point

    async def _settle(self, pending: _Pending) -> None:
        """Read a coordinator point's database figures once Postgres has published them."""
        assert self.stats is not None
        await asyncio.sleep(max(pending.ready_at - time.monotonic(), 0))
        usage = await self.stats.usage_since(pending.oid, pending.before)
        p, n = pending.point, pending.transactions
        statements, commits, harness = usage.statements, usage.commits, 0
        if pending.messages is not None:
            harness = await self._harness_statements(pending.oid)
            # Each poll is one statement in a transaction of its own.
            statements = None if statements is None else statements - harness
            commits -= pending.messages.polls
        p.counted_transactions = n
        p.statements_per_tx = _per_tx(statements, n)
        p.commits_per_tx = _per_tx(commits, n)
        p.rollbacks_per_tx = _per_tx(usage.rollbacks, n)
        p.top_statements = [
            {"query": query, "calls": calls, "per_tx": _per_tx(calls, n)}
            for query, calls in usage.top
            if HARNESS_TAG not in query
        ]
        if pending.messages is not None:
            p.deliveries = await self._deliveries(pending, harness or pending.messages.polls)

    async def _harness_statements(self, oid: int) -> int:
        assert self.stats is not None
        if not self.stats.counts_statements:
            return 0
        calls = await self.stats.conn.fetchval(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
            " WHERE dbid = $1 AND query LIKE '%' || $2 || '%'",
            oid,
            HARNESS_TAG,
        )
        return int(calls)

    async def _deliveries(self, pending: _Pending, harness: int) -> Deliveries:
        """A msg point's deliveries, from the log. Read after the point's counts (and
        before the next point's counts start), so these reads are counted nowhere."""
        w = pending.messages
        assert w is not None
        conn = await self._point_connection(pending.point.mode)
        try:
            row = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE status = $4 AND finished_at >= $1"
                "   AND finished_at < $2) AS delivered,"
                " count(*) FILTER (WHERE created_at < $3"
                "   AND (finished_at IS NULL OR finished_at > $3)) AS backlog,"
                " count(*) FILTER (WHERE status = ANY($5::text[])) AS undelivered"
                " FROM tcc_transactions WHERE kind = $6",
                w.measured_from,
                w.measured_to,
                w.load_ended,
                GlobalStatus.CONFIRMED.value,
                [s.value for s in ACTIVE_STATUSES],
                TransactionKind.MSG.value,
            )
            lags = await conn.fetch(
                "SELECT extract(epoch FROM finished_at - created_at)::float8 * 1000 AS ms"
                " FROM tcc_transactions WHERE kind = $4 AND status = $3"
                " AND created_at >= $1 AND created_at < $2 ORDER BY ms",
                w.measured_from,
                w.measured_to,
                GlobalStatus.CONFIRMED.value,
                TransactionKind.MSG.value,
            )
        finally:
            await conn.close()
        assert row is not None  # an aggregate answers one row
        await self._harness_gone(pending.oid)
        lag_ms = [float(r["ms"]) for r in lags]
        return Deliveries(
            delivered_per_s=round(int(row["delivered"]) / self.config.seconds, 2),
            lag_ms=latency_summary(lag_ms),
            lag_max_ms=round(lag_ms[-1], 3) if lag_ms else None,
            lag_samples=len(lag_ms),
            backlog_at_end=int(row["backlog"]),
            drained_after_s=round(w.drained_after_s, 2),
            undelivered=int(row["undelivered"]),
            harness_statements=harness,
        )

    async def _level(self, clients: int) -> None:
        """Every point at one number of clients, in the order that lets each mode's
        database settle while the others run."""
        pending = [await self._coordinator_point(m, clients) for m in self.config.modes]
        pending.append(await self._null_log_point(clients))
        self.points += [p.point for p in pending]
        self.points.append(await self._null_http_point(clients))
        for mode in self.config.modes:
            self.points.append(await self._floor_point(mode, clients))
        self.points.append(await self._ceiling_point(clients))
        if any(p.ready_at > time.monotonic() for p in pending):
            self.say("bench: waiting for Postgres to publish the commit counts ...")
        for p in pending:
            await self._settle(p)

    # --- the whole ------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        started_at = datetime.datetime.now(datetime.UTC)
        try:
            conn = await self._connect()
            await self._prepare_databases(conn)
            await self._start_processes()
            await self._prime()
            for clients in self.config.concurrency:
                await self._level(clients)
        finally:
            await self._stop()
        add_ratios(self.points)
        return self._report(started_at, time.monotonic() - started)

    async def _stop(self) -> None:
        """Everything started is stopped and every temporary folder removed, whatever
        happened: each step runs even when one before it failed."""
        for stop in self._stops:
            stop.set()
        try:
            for proc in self.procs.all():
                await asyncio.to_thread(bench_procs.stop_tree, proc)
            if self.conn is not None and self.config.database_url is not None:
                await self._drop_databases(self.conn)
        finally:
            if self.conn is not None:
                self.conn.terminate()
            try:
                if self.server is not None:
                    await asyncio.to_thread(self.server.close)
            finally:
                shutil.rmtree(self.work, ignore_errors=True)

    async def _drop_databases(self, conn: asyncpg.Connection) -> None:
        """Leave someone else's server as it was."""
        for name in self.databases:
            await bench_db.drop_database(conn, name)
        if self.created_extension:
            await conn.execute("DROP EXTENSION IF EXISTS pg_stat_statements")

    def report_head(
        self, tool: str, started_at: datetime.datetime, elapsed_s: float
    ) -> dict[str, Any]:
        """What every bench report begins with: the tool, the run and the machine."""
        return {
            "tool": tool,
            "version": metadata.version("tcc-coordinator"),
            "started_at": started_at.isoformat(timespec="seconds"),
            "elapsed_s": round(elapsed_s, 1),
            "machine": self.machine,
        }

    def database_shown(self) -> str:
        url = self.config.database_url
        return "embedded" if url is None else redact(url)

    def _report(self, started_at: datetime.datetime, elapsed_s: float) -> dict[str, Any]:
        assert self.stats is not None
        c = self.config
        return {
            **self.report_head("tcc bench", started_at, elapsed_s),
            "settings": {
                "database": self.database_shown(),
                "workers": c.workers,
                "concurrency": list(c.concurrency),
                "modes": list(c.modes),
                "seconds": c.seconds,
                "warmup_s": c.warmup_s,
                "short": c.short,
                "branches_per_transaction": 2,
                "pool_max_size_per_worker": self.pool_size,
                "settle_s": SETTLE_S,
            },
            "measurement": {
                "statements": "pg_stat_statements calls in the point's database"
                if self.stats.counts_statements
                else f"n/a: {self.stats.statements_note}",
                "commits": "pg_stat_database.xact_commit delta of the point's database",
                "counted": "every statement Postgres ran in the point's database: BEGIN and"
                " COMMIT too, and each statement of a multi-statement query",
                "database_window": "from before the warm-up until the counters settled;"
                " divided by counted_transactions (all completed in that window)",
                "cpu": "utime+stime from /proc over the measured window, whole process tree",
                "null": "null http / null log (kind null, mode http / log): the null"
                " coordinator (coordinator/devtools/null_coordinator.py), one process on the"
                " same stack, taking auto mode's begin: both tries at once, then both"
                " confirms at once, answered 201. null log also writes one INSERT (the"
                " transaction with its branches, jsonb) before the tries and one UPDATE (the"
                " decision) before the confirms, each its own synchronous commit, in a"
                " database of its own; ratio_to_null_log is a mode's tx/s over null log's",
                "rss": "VmRSS after the point: largest process and sum of the tree",
                "saga": "POST /v1/sagas with two steps in order, wait true: one transaction is"
                " a saga answered 201 confirmed (both actions done)",
                "msg": "POST /v1/messages with two steps, not prepared: one transaction is a"
                " message accepted (201, logged and submitted); its deliveries run after the"
                " answer. The counts are read once the log holds none left to deliver, so"
                " stmts/tx and commits/tx include the deliveries; the harness's own polls"
                " (deliveries.harness_statements) are taken out",
                "msg_deliveries": "from the log after the point: delivered_per_s counts messages"
                " whose finished_at falls in the measured window; lag_ms is finished_at -"
                " created_at (Postgres now() of the begin and of the write marking it"
                " delivered) of every message accepted in the window; backlog_at_end those"
                " accepted and not delivered when the load stopped (Postgres' clock)",
            },
            "statements_counted": self.stats.counts_statements,
            "points": points_json(self.points),
        }

    def write(self, report: dict[str, Any]) -> tuple[Path, Path | None]:
        json_path = self.out / "bench.json"
        json_path.write_text(report_json(report) + "\n")
        chart = self.out / "bench.png"
        title = (
            f"tcc bench: {self.machine.get('cpu_count')} CPUs, Postgres"
            f" {self.machine.get('postgres')}, tcc serve --workers {self.config.workers},"
            f" {self.config.seconds} s per point, 2 branches per transaction"
        )
        drawn = draw_chart(self.points, list(self.config.modes), title, chart)
        return json_path, chart if drawn else None


def render_text(bench: Bench, report: dict[str, Any], json_path: Path, chart: Path | None) -> str:
    m = report["machine"]
    lines = [
        f"tcc bench: {m['cpu_count']} CPUs, Python {m['python']}, Postgres {m['postgres']},"
        f" tcc serve --workers {bench.config.workers}, {bench.config.seconds} s per point"
        f" after {bench.config.warmup_s:g} s of warm-up, uvloop {'on' if m['uvloop'] else 'off'}",
        "",
        table(bench.points, report["statements_counted"]),
        "",
        TABLE_NOTES,
    ]
    profiles = profile_table(bench.points)
    if profiles:
        lines += ["", profiles, "", PROFILE_NOTES]
    deliveries = delivery_table(bench.points)
    if deliveries:
        lines += ["", deliveries, "", DELIVERY_NOTES]
    if not report["statements_counted"]:
        lines.append(f"statements: {report['measurement']['statements']}")
    lines += ["", f"JSON:  {json_path}"]
    lines.append(
        f"chart: {chart}"
        if chart
        else "chart: not drawn (install matplotlib: pip install -e '.[dev]')"
    )
    return "\n".join(lines)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run_bench(config: BenchConfig, *, as_json: bool) -> int:
    bench = Bench(config, _stderr)
    report = await bench.run()
    json_path, chart = bench.write(report)
    if as_json:
        print(report_json(report))
        _stderr(f"bench: JSON in {json_path}" + (f", chart in {chart}" if chart else ""))
    else:
        print(render_text(bench, report, json_path, chart))
    errors = sum(p.errors for p in bench.points)
    if errors:
        _stderr(f"bench: {errors} transactions failed: these figures are not to be trusted")
        return 1
    return 0


async def bench_main(args: argparse.Namespace) -> int:
    """`tcc bench`: the run, its files and its table (or JSON)."""
    if args.reads is not None:
        return await bench_reads.reads_main(args.reads, args.database_url)
    config = config_from_args(args)
    return await stoppable(run_bench(config, as_json=args.json))


async def stoppable(run: Awaitable[int]) -> int:
    """Await a benchmark run so that SIGTERM stops it as Ctrl-C does (asyncio.run cancels on
    Ctrl-C), its children and temporary folders going with it; 143 when so stopped."""
    task = asyncio.current_task()
    assert task is not None
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await run
    except asyncio.CancelledError:
        if not terminated:
            raise
        task.uncancel()
        _stderr("tcc bench: stopped (SIGTERM)")
        return 143
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
