"""`tcc bench --storm`: a participant goes down under load and comes back. What does it get
when it does, with its circuit breaker and without? (issue 20: the retry storm.)

The same scenario (storm_run.py) runs once per breaker setting (off, then on), each on a
fresh database with fresh processes:

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
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from coordinator.core.errors import UsageError
from coordinator.devtools import storm_calls
from coordinator.devtools.bench import (
    MAX_CONCURRENCY,
    MAX_WORKERS,
    BenchError,
    checked_target,
    stoppable,
)
from coordinator.devtools.bench_db import drop_database, recreate_database, with_database
from coordinator.devtools.storm_participant import HEALTH
from coordinator.devtools.storm_report import SERIES_S, render
from coordinator.devtools.storm_run import (
    BRANCHES,
    CHANGED,
    DEFAULT_CLIENTS,
    DEFAULT_OUTAGE_S,
    DEFAULT_SECONDS,
    RunResult,
    Say,
    StormConfig,
    StormRun,
    default_settings,
    ramp_window,
)
from coordinator.embedded import EmbeddedServer, redact
from coordinator.txlog import migrator

MAX_OUTAGE_S = 3600.0


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
            "so_far": [dataclasses.asdict(s) for s in r.ramp_so_far(policy, config.workers)],
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
    url, out = checked_target(args)
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
