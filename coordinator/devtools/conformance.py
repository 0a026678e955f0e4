"""`tcc conformance`: runs the protocol's anomalies against a live participant and says,
scenario by scenario, what it expected, what it saw and, when it failed, what to fix.

    tcc conformance --try URL --confirm URL --cancel URL [--payload JSON] [--dialect v1|dtm]
                    [--check-url URL] [--timeout S] [--only NAMES] [--json]
    tcc conformance --action URL --compensate URL ...   (a saga step)
    tcc conformance --participant NAME [--url URL] [--api-key KEY] ...   (from the registry)

Every scenario has a gid of its own; calls are made and read as the coordinator makes and
reads them (conformance_probe.py). Exit status 0 when no scenario failed ("not observable"
does not fail), 1 when one did or the participant cannot be reached, 2 for a mistake on the
command line; each error is one line on stderr. docs/participants.md, "Checking a
participant", describes the scenarios, the check URL and the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import aiohttp
from yarl import URL

from coordinator.core.errors import UsageError
from coordinator.core.gids import time_ordered_hex
from coordinator.devtools.conformance_probe import CheckUrlError, Probe, Target, Unreachable
from coordinator.devtools.conformance_report import as_json, as_text, ok
from coordinator.devtools.conformance_scenarios import SCENARIOS, run_all
from coordinator.devtools.conformance_target import from_registry, read_command_line
from coordinator.devtools.conformance_trial import Scenario
from coordinator.settings import Settings
from coordinator.tlsfiles import ParticipantTls


async def conformance_command(args: argparse.Namespace, settings: Settings) -> int:
    asked = read_command_line(args)
    # https participants are called as the coordinator calls them: the same CA bundle and
    # client certificate (TCC_PARTICIPANT_TLS_*, the default profile).
    tls = ParticipantTls.from_settings(settings).context()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as session:
        target = asked if isinstance(asked, Target) else await from_registry(session, asked)
        scenarios = chosen(target, args.only)
        await reach(target)
        probe = Probe(target, session)
        if target.check_url is not None:
            await check_contract(probe)
        findings = await run_all(probe, scenarios, time_ordered_hex)
    print(as_json(target, findings) if args.json else as_text(target, findings))
    return 0 if ok(findings) else 1


def chosen(target: Target, only: str | None) -> tuple[Scenario, ...]:
    """The scenarios for the participant's kind, or those of them --only names, in order."""
    scenarios = SCENARIOS[target.kind]
    if only is None:
        return scenarios
    names = {n.strip() for n in only.split(",") if n.strip()}
    known = {s.name for s in scenarios}
    if not names or names - known:
        unknown = ", ".join(sorted(names - known)) or "(none)"
        raise UsageError(
            f"--only: unknown scenario {unknown}; a {target.kind.value} participant has"
            f" {', '.join(s.name for s in scenarios)}"
        )
    return tuple(s for s in scenarios if s.name in names)


async def reach(target: Target) -> None:
    """Every host the URLs name takes a connection, or the run stops before any call: a
    participant that is down is not one that fails every scenario."""
    urls = [*target.urls.values(), *([target.check_url] if target.check_url else [])]
    seen: set[tuple[str, int]] = set()
    for text in urls:
        url = URL(text)
        address = (url.host or "", url.port or 0)  # an http(s) URL: both are there
        if address in seen:
            continue
        seen.add(address)
        try:
            async with asyncio.timeout(target.timeout_s):
                _, writer = await asyncio.open_connection(*address)
        except TimeoutError:
            raise Unreachable(f"cannot reach the participant at {text}: no connection") from None
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise Unreachable(f"cannot reach the participant at {text}: {reason}") from None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def check_contract(probe: Probe) -> None:
    """The check URL answers for a branch nobody used: nothing held or applied. Checked
    first, so that a wrong URL (a 404 page, say) cannot pass every scenario in silence."""
    url = probe.target.check_url
    got = await probe.check(time_ordered_hex())
    if isinstance(got, str):
        raise CheckUrlError(
            f"--check-url {url} {got}; for any gid and branch_id it must answer 200 with"
            ' {"held": true|false, "applied": N} (docs/participants.md)'
        )
    if got.held or got.applied or got.undone:
        raise CheckUrlError(
            f"--check-url {url} says a branch nobody used has {got.describe()}; it must show"
            " nothing held, applied or undone for it"
        )
