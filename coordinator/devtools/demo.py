"""`tcc demo`: scripted scenarios against a private copy of the `tcc up` stack.

It starts its own embedded Postgres, coordinator, wallet, inventory and order
services on free ports (so it never disturbs a running `tcc up`), plays four
scenarios and prints what happened to each, then shows balances and stock before
and after to prove nothing was lost or double-spent.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from coordinator.core.states import FINAL_STATUSES, GlobalStatus
from coordinator.devtools.children import free_port
from coordinator.devtools.stack import Ports, Stack
from coordinator.report import columns
from coordinator.txlog.postgres import PostgresLog
from participants.client import CoordinatorClient

Say = Callable[[str], None]


class Demo:
    def __init__(self, stack: Stack, http: aiohttp.ClientSession, store: PostgresLog, say: Say):
        self.stack = stack
        self.http = http
        self.store = store
        self.say = say

    async def get(self, service: str, path: str) -> Any:
        async with self.http.get(self.stack.url(service) + path) as resp:
            return await resp.json()

    async def checkout(self, **order: Any) -> tuple[int, dict[str, Any]]:
        self.say(f"  POST /checkout {order}")
        started = time.monotonic()
        async with self.http.post(self.stack.url("order") + "/checkout", json=order) as resp:
            body: dict[str, Any] = await resp.json()
            self.say(f"  -> {resp.status} {body}  ({time.monotonic() - started:.1f} s)")
            return resp.status, body

    async def status(self, gid: str) -> GlobalStatus:
        return (await self.store.get(gid)).status

    async def wait_final(self, gid: str, timeout_s: float = 60) -> GlobalStatus:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = await self.status(gid)
            if status in FINAL_STATUSES:
                return status
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{gid} did not finish within {timeout_s:g}s")

    async def trace(self, gid: str) -> None:
        detail = await self.store.detail(gid)
        t = detail.transaction
        reason = f" ({t.cancel_reason})" if t.cancel_reason else ""
        self.say(f"  transaction {gid}: {t.status.value}{reason}")
        for e in detail.events:
            what = e.kind.value
            if e.branch_id:
                what += f" {e.branch_id}"
            if e.http_status is not None:
                what += f" -> HTTP {e.http_status}"
            elif e.error:
                what += f" -> {e.error[:60]}"
            extra = {
                k: v
                for k, v in e.detail.items()
                if k in ("decision", "reason", "late") and v not in (None, False)
            }
            if extra:
                what += f"  {extra}"
            self.say(f"    {e.at.strftime('%H:%M:%S.%f')[:-3]}  {what}")

    async def snapshot(self) -> dict[str, Any]:
        return {
            "accounts": await self.get("wallet", "/accounts"),
            "items": await self.get("inventory", "/items"),
        }

    # --- the scenarios ---------------------------------------------------------------

    async def successful_order(self) -> None:
        self.say("\n1. A successful order: alice buys 2 books")
        status, body = await self.checkout(customer="alice", sku="book", qty=2)
        assert status == 200, body
        await self.trace(body["order_id"])

    async def refused_order(self) -> None:
        self.say("\n2. Refused for insufficient funds: bob (20 in his wallet) buys 3 books (36)")
        status, body = await self.checkout(customer="bob", sku="book", qty=3)
        assert status == 409, body
        self.say("  The wallet refused the try, so the coordinator cancelled every branch;")
        self.say("  the wallet's own cancel is an empty compensation (its try changed nothing).")
        await self.wait_final(body["order_id"])
        await self.trace(body["order_id"])

    async def crash_during_confirm(self) -> None:
        self.say("\n3. The wallet crashes during confirm; the coordinator finishes once it is back")
        self.say("   (the demo plays the order service's part step by step to kill in between)")
        urls = {name: self.stack.url(name) + "/tcc" for name in ("order", "wallet", "inventory")}
        async with CoordinatorClient(self.stack.url("coordinator"), service="demo") as tcc:
            state = await tcc.begin(timeout_s=60)
            gid = state.gid
            for branch_id, service, payload in (
                ("order", "order", {"customer": "alice", "sku": "mug", "qty": 1, "amount": 8}),
                ("payment", "wallet", {"account": "alice", "amount": 8, "payee": "shop"}),
                ("stock", "inventory", {"sku": "mug", "qty": 1}),
            ):
                base = urls[service]
                await tcc.try_branch(
                    gid,
                    branch_id,
                    try_url=f"{base}/try",
                    confirm_url=f"{base}/confirm",
                    cancel_url=f"{base}/cancel",
                    payload=payload,
                )
                self.say(f"  try {branch_id}: tried")
            self.stack.services["wallet"].kill()
            self.say("  wallet: killed (SIGKILL)")
            outcome = await tcc.confirm(gid)
            self.say(f"  confirm -> {outcome.status} (the decision is logged; wallet unreachable)")
            await asyncio.sleep(2)
            self.say(f"  two seconds later: {await self.status(gid)}; restarting the wallet")
            await self.stack.restart("wallet")
            self.say(f"  -> {await self.wait_final(gid)}")
        await self.trace(gid)

    async def hanging_try(self) -> None:
        self.say("\n4. The inventory hangs in try; the 2 s deadline cancels the transaction")
        self.stack.services["inventory"].pause()
        self.say("  inventory: paused (SIGSTOP): it accepts connections but answers nothing")
        status, body = await self.checkout(
            customer="alice", sku="book", qty=1, timeout_s=2, call_timeout_s=4
        )
        assert status in (409, 502), body  # the try timed out: the checkout failed
        gid = body["order_id"]
        self.say(
            f"  meanwhile the coordinator decided: {await self.status(gid)} "
            f"({(await self.store.get(gid)).cancel_reason}); the inventory's cancel waits"
        )
        self.stack.services["inventory"].resume()
        self.say("  inventory: resumed (SIGCONT): it now sees the late try and the cancel;")
        self.say("  its barrier makes sure the late try cannot leave stock reserved")
        self.say(f"  -> {await self.wait_final(gid)}")
        await self.trace(gid)


def _totals(snapshot: dict[str, Any]) -> tuple[int, dict[str, int], int, int]:
    money = sum(a["balance"] + a["frozen"] for a in snapshot["accounts"])
    units = {i["sku"]: i["stock"] + i["reserved"] + i["sold"] for i in snapshot["items"]}
    frozen = sum(a["frozen"] for a in snapshot["accounts"])
    reserved = sum(i["reserved"] for i in snapshot["items"])
    return money, units, frozen, reserved


def _show(say: Say, title: str, snapshot: dict[str, Any]) -> None:
    say(f"\n{title}")
    rows = [["ACCOUNT", "BALANCE", "FROZEN"]]
    rows += [[a["id"], str(a["balance"]), str(a["frozen"])] for a in snapshot["accounts"]]
    say(columns(rows))
    rows = [["ITEM", "STOCK", "RESERVED", "SOLD"]]
    rows += [
        [i["sku"], str(i["stock"]), str(i["reserved"]), str(i["sold"])] for i in snapshot["items"]
    ]
    say(columns(rows))


async def run_demo(say: Say = print, data_root: Path | None = None) -> bool:
    """Play every scenario; True when the books balance at the end."""
    own_root = data_root is None
    root = data_root or Path(tempfile.mkdtemp(prefix="tcc-demo-"))
    ports = Ports(free_port(), free_port(), free_port(), free_port())
    stack = Stack(root / "pgdata", ports, temporary=True)
    say(f"Starting a private stack (Postgres, coordinator, wallet, inventory, order) in {root}")
    await stack.start()
    try:
        assert stack.database is not None
        store = await PostgresLog.connect(stack.database.url, 1, 4)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
                demo = Demo(stack, http, store, say)
                before = await demo.snapshot()
                _show(say, "Before:", before)
                scenarios: list[Callable[[], Awaitable[None]]] = [
                    demo.successful_order,
                    demo.refused_order,
                    demo.crash_during_confirm,
                    demo.hanging_try,
                ]
                for scenario in scenarios:
                    await scenario()
                after = await demo.snapshot()
                _show(say, "After:", after)
                orders = await demo.get("order", "/orders")
        finally:
            await store.close()
    except BaseException:
        say(f"The demo stopped early; its logs are in {stack.log_dir}")
        raise
    finally:
        await stack.stop()
    money_before, units_before, _, _ = _totals(before)
    money_after, units_after, frozen, reserved = _totals(after)
    say(
        "\nOrders: "
        + ", ".join(
            f"{o['customer']} {o['qty']}x{o['sku']} {o['status']}" for o in reversed(orders)
        )
    )
    balanced = (
        (money_before, units_before) == (money_after, units_after) and not frozen and not reserved
    )
    if balanced:
        say(
            f"Nothing lost or double-spent: money {money_before} before and {money_after} after, "
            f"units per item {units_before} before and after, nothing left frozen or reserved."
        )
    else:
        say(
            f"BOOKS DO NOT BALANCE: money {money_before} -> {money_after}, units {units_before} -> "
            f"{units_after}, frozen {frozen}, reserved {reserved}"
        )
    if balanced and own_root:
        shutil.rmtree(root, ignore_errors=True)
    elif not balanced:
        say(f"The logs of every service are in {stack.log_dir}")
    return balanced
