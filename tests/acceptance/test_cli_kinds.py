"""`tcc list` and `tcc status` with sagas and messages: the real CLI, in a subprocess, on the
database of a real coordinator that ran them against a scripted participant."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import CoordinatorClient, transaction_detail
from tests.participant_server import FakeParticipant, Reply
from tests.processes import run_tcc_async, tcc_env

pytestmark = pytest.mark.slow


def steps(p: FakeParticipant, *pairs: tuple[str, str]) -> list[dict[str, Any]]:
    base = p.base_url()
    return [
        {
            "branch_id": step,
            "action_url": f"{base}/{service}/action",
            "compensate_url": f"{base}/{service}/compensate",
        }
        for step, service in pairs
    ]


async def seed(c: CoordinatorClient, p: FakeParticipant) -> None:
    """A TCC transaction left trying, a saga that succeeded, one compensated (its second
    action refused), a prepared message."""
    status, out = await c.post("/v1/transactions", {"gid": "plain", "timeout_s": 300})
    assert status == 201, out
    ok = {"gid": "trip-ok", "service": "shop", "steps": steps(p, ("book", "svc"), ("pay", "svc"))}
    status, out = await c.post("/v1/sagas", ok)
    assert (status, out["status"]) == (201, "confirmed"), out
    p.default("action", Reply(status=409, body={"error": "declined"}), service="refuse")
    undone = {"gid": "trip-undone", "steps": steps(p, ("book", "svc"), ("pay", "refuse"))}
    status, out = await c.post("/v1/sagas", undone)
    assert (status, out["status"]) == (201, "cancelled"), out
    held = {
        "gid": "note-held",
        "steps": [{"branch_id": "mail", "url": f"{p.base_url()}/notify/action"}],
        "prepared": True,
        "query_url": f"{p.base_url()}/notify/query",
        "timeout_s": 300,
    }
    status, out = await c.post("/v1/messages", held)
    assert status == 201, out


def table(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines()]


async def test_list__a_type_column__and_kind_filters_one_type(
    coordinator: CoordinatorClient, participant: FakeParticipant, database_url: str
) -> None:
    await seed(coordinator, participant)
    env = tcc_env(database_url)
    code, out, err = await run_tcc_async("list", env=env)
    assert code == 0, err
    rows = table(out)
    assert rows[0] == ["GID", "TYPE", "STATUS", "DIALECT", "SERVICE", "CREATED", "REASON"]
    assert {r[0]: (r[1], r[2]) for r in rows[1:]} == {
        "plain": ("tcc", "trying"),
        "trip-ok": ("saga", "confirmed"),
        "trip-undone": ("saga", "cancelled"),
        "note-held": ("msg", "trying"),
    }

    code, out, err = await run_tcc_async("list", "--kind", "saga", env=env)
    assert code == 0, err
    assert [r[0] for r in table(out)[1:]] == ["trip-undone", "trip-ok"]
    code, out, err = await run_tcc_async("list", "--kind", "msg", "--status", "trying", env=env)
    assert code == 0, err
    assert [r[0] for r in table(out)[1:]] == ["note-held"]
    code, out, err = await run_tcc_async("list", "--kind", "tcc", env=env)
    assert [r[0] for r in table(out)[1:]] == ["plain"]


@pytest.mark.parametrize("value", ["sagas", "TCC", ""])
async def test_list__a_kind_it_does_not_know__one_line_on_stderr_and_exit_2(
    database_url: str, value: str
) -> None:
    code, out, err = await run_tcc_async("list", "--kind", value, env=tcc_env(database_url))
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tcc list: --kind must be one of tcc, saga, msg")
    assert out == ""


async def test_status__a_compensated_saga__its_type_and_words(
    coordinator: CoordinatorClient, participant: FakeParticipant, database_url: str
) -> None:
    await seed(coordinator, participant)
    code, out, err = await run_tcc_async("status", "trip-undone", env=tcc_env(database_url))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "transaction trip-undone"
    assert lines[1].split(None, 1) == ["status", "cancelled: compensated (action_failed: pay)"]
    assert lines[2].split(None, 1) == ["type", "saga (steps in order)"]
    steps_table = {r[0]: r for r in table(out) if r and r[0] in ("STEP", "book", "pay")}
    assert steps_table["STEP"][:4] == ["STEP", "NAME", "STATUS", "CALLS"]
    assert steps_table["book"][2:4] == ["cancelled:", "compensated"]
    assert steps_table["pay"][2:4] == ["cancelled:", "compensated"]
    assert "BRANCH" not in out
    timeline = out.split("\ntimeline\n", 1)[1]
    for entry in ("action_call", "course_changed", "compensate_call", "action_failed: pay"):
        assert entry in timeline, entry


async def test_status__a_prepared_message_and_a_succeeded_saga__their_words(
    coordinator: CoordinatorClient, participant: FakeParticipant, database_url: str
) -> None:
    await seed(coordinator, participant)
    env = tcc_env(database_url)
    code, out, err = await run_tcc_async("status", "note-held", env=env)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].split(None, 1) == ["status", "trying: prepared"]
    assert lines[2].split(None, 1) == ["type", "msg (steps in order)"]
    mail = next(r for r in table(out) if r and r[0] == "mail")
    assert mail[2:5] == ["registered:", "to", "deliver"]

    code, out, err = await run_tcc_async("status", "trip-ok", env=env)
    assert code == 0, err
    assert out.splitlines()[1].split(None, 1) == ["status", "confirmed: succeeded"]
    book = next(r for r in table(out) if r and r[0] == "book")
    assert book[2:5] == ["confirmed:", "action", "done"]
    # The JSON is the API's detail, with the kind.
    code, out, err = await run_tcc_async("status", "trip-ok", "--json", env=env)
    assert code == 0, err
    assert '"kind": "saga"' in out


async def test_status__a_tcc_transaction__says_its_type_and_keeps_its_words(
    coordinator: CoordinatorClient, participant: FakeParticipant, database_url: str
) -> None:
    await seed(coordinator, participant)
    code, out, err = await run_tcc_async("status", "plain", env=tcc_env(database_url))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].split() == ["status", "trying"]
    assert lines[2].split() == ["type", "tcc"]
    assert "no branches" in out
    assert (await transaction_detail(coordinator, "plain"))["status"] == "trying"
