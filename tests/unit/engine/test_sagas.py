from __future__ import annotations

import dataclasses

from coordinator.core.apikeys import INSECURE
from coordinator.core.states import BranchStatus, GlobalStatus, Phase, TransactionKind
from coordinator.engine.runtime import Runtime
from coordinator.txlog.memory import ManualClock
from tests.unit.engine.scripted import ScriptedCaller, begin_request, branch, reply, url


def saga_request(*ids: str, **kw):
    req = begin_request(*(branch(i, with_try=False) for i in ids), **kw)
    return dataclasses.replace(req, kind=TransactionKind.SAGA, options={"concurrent": False})


async def test_saga_ok(runtime: Runtime, caller: ScriptedCaller) -> None:
    begun = await runtime.coordinator.begin_saga(saga_request("a", "b", "c"), INSECURE, wait=True)
    txn = begun.detail.transaction
    assert txn.status is GlobalStatus.CONFIRMED, begun.detail.events
    assert [c.url for c in caller.made(Phase.ACTION)] == [url(i, Phase.CONFIRM) for i in "abc"]


async def test_saga_fails(runtime: Runtime, caller: ScriptedCaller) -> None:
    caller.script(url("b", Phase.CONFIRM), Phase.ACTION, reply(409, "no"))
    begun = await runtime.coordinator.begin_saga(saga_request("a", "b", "c"), INSECURE, wait=True)
    txn = begun.detail.transaction
    assert txn.status is GlobalStatus.CANCELLED, [(e.kind, e.detail) for e in begun.detail.events]
    assert [c.url for c in caller.made(Phase.ACTION)] == [url(i, Phase.CONFIRM) for i in "ab"]
    assert [c.url for c in caller.made(Phase.COMPENSATE)] == [url(i, Phase.CANCEL) for i in "ba"]
    assert [b.status for b in begun.detail.branches] == [
        BranchStatus.CANCELLED,
        BranchStatus.CANCELLED,
        BranchStatus.REGISTERED,
    ]


async def test_msg_prepared_query(
    runtime: Runtime, caller: ScriptedCaller, clock: ManualClock
) -> None:
    req = begin_request(*(branch(i, with_try=False) for i in "ab"), timeout_s=5)
    req = dataclasses.replace(
        req, kind=TransactionKind.MSG, options={"query_url": "http://127.0.0.1:9001/q"}
    )
    begun = await runtime.coordinator.post_message(req, INSECURE, prepared=True)
    assert begun.detail.transaction.status is GlobalStatus.TRYING
    caller.script("http://127.0.0.1:9001/q", None, reply(503))
    clock.advance(6)
    await runtime.recovery.run_once(wait=True)
    txn = await runtime.coordinator.log.get(req.gid)
    assert txn.status is GlobalStatus.TRYING
    assert txn.phase_attempts == 1
    caller.script("http://127.0.0.1:9001/q", None, reply(200))
    clock.advance(60)
    await runtime.recovery.run_once(wait=True)
    await runtime.driver.settle(req.gid)
    txn = await runtime.coordinator.log.get(req.gid)
    assert txn.status is GlobalStatus.CONFIRMED
    assert [c.url for c in caller.made(Phase.ACTION)] == [url(i, Phase.CONFIRM) for i in "ab"]
