"""`tcc bench --storm`'s report as text, from its JSON (storm.py builds that)."""

from __future__ import annotations

from typing import Any

from coordinator.report import columns

SERIES_S = 30  # the first seconds after the return: their calls/s, always shown
MAX_ROWS = 300

NOTES = """\
calls/s after its return: confirms and cancels the participant received in each second after
  it listened again (its own record of each call's arrival); the load had stopped, so they are
  all the backlog's. p50 and max over the first 30 s.
found no one: calls the coordinator sent (its tcc_participant_calls_total) that the participant
  never received: they met a closed port while it was down.
held: calls the breaker kept back (tcc_participant_calls_held_total; a call held again later
  counts again).
ramp allowed: the most the ramp lets through in that second, all coordinators together: its
  rate integrated over the second (and the 0.1 s before it, for the calls' own latency), plus
  one second's worth of it for the token bucket; 0 before the breaker closed, no limit after
  the ramp."""


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _moves(moves: dict[str, int]) -> str:
    order = ("tripped", "probing", "still_down", "recovered", "reset")
    shown = [f"{event} {moves[event]}" for event in order if moves.get(event)]
    return ", ".join(shown) or "none"


def _summary(runs: list[dict[str, Any]]) -> list[list[str]]:
    def row(label: str, value: Any) -> list[str]:
        return [label, *(value(r) for r in runs)]

    def t(name: str) -> Any:
        return lambda r: _int(r["transactions"].get(name))

    def a(name: str, digits: int = 1) -> Any:
        return lambda r: _num(r["after_return"].get(name), digits)

    return [
        ["", *(r["run"] for r in runs)],
        row("outage (s)", lambda r: _num(r["outage_s"])),
        row("transactions begun", t("begun")),
        row("  before the outage", t("begun_before_outage")),
        row("  during it", t("begun_during_outage")),
        row("  confirmed", t("confirmed")),
        row("  cancelled", t("cancelled")),
        row("  unfinished at the end", t("unfinished")),
        row("  parked", t("parked")),
        row("in phase two when it was killed", t("in_phase_two_at_kill")),
        row("in phase two when it came back", t("in_phase_two_at_return")),
        row("unfinished when it came back", t("unfinished_at_return")),
        row("calls that found no one", lambda r: _int(r["calls_that_found_no_one"])),
        row("calls held by the breaker", lambda r: _int(sum(r["calls_held"].values()))),
        row("breaker moves", lambda r: _moves(r["breaker_moves"])),
        row("after its return:", lambda r: ""),
        row("  first confirm/cancel (s)", a("first_phase_two_call_s", 2)),
        row("  breaker closed (s)", a("ramp_started_s", 2)),
        row("  calls/s, first 30 s: max", lambda r: _int(r["after_return"]["phase_two_per_s_max"])),
        row("  calls/s, first 30 s: p50", a("phase_two_per_s_p50")),
        row("  backlog drained (s)", a("drained_s")),
        row(
            "  health probes",
            lambda r: _int(r["after_return"]["calls_by_phase"].get("health", 0)),
        ),
        row(
            "client answers",
            lambda r: ", ".join(f"{k}: {v:,}" for k, v in r["load"]["answers"].items()) or "-",
        ),
        row("client errors", lambda r: _int(r["load"]["errors"])),
    ]


def _series(runs: list[dict[str, Any]]) -> list[list[str]]:
    ramped = next((r for r in runs if "ramp" in r), None)
    allowed = {s["second"]: s["allowed"] for s in ramped["ramp"]["seconds"]} if ramped else {}
    drained = [len(r["after_return"]["phase_two_per_s_until_drained"]) for r in runs]
    length = min(max([SERIES_S, *drained]), MAX_ROWS)
    header = ["second", *(r["run"] for r in runs)]
    if ramped:
        header.append(f"ramp allowed ({ramped['run']})")
    table = [header]
    for k in range(length):
        line = [str(k)]
        for r in runs:
            series = r["after_return"]["phase_two_per_s_until_drained"]
            line.append(str(series[k]) if k < len(series) else "0")
        if ramped:
            limited = k in allowed and allowed[k] is not None
            line.append(_num(allowed[k]) if limited else "no limit")
        table.append(line)
    return table


def render(report: dict[str, Any]) -> str:
    s, m = report["settings"], report["machine"]
    retry, breaker = s["retry"], s["breaker"]
    runs = report["runs"]
    lines = [
        f"tcc bench --storm: a participant killed for {s['outage_s']:g} s under load, then"
        f" started again on its port; {m['cpu_count']} CPUs, Python {m['python']}, Postgres"
        f" {m['postgres']}, tcc serve --workers {s['workers']}",
        f"load: {s['clients']} clients, auto transactions with {s['branches_per_transaction']}"
        f" branches each, healthy for {s['healthy_s']} s, then on through the outage; it stops"
        " when the participant comes back, so every call after that is the backlog's",
        f"settings: the defaults (retries from {retry['initial_s']:g} s, x{retry['coefficient']:g}"
        f" up to {retry['max_s']:g} s, full jitter, recovery every"
        f" {retry['recovery_interval_s']:g} s; the breaker opens after {breaker['failures']}"
        f" failures in a row or {breaker['error_rate']:.0%} of {breaker['min_calls']}+ calls in"
        f" {breaker['window_s']:g} s, for {breaker['open_s']:g} s doubling up to"
        f" {breaker['max_open_s']:g} s, probes the health URL, and ramps calls up from"
        f" {breaker['ramp_start_per_s']:g}/s doubling five times over {breaker['ramp_s']:g} s),"
        " but:",
        *(f"  {name}={c['value']}: {c['why']}" for name, c in s["changed"].items()),
        "",
        columns(_summary(runs)),
        "",
        "confirms and cancels the participant received, per second after its return:",
        columns(_series(runs)),
        "",
        "checks:",
    ]
    for r in runs:
        lines += [
            f"  {r['run']}: {'ok  ' if c['ok'] else 'FAIL'}  {c['what']}" for c in r["checks"]
        ]
    for r in runs:
        if r["load"]["error_samples"]:
            lines += [
                f"client errors ({r['run']}):",
                *(f"  {e}" for e in r["load"]["error_samples"]),
            ]
    return "\n".join([*lines, "", NOTES])
