"""DTM's own Python client, unmodified, against our coordinator (it is synchronous:
it runs in a worker thread while the coordinator and participants serve)."""

from __future__ import annotations

import asyncio
import json

import pytest
import requests
from dtmcli import tcc, utils

from tests.conftest import CoordinatorClient
from tests.conftest import transaction_detail as v1
from tests.dtm_participant import DtmParticipant, DtmReply
from tests.helpers import eventually


def dtm_url(coordinator: CoordinatorClient) -> str:
    return coordinator.url("/api/dtmsvr")


async def test_dtmcli__successful_tcc__confirms_every_branch(
    coordinator: CoordinatorClient, dtm_busi: DtmParticipant
) -> None:
    dtm = dtm_url(coordinator)

    def run() -> str:
        def branches(t: tcc.Tcc) -> None:
            for service in ("TransOut", "TransIn"):
                t.call_branch(
                    {"amount": 30, "service": service},
                    dtm_busi.url(service, "try"),
                    dtm_busi.url(service, "confirm"),
                    dtm_busi.url(service, "cancel"),
                )

        return str(tcc.tcc_global_transaction(dtm, utils.gen_gid(dtm), branches))

    gid = await asyncio.to_thread(run)
    assert gid
    final = await eventually(lambda: v1(coordinator, gid), lambda d: d["status"] == "confirmed")
    assert final["dialect"] == "dtm"
    assert [b["branch_id"] for b in final["branches"]] == ["01", "02"]

    confirms = dtm_busi.calls_for("confirm", gid)
    assert len(confirms) == 2
    for call in confirms:
        assert call.method == "POST"
        assert call.query["op"] == "confirm"
        assert call.query["trans_type"] == "tcc"
        assert json.loads(call.body)["amount"] == 30  # the registered data, as the body
    assert dtm_busi.calls_for("cancel", gid) == []

    query = await asyncio.to_thread(requests.get, f"{dtm}/query", params={"gid": gid}, timeout=10)
    shown = query.json()
    assert shown["transaction"]["status"] == "succeed"
    assert {(b["branch_id"], b["op"], b["status"]) for b in shown["branches"]} == {
        ("01", "confirm", "succeed"),
        ("01", "cancel", "prepared"),
        ("02", "confirm", "succeed"),
        ("02", "cancel", "prepared"),
    }


async def test_dtmcli__failing_try__client_aborts_and_every_branch_is_cancelled(
    coordinator: CoordinatorClient, dtm_busi: DtmParticipant
) -> None:
    dtm = dtm_url(coordinator)
    dtm_busi.script("TransIn", "try", DtmReply(status=409, body='{"dtm_result": "FAILURE"}'))

    def run() -> tuple[str, str]:
        gid = utils.gen_gid(dtm)

        def branches(t: tcc.Tcc) -> None:
            for service in ("TransOut", "TransIn"):
                t.call_branch(
                    {"amount": 30},
                    dtm_busi.url(service, "try"),
                    dtm_busi.url(service, "confirm"),
                    dtm_busi.url(service, "cancel"),
                )

        return gid, tcc.tcc_global_transaction(dtm, gid, branches)

    gid, returned = await asyncio.to_thread(run)
    assert returned == ""  # dtmcli's way of saying it aborted
    final = await eventually(lambda: v1(coordinator, gid), lambda d: d["status"] == "cancelled")
    assert final["cancel_reason"] == "client"
    # Both branches were registered before their tries, so both get cancel.
    assert sorted(c.query["branch_id"] for c in dtm_busi.calls_for("cancel", gid)) == ["01", "02"]
    assert dtm_busi.calls_for("confirm", gid) == []
    shown = await asyncio.to_thread(
        lambda: requests.get(f"{dtm}/query", params={"gid": gid}, timeout=10).json()
    )
    assert shown["transaction"]["status"] == "failed"


async def test_dtmcli__client_never_submits__timeout_to_fail_cancels(
    coordinator: CoordinatorClient, dtm_busi: DtmParticipant
) -> None:
    dtm = dtm_url(coordinator)

    def run() -> str:
        gid = utils.gen_gid(dtm)
        utils.check_result(
            requests.post(
                f"{dtm}/prepare",
                json={"gid": gid, "trans_type": "tcc", "timeout_to_fail": 1},
                timeout=10,
            )
        )
        tcc.Tcc(dtm, gid).call_branch(
            {"amount": 5},
            dtm_busi.url("TransOut", "try"),
            dtm_busi.url("TransOut", "confirm"),
            dtm_busi.url("TransOut", "cancel"),
        )
        return str(gid)  # ... and the client goes away without submitting

    gid = await asyncio.to_thread(run)
    final = await eventually(
        lambda: v1(coordinator, gid), lambda d: d["status"] == "cancelled", timeout_s=15
    )
    assert final["cancel_reason"] == "timeout"
    assert len(dtm_busi.calls_for("cancel", gid)) == 1
    shown = await asyncio.to_thread(
        lambda: requests.get(f"{dtm}/query", params={"gid": gid}, timeout=10).json()
    )
    assert shown["transaction"]["status"] == "failed"
    assert shown["transaction"]["rollback_reason"] == "timeout"


@pytest.mark.parametrize("legacy", [False, True])
async def test_dtmcli_style_registration__older_endpoint_name_works_too(
    coordinator: CoordinatorClient, dtm_busi: DtmParticipant, legacy: bool
) -> None:
    dtm = dtm_url(coordinator)
    name = "registerTccBranch" if legacy else "registerBranch"

    def run() -> str:
        gid = utils.gen_gid(dtm)
        utils.check_result(
            requests.post(f"{dtm}/prepare", json={"gid": gid, "trans_type": "tcc"}, timeout=10)
        )
        utils.check_result(
            requests.post(
                f"{dtm}/{name}",
                json={
                    "gid": gid,
                    "branch_id": "01",
                    "trans_type": "tcc",
                    "status": "prepared",
                    "data": "",
                    "confirm": dtm_busi.url("S", "confirm"),
                    "cancel": dtm_busi.url("S", "cancel"),
                },
                timeout=10,
            )
        )
        utils.check_result(
            requests.post(
                f"{dtm}/submit",
                json={"gid": gid, "trans_type": "tcc", "wait_result": True},
                timeout=10,
            )
        )
        return str(gid)

    gid = await asyncio.to_thread(run)
    assert (await v1(coordinator, gid))["status"] == "confirmed"
    [call] = dtm_busi.calls_for("confirm", gid)
    assert call.method == "GET"  # no data: DTM calls with GET
