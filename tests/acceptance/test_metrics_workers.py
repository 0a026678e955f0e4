"""`tcc serve --workers 2`: every scrape reports the whole server, whichever worker answers,
and a worker's counts outlive it; a dead worker's files are folded into an archive, so the
metrics directory stays the same size however many workers are killed."""

from __future__ import annotations

import functools
import json
import operator
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from coordinator.metrics import SHARED_DIR_ENV, Metrics, worker_gone
from tests.api.test_metrics import Samples, parse, value
from tests.helpers import eventually
from tests.participant_server import FakeParticipant
from tests.processes import CoordinatorProcess

pytestmark = pytest.mark.slow

TRANSACTIONS = 30


async def _count(proc: CoordinatorProcess, line: str) -> int:
    return proc.logs().count(line)


async def fresh(method: str, url: str, body: object = None) -> tuple[int, str]:
    """One request on a connection of its own, so the kernel picks a worker each time."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.request(method, url, json=body) as resp,
    ):
        return resp.status, await resp.text()


async def scrapes(proc: CoordinatorProcess, count: int) -> list[Samples]:
    found = []
    for _ in range(count):
        status, text = await fresh("GET", f"{proc.base}/metrics")
        assert status == 200
        found.append(parse(text))
    return found


# The participant label of calls to a participant nobody registered (the tests' are not).
NOBODY = {"participant": "unregistered"}


def totals(samples: Samples) -> tuple[float | None, ...]:
    return (
        value(samples, "tcc_transactions_begun_total", dialect="tcc", type="tcc"),
        value(
            samples, "tcc_transactions_ended_total", status="confirmed", dialect="tcc", type="tcc"
        ),
        value(samples, "tcc_participant_calls_total", phase="try", outcome="tried", **NOBODY),
        value(samples, "tcc_participant_calls_total", phase="confirm", outcome="done", **NOBODY),
        value(samples, "tcc_unfinished_transactions", status="trying"),
    )


async def test_two_workers__ten_scrapes_agree_with_each_other_and_the_load(
    database_url: str, tmp_path: Path, participant: FakeParticipant
) -> None:
    proc = CoordinatorProcess(database_url, tmp_path, workers=2, participant_allow="127.0.0.0/8")
    await proc.start()
    try:
        await eventually(lambda: _count(proc, '"coordinator_started"'), lambda n: n == 2)
        for i in range(TRANSACTIONS):
            gid = f"w{i}"
            assert (await fresh("POST", f"{proc.base}/v1/transactions", {"gid": gid}))[0] == 201
            branch = participant.branch("b")
            try_url = f"{proc.base}/v1/transactions/{gid}/try"
            assert (await fresh("POST", try_url, branch))[0] == 200
            confirm_url = f"{proc.base}/v1/transactions/{gid}/confirm"
            assert (await fresh("POST", confirm_url))[0] == 200
        # Both workers took part: each decision names the worker that took it.
        owners = set()
        for i in range(TRANSACTIONS):
            detail = json.loads((await fresh("GET", f"{proc.base}/v1/transactions/w{i}"))[1])
            owners |= {e["detail"]["by"] for e in detail["events"] if e["kind"] == "decision"}
        assert len(owners) == 2

        expected = (TRANSACTIONS, TRANSACTIONS, TRANSACTIONS, TRANSACTIONS, 0)
        seen = [totals(s) for s in await scrapes(proc, 10)]
        assert seen == [expected] * 10

        # A worker killed outright: its replacement starts, its counts stay in the totals.
        victim = int(next(iter(owners)).split(":")[1])
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: _count(proc, '"coordinator_started"'), lambda n: n == 3)
        seen = [totals(s) for s in await scrapes(proc, 10)]
        assert seen == [expected] * 10
    finally:
        proc.stop()
    assert proc.proc is not None
    assert proc.proc.returncode == 0


# --- a dead worker's files: folded into the archive, removed -----------------------------

# One "worker": a process that counts what it is told in the shared directory, says its pid,
# and waits for a line on stdin before it exits.
WORKER = """
import os, sys
from coordinator.core.states import GlobalStatus
from coordinator.metrics import Metrics, ShedReason
m = Metrics()
n = int(sys.argv[1])
for _ in range(n):
    m.began("tcc")
    m.ended(GlobalStatus.CONFIRMED, "tcc", 0.3)
    m.participant_call(None, "try", "tried", 0.02)
m.connections_shed(ShedReason.IDLE_CUT, n)
m.round_started()
m.connection_limit(100)
print(os.getpid(), flush=True)
sys.stdin.readline()
"""


def start_worker(shared: Path, count: int) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, SHARED_DIR_ENV: str(shared)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(count)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def finish(proc: subprocess.Popen[str]) -> None:
    proc.communicate("\n", timeout=30)


def shared_totals(shared: Path, monkeypatch: pytest.MonkeyPatch) -> Samples:
    monkeypatch.setenv(SHARED_DIR_ENV, str(shared))
    return parse(Metrics().exposition(None).decode())


def test_worker_gone__folds_counters_and_histograms_into_the_archive_and_removes_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    counts = [3, 5, 7]
    for n in counts:  # three workers, one after the other, each gone when the next starts
        proc, pid = start_worker(shared, n)
        finish(proc)
        worker_gone(pid, shared)
        assert not list(shared.glob(f"*_{pid}.db"))
    live, live_pid = start_worker(shared, 10)
    try:
        assert {p.name for p in shared.iterdir()} == {
            "counter_archive.db",
            f"counter_{live_pid}.db",
            f"gauge_livesum_{live_pid}.db",
            "histogram_archive.db",
            f"histogram_{live_pid}.db",
            "merge.lock",
        }
        m = shared_totals(shared, monkeypatch)
        total = sum(counts) + 10
        assert value(m, "tcc_transactions_begun_total", dialect="tcc", type="tcc") == total
        assert (
            value(m, "tcc_transactions_ended_total", status="confirmed", dialect="tcc", type="tcc")
            == total
        )
        tried = value(m, "tcc_participant_calls_total", phase="try", outcome="tried", **NOBODY)
        assert tried == total
        assert value(m, "tcc_inbound_connections_shed_total", reason="idle_cut") == total
        # Histograms: counts, sums and every bucket (cumulative, as Prometheus reads them).
        assert value(m, "tcc_transaction_duration_seconds_count", status="confirmed") == total
        duration_sum = value(m, "tcc_transaction_duration_seconds_sum", status="confirmed")
        assert duration_sum == pytest.approx(0.3 * total)
        assert (
            value(m, "tcc_transaction_duration_seconds_bucket", status="confirmed", le="0.25") == 0
        )
        assert (
            value(m, "tcc_transaction_duration_seconds_bucket", status="confirmed", le="0.5")
            == total
        )
        assert (
            value(m, "tcc_transaction_duration_seconds_bucket", status="confirmed", le="+Inf")
            == total
        )
        timed = value(
            m, "tcc_participant_call_seconds_count", phase="try", outcome="tried", **NOBODY
        )
        assert timed == total
        # Gauges are the live worker's alone.
        assert value(m, "tcc_active_rounds") == 1
        assert value(m, "tcc_inbound_connections_limit") == 100
    finally:
        finish(live)
    worker_gone(live_pid, shared)
    m = shared_totals(shared, monkeypatch)
    assert value(m, "tcc_transactions_begun_total", dialect="tcc", type="tcc") == sum(counts) + 10
    assert value(m, "tcc_active_rounds") is None  # no live worker: no gauge samples
    assert {p.name for p in shared.iterdir()} == {
        "counter_archive.db",
        "histogram_archive.db",
        "merge.lock",
    }


# --- tcc serve --workers 2 under repeated SIGKILLs ----------------------------------------

KILLS = 5
PER_ROUND = 3


def worker_pids(proc: CoordinatorProcess) -> list[int]:
    """The supervisor's workers now alive, from its log (started, not died)."""
    lines = [json.loads(line) for line in proc.logs().splitlines() if line.startswith("{")]
    started = [e["pid"] for e in lines if e.get("event") == "worker_started"]
    died = {e["pid"] for e in lines if e.get("event") == "worker_died"}
    return [pid for pid in started if pid not in died]


async def test_workers_killed_again_and_again__metrics_dir_stays_bounded_and_counts_never_drop(
    database_url: str, tmp_path: Path, participant: FakeParticipant
) -> None:
    shared = tmp_path / "metrics"
    logs = tmp_path / "logs"
    logs.mkdir()
    proc = CoordinatorProcess(database_url, logs, workers=2, participant_allow="127.0.0.0/8")
    proc.env[SHARED_DIR_ENV] = str(shared)
    await proc.start()
    file_counts: list[int] = []
    seen: list[tuple[float | None, ...]] = []
    done = 0

    def expect() -> tuple[float, ...]:
        return (done, done, done, done, 0)

    try:
        await eventually(lambda: _count(proc, '"coordinator_started"'), lambda n: n == 2)
        for kill in range(KILLS + 1):
            for i in range(PER_ROUND):
                gid = f"k{kill}-{i}"
                body = {"gid": gid, "auto": True, "branches": [participant.branch("b")]}
                status, text = await fresh("POST", f"{proc.base}/v1/transactions", body)
                assert status == 201, text
                assert json.loads(text)["status"] == "confirmed"
                done += 1
            seen += [totals(s) for s in await scrapes(proc, 4)]
            if kill == KILLS:
                break
            victim = worker_pids(proc)[-1]
            os.kill(victim, signal.SIGKILL)
            # Scrapes while the supervisor notices the death and folds the files.
            seen += [totals(s) for s in await scrapes(proc, 3)]
            started = 3 + kill  # the first two and a replacement for each kill so far
            await eventually(
                functools.partial(_count, proc, '"coordinator_started"'),
                functools.partial(operator.eq, started),
            )
            assert victim not in worker_pids(proc)
            assert not list(shared.glob(f"*_{victim}.db")), "a dead worker's files are removed"
            file_counts.append(len(list(shared.iterdir())))
            seen += [totals(s) for s in await scrapes(proc, 3)]
        final = totals((await scrapes(proc, 1))[0])
    finally:
        proc.stop()
    begun = [s[0] for s in seen]
    assert all(b is not None for b in begun)
    assert begun == sorted(begun), "a counter went down in a scrape"  # type: ignore[type-var]
    assert final == expect()
    # Each worker: counter, histogram and gauge files; plus the archive's two and the lock.
    assert max(file_counts) <= 2 * 3 + 3, file_counts
    print(f"metrics dir files after each of {KILLS} SIGKILLs: {file_counts}; final {final}")
