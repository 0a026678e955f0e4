"""The `tcc` command as an operator runs it: real subprocesses, real database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest

from coordinator.core.records import ListFilter, NewBranch, NewTransaction
from coordinator.core.states import Decision
from coordinator.txlog.postgres import PostgresLog
from tests.helpers import eventually
from tests.participant_server import FakeParticipant
from tests.processes import TCC, CoordinatorProcess, run_tcc, run_tcc_async, tcc_env

pytestmark = pytest.mark.slow


async def seed(store: PostgresLog) -> None:
    for gid, decision in (("kept", None), ("dropped", Decision.CANCEL)):
        await store.begin(
            NewTransaction(
                gid=gid,
                service="shop",
                metadata={"o": 1},
                timeout_s=60,
                call_timeout_s=None,
                request_hash=gid,
            )
        )
        if decision:
            await store.decide(gid, decision, reason="client", owner="cli-test", lease_ttl_s=30)


async def test_status__prints_the_transaction_and_its_timeline(
    store: PostgresLog, database_url: str
) -> None:
    await seed(store)
    result = run_tcc("status", "dropped", env=tcc_env(database_url))
    assert result.returncode == 0, result.stderr
    assert "transaction dropped" in result.stdout
    assert "cancelling (client)" in result.stdout
    assert "timeline" in result.stdout
    assert "decision" in result.stdout
    as_json = run_tcc("status", "dropped", "--json", env=tcc_env(database_url))
    assert '"status": "cancelling"' in as_json.stdout


async def test_status__into_a_reader_gone_early__no_traceback(
    store: PostgresLog, database_url: str
) -> None:
    """`tcc status GID | head -3`: the reader closes the pipe; tcc says nothing more."""
    await seed(store)
    read_end, write_end = os.pipe()
    os.close(read_end)  # gone before the first line is written
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [*TCC, "status", "dropped"],
            env=tcc_env(database_url),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr
    assert done.stderr == ""
    assert done.returncode == 141


async def test_list__filters_by_status(store: PostgresLog, database_url: str) -> None:
    await seed(store)
    result = run_tcc("list", "--status", "trying", env=tcc_env(database_url))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = ["GID", "TYPE", "STATUS", "DIALECT", "SERVICE", "CREATED", "REASON"]
    assert lines[0].split() == header
    assert [line.split()[0] for line in lines[1:]] == ["kept"]


async def test_migrate__on_a_current_schema__says_so(database_url: str) -> None:
    result = run_tcc("migrate", env=tcc_env(database_url))
    assert (result.returncode, result.stdout.strip()) == (0, "schema is current")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["status", "missing"], 1, "no transaction 'missing'"),
        (["status", "bad gid"], 2, "gid must be"),
        (["list", "--limit", "0"], 2, "--limit must be between"),
        (["serve", "--port", "notaport"], 2, "--port"),
        (["serve", "--default-timeout-s", "100", "--max-timeout-s", "10"], 2, "max_timeout_s"),
    ],
)
def test_bad_input__one_line_on_stderr_and_a_non_zero_exit(
    database_url: str, args: list[str], code: int, message: str
) -> None:
    result = run_tcc(*args, env=tcc_env(database_url))
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert lines[0].startswith("tcc ")


def test_unreachable_database__is_one_clear_line(tmp_path: object) -> None:
    env = tcc_env("postgresql://nobody@127.0.0.1:1/none")
    result = run_tcc("list", env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot connect to the database" in lines[0]


async def park(store: PostgresLog, gid: str) -> None:
    """A transaction whose confirm budget ran out (as recovery would leave it)."""
    await seed_one(store, gid)
    await store.decide(gid, Decision.CONFIRM, reason=None, owner="cli-test", lease_ttl_s=30)
    async with store.connection() as conn:
        await conn.execute(
            "UPDATE tcc_transactions SET status = 'failed_to_confirm', next_attempt_at = NULL,"
            " lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL WHERE gid = $1",
            gid,
        )


async def seed_one(store: PostgresLog, gid: str) -> None:
    await store.begin(
        NewTransaction(
            gid=gid,
            service="ops",
            metadata={},
            timeout_s=60,
            call_timeout_s=None,
            request_hash=gid,
        )
    )


async def test_retry__sends_a_parked_transaction_back_and_audits_it(
    store: PostgresLog, database_url: str
) -> None:
    await park(store, "stuck")
    result = run_tcc("retry", "stuck", env=tcc_env(database_url))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "stuck is confirming again; a running coordinator continues it now\n"
    assert result.stderr == ""  # the message alone: no log line before it
    detail = await store.detail("stuck")
    assert detail.transaction.status.value == "confirming"
    assert detail.transaction.next_attempt_at is not None
    audit = detail.events[-1]
    assert audit.kind == "admin_retry"
    assert audit.detail["from"] == "failed_to_confirm"
    assert str(audit.detail["actor"]).startswith("cli:")


async def test_retry__of_a_transaction_that_is_not_parked__fails_clearly(
    store: PostgresLog, database_url: str
) -> None:
    await seed_one(store, "fine")
    result = run_tcc("retry", "fine", env=tcc_env(database_url))
    assert result.returncode == 1
    assert "this one is trying" in result.stderr.strip()


async def test_recover_once__finishes_due_work_and_exits(
    store: PostgresLog, database_url: str, participant: FakeParticipant
) -> None:
    await seed_one(store, "due")
    branch = participant.branch("b", with_try=False)
    await store.register_branch(
        "due",
        NewBranch(
            branch_id="b",
            name="b",
            try_url=None,
            confirm_url=branch["confirm_url"],
            cancel_url=branch["cancel_url"],
            payload=None,
            request_hash="b",
        ),
        10,
    )
    decided = await store.decide(
        "due", Decision.CONFIRM, reason=None, owner="gone", lease_ttl_s=0.1
    )
    assert decided.lease is not None
    await asyncio.sleep(0.3)  # the deciding coordinator "died": its lease has expired
    code, out, err = await run_tcc_async("recover", "--once", env=tcc_env(database_url))
    assert code == 0, err
    assert "due  confirmed" in out
    assert "1 transaction(s) handled" in out
    assert len(participant.calls_for("confirm")) == 1
    assert (await store.get("due")).status.value == "confirmed"


async def test_serve_workers__two_processes_share_one_port(
    database_url: str, tmp_path: Path
) -> None:
    proc = CoordinatorProcess(database_url, tmp_path, workers=2)
    await proc.start()
    try:
        # /readyz answers as soon as one worker is up; wait for the second as well.
        await eventually(
            lambda: _value(proc.logs().count('"coordinator_started"')), lambda n: n == 2
        )
        async with aiohttp.ClientSession() as http:
            for i in range(20):
                async with http.post(f"{proc.base}/v1/transactions", json={"gid": f"w{i}"}) as r:
                    assert r.status == 201
    finally:
        proc.stop()
    assert proc.proc is not None
    assert proc.proc.returncode == 0
    logs = proc.logs()
    owners = {
        json.loads(line)["owner"] for line in logs.splitlines() if '"coordinator_started"' in line
    }
    assert len(owners) == 2
    assert logs.count('"coordinator_stopped"') == 2
    assert logs.count('"transaction_begun"') == 20


async def _value(value: int) -> int:
    return value


async def test_resolve__marks_a_parked_transaction_done_from_the_command_line(
    store: PostgresLog, database_url: str
) -> None:
    await park(store, "manual")
    result = run_tcc("resolve", "manual", "--note", "fixed by hand", env=tcc_env(database_url))
    assert result.returncode == 0, result.stderr
    assert "manual is confirmed, resolved by hand" in result.stdout
    detail = await store.detail("manual")
    assert detail.events[-1].kind == "admin_resolved"
    assert str(detail.events[-1].detail["actor"]).startswith("cli:")
    again = run_tcc("resolve", "manual", "--note", "x", env=tcc_env(database_url))
    assert again.returncode == 1
    assert "this one is confirmed" in again.stderr


async def test_resolve_branch_and_retry_with_a_reason__from_the_command_line(
    store: PostgresLog, database_url: str
) -> None:
    branches = [
        NewBranch(
            branch_id=b,
            name=b,
            try_url=None,
            confirm_url="http://127.0.0.1:9/confirm",
            cancel_url="http://127.0.0.1:9/cancel",
            payload=None,
            request_hash=b,
        )
        for b in ("stock", "bank")
    ]
    await store.begin(
        NewTransaction(
            gid="two",
            service="ops",
            metadata={},
            timeout_s=60,
            call_timeout_s=None,
            request_hash="two",
            branches=branches,
        )
    )
    await store.decide("two", Decision.CONFIRM, reason=None, owner="cli-test", lease_ttl_s=30)
    async with store.connection() as conn:
        await conn.execute(
            "UPDATE tcc_transactions SET status = 'failed_to_confirm', next_attempt_at = NULL,"
            " lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL WHERE gid = 'two'"
        )
    env = tcc_env(database_url)
    result = run_tcc("resolve", "two", "--branch", "stock", "--note", "booked by hand", env=env)
    assert result.returncode == 0, result.stderr
    assert "branch stock resolved by hand; two is failed_to_confirm" in result.stdout
    bad = run_tcc("resolve", "two", "--branch", "no such", "--note", "x", env=env)
    assert (bad.returncode, bad.stderr.strip()) == (
        2,
        "tcc resolve: --branch must be 1-128 characters of A-Z a-z 0-9 . _ : -",
    )

    result = run_tcc("retry", "two", "--reason", "bank is back", env=env)
    assert result.returncode == 0, result.stderr
    detail = await store.detail("two")
    resolved, retried = detail.events[-2:]
    assert (resolved.kind, resolved.branch_id) == ("admin_resolved", "stock")
    assert retried.kind == "admin_retry"
    assert retried.detail is not None
    assert retried.detail["reason"] == "bank is back"
    listed = run_tcc("list", "--gid-prefix", "tw", "--dialect", "tcc", env=env)
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == ["two"]


async def finished_long_ago(store: PostgresLog, gid: str, days: float) -> None:
    """A cancelled transaction (no branches: the decision ends it) begun and ended ``days`` ago."""
    await seed_one(store, gid)
    decided = await store.decide(gid, Decision.CANCEL, reason="client", owner="t", lease_ttl_s=30)
    assert decided.lease is not None
    assert await store.finish_done_round(decided.lease, Decision.CANCEL, [], "t")
    async with store.connection() as conn:
        await conn.execute(
            "UPDATE tcc_transactions SET created_at = created_at - make_interval(days => $2),"
            " finished_at = finished_at - make_interval(days => $2) WHERE gid = $1",
            gid,
            days,
        )


async def test_prune__dry_run_counts_then_deletes_only_old_finished_ones(
    store: PostgresLog, database_url: str
) -> None:
    for n in range(3):
        await finished_long_ago(store, f"old-{n}", days=40)
    await finished_long_ago(store, "recent", days=5)
    await park(store, "parked")
    async with store.connection() as conn:  # parked long ago: still never pruned
        await conn.execute(
            "UPDATE tcc_transactions SET created_at = created_at - interval '90 days'"
            " WHERE gid = 'parked'"
        )
    env = tcc_env(database_url)

    dry = await run_tcc_async("prune", "--older-than", "30d", "--dry-run", env=env)
    assert dry == (0, "would delete 3 finished transactions older than 30d\n", "")
    assert len(await store.list(ListFilter(limit=100))) == 5

    done = await run_tcc_async("prune", "--older-than", "30d", env=env)
    assert done == (0, "deleted 3 finished transactions older than 30d\n", "")
    left = {t.gid for t in await store.list(ListFilter(limit=100))}
    assert left == {"recent", "parked"}
    async with store.connection() as conn:
        orphans = await conn.fetchval("SELECT count(*) FROM tcc_events WHERE gid LIKE 'old-%'")
    assert orphans == 0


@pytest.mark.parametrize("age", ["30", "30x", "0d", "-3d", "d", "1.5d", "\u00b2d", "99999999w"])
async def test_prune__an_age_it_cannot_read__one_line_and_exit_2(
    database_url: str, age: str
) -> None:
    code, stdout, stderr = await run_tcc_async(
        "prune", f"--older-than={age}", env=tcc_env(database_url)
    )
    assert (code, stdout) == (2, "")
    assert stderr.count("\n") == 1
    assert stderr.startswith("tcc prune: --older-than: ")


def test_a_database_without_the_log__is_one_line_saying_to_migrate(
    empty_database_url: str,
) -> None:
    result = run_tcc("list", env=tcc_env(empty_database_url))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tcc list: the database refused it:"), lines
    assert "run tcc migrate" in lines[0]
