"""What `tcc bench` reports: one Point per measured row, the table, the JSON and the chart."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.report import columns

COORDINATOR, FLOOR, CEILING = "coordinator", "floor", "ceiling"
# The null coordinators (coordinator/devtools/null_coordinator.py): kind NULL, mode one of
# NULL_MODES ("http": the calls only; "log": the calls and two plain synchronous commits).
NULL = "null"
NULL_MODES = ("http", "log")
MODE_COLOURS = {
    "auto": "tab:blue",
    "interactive": "tab:orange",
    "dtm": "tab:green",
    "saga": "tab:red",
    "msg": "tab:purple",
}


@dataclass
class Deliveries:
    """What became of a msg point's messages, from the coordinator's own log: each message's
    created_at (its begin) and finished_at (the write that marks it delivered), both
    Postgres' now() of their database transactions."""

    delivered_per_s: float  # messages whose deliveries ended inside the measured window
    lag_ms: dict[str, float | None]  # finished_at - created_at of those accepted in the window
    lag_max_ms: float | None
    lag_samples: int  # messages accepted in the window and delivered
    backlog_at_end: int  # accepted but not delivered yet when the load stopped
    drained_after_s: float  # from the load's end until none was left to deliver
    undelivered: int  # still not delivered when the figures were read (0 in a healthy run)
    harness_statements: int  # the drain's own polls, taken out of stmts/tx and commits/tx


@dataclass
class Point:
    kind: str  # COORDINATOR, NULL, FLOOR or CEILING
    mode: str  # auto, interactive, dtm, saga, msg; http or log (NULL); "" for the ceiling
    concurrency: int
    seconds: float
    transactions: int  # completed inside the measured window
    tps: float
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # p50, p95, p99, mean
    # Per transaction, over the measured window (CPU) or the whole point (the database).
    coordinator_cpu_ms_per_tx: float | None = None
    participant_cpu_ms_per_tx: float | None = None
    client_cpu_ms_per_tx: float | None = None
    database_cpu_ms_per_tx: float | None = None  # the embedded Postgres, all its processes
    statements_per_tx: float | None = None
    commits_per_tx: float | None = None
    rollbacks_per_tx: float | None = None
    counted_transactions: int | None = None  # the denominator of the database figures
    rss_mb_largest: float | None = None
    rss_mb_sum: float | None = None
    ratio_to_ceiling: float | None = None
    ratio_to_floor: float | None = None
    ratio_to_null_log: float | None = None
    top_statements: list[dict[str, Any]] = field(default_factory=list)
    # msg only (a coordinator point): tx/s counts messages accepted; their deliveries are
    # read from the log once they are all done (see Deliveries).
    deliveries: Deliveries | None = None
    # --profile (coordinator and null log points): CPU ms per transaction by part of the
    # code, or why the profile failed.
    cpu_parts_ms: dict[str, float] = field(default_factory=dict)
    profile_error: str | None = None

    @property
    def label(self) -> str:
        if self.kind == CEILING:
            return "ceiling (pgbench)"
        if self.kind == NULL:
            return f"null {self.mode}"
        return f"floor {self.mode}" if self.kind == FLOOR else self.mode


def latency_summary(sorted_ms: list[float]) -> dict[str, float | None]:
    def nearest_rank(p: float) -> float | None:
        if not sorted_ms:
            return None
        rank = max(1, math.ceil(len(sorted_ms) * p / 100))
        return round(sorted_ms[rank - 1], 3)

    mean = round(sum(sorted_ms) / len(sorted_ms), 3) if sorted_ms else None
    return {"p50": nearest_rank(50), "p95": nearest_rank(95), "p99": nearest_rank(99), "mean": mean}


def add_ratios(points: list[Point]) -> None:
    """Each coordinator point against the ceiling, the floor of its mode and the null
    coordinator with its log, at its concurrency (transactions per second)."""
    refs = {(p.kind, p.mode, p.concurrency): p.tps for p in points if p.kind != COORDINATOR}
    for p in points:
        if p.kind != COORDINATOR:
            continue
        ceiling = refs.get((CEILING, "", p.concurrency))
        floor = refs.get((FLOOR, p.mode, p.concurrency))
        p.ratio_to_ceiling = round(p.tps / ceiling, 4) if ceiling else None
        p.ratio_to_floor = round(p.tps / floor, 4) if floor else None
        null_log = refs.get((NULL, "log", p.concurrency))
        p.ratio_to_null_log = round(p.tps / null_log, 4) if null_log else None


# --- the table ------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _rss(p: Point) -> str:
    if p.rss_mb_largest is None or p.rss_mb_sum is None:
        return "-"
    return f"{p.rss_mb_largest:.0f}/{p.rss_mb_sum:.0f}"


def _no_database(p: Point) -> bool:
    """Rows that write nothing: the floors and null http."""
    return p.kind == FLOOR or (p.kind == NULL and p.mode == "http")


def _statements(p: Point, counted: bool) -> str:
    if _no_database(p):
        return "-"
    return _num(p.statements_per_tx, 2) if counted else "n/a"


def table(points: list[Point], statements_counted: bool) -> str:
    header = [
        "",
        "clients",
        "tx/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "cpu ms/tx",
        "db cpu ms/tx",
        "stmts/tx",
        "commits/tx",
        "rss MB max/sum",
        "of ceiling",
        "of floor",
        "of null log",
    ]
    rows = [header]
    order = {COORDINATOR: 0, NULL: 1, FLOOR: 2, CEILING: 3}
    modes = [*MODE_COLOURS, *NULL_MODES]
    for p in sorted(
        points,
        key=lambda p: (p.concurrency, order[p.kind], modes.index(p.mode) if p.mode else 0),
    ):
        cpu = p.participant_cpu_ms_per_tx if p.kind == FLOOR else p.coordinator_cpu_ms_per_tx
        rows.append(
            [
                p.label,
                str(p.concurrency),
                _num(p.tps),
                _num(p.latency_ms.get("p50"), 2),
                _num(p.latency_ms.get("p95"), 2),
                _num(p.latency_ms.get("p99"), 2),
                str(p.errors),
                _num(cpu, 2),
                _num(p.database_cpu_ms_per_tx, 2),
                _statements(p, statements_counted),
                "-" if _no_database(p) else _num(p.commits_per_tx, 2),
                _rss(p),
                _pct(p.ratio_to_ceiling),
                _pct(p.ratio_to_floor),
                _pct(p.ratio_to_null_log),
            ]
        )
    return columns(rows)


TABLE_NOTES = """\
cpu ms/tx: the coordinator's processes (the participant's on floor rows), over the window.
db cpu ms/tx: every process of our embedded Postgres over the same window (n/a with
  --database-url): with the load, the participant and the coordinator it shares the cores.
stmts/tx, commits/tx: counted by Postgres (pg_stat_statements calls, pg_stat_database
  xact_commit) for the point's database, warm-up included, divided by its transactions.
of ceiling / of floor / of null log: tx/s against pgbench writing the minimal log, against
  the same participant calls made without a coordinator, and against null log, at the same
  number of clients.
null http / null log: the null coordinator (one process, same stack, same auto begin, same
  participant): both tries at once, then both confirms at once, answered 201; null log also
  writes one INSERT (the transaction and its branches) before the tries and one UPDATE (the
  decision) before the confirms, each its own synchronous commit.
saga: POST /v1/sagas, two steps in order, answered once both actions are done (201).
msg: tx/s is messages accepted (POST /v1/messages, two steps, answered 201 once logged and
  submitted); their deliveries run after the answer and are in the table below it. Its
  stmts/tx and commits/tx include the deliveries (the counts are read once all are done).
floor saga / floor msg: the two steps' calls in order, made directly."""


def profile_table(points: list[Point]) -> str:
    """--profile: each profiled point's CPU per transaction by part; "" without a profile."""
    profiled = [p for p in points if p.cpu_parts_ms or p.profile_error]
    if not profiled:
        return ""
    parts = list(dict.fromkeys(name for p in profiled for name in p.cpu_parts_ms))
    rows = [["cpu ms/tx by part", "clients", "total", *parts]]
    for p in sorted(profiled, key=lambda p: (p.concurrency, p.kind != COORDINATOR)):
        if p.profile_error is not None:
            rows.append([p.label, str(p.concurrency), f"no profile: {p.profile_error}"])
            continue
        rows.append(
            [
                p.label,
                str(p.concurrency),
                _num(p.coordinator_cpu_ms_per_tx, 2),
                *(_num(p.cpu_parts_ms.get(name), 3) for name in parts),
            ]
        )
    return columns(rows)


PROFILE_NOTES = """\
cpu ms/tx by part: py-spy's samples of the coordinator's processes over the measured window,
  each given to the part of the code that was running (coordinator/devtools/bench_profile.py),
  times the point's cpu ms/tx. The sampling slows a point a little: compare shares, not tx/s."""


def delivery_table(points: list[Point]) -> str:
    """msg points: how fast their messages were delivered; "" when there are none."""
    rows = [
        [
            "msg deliveries",
            "clients",
            "accepted/s",
            "delivered/s",
            "lag p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "lag samples",
            "backlog at end",
            "drained after s",
            "undelivered",
        ]
    ]
    for p in sorted(points, key=lambda p: p.concurrency):
        d = p.deliveries
        if p.kind != COORDINATOR or d is None:
            continue
        rows.append(
            [
                p.label,
                str(p.concurrency),
                _num(p.tps),
                _num(d.delivered_per_s),
                _num(d.lag_ms.get("p50"), 2),
                _num(d.lag_ms.get("p95"), 2),
                _num(d.lag_ms.get("p99"), 2),
                _num(d.lag_max_ms, 2),
                str(d.lag_samples),
                str(d.backlog_at_end),
                _num(d.drained_after_s, 2),
                str(d.undelivered),
            ]
        )
    return columns(rows) if len(rows) > 1 else ""


DELIVERY_NOTES = """\
msg deliveries, read from the coordinator's log after the point (not timed by the client):
  delivered/s: messages whose last delivery was logged inside the measured window;
  lag: each message's begin (created_at) to the write marking it delivered (finished_at),
  for every message accepted inside the window; backlog at end: accepted and not yet
  delivered when the load stopped; drained after: until none was left."""


# --- JSON -----------------------------------------------------------------------------


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False)


def points_json(points: list[Point]) -> list[dict[str, Any]]:
    return [{"label": p.label, **dataclasses.asdict(p)} for p in points]


# --- the chart ------------------------------------------------------------------------


def _series(points: list[Point], kind: str, mode: str, levels: list[int]) -> list[Point]:
    by_level = {p.concurrency: p for p in points if p.kind == kind and p.mode == mode}
    return [by_level[c] for c in levels if c in by_level]


def draw_chart(points: list[Point], modes: list[str], title: str, path: Path) -> bool:
    """Two panels: tx/s and p50 latency by number of clients, each mode beside its floor
    and the ceiling. False when matplotlib is not installed (it comes with the dev extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
        from matplotlib import ticker
        from matplotlib.lines import Line2D
    except ImportError:
        return False
    levels = sorted({p.concurrency for p in points})
    fig, (tps_ax, lat_ax) = plt.subplots(1, 2, figsize=(13, 5.6), dpi=110)
    lines: list[tuple[str, str, str, str, str]] = [
        (COORDINATOR, mode, mode, MODE_COLOURS.get(mode, "tab:gray"), "-") for mode in modes
    ]
    lines += [
        (FLOOR, mode, f"floor {mode} (no coordinator)", MODE_COLOURS.get(mode, "tab:gray"), ":")
        for mode in modes
    ]
    lines.append((CEILING, "", "ceiling (pgbench, minimal log)", "black", "--"))
    lines.append((NULL, "http", "null http (calls only)", "tab:gray", "-."))
    lines.append((NULL, "log", "null log (calls + 2 commits)", "tab:brown", "-."))
    for kind, mode, label, colour, style in lines:
        series = _series(points, kind, mode, levels)
        if not series:
            continue
        xs = [p.concurrency for p in series]
        marker = {COORDINATOR: "o", CEILING: "s", NULL: "D"}.get(kind, "^")
        width = 2.2 if kind == COORDINATOR else 1.4
        common = {"color": colour, "linestyle": style, "marker": marker, "linewidth": width}
        tps = [p.tps for p in series]
        p50 = [p.latency_ms.get("p50") or float("nan") for p in series]
        tps_ax.plot(xs, tps, label=label, **common)
        lat_ax.plot(xs, p50, **common)
    plain = ticker.FuncFormatter(lambda value, _pos: f"{value:g}")
    for ax, ylabel in ((tps_ax, "transactions per second"), (lat_ax, "p50 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        # Log scale, since the ceiling is far above the rest; labelled 1, 2, 5, 10, ...
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_locator(ticker.NullLocator())
        ax.yaxis.set_major_formatter(plain)
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.set_ylabel(ylabel + " (log scale)")
        ax.grid(True, which="both", alpha=0.3)
    tps_ax.set_title("Throughput: higher is better")
    lat_ax.set_title("Median latency: lower is better")
    # Three columns (matplotlib fills them one after the other): the modes, their floors,
    # and the ceiling and the null coordinators padded with blank entries to the same height.
    handles, labels = tps_ax.get_legend_handles_labels()
    blanks = max(len(modes) - 3, 0)
    handles += [Line2D([], [], linestyle="none")] * blanks
    labels += [""] * blanks
    fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False, fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return True
