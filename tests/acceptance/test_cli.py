"""The `tcc` command as an operator runs it: real subprocesses, real database."""

from __future__ import annotations

import pytest

from coordinator.models import NewTransaction
from coordinator.states import Decision
from coordinator.store import Store
from tests.processes import run_tcc, tcc_env

pytestmark = pytest.mark.slow


async def seed(store: Store) -> None:
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
    store: Store, database_url: str
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


async def test_list__filters_by_status(store: Store, database_url: str) -> None:
    await seed(store)
    result = run_tcc("list", "--status", "trying", env=tcc_env(database_url))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["GID", "STATUS", "SERVICE", "CREATED", "REASON"]
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
