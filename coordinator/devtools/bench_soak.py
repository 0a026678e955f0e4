"""`tcc bench --soak N`: does a coordinator's memory stay flat however much traffic it sees?

A real `tcc serve` (one process, on a private embedded Postgres, or a fresh database on
--database-url) gets N transactions, each carrying the largest metadata a begin may have
(TCC_MAX_METADATA_BYTES): in turn an auto transaction with two branches (confirmed), a plain
begin that the client cancels, and a plain begin left to its deadline (cancelled by recovery).
Its resident memory is read from /proc at every twentieth of the run and once more after it
has sat idle. The figure to look at: growth after warm-up (the first tenth), which should be
near zero; memory per process is bounded by settings, not by traffic.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from coordinator.core.errors import UsageError
from coordinator.devtools import bench_procs
from coordinator.devtools.bench_db import recreate_database, with_database
from coordinator.devtools.children import Managed, clean_env, free_port
from coordinator.embedded import EmbeddedServer
from coordinator.settings import Settings
from coordinator.txlog import migrator

SOAK_DB = "tcc_bench_soak"
CLIENTS = 16
SAMPLES = 20
WARM_UP_SHARE = 0.1
IDLE_S = 10.0
# Plain begins left to time out: short, so recovery cancels them during the run.
ABANDONED_TIMEOUT_S = 2.0


def largest_metadata(limit: int) -> dict[str, str]:
    """A metadata object whose JSON is as close under ``limit`` bytes as it gets."""
    filler = "x" * max(limit - 64, 1)
    meta = {"note": filler}
    while len(json.dumps(meta, separators=(",", ":"))) > limit:
        filler = filler[:-16]
        meta = {"note": filler}
    return meta


@dataclass(frozen=True)
class Sample:
    transactions: int
    rss_mb: float
    seconds: float


class Soak:
    def __init__(self, total: int, database_url: str | None) -> None:
        if total < SAMPLES:
            raise UsageError(f"--soak: at least {SAMPLES} transactions")
        self.total = total
        self.database_url = database_url
        self.work = Path(tempfile.mkdtemp(prefix="tcc-soak-"))
        self.server: EmbeddedServer | None = None
        self.procs: list[Managed] = []
        self.metadata = largest_metadata(Settings().max_metadata_bytes)
        self.samples: list[Sample] = []
        self.errors = 0

    async def _database(self) -> str:
        admin = self.database_url
        if admin is None:
            self.server = await asyncio.to_thread(
                EmbeddedServer, self.work / "pgdata", delete_on_close=True
            )
            admin = self.server.url
        conn = await asyncpg.connect(admin)
        try:
            await recreate_database(conn, SOAK_DB)
        finally:
            await conn.close()
        url = with_database(admin, SOAK_DB)
        await migrator.migrate(url)
        return url

    def _start(self, name: str, command: list[str], env: dict[str, str]) -> Managed:
        proc = Managed(name, command, env, self.work)
        proc.start()
        self.procs.append(proc)
        return proc

    async def run(self) -> dict[str, Any]:
        url = await self._database()
        python = sys.executable
        participant_port, port = free_port(), free_port()
        participant = self._start(
            "participant",
            [python, "-m", "participants.minimal", "--port", str(participant_port)],
            clean_env(),
        )
        coordinator = self._start(
            "coordinator",
            [python, "-m", "coordinator.cli", "serve"],
            {
                **clean_env(),
                "TCC_DATABASE_URL": url,
                "TCC_HOST": "127.0.0.1",
                "TCC_PORT": str(port),
                "TCC_INSECURE": "true",  # a private run on loopback
                "TCC_PARTICIPANT_ALLOW": "127.0.0.0/8",
                "TCC_LOG_LEVEL": "warning",
                "TCC_LOG_FORMAT": "json",
                "TCC_MIGRATE": "false",
            },
        )
        participant_url = f"http://127.0.0.1:{participant_port}"
        base = f"http://127.0.0.1:{port}"
        await bench_procs.wait_ready(participant, participant_url + "/")
        await bench_procs.wait_ready(coordinator, base + "/readyz")
        pid = bench_procs.pid_of(coordinator)
        assert pid is not None
        started = time.monotonic()
        self._sample(0, pid, started)
        await self._load(base, participant_url, pid, started)
        await asyncio.sleep(IDLE_S)
        self._sample(self.total, pid, started)
        return self._report()

    def _sample(self, done: int, pid: int, started: float) -> None:
        rss = bench_procs.rss_bytes(pid) / 1e6
        self.samples.append(Sample(done, round(rss, 1), round(time.monotonic() - started, 1)))
        print(f"soak: {done:>8} transactions  RSS {rss:7.1f} MB", file=sys.stderr, flush=True)

    async def _load(self, base: str, participant: str, pid: int, started: float) -> None:
        branches = [
            {
                "branch_id": name,
                "try_url": f"{participant}/tcc/{name}/try",
                "confirm_url": f"{participant}/tcc/{name}/confirm",
                "cancel_url": f"{participant}/tcc/{name}/cancel",
                "payload": {"amount": 1},
            }
            for name in ("b1", "b2")
        ]
        bodies = itertools.cycle(
            [
                {"auto": True, "branches": branches, "metadata": self.metadata},
                {"timeout_s": 30, "metadata": self.metadata},
                {"timeout_s": ABANDONED_TIMEOUT_S, "metadata": self.metadata},
            ]
        )
        counter = itertools.count()
        every = self.total // SAMPLES
        done = 0

        async def client(session: aiohttp.ClientSession) -> None:
            nonlocal done
            while next(counter) < self.total:
                body = next(bodies)
                try:
                    async with session.post(f"{base}/v1/transactions", json=body) as resp:
                        answer = await resp.json()
                        ok = resp.status == 201
                    if ok and body.get("timeout_s") == 30:
                        gid = answer["gid"]
                        url = f"{base}/v1/transactions/{gid}/cancel"
                        async with session.post(url) as resp:
                            ok = resp.status == 200
                except (aiohttp.ClientError, ValueError):
                    ok = False
                self.errors += not ok
                done += 1
                if done % every == 0 and done < self.total:
                    self._sample(done, pid, started)

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(client(session) for _ in range(CLIENTS)))

    def _report(self) -> dict[str, Any]:
        warm = next(s for s in self.samples if s.transactions >= self.total * WARM_UP_SHARE)
        loaded = [s for s in self.samples if s.transactions > 0]
        end_of_load = loaded[-2] if len(loaded) > 1 else loaded[-1]
        return {
            "transactions": self.total,
            "metadata_bytes": len(json.dumps(self.metadata, separators=(",", ":"))),
            "clients": CLIENTS,
            "errors": self.errors,
            "rss_start_mb": self.samples[0].rss_mb,
            "rss_after_warm_up_mb": warm.rss_mb,
            "rss_peak_mb": max(s.rss_mb for s in self.samples),
            "rss_end_of_load_mb": end_of_load.rss_mb,
            "rss_after_idle_mb": self.samples[-1].rss_mb,
            "growth_after_warm_up_mb": round(end_of_load.rss_mb - warm.rss_mb, 1),
            "samples": [asdict(s) for s in self.samples],
        }

    async def close(self) -> None:
        for proc in reversed(self.procs):
            await asyncio.to_thread(bench_procs.stop_tree, proc)
        if self.server is not None:
            await asyncio.to_thread(self.server.close)
        shutil.rmtree(self.work, ignore_errors=True)


def render(report: dict[str, Any]) -> str:
    lines = [
        f"tcc bench --soak: {report['transactions']} transactions, each with"
        f" {report['metadata_bytes']} bytes of metadata, {report['clients']} clients,"
        f" {report['errors']} errors",
        "",
        f"{'transactions':>12}  {'seconds':>8}  {'RSS MB':>8}",
    ]
    for s in report["samples"]:
        lines.append(f"{s['transactions']:>12}  {s['seconds']:>8}  {s['rss_mb']:>8}")
    lines += [
        "",
        f"RSS after warm-up {report['rss_after_warm_up_mb']} MB, at the end of the load"
        f" {report['rss_end_of_load_mb']} MB (growth {report['growth_after_warm_up_mb']} MB),"
        f" peak {report['rss_peak_mb']} MB, after {IDLE_S:g} s idle"
        f" {report['rss_after_idle_mb']} MB",
    ]
    return "\n".join(lines)


async def soak_main(total: int, database_url: str | None, *, as_json: bool) -> int:
    soak = Soak(total, database_url)
    try:
        report = await soak.run()
    finally:
        await soak.close()
    print(json.dumps(report, indent=2) if as_json else render(report))
    return 1 if report["errors"] else 0
