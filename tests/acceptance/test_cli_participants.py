"""`tcc participants` as an operator runs it: real subprocesses, a real database."""

from __future__ import annotations

import json

import pytest

from coordinator.core import breaker
from coordinator.settings import Settings
from coordinator.txlog.postgres import PostgresLog
from tests.processes import run_tcc, tcc_env

pytestmark = pytest.mark.slow

URL = "http://127.0.0.1:1/x"
TIMEOUT = ["--call-timeout-s"]


async def test_participants__register_list_show_reset_remove(
    store: PostgresLog, database_url: str
) -> None:
    env = tcc_env(database_url)
    made = run_tcc(
        "participants",
        "register",
        "stock",
        "--base-url",
        "http://127.0.0.1:8102/tcc",
        "--health-url",
        "http://127.0.0.1:8102/healthz",
        "--call-timeout-s",
        "3",
        env=env,
    )
    assert made.returncode == 0, made.stderr
    assert "registered: stock" in made.stdout
    assert "confirm        http://127.0.0.1:8102/tcc/confirm" in made.stdout

    await store.move_breaker(
        breaker.trip("stock", "5 calls failed in a row", 0, Settings().breaker_policy)
    )
    listed = run_tcc("participants", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.strip().splitlines()
    assert header.split()[:3] == ["NAME", "BREAKER", "CALLS/MIN"]
    assert row.split()[:2] == ["stock", "open"]
    as_json = json.loads(run_tcc("participants", "list", "--json", env=env).stdout)
    assert as_json["participants"][0]["breaker_reason"] == "5 calls failed in a row"
    shown = run_tcc("participants", "show", "stock", env=env)
    assert "breaker        open since" in shown.stdout
    assert "5 calls failed in a row" in shown.stdout

    reset = run_tcc("participants", "reset", "stock", env=env)
    assert reset.returncode == 0, reset.stderr
    assert "breaker of stock closed" in reset.stdout
    registered = await store.participant("stock")
    assert registered is not None
    assert registered.breaker_state is breaker.BreakerState.CLOSED

    removed = run_tcc("participants", "remove", "stock", env=env)
    assert removed.returncode == 0, removed.stderr
    assert await store.participant("stock") is None
    empty = run_tcc("participants", "list", env=env)
    assert "no participant is registered" in empty.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["participants", "register", "stock"], 1, "needs a base_url, or its confirm_url"),
        (["participants", "register", "a b", "--base-url", "http://127.0.0.1:1"], 2, "name"),
        (["participants", "register", "x", "--base-url", "ftp://127.0.0.1/x"], 2, "--base-url"),
        (["participants", "register", "x", "--base-url", "http://10.0.0.1/x"], 1, "base_url"),
        (
            ["participants", "register", "x", "--base-url", URL, "--call-timeout-s", "abc"],
            2,
            "--call",
        ),
        (
            ["participants", "register", "x", "--base-url", URL, "--call-timeout-s", "nan"],
            1,
            "posit",
        ),
        (["participants", "register", "unregistered", "--base-url", URL], 1, "choose another"),
        (["participants", "show", "nobody"], 1, "no participant 'nobody' is registered"),
        (["participants", "reset", "nobody"], 1, "no participant 'nobody' is registered"),
        (["participants", "remove", "nobody"], 1, "no participant 'nobody' is registered"),
    ],
)
def test_participants__bad_input__one_line_on_stderr(
    database_url: str, args: list[str], code: int, message: str
) -> None:
    result = run_tcc(*args, env=tcc_env(database_url))
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert lines[0].startswith("tcc participants: ")
