"""`tcc chaos`: a soak run under faults that checks the coordinator's promises.

It starts its own embedded Postgres, several `tcc serve` processes and flaky
participants (participants/flaky.py), runs N transactions through them while
killing and restarting coordinators and participants and stopping the database,
then checks the invariants and prints a table:

- lost: a begin or decision the client was told about that the log contradicts;
- stuck: a transaction not confirmed or cancelled once everything is back up;
- double decisions: more than one decision event for one transaction;
- disagreements: a branch (in the log, or in what its participant answered 200
  to) that does not match its transaction's decision.

Everything talks to 127.0.0.1 only, and every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from yarl import URL

from coordinator.core.states import (
    FINAL_STATUSES,
    BranchStatus,
    Decision,
    EventKind,
    GlobalStatus,
    decision_of,
)
from coordinator.devtools.children import Managed, clean_env, free_port
from coordinator.embedded import EmbeddedServer

COORDINATOR_DB = "tcc_chaos"
PARTICIPANT_DB = "tcc_chaos_participants"
SERVICES = ("wallet", "stock")


@dataclass(frozen=True)
class ChaosConfig:
    transactions: int = 1000
    concurrency: int = 16
    coordinators: int = 2
    kill_every_s: float = 2.0  # mean time between faults; 0 disables them
    kill_coordinators: bool = True
    kill_participants: bool = True
    database_outages: bool = True
    fail_rate: float = 0.05  # share of participant calls answered 500
    refuse_rate: float = 0.03  # share of tries refused (409)
    cancel_share: float = 0.1  # share of transactions the client cancels itself
    timeout_s: float = 5.0  # transaction deadline
    time_limit_s: float = 600.0  # the whole run, load and settling
    seed: int | None = None
    log_dir: Path | None = None


@dataclass
class ChaosReport:
    transactions: int = 0
    begun: int = 0
    confirm_acknowledged: int = 0
    cancel_acknowledged: int = 0
    coordinator_kills: int = 0
    participant_kills: int = 0
    outages: int = 0
    final: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    double_decisions: list[str] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    log_dir: str = ""

    @property
    def ok(self) -> bool:
        return not (self.lost or self.stuck or self.double_decisions or self.disagreements)

    def table(self) -> str:
        rows = [
            ("transactions", self.transactions),
            ("begins acknowledged", self.begun),
            ("confirms acknowledged", self.confirm_acknowledged),
            ("cancels acknowledged", self.cancel_acknowledged),
            ("coordinator kills (SIGKILL)", self.coordinator_kills),
            ("participant kills (SIGKILL)", self.participant_kills),
            ("database outages", self.outages),
            *((f"final {status}", n) for status, n in sorted(self.final.items())),
            ("lost", len(self.lost)),
            ("stuck", len(self.stuck)),
            ("double decisions", len(self.double_decisions)),
            ("branch disagreements", len(self.disagreements)),
            ("elapsed", f"{self.elapsed_s:.1f} s"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"| {'metric'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
        lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
        for label, items in (
            ("lost", self.lost),
            ("stuck", self.stuck),
            ("double decisions", self.double_decisions),
            ("disagreements", self.disagreements),
        ):
            if items:
                lines.append(f"{label}: {', '.join(items[:20])}")
        lines.append(f"logs: {self.log_dir}")
        return "\n".join(lines)


def _with_database(dsn: str, name: str) -> str:
    url = URL(dsn)
    return str(url.with_path(f"/{name}").with_query(url.query))


class ChaosRun:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.report = ChaosReport(transactions=config.transactions)
        # A folder of our own making is removed after a clean run; a failed run keeps it,
        # since its logs are then the evidence.
        self._own_log_dir = config.log_dir is None
        self.log_dir = config.log_dir or Path(tempfile.mkdtemp(prefix="tcc-chaos-"))
        self.report.log_dir = str(self.log_dir)
        self.coordinators: list[Managed] = []
        self.coordinator_urls: list[str] = []
        self.participants: dict[str, Managed] = {}
        self.participant_urls: dict[str, str] = {}
        self.database: EmbeddedServer | None = None
        self.admin_url = ""
        self.acknowledged: dict[str, str] = {}  # gid -> "begun" | "confirm" | "cancel"
        self._faults_on = True
        # The first fault waits for a quarter of the load to have begun, then comes at once:
        # however fast the coordinator gets, faults strike while the load is running.
        self._load_under_way = asyncio.Event()

    # --- set-up ----------------------------------------------------------------

    async def _prepare_databases(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            for name in (COORDINATOR_DB, PARTICIPANT_DB):
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    def _start_processes(self) -> None:
        python = sys.executable
        coordinator_db = _with_database(self.admin_url, COORDINATOR_DB)
        participant_db = _with_database(self.admin_url, PARTICIPANT_DB)
        for i in range(self.config.coordinators):
            port = free_port()
            env = {
                **clean_env(),
                "TCC_DATABASE_URL": coordinator_db,
                "TCC_HOST": "127.0.0.1",
                "TCC_PORT": str(port),
                "TCC_LOG_FORMAT": "json",
                "TCC_LEASE_TTL_S": "2",
                "TCC_RECOVERY_INTERVAL_S": "0.3",
                "TCC_CALL_TIMEOUT_S": "2",
                "TCC_RETRY_INITIAL_S": "0.2",
                "TCC_RETRY_MAX_S": "1",
                "TCC_CONFIRM_WAIT_S": "3",
                "TCC_POOL_MAX_SIZE": "10",
                "TCC_INSECURE": "true",  # a private soak run on loopback
                "TCC_PARTICIPANT_ALLOW": "127.0.0.0/8",
            }
            self.coordinators.append(
                Managed(
                    f"coordinator-{i}",
                    [python, "-m", "coordinator.cli", "serve"],
                    env,
                    self.log_dir,
                )
            )
            self.coordinator_urls.append(f"http://127.0.0.1:{port}")
        for service in SERVICES:
            port = free_port()
            command = [
                python,
                "-m",
                "participants.flaky",
                "--database-url",
                participant_db,
                "--port",
                str(port),
                "--service",
                service,
                "--fail-rate",
                str(self.config.fail_rate),
                "--refuse-rate",
                str(self.config.refuse_rate),
                "--delay-max-s",
                "0.05",
            ]
            self.participants[service] = Managed(service, command, clean_env(), self.log_dir)
            self.participant_urls[service] = f"http://127.0.0.1:{port}"
        # All start together: the migration advisory lock lets one coordinator migrate.
        for proc in [*self.coordinators, *self.participants.values()]:
            proc.start()

    async def _wait_ready(self, session: aiohttp.ClientSession, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(self.coordinator_urls)
        while pending and time.monotonic() < deadline:
            for url in list(pending):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{url}/readyz") as resp:
                        if resp.status == 200:
                            pending.discard(url)
            await asyncio.sleep(0.2)
        if pending:
            raise RuntimeError(f"coordinators not ready: {pending}; logs in {self.log_dir}")

    # --- load --------------------------------------------------------------------

    async def _call(
        self, session: aiohttp.ClientSession, path: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]] | None:
        """POST to any live coordinator; bounded retries over outages and kills."""
        for attempt in range(40):
            base = self.rng.choice(self.coordinator_urls)
            try:
                async with session.post(base + path, json=body) as resp:
                    data = await resp.json(content_type=None)
                    if resp.status == 503 or (resp.status >= 500 and resp.status != 502):
                        raise aiohttp.ClientError(f"HTTP {resp.status}")
                    return resp.status, data if isinstance(data, dict) else {}
            except (aiohttp.ClientError, TimeoutError, ValueError):
                await asyncio.sleep(min(0.1 * (attempt + 1), 1.0))
        return None

    def _branch(self, service: str) -> dict[str, Any]:
        base = self.participant_urls[service]
        return {
            "branch_id": service,
            "try_url": f"{base}/try",
            "confirm_url": f"{base}/confirm",
            "cancel_url": f"{base}/cancel",
            "payload": {"amount": self.rng.randint(1, 100)},
        }

    async def _one_transaction(self, session: aiohttp.ClientSession, i: int) -> None:
        gid = f"chaos-{i}"
        begun = await self._call(
            session,
            "/v1/transactions",
            {"gid": gid, "service": "chaos", "timeout_s": self.config.timeout_s},
        )
        if begun is None or begun[0] not in (200, 201):
            return
        self.acknowledged[gid] = "begun"
        if len(self.acknowledged) >= max(1, self.config.transactions // 4):
            self._load_under_way.set()
        all_tried = True
        for service in SERVICES:
            result = await self._call(session, f"/v1/transactions/{gid}/try", self._branch(service))
            if result is None or result[0] != 200:
                all_tried = False
                break
        wants_cancel = not all_tried or self.rng.random() < self.config.cancel_share
        action = "cancel" if wants_cancel else "confirm"
        decided = await self._call(session, f"/v1/transactions/{gid}/{action}", {})
        if decided is not None and decided[0] in (200, 202):
            self.acknowledged[gid] = action

    async def _load(self, session: aiohttp.ClientSession) -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(self.config.transactions):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                await self._one_transaction(session, queue.get_nowait())

        await asyncio.gather(*(worker() for _ in range(self.config.concurrency)))

    # --- faults --------------------------------------------------------------------

    async def _faults(self) -> None:
        cfg = self.config
        kinds = [
            k
            for k, on in (
                ("coordinator", cfg.kill_coordinators),
                ("participant", cfg.kill_participants),
                ("database", cfg.database_outages),
            )
            if on
        ]
        if not kinds or cfg.kill_every_s <= 0:
            return
        await self._load_under_way.wait()
        first = True
        while self._faults_on:
            if not first:
                await asyncio.sleep(self.rng.uniform(0.5, 1.5) * cfg.kill_every_s)
            first = False
            if not self._faults_on:
                return
            kind = self.rng.choices(
                kinds,
                weights=[{"coordinator": 5, "participant": 3, "database": 1}[k] for k in kinds],
            )[0]
            if kind == "coordinator":
                victim = self.rng.choice(self.coordinators)
                victim.kill()
                self.report.coordinator_kills += 1
                await asyncio.sleep(self.rng.uniform(0.2, 1.5))
                victim.start()
            elif kind == "participant":
                victim = self.rng.choice(list(self.participants.values()))
                victim.kill()
                self.report.participant_kills += 1
                await asyncio.sleep(self.rng.uniform(0.2, 1.5))
                victim.start()
            else:
                assert self.database is not None
                await asyncio.to_thread(self.database.stop)
                self.report.outages += 1
                await asyncio.sleep(self.rng.uniform(0.5, 2.0))
                await asyncio.to_thread(self.database.start)

    # --- checking --------------------------------------------------------------------

    async def _settle(self, deadline: float) -> None:
        """Everything back up; wait until no transaction is left unfinished."""
        for proc in [*self.coordinators, *self.participants.values()]:
            if not proc.alive:
                proc.start()
        conn_url = _with_database(self.admin_url, COORDINATOR_DB)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                conn = await asyncpg.connect(conn_url)
                try:
                    open_count = await conn.fetchval(
                        "SELECT count(*) FROM tcc_transactions WHERE status <> ALL($1::text[])",
                        [s.value for s in FINAL_STATUSES],
                    )
                finally:
                    await conn.close()
                if open_count == 0:
                    return
            await asyncio.sleep(0.5)

    async def _check(self) -> None:
        report = self.report
        conn = await asyncpg.connect(_with_database(self.admin_url, COORDINATOR_DB))
        try:
            statuses = {
                r["gid"]: GlobalStatus(r["status"])
                for r in await conn.fetch("SELECT gid, status FROM tcc_transactions")
            }
            decisions = await conn.fetch(
                "SELECT gid, count(*) AS n FROM tcc_events WHERE kind = $1"
                " GROUP BY gid HAVING count(*) > 1",
                EventKind.DECISION.value,
            )
            branches = await conn.fetch("SELECT gid, branch_id, status FROM tcc_branches")
        finally:
            await conn.close()
        conn = await asyncpg.connect(_with_database(self.admin_url, PARTICIPANT_DB))
        try:
            answered = await conn.fetch(
                "SELECT DISTINCT gid, branch_id, phase FROM flaky_calls WHERE answer = 200"
                " AND phase IN ('confirm', 'cancel')"
            )
        finally:
            await conn.close()

        report.begun = len(self.acknowledged)
        report.confirm_acknowledged = sum(v == "confirm" for v in self.acknowledged.values())
        report.cancel_acknowledged = sum(v == "cancel" for v in self.acknowledged.values())
        report.final = Counter(statuses.values())
        for gid, promise in sorted(self.acknowledged.items()):
            final = statuses.get(gid)
            if final is None:
                report.lost.append(f"{gid} (begun, not in the log)")
            elif promise in ("confirm", "cancel") and decision_of(final) is not Decision(promise):
                report.lost.append(f"{gid} ({promise} acknowledged, now {final})")
        report.stuck = sorted(g for g, s in statuses.items() if s not in FINAL_STATUSES)
        report.double_decisions = sorted(r["gid"] for r in decisions)
        told = {(r["gid"], r["branch_id"], r["phase"]) for r in answered}
        for b in branches:
            final = statuses[b["gid"]]
            where = f"{b['gid']}/{b['branch_id']}"
            if final is GlobalStatus.CONFIRMED:
                if b["status"] != BranchStatus.CONFIRMED:
                    report.disagreements.append(f"{where} is {b['status']} in a confirmed txn")
                if (b["gid"], b["branch_id"], "cancel") in told:
                    report.disagreements.append(f"{where} was cancelled by its participant")
                if (b["gid"], b["branch_id"], "confirm") not in told:
                    report.disagreements.append(f"{where} never confirmed at its participant")
            elif final is GlobalStatus.CANCELLED:
                if b["status"] != BranchStatus.CANCELLED:
                    report.disagreements.append(f"{where} is {b['status']} in a cancelled txn")
                if (b["gid"], b["branch_id"], "confirm") in told:
                    report.disagreements.append(f"{where} was confirmed by its participant")

    # --- the run ---------------------------------------------------------------------------

    async def run(self, database_url: str | None = None) -> ChaosReport:
        started = time.monotonic()
        deadline = started + self.config.time_limit_s
        if database_url is None:
            self.database = await asyncio.to_thread(
                EmbeddedServer, self.log_dir / "pgdata", delete_on_close=True
            )
            self.admin_url = self.database.url
        else:
            self.admin_url = database_url
            # An external database is not ours to stop.
            self.config = replace(self.config, database_outages=False)
        try:
            await self._prepare_databases()
            self._start_processes()
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
                await self._wait_ready(session)
                faults = asyncio.create_task(self._faults())
                load = asyncio.create_task(self._load(session))
                await asyncio.wait({load}, timeout=max(deadline - time.monotonic() - 60, 10))
                self._faults_on = False
                self._load_under_way.set()  # a load that never got going: no faults wait
                load.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await load
                await faults
            if self.database is not None and not self.database.running:
                await asyncio.to_thread(self.database.start)
            await self._settle(max(deadline, time.monotonic() + 30))
            await self._check()
        finally:
            for proc in [*self.coordinators, *self.participants.values()]:
                proc.terminate()
            if self.database is not None:
                await asyncio.to_thread(self.database.close)
        self.report.elapsed_s = time.monotonic() - started
        if self.report.ok and self._own_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)
            self.report.log_dir = "(removed after a clean run)"
        return self.report


def report_json(report: ChaosReport) -> str:
    return json.dumps(
        {
            "transactions": report.transactions,
            "begun": report.begun,
            "coordinator_kills": report.coordinator_kills,
            "participant_kills": report.participant_kills,
            "outages": report.outages,
            "final": dict(report.final),
            "lost": report.lost,
            "stuck": report.stuck,
            "double_decisions": report.double_decisions,
            "disagreements": report.disagreements,
            "elapsed_s": round(report.elapsed_s, 1),
        }
    )
