"""Reliable messages driven by DTM's own Python client (dtmcli.Msg, unmodified) against our
coordinator: prepare and submit, do_and_submit, a prepared message never submitted (the
coordinator asks query_prepared), deliveries retried until they succeed. dtmcli is
synchronous: it runs in a worker thread while the coordinator and participants serve.

dtmcli's own barrier (dtmcli.barrier: BranchBarrier.call / query_prepared) writes MySQL
("insert ignore", double-quoted literals), so it cannot run on Postgres: the query_prepared
services here are plain handlers answering DTM's envelope, as a service would."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import requests
from dtmcli import msg, utils

from tests.conftest import CoordinatorClient
from tests.conftest import transaction_detail as v1
from tests.dtm.busi import (
    ERROR_500,
    FAILURE_409,
    FAILURE_WORD,
    ONGOING_425,
    ScriptedBusi,
    assert_actions_posted_in_order,
    dtm_query,
    dtm_url,
    ended,
    rows,
)
from tests.dtm_participant import DtmReply
from tests.helpers import event_count, event_kinds, eventually

SERVICES = ("Notify", "Points", "Audit")


def three_deliveries(
    dtm: str, busi: ScriptedBusi, configure: Callable[[msg.Msg], None] | None = None
) -> tuple[str, msg.Msg]:
    """A dtmcli message of three steps, one per service, with payload {"step": n}."""
    gid = utils.gen_gid(dtm)
    m = msg.Msg(dtm, gid)
    for n, service in enumerate(SERVICES, start=1):
        m.add({"step": n}, busi.url(service, "action"))
    if configure is not None:
        configure(m)
    return str(gid), m


def deliveries(busi: ScriptedBusi, gid: str) -> list[str]:
    return [s for s, op in busi.ops(gid) if op == "action"]


async def until_count(busi: ScriptedBusi, gid: str, service: str, op: str, n: int) -> None:
    await eventually(lambda: asyncio.sleep(0, busi.count(gid, service, op)), lambda c: c >= n)


# --- (a) prepare, then submit -----------------------------------------------------------


async def test_dtmcli_msg__prepare_then_submit__every_step_delivered_once_in_order(
    coordinator: CoordinatorClient, busi: ScriptedBusi
) -> None:
    dtm = dtm_url(coordinator)
    gid, m = await asyncio.to_thread(three_deliveries, dtm, busi)

    await asyncio.to_thread(m.prepare, busi.url("Busi", "query_prepared"))
    prepared = await v1(coordinator, gid)
    assert (prepared["kind"], prepared["status"], prepared["dialect"]) == ("msg", "trying", "dtm")
    assert (await dtm_query(dtm, gid))["transaction"]["status"] == "prepared"
    assert busi.calls == []  # held until submitted

    await asyncio.to_thread(m.submit)
    final = await eventually(lambda: v1(coordinator, gid), ended)
    assert final["status"] == "confirmed"
    assert [(b["branch_id"], b["status"]) for b in final["branches"]] == [
        ("01", "confirmed"),
        ("02", "confirmed"),
        ("03", "confirmed"),
    ]
    assert deliveries(busi, gid) == list(SERVICES)
    assert_actions_posted_in_order(busi, gid, "msg", SERVICES)
    assert busi.count(gid, "Busi", "query_prepared") == 0  # submitted in time: never asked

    shown = await dtm_query(dtm, gid)
    assert shown["transaction"]["trans_type"] == "msg"
    assert shown["transaction"]["status"] == "succeed"
    assert rows(shown) == {(f"{n:02d}", "action"): "succeed" for n in (1, 2, 3)}


async def test_dtmcli_msg__submit_without_prepare__delivered__wait_result_waits(
    coordinator: CoordinatorClient, busi: ScriptedBusi
) -> None:
    dtm = dtm_url(coordinator)
    busi.script("Points", "action", ERROR_500)

    def run() -> str:
        gid, m = three_deliveries(dtm, busi, lambda m: m.set_wait_result())
        m.submit()
        return gid

    gid = await asyncio.to_thread(run)
    # With wait_result, submit answered once every step was delivered.
    assert (await v1(coordinator, gid))["status"] == "confirmed"
    assert deliveries(busi, gid) == ["Notify", "Points", "Points", "Audit"]


async def test_dtm_msg__submitted__cannot_be_aborted(
    coordinator: CoordinatorClient, busi: ScriptedBusi
) -> None:
    dtm = dtm_url(coordinator)

    def run() -> tuple[str, requests.Response]:
        gid, m = three_deliveries(dtm, busi)
        m.submit()
        body = {"gid": gid, "trans_type": "msg"}
        return gid, requests.post(f"{dtm}/abort", json=body, timeout=10)

    gid, answer = await asyncio.to_thread(run)
    assert answer.status_code == 409
    assert answer.json()["dtm_result"] == "FAILURE"
    final = await eventually(lambda: v1(coordinator, gid), ended)
    assert final["status"] == "confirmed"
    assert deliveries(busi, gid) == list(SERVICES)


# --- (b) do_and_submit ------------------------------------------------------------------


async def test_dtmcli_msg__do_and_submit__business_done__delivered(
    coordinator: CoordinatorClient, busi: ScriptedBusi
) -> None:
    dtm = dtm_url(coordinator)
    done: list[str] = []

    def run() -> str:
        gid, m = three_deliveries(dtm, busi)

        def business(barrier: Any) -> None:
            # While the business runs, the message is prepared and nothing is delivered.
            shown = requests.get(f"{dtm}/query", params={"gid": gid}, timeout=10).json()
            done.append(shown["transaction"]["status"])
            assert (barrier.gid, barrier.branch_id, barrier.op) == (gid, "00", "msg")

        m.do_and_submit(busi.url("Busi", "query_prepared"), business)
        return gid

    gid = await asyncio.to_thread(run)
    assert done == ["prepared"]
    final = await eventually(lambda: v1(coordinator, gid), ended)
    assert final["status"] == "confirmed"
    assert deliveries(busi, gid) == list(SERVICES)
    assert busi.count(gid, "Busi", "query_prepared") == 0


async def test_dtmcli_msg__do_and_submit__business_fails__aborted_nothing_delivered(
    coordinator: CoordinatorClient, busi: ScriptedBusi
) -> None:
    dtm = dtm_url(coordinator)

    def run() -> tuple[str, BaseException | None]:
        gid, m = three_deliveries(dtm, busi)

        def business(barrier: Any) -> None:
            raise utils.DTMFailureError("insufficient balance")

        try:
            m.do_and_submit(busi.url("Busi", "query_prepared"), business)
        except utils.DTMFailureError as exc:  # dtmcli aborts, then raises it again
            return gid, exc
        return gid, None

    gid, raised = await asyncio.to_thread(run)
    assert isinstance(raised, utils.DTMFailureError)
    final = await v1(coordinator, gid)
    assert final["status"] == "cancelled"
    assert final["cancel_reason"] == "client"
    assert [b["status"] for b in final["branches"]] == ["registered"] * 3
    shown = await dtm_query(dtm, gid)
    assert shown["transaction"]["status"] == "failed"
    assert rows(shown) == {(f"{n:02d}", "action"): "prepared" for n in (1, 2, 3)}
    # An aborted message calls nobody, and nobody is asked about it.
    await asyncio.sleep(0.5)  # a few recovery scans (0.2 s) that must not deliver it
    assert busi.calls == []


@pytest.mark.parametrize(
    ("answer", "delivered"), [(DtmReply(), True), (FAILURE_409, False)], ids=["yes", "no"]
)
async def test_dtmcli_msg__do_and_submit__business_error__client_asks_query_prepared(
    coordinator: CoordinatorClient, busi: ScriptedBusi, answer: DtmReply, delivered: bool
) -> None:
    """An error other than FAILURE leaves it unknown whether the business committed: dtmcli
    asks the service's query_prepared itself, and submits or aborts by its answer."""
    dtm = dtm_url(coordinator)
    busi.script("Busi", "query_prepared", answer)

    def run() -> tuple[str, BaseException | None]:
        gid, m = three_deliveries(dtm, busi)

        def business(barrier: Any) -> None:
            raise RuntimeError("connection reset after commit?")

        try:
            m.do_and_submit(busi.url("Busi", "query_prepared"), business)
        except RuntimeError as exc:
            return gid, exc
        return gid, None

    gid, raised = await asyncio.to_thread(run)
    assert isinstance(raised, RuntimeError)
    [asked] = [c for c in busi.calls if c.op == "query_prepared"]
    assert asked.method == "GET"
    assert (asked.query["gid"], asked.query["op"]) == (gid, "msg")
    final = await eventually(lambda: v1(coordinator, gid), ended)
    if delivered:
        assert final["status"] == "confirmed"
        assert deliveries(busi, gid) == list(SERVICES)
    else:
        assert final["status"] == "cancelled"
        assert deliveries(busi, gid) == []


# --- (c) prepared, never submitted: the coordinator asks query_prepared ---------------------


def prepare_only(dtm: str, busi: ScriptedBusi) -> str:
    gid, m = three_deliveries(dtm, busi)
    m.trans_base.timeout_to_fail = 1  # asked after 1 s (DTM's default: 35 s)
    m.prepare(busi.url("Busi", "query_prepared"))
    return gid  # ... and the client goes away without submitting


def check_query_call(busi: ScriptedBusi, gid: str) -> None:
    for call in busi.calls_for("query_prepared", gid):
        assert call.method == "GET"
        assert call.query == {"gid": gid, "trans_type": "msg", "branch_id": "00", "op": "msg"}


@pytest.mark.parametrize(
    "yes", [DtmReply(), DtmReply(status=200, body="{}")], ids=["success", "plain-200"]
)
async def test_dtmcli_msg__prepared_never_submitted__query_says_success__delivered(
    coordinator: CoordinatorClient, busi: ScriptedBusi, yes: DtmReply
) -> None:
    dtm = dtm_url(coordinator)
    busi.script("Busi", "query_prepared", yes)
    gid = await asyncio.to_thread(prepare_only, dtm, busi)

    final = await eventually(lambda: v1(coordinator, gid), ended)
    assert final["status"] == "confirmed"
    assert busi.count(gid, "Busi", "query_prepared") == 1
    check_query_call(busi, gid)
    assert busi.ops(gid) == [("Busi", "query_prepared"), *((s, "action") for s in SERVICES)]
    assert (await dtm_query(dtm, gid))["transaction"]["status"] == "succeed"


@pytest.mark.parametrize("no", [FAILURE_409, FAILURE_WORD], ids=["409", "failure-word"])
async def test_dtmcli_msg__prepared_never_submitted__query_says_failure__aborted(
    coordinator: CoordinatorClient, busi: ScriptedBusi, no: DtmReply
) -> None:
    dtm = dtm_url(coordinator)
    busi.script("Busi", "query_prepared", no)
    gid = await asyncio.to_thread(prepare_only, dtm, busi)

    final = await eventually(lambda: v1(coordinator, gid), ended)
    assert final["status"] == "cancelled"
    assert final["cancel_reason"].startswith("query_refused")
    check_query_call(busi, gid)
    assert busi.ops(gid) == [("Busi", "query_prepared")]  # nothing delivered, ever
    shown = await dtm_query(dtm, gid)
    assert shown["transaction"]["status"] == "failed"
    assert shown["transaction"]["rollback_reason"].startswith("query_refused")


async def test_dtmcli_msg__prepared_never_submitted__ongoing_or_error__asked_again_later(
    coordinator: CoordinatorClient, busi: ScriptedBusi
) -> None:
    dtm = dtm_url(coordinator)
    busi.default("Busi", "query_prepared", ONGOING_425)
    gid = await asyncio.to_thread(prepare_only, dtm, busi)

    # "Not decided yet": asked again (at the normal interval), and it stays prepared.
    await until_count(busi, gid, "Busi", "query_prepared", 3)
    shown = await dtm_query(dtm, gid)
    assert shown["transaction"]["status"] == "prepared"
    assert (await v1(coordinator, gid))["status"] == "trying"

    # The service failing is no answer either: asked again later (with backoff).
    busi.default("Busi", "query_prepared", ERROR_500)
    asked = busi.count(gid, "Busi", "query_prepared")
    await until_count(busi, gid, "Busi", "query_prepared", asked + 2)
    still = await v1(coordinator, gid)
    assert still["status"] == "trying"
    assert "query_prepared" in event_kinds(still)
    assert event_count(still, "query_prepared") >= 4
    assert deliveries(busi, gid) == []

    busi.default("Busi", "query_prepared", DtmReply())  # decided: it committed
    final = await eventually(lambda: v1(coordinator, gid), ended)
    assert final["status"] == "confirmed"
    assert deliveries(busi, gid) == list(SERVICES)
    check_query_call(busi, gid)


async def test_dtmcli_msg__prepared_past_its_deadline__submitted_late__delivered(
    coordinator: CoordinatorClient, busi: ScriptedBusi
) -> None:
    dtm = dtm_url(coordinator)
    busi.default("Busi", "query_prepared", ONGOING_425)

    def run() -> str:
        gid, m = three_deliveries(dtm, busi)
        m.trans_base.timeout_to_fail = 1
        m.prepare(busi.url("Busi", "query_prepared"))
        return gid

    gid = await asyncio.to_thread(run)
    await until_count(busi, gid, "Busi", "query_prepared", 1)  # past its deadline, asked

    def submit() -> None:
        m = msg.Msg(dtm, gid)
        for n, service in enumerate(SERVICES, start=1):
            m.add({"step": n}, busi.url(service, "action"))
        m.submit()  # the client comes back late: still accepted

    await asyncio.to_thread(submit)
    final = await eventually(lambda: v1(coordinator, gid), ended)
    assert final["status"] == "confirmed"
    assert deliveries(busi, gid) == list(SERVICES)


# --- (d) deliveries are retried until they succeed --------------------------------------


async def test_dtmcli_msg__delivery_failing_a_few_times__retried_then_delivered(
    coordinator: CoordinatorClient, busi: ScriptedBusi
) -> None:
    dtm = dtm_url(coordinator)
    # Whatever the answer, FAILURE included: a message's delivery is retried, never undone.
    busi.script("Points", "action", ERROR_500, FAILURE_409, ONGOING_425, FAILURE_WORD)

    def run() -> str:
        gid, m = three_deliveries(dtm, busi)
        m.submit()
        return gid

    gid = await asyncio.to_thread(run)
    final = await eventually(lambda: v1(coordinator, gid), ended)
    assert final["status"] == "confirmed"
    assert deliveries(busi, gid) == ["Notify", *["Points"] * 5, "Audit"]
    assert final["branches"][1]["attempts"] == 5
    assert "course_changed" not in event_kinds(final)
    assert event_count(final, "action_call") == 7
    assert (await dtm_query(dtm, gid))["transaction"]["status"] == "succeed"
