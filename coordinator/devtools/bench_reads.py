"""`tcc bench --reads N`: what an operator waits for with a big log.

Fills a fresh database with N finished and a few hundred open transactions (two branches
and two timeline entries each, spread over 30 days, a few parked and some retrying for long),
then times the reads behind the console and the admin API over HTTP against a coordinator
in this process (recovery off, so the figures are the reads' own), and prints each list
statement's plan as Postgres ran it. The target: every list and the overview under 200 ms.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
from aiohttp import web

from coordinator.core.errors import UsageError
from coordinator.core.records import ListFilter
from coordinator.core.states import GlobalStatus
from coordinator.devtools.bench_db import recreate_database, with_database
from coordinator.embedded import EmbeddedServer
from coordinator.settings import Settings
from coordinator.txlog import migrator
from coordinator.txlog.postgres import list_arguments
from coordinator.txlog.queries import q

READS_DB = "tcc_bench_reads"
FILL_CHUNK = 100_000
SPREAD_S = 30 * 86400  # the log covers the last 30 days
REPEATS = 15
TARGET_MS = 200.0
SERVICES = ("shop", "bank", "stock", "travel", "billing")

# One statement per table and chunk; $1 the first n, $2 the last, $3 the total, $4 the
# spread in seconds, $5 the age of the newest in seconds, $6 finished ones only. Transaction
# n is begun $5 and ($3 - n) / $3 of the spread ago: the last are the newest. One in 33 is
# cancelled; unless $6, a few parked, a few confirming for hours after many rounds, and the
# newest 200 still open (half trying, the deadline close for some).
_FILL_TRANSACTIONS = """
INSERT INTO tcc_transactions (
    gid, status, dialect, service, request_hash, timeout_s, deadline, next_attempt_at,
    created_at, updated_at, decided_at, finished_at, phase_started_at, phase_attempts,
    cancel_reason, branch_count)
SELECT gid, status, dialect, service, 'bench', 60, created + interval '60 s',
       CASE WHEN status IN ('trying', 'confirming', 'cancelling')
            THEN created + interval '60 s' END,
       created, created + interval '40 ms',
       CASE WHEN status <> 'trying' THEN created + interval '20 ms' END,
       CASE WHEN status IN ('confirmed', 'cancelled') THEN created + interval '40 ms' END,
       CASE WHEN status <> 'trying' THEN created + interval '20 ms' END,
       CASE WHEN status LIKE 'failed%' THEN 12 WHEN status = 'confirming' THEN 7 ELSE 1 END,
       CASE WHEN status IN ('cancelled', 'failed_to_cancel') THEN 'client' END,
       2
FROM (
    SELECT n, svc || '-' || lpad(n::text, 9, '0') AS gid, svc AS service,
           CASE WHEN n % 7 = 0 THEN 'dtm' ELSE 'tcc' END AS dialect,
           now() - ($5::float8 + ($3 - n)::float8 / $3 * $4) * interval '1 second' AS created,
           CASE WHEN $6::bool THEN CASE WHEN n % 33 = 0 THEN 'cancelled' ELSE 'confirmed' END
                WHEN n % 49999 = 1 THEN 'failed_to_confirm'
                WHEN n % 49999 = 2 THEN 'failed_to_cancel'
                WHEN n % 99991 = 3 THEN 'confirming'
                WHEN n > $3 - 200 AND n % 2 = 0 THEN 'trying'
                WHEN n > $3 - 200 AND n % 4 = 1 THEN 'confirming'
                WHEN n % 33 = 0 THEN 'cancelled'
                ELSE 'confirmed' END AS status
    FROM generate_series($1::int, $2::int) AS n,
         LATERAL (SELECT (ARRAY['shop', 'bank', 'stock', 'travel', 'billing'])[1 + n % 5]
                  AS svc) s
) g
"""

_FILL_BRANCHES = """
INSERT INTO tcc_branches (gid, branch_id, name, position, try_url, confirm_url, cancel_url,
                          payload, request_hash, status, attempts, last_http_status,
                          last_latency_ms, created_at, updated_at)
SELECT t.gid, b.id, b.id, b.pos, 'http://127.0.0.1:9/' || b.id || '/try',
       'http://127.0.0.1:9/' || b.id || '/confirm', 'http://127.0.0.1:9/' || b.id || '/cancel',
       '{"amount": 30}', 'bench',
       CASE t.status WHEN 'confirmed' THEN 'confirmed' WHEN 'cancelled' THEN 'cancelled'
                     WHEN 'trying' THEN 'registered' ELSE 'tried' END,
       2, 200, 1.5, t.created_at, t.updated_at
FROM tcc_transactions t
CROSS JOIN (VALUES ('b1', 0), ('b2', 1)) AS b(id, pos)
WHERE t.gid IN (SELECT svc || '-' || lpad(n::text, 9, '0')
                FROM generate_series($1::int, $2::int) AS n,
                     LATERAL (SELECT (ARRAY['shop', 'bank', 'stock', 'travel', 'billing'])
                              [1 + n % 5] AS svc) s)
"""

_FILL_EVENTS = """
INSERT INTO tcc_events (gid, kind, detail, at)
SELECT t.gid, e.kind, '{}', t.created_at + e.after
FROM tcc_transactions t
CROSS JOIN (VALUES ('begin', interval '0'), ('decision', interval '20 ms')) AS e(kind, after)
WHERE t.gid IN (SELECT svc || '-' || lpad(n::text, 9, '0')
                FROM generate_series($1::int, $2::int) AS n,
                     LATERAL (SELECT (ARRAY['shop', 'bank', 'stock', 'travel', 'billing'])
                              [1 + n % 5] AS svc) s)
"""


@dataclass(frozen=True)
class ReadCase:
    label: str
    path: str
    # The list filter the page asks for (a page and one more: is there a next?), to show
    # its statement's plan; None: no list.
    filter: ListFilter | None = None


@dataclass(frozen=True)
class ReadTiming:
    label: str
    path: str
    p50_ms: float
    p95_ms: float
    max_ms: float
    plan: str | None


def _cases(rows: int, now: datetime, sample_gid: str, cursor: str) -> list[ReadCase]:
    day = now - timedelta(days=10)
    created = {
        "created_from": day.isoformat(),
        "created_to": (day + timedelta(hours=1)).isoformat(),
    }
    # Of the thousand numbers after it, the bank has every fifth: 200 gids share it.
    prefix = f"bank-{rows // 2:09d}"[:-3]
    parked = (GlobalStatus.FAILED_TO_CONFIRM,)
    cancelled = (GlobalStatus.CANCELLED,)

    def listing(query: dict[str, Any], flt: ListFilter, label: str) -> list[ReadCase]:
        suffix = f"?{urlencode(query)}" if query else ""
        return [
            ReadCase(f"api list {label}", f"/v1/transactions{suffix}", flt),
            ReadCase(f"console list {label}", f"/ui/transactions{suffix}", flt),
        ]

    return [
        ReadCase("api overview", "/v1/overview"),
        ReadCase("console overview", "/ui/"),
        *listing({}, ListFilter(limit=51), "newest"),
        *listing({"status": "failed_to_confirm"}, ListFilter(statuses=parked, limit=51), "parked"),
        *listing({"status": "cancelled"}, ListFilter(statuses=cancelled, limit=51), "cancelled"),
        *listing({"service": "bank"}, ListFilter(service="bank", limit=51), "one service"),
        *listing(
            {"service": "bank", "status": "failed_to_confirm"},
            ListFilter(service="bank", statuses=parked, limit=51),
            "service+parked",
        ),
        *listing({"dialect": "dtm"}, ListFilter(dialect="dtm", limit=51), "dtm"),
        *listing({"gid_prefix": prefix}, ListFilter(gid_prefix=prefix, limit=51), "gid prefix"),
        *listing(
            created,
            ListFilter(created_from=day, created_to=day + timedelta(hours=1), limit=51),
            "one hour",
        ),
        ReadCase("api list next page", f"/v1/transactions?{urlencode({'cursor': cursor})}"),
        ReadCase("api transaction", f"/v1/transactions/{sample_gid}"),
        ReadCase("console transaction", f"/ui/transactions/{sample_gid}"),
    ]


async def add_branches_and_events(conn: asyncpg.Connection, first: int, last: int) -> None:
    """Two branches and two timeline entries for each of the transactions numbered first to
    last (gids as the fill names them: bank-000000042), already written."""
    await conn.execute(_FILL_BRANCHES, first, last)
    await conn.execute(_FILL_EVENTS, first, last)


async def fill(
    conn: asyncpg.Connection,
    rows: int,
    say: Callable[[str], None],
    *,
    age_s: float = 0.0,
    finished_only: bool = False,
) -> None:
    """Transactions 1 to ``rows`` over SPREAD_S, the newest begun ``age_s`` ago; only
    confirmed and cancelled ones with ``finished_only``."""
    started = time.perf_counter()
    for first in range(1, rows + 1, FILL_CHUNK):
        last = min(rows, first + FILL_CHUNK - 1)
        async with conn.transaction():
            await conn.execute(
                _FILL_TRANSACTIONS, first, last, rows, float(SPREAD_S), age_s, finished_only
            )
            await add_branches_and_events(conn, first, last)
        say(f"bench: {last:,} of {rows:,} transactions written")
    await conn.execute("VACUUM ANALYZE")
    say(f"bench: filled in {time.perf_counter() - started:.0f} s")


async def _plan(conn: asyncpg.Connection, flt: ListFilter) -> str:
    async with conn.transaction():
        await conn.execute(q("plan_for_these_values"))
        rows = await conn.fetch(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + q("list_transactions"),
            *list_arguments(flt),
        )
    return "\n".join(r[0] for r in rows)


async def _overview_plans(conn: asyncpg.Connection) -> str:
    parts = []
    for name, arg in (("overview_counts", 900.0), ("overview_attention", 10)):
        rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + q(name), arg)
        parts.append(f"-- {name}\n" + "\n".join(r[0] for r in rows))
    return "\n".join(parts)


async def _time(session: aiohttp.ClientSession, url: str) -> list[float]:
    took = []
    for i in range(REPEATS + 2):  # the first two warm caches and plans
        started = time.perf_counter()
        async with session.get(url) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {url}: HTTP {response.status}")
        if i >= 2:
            took.append((time.perf_counter() - started) * 1000)
    return took


async def _serve(database_url: str) -> tuple[web.AppRunner, str]:
    from coordinator.api.app import create_app  # the HTTP layer, only for this run

    settings = Settings(database_url=database_url, insecure=True, migrate=False)
    runner = web.AppRunner(create_app(settings, database_url, recovery=False))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def run_reads(admin_url: str, rows: int, say: Callable[[str], None]) -> list[ReadTiming]:
    admin = await asyncpg.connect(admin_url)
    try:
        await recreate_database(admin, READS_DB)
    finally:
        await admin.close()
    url = with_database(admin_url, READS_DB)
    await migrator.migrate(url)
    conn = await asyncpg.connect(url)
    runner = None
    try:
        await fill(conn, rows, say)
        now = await conn.fetchval("SELECT now()")
        sample = await conn.fetchval(
            "SELECT gid FROM tcc_transactions WHERE status = 'failed_to_confirm' LIMIT 1"
        )
        runner, base = await _serve(url)
        timings = []
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/v1/transactions") as first:
                cursor = (await first.json())["next_cursor"]
            for case in _cases(rows, now, sample, cursor):
                took = await _time(session, base + case.path)
                plan = await _plan(conn, case.filter) if case.filter else None
                if case.path == "/v1/overview":
                    plan = await _overview_plans(conn)
                timings.append(
                    ReadTiming(
                        case.label,
                        case.path,
                        statistics.median(took),
                        statistics.quantiles(took, n=20, method="inclusive")[-1],
                        max(took),
                        plan,
                    )
                )
                say(f"bench: {case.label}: p50 {timings[-1].p50_ms:.1f} ms")
        return timings
    finally:
        if runner is not None:
            await runner.cleanup()
        await conn.close()


def render_reads(rows: int, timings: list[ReadTiming]) -> str:
    lines = [
        f"Reads over a log of {rows:,} transactions (HTTP, {REPEATS} requests each, ms)",
        f"{'read':<30} {'p50':>8} {'p95':>8} {'max':>8}  under {TARGET_MS:.0f} ms",
    ]
    for t in timings:
        verdict = "yes" if t.p95_ms < TARGET_MS else "NO"
        lines.append(f"{t.label:<30} {t.p50_ms:>8.1f} {t.p95_ms:>8.1f} {t.max_ms:>8.1f}  {verdict}")
    for t in timings:
        if t.plan is not None and t.label.startswith("api"):
            lines += ["", f"== {t.label}: {t.path}", t.plan]
    return "\n".join(lines)


async def reads_main(rows: int, database_url: str | None) -> int:
    """`tcc bench --reads N`: on our own embedded Postgres unless a URL is given."""
    if rows < 1000:
        raise UsageError("--reads needs at least 1000 transactions")
    server = None
    work = Path(tempfile.mkdtemp(prefix="tcc-bench-reads-"))
    try:
        if database_url is None:
            say_on_stderr("bench: starting an embedded Postgres ...")
            server = await asyncio.to_thread(EmbeddedServer, work / "pgdata", delete_on_close=True)
            database_url = server.url
        timings = await run_reads(database_url, rows, say_on_stderr)
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
        shutil.rmtree(work, ignore_errors=True)
    print(render_reads(rows, timings))
    return 0 if all(t.p95_ms < TARGET_MS for t in timings) else 1


def say_on_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
