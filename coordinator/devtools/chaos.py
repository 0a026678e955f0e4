"""`tcc chaos`: a soak run under faults that checks the coordinator's promises.

It starts its own embedded Postgres, several `tcc serve` processes and flaky
participants (participants/flaky.py), runs N transactions through them, mixed from
the kinds asked for (TCC transactions, sagas and messages, round robin), while
killing and restarting coordinators and participants and stopping the database,
then checks the invariants and prints a table:

- lost: a begin or decision the client was told about that the log contradicts (a
  saga answered as ended, a message accepted, submitted or aborted, a prepared
  message whose service's own decision the message does not follow);
- stuck: a transaction not confirmed or cancelled (or parked, listed apart) once
  everything is back up;
- double decisions: more than one decision event for one transaction;
- disagreements: a branch (in the log, or in what its participant answered to) that
  does not match its transaction's end. TCC: as the decision says. Saga: confirmed
  with every action done and nothing compensated, or cancelled with every step whose
  action was called compensated, and no action landing after its compensation; steps
  in order run (and compensate) in order. Message: delivered with every step answered
  200 at least once (in order unless concurrent), or aborted with no delivery at all.

The flaky participant knows the phases try, confirm and cancel (the path names the
phase it records). A saga's action is sent to its /try, which refuses some calls (a
409: the saga's action failed, so it compensates), and its compensation to /cancel; a
message's delivery to /confirm. Its ledger keeps every call, so the figures count calls
as the participants saw them. It keeps no barrier: a delivery repeated after a kill is
counted (a participant keeping the Idempotency-Key gid:branch:phase would apply it once).

Prepared messages ask this process's own query endpoint, which answers what the
harness decided for each (it plays the service that prepared them); some are left for
the coordinator to ask about instead of being submitted or aborted.

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
from aiohttp import web
from yarl import URL

from coordinator.core.errors import UsageError
from coordinator.core.states import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    PARKED_STATUSES,
    BranchStatus,
    Decision,
    EventKind,
    GlobalStatus,
    TransactionKind,
    decision_of,
)
from coordinator.devtools.children import Managed, clean_env, free_port
from coordinator.embedded import EmbeddedServer

COORDINATOR_DB = "tcc_chaos"
PARTICIPANT_DB = "tcc_chaos_participants"
SERVICES = ("wallet", "stock")  # in this order: a saga's or message's steps in order
KINDS = tuple(k.value for k in TransactionKind)  # tcc, saga, msg
# The flaky participant's paths for each kind's calls (it records the path's phase).
SAGA_ACTION, SAGA_COMPENSATE, DELIVERY = "try", "cancel", "confirm"


def parse_kinds(text: str) -> tuple[str, ...]:
    """`tcc,saga,msg` (any of them, in any order) as the kinds to mix, in KINDS' order."""
    names = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(names - set(KINDS))
    if unknown or not names:
        raise UsageError(f"--kinds takes some of {','.join(KINDS)}; not {','.join(unknown)}")
    return tuple(k for k in KINDS if k in names)


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
    timeout_s: float = 5.0  # transaction deadline (a saga's, a prepared message's too)
    kinds: tuple[str, ...] = KINDS  # mixed round robin
    concurrent_share: float = 0.5  # sagas and messages whose steps run at once
    saga_retry_limit_share: float = 0.3  # sagas given retry_limit 1: a failed call compensates
    prepared_share: float = 0.5  # messages prepared first, then submitted or aborted
    abort_share: float = 0.3  # prepared messages their service decides not to send
    left_to_query_share: float = 0.25  # prepared ones neither submitted nor aborted
    time_limit_s: float = 600.0  # the whole run, load and settling
    seed: int | None = None
    log_dir: Path | None = None


# What each kind reports, in the order shown (figures a run did not reach show as 0).
KIND_FIGURES: dict[str, tuple[str, ...]] = {
    "tcc": (
        "transactions",
        "begins acknowledged",
        "confirms acknowledged",
        "cancels acknowledged",
        "final confirmed",
        "final cancelled",
        "final parked",
    ),
    "saga": (
        "transactions",
        "begins acknowledged",
        "answered ended",
        "final confirmed (every action done)",
        "final cancelled (compensated)",
        "final parked",
        "steps done",
        "steps compensated",
        "actions refused (409)",
    ),
    "msg": (
        "transactions",
        "sent (not prepared) and accepted",
        "prepared and acknowledged",
        "submits acknowledged",
        "aborts acknowledged",
        "left to the query",
        "query calls answered",
        "final delivered",
        "final aborted",
        "final parked",
        "steps delivered",
        "steps delivered more than once",
    ),
}


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
    kinds: dict[str, Counter[str]] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    parked: list[str] = field(default_factory=list)  # an agreed end for an operator: listed
    unexpected_exits: list[str] = field(default_factory=list)  # restarted by the watchdog
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
            *(
                (f"{kind}: {name}", self.kinds[kind][name])
                for kind in KINDS
                if kind in self.kinds
                for name in KIND_FIGURES[kind]
            ),
            ("lost", len(self.lost)),
            ("stuck", len(self.stuck)),
            ("parked", len(self.parked)),
            ("processes that exited by themselves", len(self.unexpected_exits)),
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
            ("parked", self.parked),
            ("exited by themselves (restarted)", self.unexpected_exits),
            ("double decisions", self.double_decisions),
            ("disagreements", self.disagreements),
        ):
            if items:
                lines.append(f"{label}: {', '.join(items[:20])}")
        lines.append(f"logs: {self.log_dir}")
        return "\n".join(lines)


@dataclass
class _Txn:
    """A transaction as the log holds it at the end."""

    kind: str
    status: GlobalStatus
    branches: dict[str, BranchStatus] = field(default_factory=dict)


@dataclass(frozen=True)
class _Calls:
    """One branch's calls to one of its participant's paths, as its ledger holds them (ids
    follow the order the answers were recorded in, each before it was sent)."""

    calls: int
    ok: int  # answered 200
    refused: int  # answered 409
    first_call: int
    first_ok: int | None
    last_ok: int | None


@dataclass(frozen=True)
class _Ledger:
    calls: dict[tuple[str, str, str], _Calls]

    def get(self, gid: str, branch_id: str, phase: str) -> _Calls | None:
        return self.calls.get((gid, branch_id, phase))

    def ok(self, gid: str, branch_id: str, phase: str) -> bool:
        found = self.get(gid, branch_id, phase)
        return found is not None and found.ok > 0

    def any_call(self, gid: str, branch_id: str) -> bool:
        return any(self.get(gid, branch_id, p) for p in ("try", "confirm", "cancel"))


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
        self.kind_of: dict[str, str] = {}  # gid -> its kind, for every one attempted
        self.in_order: set[str] = set()  # sagas and messages whose steps run one by one
        # Prepared messages: what their service (this harness) decided, and how it told.
        self.local_decision: dict[str, Decision] = {}
        self.left_to_query: set[str] = set()
        self.saga_answered: dict[str, str] = {}  # gid -> the final status a POST answered
        self.query_calls = 0
        self.query_url = ""
        self._query_runner: web.AppRunner | None = None
        self._faults_on = True
        self._held_down: set[str] = set()  # the processes a fault has killed for a while
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
        # The coordinators start together: the migration advisory lock lets one migrate.
        # The participants one by one (_wait_ready): each creates its ledger table at
        # start-up, and two doing so at once may collide in Postgres' catalogue, the loser
        # exiting (CREATE TABLE IF NOT EXISTS does not guard against a concurrent one).
        for proc in self.coordinators:
            proc.start()

    async def _start_participants(
        self, session: aiohttp.ClientSession, timeout_s: float = 60
    ) -> None:
        """Each participant in turn, the next once the one before answers HTTP (its ledger
        table made): a participant that exits at start-up fails the run at once."""
        deadline = time.monotonic() + timeout_s
        for service, proc in self.participants.items():
            proc.start()
            while True:
                if not proc.alive:
                    raise RuntimeError(f"participant {service} exited at start-up: {proc.log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"participant {service} not up: {proc.log_path}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    # Any answer (it has no GET route: 405 or 404) says it is serving.
                    async with session.get(self.participant_urls[service] + "/try"):
                        break
                await asyncio.sleep(0.1)

    async def _wait_ready(self, session: aiohttp.ClientSession, timeout_s: float = 60) -> None:
        await self._start_participants(session, timeout_s)
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

    # --- the prepared messages' service ------------------------------------------------

    async def _start_query_service(self) -> None:
        """The endpoint a prepared message's query_url names: it answers what this harness
        decided for the message (its "local transaction"): 200 send it, 409 do not, 503
        not decided yet (the coordinator asks again later)."""

        async def query(request: web.Request) -> web.Response:
            self.query_calls += 1
            decision = self.local_decision.get(request.query.get("gid", ""))
            if decision is None:
                return web.json_response({"answer": "not decided yet"}, status=503)
            status = 200 if decision is Decision.CONFIRM else 409
            return web.json_response({"answer": decision.value}, status=status)

        app = web.Application()
        app.router.add_get("/query", query)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._query_runner = runner
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.query_url = f"http://127.0.0.1:{port}/query"

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

    def _begun(self, gid: str, promise: str = "begun") -> None:
        self.acknowledged[gid] = promise
        if len(self.acknowledged) >= max(1, self.config.transactions // 4):
            self._load_under_way.set()

    async def _one(self, session: aiohttp.ClientSession, i: int) -> None:
        kind = self.config.kinds[i % len(self.config.kinds)]
        gid = f"chaos-{kind}-{i}"
        self.kind_of[gid] = kind
        if kind == TransactionKind.SAGA:
            await self._one_saga(session, gid)
        elif kind == TransactionKind.MSG:
            await self._one_message(session, gid)
        else:
            await self._one_transaction(session, gid)

    def _concurrent(self, gid: str) -> bool:
        concurrent = self.rng.random() < self.config.concurrent_share
        if not concurrent:
            self.in_order.add(gid)
        return concurrent

    async def _one_saga(self, session: aiohttp.ClientSession, gid: str) -> None:
        """A saga of two steps; its client waits (bounded by TCC_CONFIRM_WAIT_S) for its end."""
        steps = []
        for service in SERVICES:
            base = self.participant_urls[service]
            steps.append(
                {
                    "branch_id": service,
                    "action_url": f"{base}/{SAGA_ACTION}",
                    "compensate_url": f"{base}/{SAGA_COMPENSATE}",
                    "payload": {"amount": self.rng.randint(1, 100)},
                }
            )
        body: dict[str, Any] = {
            "gid": gid,
            "service": "chaos",
            "steps": steps,
            "concurrent": self._concurrent(gid),
            "timeout_s": self.config.timeout_s,
            "wait": True,
        }
        if self.rng.random() < self.config.saga_retry_limit_share:
            body["retry_limit"] = 1
        # A repeat after a lost answer sends the same body: the same saga.
        answered = await self._call(session, "/v1/sagas", body)
        if answered is None or answered[0] not in (200, 201, 202):
            return
        status = answered[1].get("status")
        if status in (GlobalStatus.CONFIRMED, GlobalStatus.CANCELLED):
            self.saga_answered[gid] = str(status)
            self._begun(gid, "confirm" if status == GlobalStatus.CONFIRMED else "cancel")
        else:
            self._begun(gid)

    async def _one_message(self, session: aiohttp.ClientSession, gid: str) -> None:
        """A message of two steps: sent at once, or prepared and then submitted, aborted or
        left for the coordinator to ask this harness about."""
        cfg = self.config
        body: dict[str, Any] = {
            "gid": gid,
            "service": "chaos",
            "steps": [
                {
                    "branch_id": service,
                    "url": f"{self.participant_urls[service]}/{DELIVERY}",
                    "payload": {"amount": self.rng.randint(1, 100)},
                }
                for service in SERVICES
            ],
            "concurrent": self._concurrent(gid),
        }
        if self.rng.random() >= cfg.prepared_share:
            accepted = await self._call(session, "/v1/messages", body)
            if accepted is not None and accepted[0] in (200, 201):
                self._begun(gid, "confirm")
            return
        body |= {"prepared": True, "query_url": self.query_url, "timeout_s": cfg.timeout_s}
        prepared = await self._call(session, "/v1/messages", body)
        if prepared is None or prepared[0] not in (200, 201):
            # The service never heard that its message was kept: it rolls back, and says
            # so if the coordinator kept it after all and asks.
            self.local_decision[gid] = Decision.CANCEL
            return
        self._begun(gid)
        send = self.rng.random() >= cfg.abort_share
        self.local_decision[gid] = Decision.CONFIRM if send else Decision.CANCEL
        if self.rng.random() < cfg.left_to_query_share:
            self.left_to_query.add(gid)  # as if the service died before telling
            return
        action = "submit" if send else "abort"
        told = await self._call(session, f"/v1/messages/{gid}/{action}", {})
        if told is not None and told[0] == 200:
            self.acknowledged[gid] = "confirm" if send else "cancel"

    async def _one_transaction(self, session: aiohttp.ClientSession, gid: str) -> None:
        begun = await self._call(
            session,
            "/v1/transactions",
            {"gid": gid, "service": "chaos", "timeout_s": self.config.timeout_s},
        )
        if begun is None or begun[0] not in (200, 201):
            return
        self._begun(gid)
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
                await self._one(session, queue.get_nowait())

        await asyncio.gather(*(worker() for _ in range(self.config.concurrency)))

    # --- faults --------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """While the load runs, a process that exited by itself (not one a fault holds down:
        e.g. a participant restarted while the database was away cannot make its table) is
        started again and listed, so a run never goes on without it unnoticed."""
        while self._faults_on:
            await asyncio.sleep(0.5)
            for proc in [*self.coordinators, *self.participants.values()]:
                if self._faults_on and not proc.alive and proc.name not in self._held_down:
                    self.report.unexpected_exits.append(proc.name)
                    proc.start()

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
                self._held_down.add(victim.name)
                victim.kill()
                self.report.coordinator_kills += 1
                await asyncio.sleep(self.rng.uniform(0.2, 1.5))
                victim.start()
                self._held_down.discard(victim.name)
            elif kind == "participant":
                victim = self.rng.choice(list(self.participants.values()))
                self._held_down.add(victim.name)
                victim.kill()
                self.report.participant_kills += 1
                await asyncio.sleep(self.rng.uniform(0.2, 1.5))
                victim.start()
                self._held_down.discard(victim.name)
            else:
                assert self.database is not None
                await asyncio.to_thread(self.database.stop)
                self.report.outages += 1
                await asyncio.sleep(self.rng.uniform(0.5, 2.0))
                await asyncio.to_thread(self.database.start)

    # --- checking --------------------------------------------------------------------

    async def _settle(self, deadline: float) -> None:
        """Everything back up; wait until no transaction is left for the coordinator to
        work on (every one ended, or parked for an operator)."""
        for proc in [*self.coordinators, *self.participants.values()]:
            if not proc.alive:
                proc.start()
        conn_url = _with_database(self.admin_url, COORDINATOR_DB)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                conn = await asyncpg.connect(conn_url)
                try:
                    open_count = await conn.fetchval(
                        "SELECT count(*) FROM tcc_transactions WHERE status = ANY($1::text[])",
                        [s.value for s in ACTIVE_STATUSES],
                    )
                finally:
                    await conn.close()
                if open_count == 0:
                    return
            await asyncio.sleep(0.5)

    async def _read(self) -> tuple[dict[str, _Txn], list[str], _Ledger]:
        """The log's transactions with their branches, the gids with more than one
        decision, and the participants' ledger."""
        conn = await asyncpg.connect(_with_database(self.admin_url, COORDINATOR_DB))
        try:
            txns = {
                r["gid"]: _Txn(r["kind"], GlobalStatus(r["status"]))
                for r in await conn.fetch("SELECT gid, kind, status FROM tcc_transactions")
            }
            decisions = await conn.fetch(
                "SELECT gid, count(*) AS n FROM tcc_events WHERE kind = $1"
                " GROUP BY gid HAVING count(*) > 1",
                EventKind.DECISION.value,
            )
            for b in await conn.fetch(
                "SELECT gid, branch_id, status FROM tcc_branches ORDER BY gid, branch_id"
            ):
                txns[b["gid"]].branches[b["branch_id"]] = BranchStatus(b["status"])
        finally:
            await conn.close()
        conn = await asyncpg.connect(_with_database(self.admin_url, PARTICIPANT_DB))
        try:
            rows = await conn.fetch(
                "SELECT gid, branch_id, phase, count(*) AS calls,"
                " count(*) FILTER (WHERE answer = 200) AS ok,"
                " count(*) FILTER (WHERE answer = 409) AS refused,"
                " min(id) AS first_call,"
                " min(id) FILTER (WHERE answer = 200) AS first_ok,"
                " max(id) FILTER (WHERE answer = 200) AS last_ok"
                " FROM flaky_calls GROUP BY gid, branch_id, phase"
            )
        finally:
            await conn.close()
        ledger = {
            (r["gid"], r["branch_id"], r["phase"]): _Calls(
                r["calls"], r["ok"], r["refused"], r["first_call"], r["first_ok"], r["last_ok"]
            )
            for r in rows
        }
        return txns, sorted(r["gid"] for r in decisions), _Ledger(ledger)

    async def _check(self) -> None:
        report = self.report
        txns, double_decisions, ledger = await self._read()
        report.double_decisions = double_decisions
        report.begun = len(self.acknowledged)
        report.confirm_acknowledged = sum(v == "confirm" for v in self.acknowledged.values())
        report.cancel_acknowledged = sum(v == "cancel" for v in self.acknowledged.values())
        report.final = Counter(t.status.value for t in txns.values())
        for gid, promise in sorted(self.acknowledged.items()):
            txn = txns.get(gid)
            if txn is None:
                report.lost.append(f"{gid} (begun, not in the log)")
            elif promise in ("confirm", "cancel") and decision_of(txn.status) is not Decision(
                promise
            ):
                report.lost.append(f"{gid} ({promise} acknowledged, now {txn.status})")
        for gid, decided in sorted(self.local_decision.items()):
            txn = txns.get(gid)
            ended = None if txn is None else decision_of(txn.status)
            if txn is not None and ended is not None and ended is not decided:
                report.lost.append(f"{gid} (its service decided {decided}, now {txn.status})")
        for gid, txn in sorted(txns.items()):
            if txn.status in PARKED_STATUSES:
                report.parked.append(f"{gid} ({txn.status})")
            elif txn.status not in FINAL_STATUSES:
                report.stuck.append(gid)
        check = {"tcc": self._check_tcc, "saga": self._check_saga, "msg": self._check_message}
        for gid, txn in sorted(txns.items()):
            check[txn.kind](gid, txn, ledger)
        self._figures(txns, ledger)

    def _check_tcc(self, gid: str, txn: _Txn, ledger: _Ledger) -> None:
        out = self.report.disagreements
        for branch_id, status in txn.branches.items():
            where = f"{gid}/{branch_id}"
            confirmed = ledger.ok(gid, branch_id, "confirm")
            cancelled = ledger.ok(gid, branch_id, "cancel")
            if txn.status is GlobalStatus.CONFIRMED:
                if status is not BranchStatus.CONFIRMED:
                    out.append(f"{where} is {status} in a confirmed txn")
                if cancelled:
                    out.append(f"{where} was cancelled by its participant")
                if not confirmed:
                    out.append(f"{where} never confirmed at its participant")
            elif txn.status is GlobalStatus.CANCELLED:
                if status is not BranchStatus.CANCELLED:
                    out.append(f"{where} is {status} in a cancelled txn")
                if confirmed:
                    out.append(f"{where} was confirmed by its participant")

    def _check_saga(self, gid: str, txn: _Txn, ledger: _Ledger) -> None:
        """Confirmed: every action done, none compensated. Cancelled: every step whose
        action was called (whatever it answered) compensated, after its last action; never
        an action done left standing. In order: an action only once the one before is done,
        a compensation only once the one after is compensated."""
        out = self.report.disagreements
        steps = [b for b in SERVICES if b in txn.branches]
        for branch_id in steps:
            where = f"{gid}/{branch_id}"
            status = txn.branches[branch_id]
            action = ledger.get(gid, branch_id, SAGA_ACTION)
            compensation = ledger.get(gid, branch_id, SAGA_COMPENSATE)
            if txn.status is GlobalStatus.CONFIRMED:
                if status is not BranchStatus.CONFIRMED:
                    out.append(f"{where} is {status} in a confirmed saga")
                if action is None or not action.ok:
                    out.append(f"{where}: its action was never done in a confirmed saga")
                if compensation is not None:
                    out.append(f"{where} was compensated in a confirmed saga")
            elif txn.status is GlobalStatus.CANCELLED:
                if status is BranchStatus.CONFIRMED:
                    out.append(f"{where} is left {status} in a compensated saga")
                if action is None:
                    continue
                if status is not BranchStatus.CANCELLED:
                    out.append(f"{where} is {status} in a compensated saga after its action")
                if compensation is None or compensation.first_ok is None:
                    out.append(f"{where}: its action was called, never compensated")
                elif action.last_ok is not None and action.last_ok > compensation.first_ok:
                    out.append(f"{where}: its action landed after its compensation")
        if gid in self.in_order and len(steps) == len(SERVICES):
            first, second = (ledger.get(gid, b, SAGA_ACTION) for b in SERVICES)
            if second is not None and (
                first is None or first.first_ok is None or second.first_call < first.first_ok
            ):
                out.append(f"{gid}: its second action ran before its first was done")
            undo_first, undo_second = (ledger.get(gid, b, SAGA_COMPENSATE) for b in SERVICES)
            if (
                undo_first is not None
                and undo_second is not None
                and undo_second.first_ok is not None
                and undo_first.first_call < undo_second.first_ok
            ):
                out.append(f"{gid}: compensated its first step before its second")

    def _check_message(self, gid: str, txn: _Txn, ledger: _Ledger) -> None:
        """Delivered: every step answered 200 at least once (in order: the second only after
        the first). Aborted: nobody called."""
        out = self.report.disagreements
        for branch_id in SERVICES:
            if branch_id not in txn.branches:
                continue
            where = f"{gid}/{branch_id}"
            status = txn.branches[branch_id]
            delivery = ledger.get(gid, branch_id, DELIVERY)
            if txn.status is GlobalStatus.CONFIRMED:
                if status is not BranchStatus.CONFIRMED:
                    out.append(f"{where} is {status} in a delivered message")
                if delivery is None or not delivery.ok:
                    out.append(f"{where} never delivered in a delivered message")
            elif txn.status is GlobalStatus.CANCELLED and ledger.any_call(gid, branch_id):
                out.append(f"{where} was called in an aborted message")
        if gid in self.in_order and txn.status is GlobalStatus.CONFIRMED:
            first, second = (ledger.get(gid, b, DELIVERY) for b in SERVICES)
            if (
                first is not None
                and second is not None
                and (first.first_ok is None or second.first_call < first.first_ok)
            ):
                out.append(f"{gid}: its second step was delivered before its first")

    def _figures(self, txns: dict[str, _Txn], ledger: _Ledger) -> None:
        kinds: dict[str, Counter[str]] = {k: Counter() for k in self.config.kinds}
        for gid, kind in self.kind_of.items():
            kinds[kind]["transactions"] += 1
            promise = self.acknowledged.get(gid)
            if kind == "tcc" and promise is not None:
                kinds[kind]["begins acknowledged"] += 1
                kinds[kind]["confirms acknowledged"] += promise == "confirm"
                kinds[kind]["cancels acknowledged"] += promise == "cancel"
            elif kind == "saga" and promise is not None:
                kinds[kind]["begins acknowledged"] += 1
                kinds[kind]["answered ended"] += gid in self.saga_answered
        msg = kinds.get("msg")
        if msg is not None:
            prepared = set(self.local_decision)
            for gid, promise in self.acknowledged.items():
                if self.kind_of[gid] != "msg":
                    continue
                if gid not in prepared:
                    msg["sent (not prepared) and accepted"] += 1
                    continue
                msg["prepared and acknowledged"] += 1
                msg["submits acknowledged"] += promise == "confirm"
                msg["aborts acknowledged"] += promise == "cancel"
            msg["left to the query"] = len(self.left_to_query)
            msg["query calls answered"] = self.query_calls
        words = {
            "tcc": {"confirmed": "final confirmed", "cancelled": "final cancelled"},
            "saga": {
                "confirmed": "final confirmed (every action done)",
                "cancelled": "final cancelled (compensated)",
            },
            "msg": {"confirmed": "final delivered", "cancelled": "final aborted"},
        }
        for gid, txn in txns.items():
            figures = kinds.setdefault(txn.kind, Counter())
            if txn.status in PARKED_STATUSES:
                figures["final parked"] += 1
            elif txn.status in FINAL_STATUSES:
                figures[words[txn.kind][txn.status.value]] += 1
            for branch_id in txn.branches:
                if txn.kind == "saga":
                    figures["steps done"] += ledger.ok(gid, branch_id, SAGA_ACTION)
                    figures["steps compensated"] += ledger.ok(gid, branch_id, SAGA_COMPENSATE)
                    action = ledger.get(gid, branch_id, SAGA_ACTION)
                    figures["actions refused (409)"] += action.refused if action else 0
                elif txn.kind == "msg":
                    delivery = ledger.get(gid, branch_id, DELIVERY)
                    figures["steps delivered"] += bool(delivery and delivery.ok)
                    figures["steps delivered more than once"] += bool(delivery and delivery.ok > 1)
        for kind, figures in kinds.items():
            for name in KIND_FIGURES.get(kind, ()):
                figures.setdefault(name, 0)
        self.report.kinds = kinds

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
        background: list[asyncio.Task[None]] = []
        try:
            await self._prepare_databases()
            await self._start_query_service()
            self._start_processes()
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
                await self._wait_ready(session)
                faults = asyncio.create_task(self._faults())
                background += [faults, asyncio.create_task(self._watchdog())]
                load = asyncio.create_task(self._load(session))
                await asyncio.wait({load}, timeout=max(deadline - time.monotonic() - 60, 10))
                self._faults_on = False
                self._load_under_way.set()  # a load that never got going: no faults wait
                load.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await load
                await asyncio.gather(*background)
            if self.database is not None and not self.database.running:
                await asyncio.to_thread(self.database.start)
            await self._settle(max(deadline, time.monotonic() + 30))
            await self._check()
        finally:
            # Nothing may start a process again once they are being stopped.
            self._faults_on = False
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            for proc in [*self.coordinators, *self.participants.values()]:
                proc.terminate()
            if self._query_runner is not None:
                await self._query_runner.cleanup()
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
            "kinds": {
                kind: {name: figures[name] for name in KIND_FIGURES[kind]}
                for kind, figures in report.kinds.items()
            },
            "lost": report.lost,
            "stuck": report.stuck,
            "parked": report.parked,
            "unexpected_exits": report.unexpected_exits,
            "double_decisions": report.double_decisions,
            "disagreements": report.disagreements,
            "ok": report.ok,
            "elapsed_s": round(report.elapsed_s, 1),
        }
    )
