"""`tcc chaos` with TCC transactions, sagas and messages mixed: nothing is lost.

The run itself (slow): real coordinators, participants and Postgres, killed while the three
kinds run, then its JSON report says every promise held. Its figures depend on the machine
and are never asserted beyond the invariants.

The checks it makes (fast): fed a log and a ledger that break one promise each, the checker
names exactly that one, so a clean run means something.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.core.errors import UsageError
from coordinator.core.states import BranchStatus, Decision, GlobalStatus
from coordinator.devtools.chaos import (
    KIND_FIGURES,
    ChaosConfig,
    ChaosRun,
    _Calls,
    _Ledger,
    _Txn,
    parse_kinds,
)
from coordinator.devtools.children import clean_env
from tests.processes import run_tcc_async

CONFIRMED, CANCELLED = GlobalStatus.CONFIRMED, GlobalStatus.CANCELLED
B_CONFIRMED, B_CANCELLED, B_REGISTERED = (
    BranchStatus.CONFIRMED,
    BranchStatus.CANCELLED,
    BranchStatus.REGISTERED,
)


# --- the run --------------------------------------------------------------------------


@pytest.mark.slow
async def test_chaos__tcc_sagas_and_messages_mixed_under_kills__lose_nothing() -> None:
    code, stdout, stderr = await run_tcc_async(
        "chaos",
        "--transactions",
        "120",
        "--concurrency",
        "8",
        "--fault-every-s",
        "1",
        "--time-limit-s",
        "90",
        "--seed",
        "11",
        "--json",
        env=clean_env(),
        timeout_s=180,
    )
    report = json.loads(stdout)
    assert code == 0, (report, stderr[-2000:])
    assert report["ok"] is True
    for name in ("lost", "stuck", "double_decisions", "disagreements"):
        assert report[name] == [], (name, report[name])
    # Faults struck while the load ran (the first as soon as a quarter had begun).
    assert report["coordinator_kills"] + report["participant_kills"] + report["outages"] > 0

    kinds = report["kinds"]
    assert set(kinds) == {"tcc", "saga", "msg"}
    for kind, figures in kinds.items():
        assert figures["transactions"] == 40, (kind, figures)
        assert set(KIND_FIGURES[kind]) <= set(figures), (kind, figures)
    tcc, saga, msg = kinds["tcc"], kinds["saga"], kinds["msg"]
    # Every one begun reached an agreed end (none parked: nothing gives up this soon).
    assert tcc["final confirmed"] + tcc["final cancelled"] == tcc["begins acknowledged"]
    ended_sagas = (
        saga["final confirmed (every action done)"] + saga["final cancelled (compensated)"]
    )
    assert ended_sagas == saga["begins acknowledged"]
    assert saga["steps done"] >= 2 * saga["final confirmed (every action done)"]
    acknowledged_messages = (
        msg["sent (not prepared) and accepted"] + msg["prepared and acknowledged"]
    )
    # A prepared message whose prepare went unanswered may be in the log too (then aborted).
    assert msg["final delivered"] + msg["final aborted"] >= acknowledged_messages
    assert msg["steps delivered"] == 2 * msg["final delivered"]
    assert sum(report["final"].values()) >= report["begun"]


# --- the checks -----------------------------------------------------------------------


def _calls(*answers: tuple[int, int]) -> _Calls:
    """A ledger entry from (id, answer) pairs in the order recorded."""
    ok = [i for i, answer in answers if answer == 200]
    return _Calls(
        calls=len(answers),
        ok=len(ok),
        refused=sum(answer == 409 for _, answer in answers),
        first_call=min(i for i, _ in answers),
        first_ok=min(ok, default=None),
        last_ok=max(ok, default=None),
    )


def _run(tmp_path: Path) -> ChaosRun:
    return ChaosRun(ChaosConfig(log_dir=tmp_path))


def _saga(status: GlobalStatus, wallet: BranchStatus, stock: BranchStatus) -> _Txn:
    return _Txn("saga", status, {"wallet": wallet, "stock": stock})


def _message(status: GlobalStatus, branch: BranchStatus) -> _Txn:
    return _Txn("msg", status, {"wallet": branch, "stock": branch})


def _disagreements(
    run: ChaosRun, gid: str, txn: _Txn, ledger: dict[tuple[str, str, str], _Calls]
) -> list[str]:
    check = {"saga": run._check_saga, "msg": run._check_message, "tcc": run._check_tcc}
    check[txn.kind](gid, txn, _Ledger(ledger))
    return run.report.disagreements


def test_check__a_saga_done_in_order__agrees(tmp_path: Path) -> None:
    run = _run(tmp_path)
    run.in_order.add("s")
    ledger = {
        ("s", "wallet", "try"): _calls((1, 500), (2, 200)),
        ("s", "stock", "try"): _calls((3, 200)),
    }
    assert _disagreements(run, "s", _saga(CONFIRMED, B_CONFIRMED, B_CONFIRMED), ledger) == []


def test_check__a_saga_compensated_in_reverse__agrees(tmp_path: Path) -> None:
    run = _run(tmp_path)
    run.in_order.add("s")
    ledger = {
        ("s", "wallet", "try"): _calls((1, 200)),
        ("s", "stock", "try"): _calls((2, 409)),
        ("s", "stock", "cancel"): _calls((3, 500), (4, 200)),
        ("s", "wallet", "cancel"): _calls((5, 200)),
    }
    assert _disagreements(run, "s", _saga(CANCELLED, B_CANCELLED, B_CANCELLED), ledger) == []


def test_check__a_saga_refused_at_its_first_step__compensates_that_step_only(
    tmp_path: Path,
) -> None:
    run = _run(tmp_path)
    run.in_order.add("s")
    ledger = {
        ("s", "wallet", "try"): _calls((1, 409)),
        ("s", "wallet", "cancel"): _calls((2, 200)),
    }
    txn = _saga(CANCELLED, B_CANCELLED, B_REGISTERED)
    assert _disagreements(run, "s", txn, ledger) == []


@pytest.mark.parametrize(
    ("txn", "ledger", "said"),
    [
        (  # a compensated saga with a step whose action ran and was never undone
            _saga(CANCELLED, B_CANCELLED, B_CANCELLED),
            {
                ("s", "wallet", "try"): _calls((1, 200)),
                ("s", "stock", "try"): _calls((2, 409)),
                ("s", "stock", "cancel"): _calls((3, 200)),
            },
            "s/wallet: its action was called, never compensated",
        ),
        (  # an action that landed after its compensation
            _saga(CANCELLED, B_CANCELLED, B_CANCELLED),
            {
                ("s", "wallet", "try"): _calls((1, 500), (4, 200)),
                ("s", "wallet", "cancel"): _calls((3, 200)),
            },
            "s/wallet: its action landed after its compensation",
        ),
        (  # a confirmed saga with a step compensated
            _saga(CONFIRMED, B_CONFIRMED, B_CONFIRMED),
            {
                ("s", "wallet", "try"): _calls((1, 200)),
                ("s", "stock", "try"): _calls((2, 200)),
                ("s", "stock", "cancel"): _calls((3, 200)),
            },
            "s/stock was compensated in a confirmed saga",
        ),
        (  # a confirmed saga whose participant never did a step
            _saga(CONFIRMED, B_CONFIRMED, B_CONFIRMED),
            {("s", "wallet", "try"): _calls((1, 200)), ("s", "stock", "try"): _calls((2, 500))},
            "s/stock: its action was never done in a confirmed saga",
        ),
        (  # in order, the second action before the first was done
            _saga(CONFIRMED, B_CONFIRMED, B_CONFIRMED),
            {("s", "wallet", "try"): _calls((2, 200)), ("s", "stock", "try"): _calls((1, 200))},
            "s: its second action ran before its first was done",
        ),
        (  # in order, the first compensated before the second was
            _saga(CANCELLED, B_CANCELLED, B_CANCELLED),
            {
                ("s", "wallet", "try"): _calls((1, 200)),
                ("s", "stock", "try"): _calls((2, 409)),
                ("s", "wallet", "cancel"): _calls((3, 200)),
                ("s", "stock", "cancel"): _calls((4, 200)),
            },
            "s: compensated its first step before its second",
        ),
    ],
)
def test_check__a_broken_saga__is_named(
    tmp_path: Path, txn: _Txn, ledger: dict[tuple[str, str, str], _Calls], said: str
) -> None:
    run = _run(tmp_path)
    run.in_order.add("s")
    assert _disagreements(run, "s", txn, ledger) == [said]


@pytest.mark.parametrize(
    ("txn", "ledger", "said"),
    [
        (
            _message(CANCELLED, B_CANCELLED),
            {("m", "stock", "confirm"): _calls((1, 500))},
            "m/stock was called in an aborted message",
        ),
        (
            _message(CONFIRMED, B_CONFIRMED),
            {
                ("m", "wallet", "confirm"): _calls((1, 200)),
                ("m", "stock", "confirm"): _calls((2, 500)),
            },
            "m/stock never delivered in a delivered message",
        ),
        (
            _message(CONFIRMED, B_CONFIRMED),
            {
                ("m", "wallet", "confirm"): _calls((2, 200)),
                ("m", "stock", "confirm"): _calls((1, 200)),
            },
            "m: its second step was delivered before its first",
        ),
    ],
)
def test_check__a_broken_message__is_named(
    tmp_path: Path, txn: _Txn, ledger: dict[tuple[str, str, str], _Calls], said: str
) -> None:
    run = _run(tmp_path)
    run.in_order.add("m")
    assert _disagreements(run, "m", txn, ledger) == [said]


def test_check__a_message_delivered_twice__agrees_and_is_counted(tmp_path: Path) -> None:
    run = _run(tmp_path)
    ledger = {
        ("m", "wallet", "confirm"): _calls((1, 200), (3, 200)),
        ("m", "stock", "confirm"): _calls((2, 200)),
    }
    txn = _message(CONFIRMED, B_CONFIRMED)
    assert _disagreements(run, "m", txn, ledger) == []
    run.kind_of["m"] = "msg"
    run._figures({"m": txn}, _Ledger(ledger))
    assert run.report.kinds["msg"]["steps delivered"] == 2
    assert run.report.kinds["msg"]["steps delivered more than once"] == 1


async def test_check__promises_against_the_log(tmp_path: Path) -> None:
    """A prepared message ends as its service decided, whether or not it was told; a saga
    answered as ended stays so; a begin acknowledged is in the log."""
    run = _run(tmp_path)
    run.kind_of |= {"m1": "msg", "m2": "msg", "s1": "saga", "gone": "tcc"}
    run.local_decision |= {"m1": Decision.CONFIRM, "m2": Decision.CANCEL}
    run.left_to_query.add("m1")
    run.acknowledged |= {"m1": "begun", "m2": "cancel", "s1": "confirm", "gone": "begun"}
    txns = {
        "m1": _message(CANCELLED, B_CANCELLED),
        "m2": _message(CANCELLED, B_CANCELLED),
        "s1": _saga(CANCELLED, B_CANCELLED, B_CANCELLED),
    }

    async def read() -> tuple[dict[str, _Txn], list[str], _Ledger]:
        return txns, [], _Ledger({})

    run._read = read  # type: ignore[method-assign]
    await run._check()
    assert run.report.lost == [
        "gone (begun, not in the log)",
        "s1 (confirm acknowledged, now cancelled)",
        "m1 (its service decided confirm, now cancelled)",
    ]
    assert not run.report.ok
    assert run.report.kinds["msg"]["left to the query"] == 1


def test_parse_kinds() -> None:
    assert parse_kinds("msg,tcc") == ("tcc", "msg")
    assert parse_kinds(" saga ") == ("saga",)
    with pytest.raises(UsageError, match="--kinds takes some of tcc,saga,msg; not xa"):
        parse_kinds("saga,xa")
