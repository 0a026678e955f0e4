"""How much the recovery scan costs with millions of finished transactions in the log.

    .venv/bin/python -m tests.benchmarks.bench_recovery_scan [--finished 2000000] [--active 1000]

Starts a private embedded Postgres, migrates it, fills the log with finished
transactions (and a few active ones), then times the claim_due query that every
coordinator runs each recovery interval, and prints its plan. Figures only: no
pass/fail, so it never flakes on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from coordinator.embedded import EmbeddedServer
from coordinator.txlog import migrator
from coordinator.txlog.queries import q

FILL = """
INSERT INTO tcc_transactions (gid, status, request_hash, timeout_s, deadline, created_at,
                              decided_at, finished_at, next_attempt_at)
SELECT 'done-' || i, CASE WHEN i % 5 = 0 THEN 'cancelled' ELSE 'confirmed' END, 'h', 60,
       now() - interval '1 day', now() - interval '1 day', now() - interval '1 day',
       now() - interval '1 day', NULL
FROM generate_series(1, $1) AS i
"""

ACTIVE = """
INSERT INTO tcc_transactions (gid, status, request_hash, timeout_s, deadline, next_attempt_at)
SELECT 'active-' || i, 'trying', 'h', 60, now() + interval '1 hour', now() + interval '1 hour'
FROM generate_series(1, $1) AS i
"""


async def main(finished: int, active: int, rounds: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="tcc-bench-"))
    server = await asyncio.to_thread(EmbeddedServer, root / "pgdata", delete_on_close=True)
    try:
        await migrator.migrate(server.url)
        conn = await asyncpg.connect(server.url)
        started = time.perf_counter()
        await conn.execute(FILL, finished)
        await conn.execute(ACTIVE, active)
        await conn.execute("ANALYZE tcc_transactions")
        print(
            f"filled {finished:,} finished + {active:,} active rows "
            f"in {time.perf_counter() - started:.1f} s"
        )
        claim = q("claim_due")
        timings = []
        for _ in range(rounds):
            # Nothing is due (active rows have an hour left), so every run scans the same table.
            t0 = time.perf_counter()
            await conn.fetch(claim, "bench", 100, 30.0)
            timings.append((time.perf_counter() - t0) * 1000)
        plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + claim, "bench", 100, 30.0)
        await conn.close()
        timings.sort()
        print(
            f"claim_due over {rounds} runs: median {statistics.median(timings):.3f} ms, "
            f"p95 {timings[int(len(timings) * 0.95) - 1]:.3f} ms, max {timings[-1]:.3f} ms"
        )
        print("plan:")
        for row in plan:
            print("   ", row[0])
    finally:
        await asyncio.to_thread(server.close)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finished", type=int, default=2_000_000)
    parser.add_argument("--active", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.finished, args.active, args.rounds))
