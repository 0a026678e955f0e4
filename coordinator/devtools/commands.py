"""The developer commands: `tcc up`, `tcc demo`, `tcc chaos`. The CLI imports this module
only when one of them runs, so `tcc serve` never loads developer tooling."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from coordinator.core.errors import UsageError
from coordinator.devtools.chaos import ChaosConfig, ChaosRun, report_json
from coordinator.devtools.demo import run_demo
from coordinator.devtools.stack import Ports, Stack
from coordinator.settings import Settings


async def up_command(args: argparse.Namespace, settings: Settings) -> int:
    if not 1024 <= args.samples_port <= 65533:
        raise UsageError("--samples-port must be between 1024 and 65533")
    base = args.samples_port
    stack = Stack(settings.data_dir, Ports(settings.port, base, base + 1, base + 2))
    stack.check_ports()  # before Postgres or any child starts
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("tcc up: starting the embedded Postgres, the coordinator and the samples ...")
    print(
        "tcc up: WARNING: local development mode, no authentication (--insecure): keep it"
        " on 127.0.0.1"
    )
    try:
        await stack.start()
        print(up_banner(stack))
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if stop.is_set():
                break  # Ctrl-C reaches the children too: their exit is no crash
            for name in stack.dead():
                print(f"tcc up: {name} exited (log: {stack.services[name].log_path}); restarting")
                await stack.restart(name)
    finally:
        print("tcc up: stopping ...")
        await stack.stop()
    print("tcc up: stopped")
    return 0


def up_banner(stack: Stack) -> str:
    c, w, i, o = (stack.url(n) for n in ("coordinator", "wallet", "inventory", "order"))
    return f"""
  console      {c}/ui/   open it in a browser (no login here: authentication is off)
  coordinator  {c}   GET /v1/transactions, GET /v1/transactions/GID
  wallet       {w}    GET /accounts
  inventory    {i}    GET /items
  order        {o}    POST /checkout, GET /orders
  database     embedded Postgres in {stack.data_dir}
  logs         {stack.log_dir}

Place an order (alice has 1000, a book costs 12):
  curl -s -X POST {o}/checkout -d '{{"customer": "alice", "sku": "book", "qty": 2}}'
Then look at it, in the console ({c}/ui/) or with curl:
  curl -s '{c}/v1/transactions?limit=1'
  curl -s {w}/accounts
  tcc status ORDER_ID

Ctrl-C stops everything."""


async def demo_command() -> int:
    return 0 if await run_demo() else 1


async def chaos_command(args: argparse.Namespace) -> int:
    if not 1 <= args.transactions <= 1_000_000:
        raise UsageError("--transactions must be between 1 and 1000000")
    if not 1 <= args.concurrency <= 500 or not 1 <= args.coordinators <= 16:
        raise UsageError("--concurrency must be 1-500 and --coordinators 1-16")
    if not 0 <= args.fail_rate < 1:
        raise UsageError("--fail-rate must be at least 0 and below 1")
    config = ChaosConfig(
        transactions=args.transactions,
        concurrency=args.concurrency,
        coordinators=args.coordinators,
        kill_every_s=args.fault_every_s,
        kill_coordinators=not args.no_coordinator_kills,
        kill_participants=not args.no_participant_kills,
        database_outages=not args.no_outages,
        fail_rate=args.fail_rate,
        time_limit_s=args.time_limit_s,
        seed=args.seed,
    )
    report = await ChaosRun(config).run()
    print(report_json(report) if args.json else report.table())
    return 0 if report.ok else 1


async def bench_command(args: argparse.Namespace) -> int:
    # Imported only here: the other commands need none of the benchmark's modules.
    if args.prune is not None:
        from coordinator.devtools.bench_prune import prune_main

        return await prune_main(args)
    if args.soak is not None:
        from coordinator.devtools.bench_soak import soak_main

        return await soak_main(args.soak, args.database_url, as_json=args.json)
    from coordinator.devtools.bench import bench_main

    return await bench_main(args)
