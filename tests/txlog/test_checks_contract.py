"""The schema's CHECK constraints (migrations/*.sql), one test each, on Postgres and on the
in-memory twin alike: what Postgres refuses, the twin refuses, and neither keeps anything of
the refused write. (The status, branch status, event repeats and alert kind CHECKs hold the
enums' words, which are all the core ever hands the log: tests/unit/test_vocabulary.py checks
the words, tests/txlog/test_memory.py the twin's table, tests/integration that the twin
knows every CHECK there is.)"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from coordinator.core.apikeys import Scope
from coordinator.core.errors import InvalidInput, NotFound
from coordinator.core.records import NewSession, OptionsUpdate
from coordinator.core.states import Decision, EventKind, GlobalStatus
from coordinator.txlog.interface import TransactionLog
from tests.txlog.test_contract import new_branch, new_txn

GOOD_ID = "a" * 128


@pytest.mark.parametrize(
    "gid", ["not a gid!", "", "a" * 129, "ends-in-a-newline\n", "naïve", "semi;colon"]
)
async def test_gid_check__a_gid_postgres_refuses__is_refused_and_nothing_is_kept(
    store: TransactionLog, gid: str
) -> None:
    with pytest.raises(InvalidInput, match="tcc_transactions_gid_check"):
        await store.begin(new_txn(gid, branches=[new_branch("b")]))
    with pytest.raises(NotFound):
        await store.get(gid)


async def test_gid_check__the_longest_gid_and_every_allowed_sign__are_taken(
    store: TransactionLog,
) -> None:
    for gid in (GOOD_ID, "A-z_0.9:x"):
        detail, created = await store.begin(new_txn(gid))
        assert created
        assert detail.transaction.gid == gid


@pytest.mark.parametrize("timeout_s", [0, -1, -0.001])
async def test_timeout_check__a_timeout_not_above_zero__is_refused(
    store: TransactionLog, timeout_s: float
) -> None:
    with pytest.raises(InvalidInput, match="tcc_transactions_timeout_s_check"):
        await store.begin(new_txn("g", timeout_s))
    with pytest.raises(NotFound):
        await store.get("g")


@pytest.mark.parametrize("call_timeout_s", [0, -5])
async def test_call_timeout_check__at_begin__a_call_timeout_not_above_zero_is_refused(
    store: TransactionLog, call_timeout_s: float
) -> None:
    new = dataclasses.replace(new_txn("g"), call_timeout_s=call_timeout_s)
    with pytest.raises(InvalidInput, match="tcc_transactions_call_timeout_s_check"):
        await store.begin(new)
    with pytest.raises(NotFound):
        await store.get("g")


async def test_call_timeout_check__given_with_a_decision__refuses_the_decision_too(
    store: TransactionLog,
) -> None:
    await store.begin(new_txn("g", branches=[new_branch("b", with_try=False)]))
    before = await store.detail("g")
    with pytest.raises(InvalidInput, match="tcc_transactions_call_timeout_s_check"):
        await store.decide(
            "g",
            Decision.CONFIRM,
            reason=None,
            owner="a",
            lease_ttl_s=30,
            options=OptionsUpdate({"x": 1}, 0),
        )
    after = await store.detail("g")
    assert after == before
    assert after.transaction.status is GlobalStatus.TRYING


@pytest.mark.parametrize("branch_id", ["bad id!", "", "b" * 129])
async def test_branch_id_check__at_begin__refuses_the_whole_begin(
    store: TransactionLog, branch_id: str
) -> None:
    with pytest.raises(InvalidInput, match="tcc_branches_branch_id_check"):
        await store.begin(new_txn("g", branches=[new_branch("ok"), new_branch(branch_id)]))
    with pytest.raises(NotFound):
        await store.get("g")


async def test_branch_id_check__when_registering__refuses_the_branch_alone(
    store: TransactionLog,
) -> None:
    await store.begin(new_txn("g"))
    with pytest.raises(InvalidInput, match="tcc_branches_branch_id_check"):
        await store.register_branch("g", new_branch("bad id!"), 10)
    detail = await store.detail("g")
    assert detail.branches == []
    assert [e.kind for e in detail.events] == [EventKind.BEGIN]
    branch, created = await store.register_branch("g", new_branch("b" * 128), 10)
    assert created
    assert branch.position == 0


def session_id(n: int) -> str:
    return hashlib.sha256(f"checked-{n}".encode()).hexdigest()


@pytest.mark.parametrize(
    ("new", "constraint"),
    [
        (NewSession("A" * 64, "ops", Scope.ADMIN, "d", None, 60), "id_check"),
        (NewSession(session_id(1) + "\n", "ops", Scope.ADMIN, "d", None, 60), "id_check"),
        (NewSession(session_id(2), "ops", Scope.SERVICE, "d", None, 60), "scope_check"),
        (NewSession(session_id(3), "ops", Scope.VIEWER, "d", None, 0), "check"),
        (NewSession(session_id(4), "ops", Scope.VIEWER, "d", None, -60), "check"),
    ],
    ids=["not-lower-hex", "trailing-newline", "service-scope", "no-time", "ended-already"],
)
async def test_session_checks__each_refuses_its_session(
    store: TransactionLog, new: NewSession, constraint: str
) -> None:
    with pytest.raises(InvalidInput, match=f'"tcc_console_sessions_{constraint}"'):
        await store.open_session(new)
    assert await store.list_sessions(include_ended=True, limit=10) == []
