"""The developer commands: `tcc up`, `tcc demo`, `tcc chaos`. The CLI imports this module
only when one of them runs, so `tcc serve` never loads developer tooling."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import shutil
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from coordinator.core.errors import UsageError
from coordinator.devtools.chaos import ChaosConfig, ChaosRun, parse_kinds, report_json
from coordinator.devtools.demo import run_demo
from coordinator.devtools.stack import HTTPS_SERVICES, Ports, Stack
from coordinator.settings import Settings
from participants.mailsink import RECEIVED


def coordinator_settings(
    settings: Settings, decided: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """The TCC_* variables of the settings given to `tcc up` (flags or environment) that go
    on to its coordinator, and one line for each given setting it ignores (``decided``: the
    ones tcc up decides itself, and why)."""
    given = settings.model_fields_set - {"data_dir", "port"}  # tcc up uses those itself
    environment = settings.as_environment()
    passed = {
        f"TCC_{name.upper()}": environment[f"TCC_{name.upper()}"]
        for name in sorted(given - decided.keys())
        if f"TCC_{name.upper()}" in environment
    }
    ignored = [f"TCC_{name.upper()}: {decided[name]}" for name in sorted(given & decided.keys())]
    return passed, ignored


# What `tcc up --tls` decides of the coordinator's participant TLS (the TLS version, and
# whether the system's store is trusted too, are still the user's).
UP_TLS_DECIDES = {
    "participant_tls_ca",
    "participant_tls_cert",
    "participant_tls_key",
    "participant_tls_key_password",
    "participant_tls_profiles_dir",
    "participant_tls_hosts",
    "participant_tls_insecure_skip_verify",
}


def refuse_participant_tls(settings: Settings) -> None:
    """`tcc up --tls` decides the coordinator's participant TLS files itself: one given too
    (as a flag or in the environment) is refused before anything starts, not ignored."""
    given = sorted(settings.model_fields_set & UP_TLS_DECIDES)
    if given:
        names = ", ".join(f"TCC_{n.upper()}" for n in given)
        raise UsageError(
            f"--tls makes the participants' CA and the coordinator's client certificate"
            f" itself: drop {names}, or run without --tls to use your own"
        )


async def up_command(
    args: argparse.Namespace, settings: Settings, decided: Mapping[str, str]
) -> int:
    # Wallet, inventory, order, notify and the SMTP sink, on this port and the four after it.
    if not 1024 <= args.samples_port <= 65531:
        raise UsageError("--samples-port must be between 1024 and 65531")
    tls = bool(getattr(args, "tls", False))
    if tls:
        refuse_participant_tls(settings)
    base = args.samples_port
    ports = Ports(settings.port, base, base + 1, base + 2, notify=base + 3, mailsink=base + 4)
    stack = Stack(settings.data_dir, ports, tls=tls)
    stack.check_ports()  # before Postgres or any child starts
    passed, ignored = coordinator_settings(settings, decided)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("tcc up: starting the embedded Postgres, the coordinator and the samples ...")
    if tls:
        print(
            f"tcc up: --tls: the samples serve HTTPS and require a client certificate (mutual"
            f" TLS), issued by a local CA in {stack.tls_dir}"
        )
    print(
        "tcc up: WARNING: local development mode, no authentication (--insecure): keep it"
        " on 127.0.0.1"
    )
    for name, value in passed.items():
        print(f"tcc up: the coordinator gets {name}={value}")
    for line in ignored:
        print(f"tcc up: ignoring {line}")
    # Watched from before the start: a mail or a park that comes while the banner is being
    # put together (a request can reach the samples as soon as they listen) is still news.
    parks = ParkWatch(stack.log_path("coordinator"), stack.url("coordinator"))
    mails = MailWatch(stack.mail_dir)
    try:
        try:
            await stack.start(coordinator_env=passed)
            if not stop.is_set():
                print(await up_banner(stack))
        except Exception:
            if not stop.is_set():
                raise
            # Ctrl-C in a terminal reaches the children too (initdb, Postgres, the samples):
            # whatever fails after it, because of it, is the stop asked for, not a crash.
            print("tcc up: stopped while starting")
        await _watch_until_stopped(stack, stop, parks, mails)
    finally:
        print("tcc up: stopping ...")
        await stack.stop()
    print("tcc up: stopped")
    return 0


async def _watch_until_stopped(
    stack: Stack, stop: asyncio.Event, parks: ParkWatch, mails: MailWatch
) -> None:
    """Announce parks and mails, restart a sample that dies. A look every second, and one
    more after Ctrl-C (even one that came during the start): whatever was logged before it is
    announced."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        for line in [*parks.new_lines(), *mails.new_lines()]:
            print(line, flush=True)
        if stop.is_set():
            return  # Ctrl-C reaches the children too: their exit is no crash
        for name in stack.dead():
            print(f"tcc up: {name} exited (log: {stack.services[name].log_path}); restarting")
            await stack.restart(name)


class ParkWatch:
    """Follows the coordinator's JSON log for transactions parked for an operator, and says
    so in one line each: a local run should not park things in silence."""

    def __init__(self, log_path: Path, coordinator_url: str) -> None:
        self.log_path = log_path
        self.coordinator_url = coordinator_url
        self._tail = FileTail(log_path)  # parks logged before this run started are not news

    def new_lines(self) -> list[str]:
        said = []
        for raw in self._tail.new_lines():
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "transaction_parked":
                said.append(self._line(event))
        return said

    def _line(self, event: dict[str, object]) -> str:
        gid = str(event.get("gid", "?"))
        pending = event.get("pending") or []
        waiting = ", ".join(str(b) for b in pending) if isinstance(pending, list) else "?"
        return (
            f"tcc up: PARKED {gid}: {event.get('status')} after {event.get('rounds')} rounds,"
            f" waiting on {waiting}; see {self.coordinator_url}/ui/transactions/{quote(gid)}"
            f" (retry or resolve it there, or with `{_tcc()} retry {gid}`)"
        )


class FileTail:
    """The complete lines a file gained since the last look (a torn last line waits)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # What was there before this run started is not news.
        self._offset = path.stat().st_size if path.exists() else 0

    def new_lines(self) -> list[bytes]:
        try:
            with open(self.path, "rb") as file:
                file.seek(self._offset)
                chunk = file.read()
        except OSError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        return complete.splitlines()


class MailWatch:
    """Follows the SMTP sink's log of received mail: one line each, duplicates said so."""

    def __init__(self, mail_dir: Path) -> None:
        self.mail_dir = mail_dir
        self._tail = FileTail(mail_dir / RECEIVED)

    def new_lines(self) -> list[str]:
        said = []
        for raw in self._tail.new_lines():
            try:
                mail = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(mail, dict):
                continue
            to = ", ".join(str(x) for x in mail.get("to") or []) or "?"
            line = f"tcc up: MAIL to {to}: {mail.get('subject', '')}"
            if mail.get("duplicate"):
                line += (
                    f" (delivered again: the same Message-ID, {mail.get('deliveries')} times;"
                    " still one mail)"
                )
            said.append(f"{line} ({self.mail_dir / str(mail.get('file', ''))})")
        return said


def _tcc() -> str:
    """The tcc command as this shell can run it (a fresh venv's bin is not on PATH)."""
    beside = Path(sys.executable).parent / "tcc"
    on_path = shutil.which("tcc")
    if on_path is not None and Path(on_path).resolve() == beside.resolve():
        return "tcc"
    return str(beside) if beside.exists() else "tcc"


async def _fetch_json(stack: Stack, url: str, attempts: int = 3) -> Any:
    """A sample's answer for the banner, or None if it gives none (asked a few times: on a
    busy machine a sample that just started may be slow to answer its first request)."""
    async with stack.session(10) as http:
        for _ in range(attempts):
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return await resp.json()
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass
            await asyncio.sleep(0.5)
    return None


async def up_banner(stack: Stack) -> str:
    c, w, i, o, n = (
        stack.url(name) for name in ("coordinator", "wallet", "inventory", "order", "notify")
    )
    # What alice has and what a book costs now (the data outlive restarts).
    alice = await _fetch_json(stack, f"{w}/accounts/alice")
    catalog = await _fetch_json(stack, f"{o}/catalog")
    balance = alice.get("balance") if isinstance(alice, dict) else None
    book = next((x for x in catalog or [] if isinstance(x, dict) and x.get("sku") == "book"), None)
    price = book.get("price") if book else None
    facts = ", ".join(
        part
        for part in (
            f"alice has {balance}" if balance is not None else "",
            f"a book costs {price}" if price is not None else "",
        )
        if part
    )
    # With --tls, a sample answers only a client with a certificate from the local CA.
    curl = "curl -s"
    tls = ""
    check = f"""; check one with
               {_tcc()} conformance --participant wallet --url {c} \\
                 --payload '{{"account": "alice", "amount": 1}}' --check-url {w}/tcc/check"""
    if stack.certs is not None:
        certs = stack.certs
        curl += (
            f" --cacert {shlex.quote(str(certs.ca))}"
            f" --cert {shlex.quote(str(certs.cert('developer')))}"
            f" --key {shlex.quote(str(certs.key('developer')))}"
        )
        kept = "made by this run" if certs.made else "kept from an earlier run"
        tls = f"""
  mutual TLS   {", ".join(HTTPS_SERVICES)} serve HTTPS and answer only clients that
               present a certificate issued by the local CA {certs.ca}
               (the coordinator presents coordinator.crt, the curl lines below
               developer.crt; all in {certs.folder}, {kept})"""
        check = f"""; check one with
               {_tcc()} conformance --participant wallet --url {c} \\
                 --payload '{{"account": "alice", "amount": 1}}' --check-url {w}/tcc/check \\
                 --participant-tls-ca {shlex.quote(str(certs.ca))} \\
                 --participant-tls-cert {shlex.quote(str(certs.cert("developer")))} \\
                 --participant-tls-key {shlex.quote(str(certs.key("developer")))}"""
    return f"""
  console      {c}/ui/   open it in a browser (no login here: authentication is off)
  coordinator  {c}   GET /v1/transactions, GET /v1/transactions/GID
  participants wallet and inventory are registered: GET {c}/v1/participants, the
               console's Participants page{check}{tls}
  wallet       {w}    GET /accounts
  inventory    {i}    GET /items
  order        {o}    POST /checkout, GET /orders, GET /catalog
  notify       {n}    GET /mails (a paid order's confirmation, sent over SMTP)
  mail         SMTP on 127.0.0.1:{stack.ports.mailsink}, stored in {stack.mail_dir}
               (one file per Message-ID; each mail received is announced here)
  database     embedded Postgres in {stack.data_dir}
  logs         {stack.log_dir}

Place an order{f" ({facts})" if facts else ""}:
  {curl} -X POST {o}/checkout -d '{{"customer": "alice", "sku": "book", "qty": 2}}'
Its answer names the transaction ("order_id"); look at it in the console ({c}/ui/), or:
  {_tcc()} status ORDER_ID
  curl -s {c}/v1/transactions/ORDER_ID
  {curl} {w}/accounts

Parked transactions (a participant that keeps failing past TCC_GIVE_UP_AFTER_S) are
announced here. Ctrl-C stops everything."""


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
        kinds=parse_kinds(args.kinds),
    )
    report = await ChaosRun(config).run()
    print(report_json(report) if args.json else report.table())
    return 0 if report.ok else 1


async def bench_command(args: argparse.Namespace) -> int:
    # Imported only here: the other commands need none of the benchmark's modules.
    if args.storm:
        from coordinator.devtools.storm import storm_main

        return await storm_main(args)
    if args.outage_s is not None:
        raise UsageError("--outage-s goes with --storm")
    if args.tls is not None:
        from coordinator.devtools.bench_tls import tls_main

        return await tls_main(args.tls, as_json=args.json)
    if args.prune is not None:
        from coordinator.devtools.bench_prune import prune_main

        return await prune_main(args)
    if args.soak is not None:
        from coordinator.devtools.bench_soak import soak_main

        return await soak_main(args.soak, args.database_url, as_json=args.json)
    from coordinator.devtools.bench import bench_main

    return await bench_main(args)
