"""`tcc bench --short` as the test suite runs it: so the benchmark keeps working.

Only its shape is checked (every point measured, no errors, counts present, the files
written); its figures depend on the machine and are never asserted.
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
        (mode, c) for mode in ("auto", "interactive", "dtm") for c in (1, 4)
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
        ):
            assert _numeric(point[name]), (name, point)
        for name in ("p50", "p95", "p99"):
            assert _numeric(point["latency_ms"][name]), (name, point)
        assert point["top_statements"], point
    kinds = {(p["kind"], p["concurrency"]) for p in points}
    assert {("ceiling", 1), ("ceiling", 4), ("floor", 1), ("floor", 4)} <= kinds
    assert report["machine"]["cpu_count"]
    assert report["settings"]["short"] is True

    chart = out / "bench.png"
    assert (await asyncio.to_thread(chart.read_bytes)).startswith(PNG_SIGNATURE)

    assert "ceiling (pgbench)" in stdout
    assert "floor auto" in stdout
    assert str(out / "bench.json") in stdout


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
