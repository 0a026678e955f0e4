"""Sagas driven by DTM's own Python client (dtmcli.Saga, unmodified) against our coordinator,
with DTM-style participants: gid, trans_type, branch_id and op as query parameters, the
step's payload as the body, DTM's envelope as the answer. dtmcli is synchronous: it runs in a
worker thread while the coordinator and the participants serve on the test's loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestServer
from dtmcli import saga, utils

from participants import schema
from participants.http import TccCall, phase_handler
from tests.conftest import CoordinatorClient, MakeCoordinator
from tests.conftest import transaction_detail as v1
from tests.dtm.busi import (
    ERROR_500,
    FAILURE_409,
    FAILURE_WORD,
    ONGOING_425,
    ONGOING_WORD,
    SERVICES,
    ScriptedBusi,
    assert_actions_posted_in_order,
    dtm_query,
    dtm_url,
    ended,
    rows,
    submit_saga,
    three_steps,
)
from tests.dtm_participant import DtmReply
from tests.helpers import event_count, event_kinds, eventually


async def test_dtmcli_saga__success__every_action_once_in_order(
    coordinator: CoordinatorClient, busi: ScriptedBusi
) -> None:
    dtm = dtm_url(coordinator)
    gid = await submit_saga(dtm, busi)

    final = await eventually(lambda: v1(coordinator, gid), ended)
    assert (final["kind"], final["status"], final["dialect"]) == ("saga", "confirmed", "dtm")
    assert [(b["branch_id"], b["status"]) for b in final["branches"]] == [
        ("01", "confirmed"),
        ("02", "confirmed"),
        ("03", "confirmed"),
    ]
    assert busi.ops(gid) == [(s, "action") for s in SERVICES]
    # Each action is called only once the one before it has answered, with its payload.
    assert_actions_posted_in_order(busi, gid, "saga")

    shown = await dtm_query(dtm, gid)
    assert shown["transaction"]["trans_type"] == "saga"
    assert shown["transaction"]["status"] == "succeed"
    assert shown["transaction"]["finish_time"] is not None
    assert rows(shown) == {
        (f"{n:02d}", op): ("succeed" if op == "action" else "prepared")
        for n in (1, 2, 3)
        for op in ("action", "compensate")
    }
    # DTM's order of a step's rows: compensate, then action.
    assert [(b["branch_id"], b["op"]) for b in shown["branches"]][:2] == [
        ("01", "compensate"),
        ("01", "action"),
    ]


# --- (b) a step's action fails: compensate it and every step before it, in reverse -----------


@pytest.mark.parametrize("refusal", [FAILURE_409, FAILURE_WORD], ids=["409", "failure-word"])
@pytest.mark.parametrize("failing", [1, 2, 3])
async def test_dtmcli_saga__failing_action__compensates_it_and_those_before_in_reverse(
    coordinator: CoordinatorClient, busi: ScriptedBusi, failing: int, refusal: DtmReply
) -> None:
    dtm = dtm_url(coordinator)
    busi.script(SERVICES[failing - 1], "action", refusal)
    gid = await submit_saga(dtm, busi)

    final = await eventually(lambda: v1(coordinator, gid), ended)
    assert final["status"] == "cancelled"
    assert final["cancel_reason"] == f"action_failed: {failing:02d}"
    started = SERVICES[:failing]
    # The actions up to the failing one, then the compensations of the failing step and
    # every step before it, last first; the steps after it are never called at all.
    assert busi.ops(gid) == [(s, "action") for s in started] + [
        (s, "compensate") for s in reversed(started)
    ]
    compensations = [c for c in busi.calls if c.op == "compensate"]
    assert [c.query["branch_id"] for c in compensations] == [
        f"{n:02d}" for n in range(failing, 0, -1)
    ]
    for call in compensations:
        assert call.method == "POST"
        assert call.query["op"] == "compensate"
        assert call.query["trans_type"] == "saga"
        assert json.loads(call.body) == {"step": int(call.query["branch_id"])}
    assert [b["status"] for b in final["branches"]] == ["cancelled"] * failing + ["registered"] * (
        3 - failing
    )
    assert event_kinds(final).count("course_changed") == 1

    shown = await dtm_query(dtm, gid)
    assert shown["transaction"]["status"] == "failed"  # a failed saga, in DTM's words
    assert shown["transaction"]["rollback_time"] is not None
    assert f"{failing:02d}" in shown["transaction"]["rollback_reason"]
    # DTM's rows: the actions that ran 'succeed', the one refused 'failed', and the
    # compensation of each of them 'succeed'; the steps after it untouched.
    expected = {}
    for n in (1, 2, 3):
        action = "succeed" if n < failing else "failed" if n == failing else "prepared"
        expected[(f"{n:02d}", "action")] = action
        expected[(f"{n:02d}", "compensate")] = "succeed" if n <= failing else "prepared"
    assert rows(shown) == expected


# --- (c) a participant that fails for a while, then recovers ------------------------------


async def test_dtmcli_saga__action_erring_then_ongoing_then_done__retried_and_succeeds(
    coordinator: CoordinatorClient, busi: ScriptedBusi
) -> None:
    dtm = dtm_url(coordinator)
    busi.script("Stock", "action", ERROR_500, ERROR_500, ONGOING_425, ONGOING_WORD)
    gid = await submit_saga(dtm, busi)

    final = await eventually(lambda: v1(coordinator, gid), ended)
    assert final["status"] == "confirmed"
    # 500 is retried with backoff, ONGOING (425 or the word) at the normal interval; none
    # of them fails the step, and nothing is compensated.
    assert busi.ops(gid) == [
        ("Order", "action"),
        *[("Stock", "action")] * 5,
        ("Pay", "action"),
    ]
    assert final["phase_attempts"] == 5
    assert event_count(final, "action_call") == 7
    assert "course_changed" not in event_kinds(final)
    stock = final["branches"][1]
    assert (stock["status"], stock["attempts"]) == ("confirmed", 5)
    assert (await dtm_query(dtm, gid))["transaction"]["status"] == "succeed"


@pytest.mark.parametrize("answer", [ERROR_500, ONGOING_425], ids=["500", "ongoing"])
async def test_dtmcli_saga__retry_limit__counts_rounds_of_actions_then_compensates(
    coordinator: CoordinatorClient, busi: ScriptedBusi, answer: DtmReply
) -> None:
    dtm = dtm_url(coordinator)
    busi.default("Stock", "action", answer)

    def limited(s: saga.Saga) -> None:
        s.trans_base.retry_limit = 3  # dtmcli sends every attribute of trans_base

    gid = await submit_saga(dtm, busi, limited)
    final = await eventually(lambda: v1(coordinator, gid), ended)
    assert final["status"] == "cancelled"
    assert final["cancel_reason"].startswith("retry_limit")
    # Three rounds of actions in all (ONGOING ones count too), then the step that may have
    # started and the one before it are compensated.
    assert busi.ops(gid) == [
        ("Order", "action"),
        *[("Stock", "action")] * 3,
        ("Stock", "compensate"),
        ("Order", "compensate"),
    ]
    shown = await dtm_query(dtm, gid)
    assert shown["transaction"]["status"] == "failed"
    # Stock's action never answered for good: its row stays prepared, yet it is compensated.
    assert rows(shown) == {
        ("01", "action"): "succeed",
        ("01", "compensate"): "succeed",
        ("02", "action"): "prepared",
        ("02", "compensate"): "succeed",
        ("03", "action"): "prepared",
        ("03", "compensate"): "prepared",
    }


# --- (d) wait_result ----------------------------------------------------------------------


def wait_result(s: saga.Saga) -> None:
    s.trans_base.wait_result = True


async def test_dtmcli_saga__wait_result__success_returns_once_it_succeeded(
    coordinator: CoordinatorClient, busi: ScriptedBusi
) -> None:
    dtm = dtm_url(coordinator)
    busi.script("Pay", "action", ERROR_500)  # one retry, still within TCC_CONFIRM_WAIT_S
    gid = await submit_saga(dtm, busi, wait_result)
    # submit returned: the saga had already succeeded.
    assert (await v1(coordinator, gid))["status"] == "confirmed"
    assert busi.count(gid, "Pay", "action") == 2


async def test_dtmcli_saga__wait_result__failing_saga_raises_failure(
    coordinator: CoordinatorClient, busi: ScriptedBusi
) -> None:
    dtm = dtm_url(coordinator)
    busi.script("Stock", "action", FAILURE_409)

    def run() -> tuple[str, BaseException | None]:
        gid, s = three_steps(dtm, busi, wait_result)
        try:
            s.submit()
        except utils.DTMFailureError as exc:  # 409 FAILURE
            return gid, exc
        return gid, None

    gid, raised = await asyncio.to_thread(run)
    assert isinstance(raised, utils.DTMFailureError)
    # It answered once compensated.
    final = await v1(coordinator, gid)
    assert final["status"] == "cancelled"
    assert busi.ops(gid)[-2:] == [("Stock", "compensate"), ("Order", "compensate")]


async def test_dtmcli_saga__wait_result__not_done_in_time__is_409_and_it_goes_on(
    make_coordinator: MakeCoordinator, busi: ScriptedBusi
) -> None:
    coordinator = await make_coordinator(confirm_wait_s=0.5)
    dtm = dtm_url(coordinator)
    busi.default("Stock", "action", ERROR_500)

    def run() -> tuple[str, requests.Response]:
        gid, s = three_steps(dtm, busi, wait_result)
        body = dict(s.trans_base.__dict__)
        return gid, requests.post(f"{dtm}/submit", json=body, timeout=30)

    gid, answer = await asyncio.to_thread(run)
    assert answer.status_code == 409
    assert answer.json()["dtm_result"] == "FAILURE"
    assert "did not succeed in time" in answer.json()["message"]
    assert (await dtm_query(dtm, gid))["transaction"]["status"] == "submitted"

    busi.default("Stock", "action", DtmReply())  # the participant is back
    final = await eventually(lambda: v1(coordinator, gid), ended)
    assert final["status"] == "confirmed"
    assert busi.ops(gid).count(("Pay", "action")) == 1


# --- (e) a barrier-protected participant: compensation before its action --------------------

POOL = web.AppKey("pool", asyncpg.Pool)


@dataclass
class LateAction:
    """Holds the credit step's action before it reaches the barrier, as a slow network
    would; what the barrier answered once it was let through."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    answered: asyncio.Future[tuple[int, dict[str, Any]]] | None = None


async def record(conn: Any, call: TccCall, what: str) -> None:
    await conn.execute(
        "INSERT INTO ledger (gid, branch_id, what) VALUES ($1, $2, $3)",
        call.gid,
        call.branch_id,
        what,
    )


async def barrier_busi(pool: asyncpg.Pool, late: LateAction) -> TestServer:
    async def debit(conn: Any, call: TccCall) -> None:
        await record(conn, call, "debit")

    async def undo_debit(conn: Any, call: TccCall) -> None:
        await record(conn, call, "undo debit")

    async def credit(conn: Any, call: TccCall) -> None:
        await record(conn, call, "credit")

    async def undo_credit(conn: Any, call: TccCall) -> None:
        await record(conn, call, "undo credit")

    credit_action = phase_handler(POOL, "action", credit)

    async def held_credit(request: web.Request) -> web.StreamResponse:
        await request.read()  # the whole call has arrived; now it lingers on the way

        async def go_on() -> tuple[int, dict[str, Any]]:
            late.arrived.set()
            await late.release.wait()
            response = await credit_action(request)
            return response.status, json.loads(response.text or "null")

        task = asyncio.ensure_future(go_on())
        late.answered = task
        status, body = await asyncio.shield(task)
        return web.json_response(body, status=status)

    app = web.Application()
    app[POOL] = pool
    app.router.add_post("/debit/action", phase_handler(POOL, "action", debit))
    app.router.add_post("/debit/compensate", phase_handler(POOL, "compensate", undo_debit))
    app.router.add_post("/credit/action", held_credit)
    app.router.add_post("/credit/compensate", phase_handler(POOL, "compensate", undo_credit))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def busi_pool(database_url: str, tmp_path: Path) -> AsyncIterator[asyncpg.Pool]:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_ledger.sql").write_text(
        "CREATE TABLE ledger (n serial PRIMARY KEY, gid text, branch_id text, what text);\n"
    )
    await schema.migrate(database_url, "busi", migrations)
    pool = await schema.connect_pool(database_url, "busi")
    try:
        yield pool
    finally:
        await pool.close()


async def test_dtmcli_saga__barrier__compensation_before_its_action__empty_then_suspended(
    coordinator: CoordinatorClient, busi_pool: asyncpg.Pool
) -> None:
    dtm = dtm_url(coordinator)
    late = LateAction()
    server = await barrier_busi(busi_pool, late)
    base = str(server.make_url("")).rstrip("/")
    try:

        def run() -> str:
            gid = utils.gen_gid(dtm)
            s = saga.Saga(dtm, gid)
            s.add({"amount": 30}, f"{base}/debit/action", f"{base}/debit/compensate")
            s.add({"amount": 30}, f"{base}/credit/action", f"{base}/credit/compensate")
            # The saga must be done in 1 s; a call waits 2 s at most. The credit's action
            # times out, the deadline has passed: the saga compensates both steps.
            s.trans_base.timeout_to_fail = 1
            s.trans_base.request_timeout = 2
            s.submit()
            return str(gid)

        gid = await asyncio.to_thread(run)
        await asyncio.wait_for(late.arrived.wait(), timeout=15)
        final = await eventually(lambda: v1(coordinator, gid), ended)
        assert final["status"] == "cancelled"
        assert final["cancel_reason"].startswith("timeout")
        # The credit step may have started (its action was sent): it is compensated too.
        compensated = [e["branch_id"] for e in final["events"] if e["kind"] == "compensate_call"]
        assert compensated == ["02", "01"]

        ledger = [
            (r["branch_id"], r["what"])
            for r in await busi_pool.fetch("SELECT branch_id, what FROM ledger ORDER BY n")
        ]
        # The credit's compensation came first and found no action: nothing to undo.
        assert ledger == [("01", "debit"), ("01", "undo debit")]

        # Now the credit's action arrives, late: the barrier suspends it (409), no credit.
        late.release.set()
        assert late.answered is not None
        status, body = await asyncio.wait_for(late.answered, timeout=15)
        assert status == 409
        assert body["outcome"] == "suspended"
        assert [r["what"] for r in await busi_pool.fetch("SELECT what FROM ledger ORDER BY n")] == [
            "debit",
            "undo debit",
        ]
        barrier_rows = {
            (r["branch_id"], r["phase"]): r["written_by"]
            for r in await busi_pool.fetch("SELECT branch_id, phase, written_by FROM tcc_barrier")
        }
        assert barrier_rows == {
            ("01", "action"): "action",
            ("01", "compensate"): "compensate",
            ("02", "action"): "compensate",  # claimed by the compensation: the action is late
            ("02", "compensate"): "compensate",
        }
    finally:
        late.release.set()
        await server.close()


# --- a concurrent saga (raw HTTP: dtmcli's add_branch_order / set_concurrent are broken) -----


async def submit_concurrent(dtm: str, busi: ScriptedBusi, orders: dict[str, list[int]]) -> str:
    """The three-step saga, submitted concurrent with DTM's custom_data orders (step index ->
    the indexes it waits for)."""

    def run() -> str:
        gid, s = three_steps(dtm, busi)
        body = dict(s.trans_base.__dict__)
        body["custom_data"] = json.dumps({"concurrent": True, "orders": orders})
        utils.check_result(requests.post(f"{dtm}/submit", json=body, timeout=10))
        return str(gid)

    return await asyncio.to_thread(run)


async def test_dtm_concurrent_saga__orders__third_step_only_after_the_first_two(
    coordinator: CoordinatorClient, busi: ScriptedBusi
) -> None:
    dtm = dtm_url(coordinator)
    order_gate = busi.hold("Order", "action")  # step 1 answers only when the test says so

    gid = await submit_concurrent(dtm, busi, {"2": [0, 1]})
    # Steps 1 and 2 wait for nothing: both are called at once. Step 2 answers; step 1 is
    # still held, so step 3 waits.
    await eventually(
        lambda: asyncio.sleep(0, busi.trail),
        lambda trail: (
            ("answered", "Stock", "action", gid) in trail
            and ("arrived", "Order", "action", gid) in trail
        ),
    )
    assert ("Pay", "action") not in busi.ops(gid)
    order_gate.set()

    final = await eventually(lambda: v1(coordinator, gid), ended)
    assert final["status"] == "confirmed"
    assert final["options"]["after"] == {"03": ["01", "02"]}
    pay_arrived = busi.position("arrived", "Pay", "action", gid)
    assert busi.position("answered", "Order", "action", gid) < pay_arrived
    assert busi.position("answered", "Stock", "action", gid) < pay_arrived
    assert sorted(busi.ops(gid)) == sorted((s, "action") for s in SERVICES), (
        busi.trail,
        final["events"],
    )


async def test_dtm_concurrent_saga__a_step_runs_once_those_it_waits_for_are_done(
    coordinator: CoordinatorClient, busi: ScriptedBusi
) -> None:
    dtm = dtm_url(coordinator)
    order_gate = busi.hold("Order", "action")

    # Step 3 waits for step 2 only; step 1 is slow (held until step 3 has run).
    gid = await submit_concurrent(dtm, busi, {"2": [1]})
    try:
        # Well before the held call's timeout (request_timeout, 8 s here).
        await eventually(
            lambda: asyncio.sleep(0, busi.ops(gid)),
            lambda ops: ("Pay", "action") in ops,
            timeout_s=4,
        )
        assert (await v1(coordinator, gid))["branches"][1]["status"] == "confirmed"
    finally:
        order_gate.set()
    final = await eventually(lambda: v1(coordinator, gid), ended)
    assert final["status"] == "confirmed"


async def test_dtm_concurrent_saga__third_step_fails__compensates_it_then_the_first_two(
    coordinator: CoordinatorClient, busi: ScriptedBusi
) -> None:
    dtm = dtm_url(coordinator)
    busi.script("Pay", "action", FAILURE_409)

    gid = await submit_concurrent(dtm, busi, {"2": [0, 1]})
    final = await eventually(lambda: v1(coordinator, gid), ended)
    assert final["status"] == "cancelled"
    pay_undone = busi.position("answered", "Pay", "compensate", gid)
    # Steps 1 and 2 are compensated only after step 3, which waited for them, is.
    assert busi.position("arrived", "Order", "compensate", gid) > pay_undone
    assert busi.position("arrived", "Stock", "compensate", gid) > pay_undone
    assert sorted(c.query["branch_id"] for c in busi.calls if c.op == "compensate") == [
        "01",
        "02",
        "03",
    ]
