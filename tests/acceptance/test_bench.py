"""`tcc bench --short` as the test suite runs it: so the benchmark keeps working.

Only its shape is checked (every point measured, no errors, counts present, the files
written); its figures depend on the machine and are never asserted, but for null log's
statements and commits per transaction, which are what it is built to write.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from coordinator.devtools.children import clean_env
from tests.processes import run_tcc_async

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scratch_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("tcc-bench-*"))


async def test_bench_short__measures_every_mode_and_level_and_writes_json_and_chart(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    scratch_before = _scratch_folders()
    code, stdout, stderr = await run_tcc_async(
        "bench", "--short", "--out", str(out), env=clean_env(), timeout_s=240
    )
    assert code == 0, stdout + stderr
    # Its Postgres and scratch files are gone.
    assert _scratch_folders() <= scratch_before

    report = json.loads((out / "bench.json").read_text())
    points = report["points"]
    coordinator = {(p["mode"], p["concurrency"]): p for p in points if p["kind"] == "coordinator"}
    assert set(coordinator) == {
        (mode, c) for mode in ("auto", "interactive", "dtm", "saga", "msg") for c in (1, 4)
    }, coordinator.keys()
    for point in coordinator.values():
        assert point["transactions"] > 0, point
        assert point["errors"] == 0, point
        for name in (
            "tps",
            "statements_per_tx",
            "commits_per_tx",
            "coordinator_cpu_ms_per_tx",
            "ratio_to_ceiling",
            "ratio_to_floor",
            "ratio_to_null_log",
        ):
            assert _numeric(point[name]), (name, point)
        for name in ("p50", "p95", "p99"):
            assert _numeric(point["latency_ms"][name]), (name, point)
        assert point["top_statements"], point
    # The null coordinators: a row each per level; null log's writes counted by Postgres,
    # two plain statements and two commits per transaction.
    nulls = {(p["mode"], p["concurrency"]): p for p in points if p["kind"] == "null"}
    assert set(nulls) == {(m, c) for m in ("http", "log") for c in (1, 4)}, nulls.keys()
    for point in nulls.values():
        assert point["tps"] > 0, point
        assert point["errors"] == 0, point
        assert _numeric(point["coordinator_cpu_ms_per_tx"]), point
    for c in (1, 4):
        log = nulls[("log", c)]
        assert 1.9 <= log["statements_per_tx"] <= 2.2, log
        assert 1.9 <= log["commits_per_tx"] <= 2.2, log
        assert nulls[("http", c)]["statements_per_tx"] is None
    kinds = {(p["kind"], p["concurrency"]) for p in points}
    assert {("ceiling", 1), ("ceiling", 4), ("floor", 1), ("floor", 4)} <= kinds
    assert report["machine"]["cpu_count"]
    assert report["settings"]["short"] is True

    chart = out / "bench.png"
    assert (await asyncio.to_thread(chart.read_bytes)).startswith(PNG_SIGNATURE)

    assert "ceiling (pgbench)" in stdout
    assert "floor auto" in stdout
    assert "of null log" in stdout
    header = next(line for line in stdout.splitlines() if "stmts/tx" in line)
    for label in ("null http", "null log"):
        rows = _table_rows(stdout, label)
        assert [_cell(header, row, "clients") for row in rows] == ["1", "4"], (label, stdout)
        for row in rows:
            assert float(_cell(header, row, "tx/s").replace(",", "")) > 0, (label, row)
    assert str(out / "bench.json") in stdout


def _table_rows(stdout: str, label: str) -> list[str]:
    """The main table's lines for one label (the table ends at its first blank line)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "stmts/tx" in line)
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        if line.startswith(label + " ") and line[len(label) :].lstrip()[:1].isdigit():
            rows.append(line)
    return rows


def _cell(header: str, row: str, name: str) -> str:
    """A row's cell under a column's name (the table's columns are aligned)."""
    return row[header.index(name) :].split()[0]


async def test_bench_short_saga_and_msg__rows_with_counted_statements_and_deliveries(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = await run_tcc_async(
        "bench",
        "--short",
        "--modes",
        "saga,msg",
        "--out",
        str(out),
        env=clean_env(),
        timeout_s=240,
    )
    assert code == 0, stdout + stderr

    # The table: a row per mode and level, each with its statements per transaction, and
    # the floors beside them.
    header = next(line for line in stdout.splitlines() if "stmts/tx" in line)
    for label in ("saga", "msg"):
        rows = _table_rows(stdout, label)
        assert [_cell(header, row, "clients") for row in rows] == ["1", "4"], (label, stdout)
        for row in rows:
            assert float(_cell(header, row, "stmts/tx").replace(",", "")) > 0, (label, row)
        assert len(_table_rows(stdout, f"floor {label}")) == 2, (label, stdout)
    assert "msg deliveries" in stdout
    for mode in ("auto", "interactive", "dtm"):
        assert not _table_rows(stdout, mode), mode

    report = json.loads((out / "bench.json").read_text())
    assert report["settings"]["modes"] == ["saga", "msg"]
    coordinator = {
        (p["mode"], p["concurrency"]): p for p in report["points"] if p["kind"] == "coordinator"
    }
    assert set(coordinator) == {(m, c) for m in ("saga", "msg") for c in (1, 4)}
    for point in coordinator.values():
        assert point["transactions"] > 0, point
        assert point["errors"] == 0, point
        for name in ("tps", "statements_per_tx", "commits_per_tx", "ratio_to_floor"):
            assert _numeric(point[name]), (name, point)
        # The harness's own queries are not among the point's statements.
        assert not any("tcc-bench-harness" in s["query"] for s in point["top_statements"])
    for c in (1, 4):
        assert coordinator[("saga", c)]["deliveries"] is None
        deliveries = coordinator[("msg", c)]["deliveries"]
        # Every message accepted was delivered before the counts were read.
        assert deliveries["undelivered"] == 0, deliveries
        assert deliveries["lag_samples"] > 0, deliveries
        assert _numeric(deliveries["lag_ms"]["p50"]), deliveries
        assert _numeric(deliveries["delivered_per_s"]), deliveries
    floors = {(p["mode"], p["concurrency"]) for p in report["points"] if p["kind"] == "floor"}
    assert floors == {(m, c) for m in ("saga", "msg") for c in (1, 4)}


async def test_bench__refuses_bad_input_in_one_line() -> None:
    code, _, stderr = await run_tcc_async(
        "bench", "--concurrency", "1,x", env=clean_env(), timeout_s=60
    )
    assert code == 2
    assert stderr.strip().count("\n") == 0, stderr
    assert "--concurrency" in stderr


async def test_bench_reads__times_every_read_and_shows_each_lists_plan() -> None:
    scratch_before = _scratch_folders()
    code, stdout, stderr = await run_tcc_async(
        "bench", "--reads", "2000", env=clean_env(), timeout_s=240
    )
    assert code == 0, stdout + stderr
    assert _scratch_folders() <= scratch_before
    assert "Reads over a log of 2,000 transactions" in stdout
    for read in ("api overview", "console overview", "console list gid prefix", "api transaction"):
        assert f"\n{read} " in stdout, read
    # The plans Postgres ran, one per list.
    assert "== api list gid prefix: /v1/transactions?gid_prefix=bank-000001" in stdout
    assert stdout.count("Execution Time") >= 10


async def test_bench_reads__too_few_transactions__is_one_line_and_exit_2() -> None:
    code, _stdout, stderr = await run_tcc_async(
        "bench", "--reads", "10", env=clean_env(), timeout_s=60
    )
    assert code == 2
    assert stderr.strip() == "tcc bench: --reads needs at least 1000 transactions"


async def test_bench_prune__deletes_the_old_log_under_load_and_checks_what_is_left(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    scratch_before = _scratch_folders()
    code, stdout, stderr = await run_tcc_async(
        "bench",
        "--prune",
        "3000",
        "--short",
        "--concurrency",
        "4",
        "--out",
        str(out),
        env=clean_env(),
        timeout_s=240,
    )
    assert code == 0, stdout + stderr
    assert _scratch_folders() <= scratch_before
    # The table: a row per phase, then what the prune did and the checks.
    assert "tcc bench --prune 3,000:" in stdout
    for phase in ("load alone", "load + tcc prune 30d", "load after"):
        assert f"\n{phase} " in stdout, phase
    assert "tcc prune said it deleted 3,000, of the 3,000 to delete" in stdout
    assert "FAIL" not in stdout

    report = json.loads((out / "bench-prune.json").read_text())
    assert report["ok"] is True
    assert report["prune"]["deleted"] == 3000
    assert len(report["checks"]) == 6
    assert all(check["ok"] for check in report["checks"]), report["checks"]
    assert [p["name"] for p in report["phases"]] == [
        "load alone",
        "load + tcc prune 30d",
        "load after",
    ]
    for phase in report["phases"]:
        assert phase["transactions"] > 0, phase
        assert phase["errors"] == 0, phase
        for name in ("p50", "p95", "p99", "max"):
            assert _numeric(phase["latency_ms"][name]), (name, phase)
    # The batches as Postgres counted them (our embedded server has pg_stat_statements).
    assert report["prune"]["batches"]["rows"] == 3000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--prune", "10"), "tcc bench: --prune needs at least 1000 transactions"),
        (
            ("--prune", "5000", "--concurrency", "1,16"),
            "tcc bench: --prune takes one number of clients in --concurrency, e.g. 16",
        ),
        (("--prune", "5000", "--modes", "dtm"), "tcc bench: --prune drives auto mode only:"),
    ],
)
async def test_bench_prune__bad_input__is_one_line_and_exit_2(
    args: tuple[str, ...], message: str
) -> None:
    code, _stdout, stderr = await run_tcc_async("bench", *args, env=clean_env(), timeout_s=60)
    assert code == 2
    assert stderr.strip().count("\n") == 0, stderr
    assert stderr.strip().startswith(message), stderr


async def test_bench_tls__times_http_https_and_mutual_tls_calls_side_by_side() -> None:
    code, stdout, stderr = await run_tcc_async(
        "bench", "--tls", "100", "--json", env=clean_env(), timeout_s=120
    )
    assert code == 0, stderr
    points = json.loads(stdout)
    assert {(p["participant"], p["connections"]) for p in points} == {
        (participant, connections)
        for participant in ("http", "https", "mutual TLS")
        for connections in ("kept", "new")
    }
    for point in points:  # every call answered (the bench stops at the first that is not)
        assert point["calls"] == (200 if point["connections"] == "kept" else 40), point
        assert 0 < point["p50_ms"] <= point["p99_ms"], point
    code, _, stderr = await run_tcc_async("bench", "--tls", "10", env=clean_env(), timeout_s=60)
    assert (code, stderr.strip()) == (2, "tcc bench: --tls needs at least 100 calls per point")
