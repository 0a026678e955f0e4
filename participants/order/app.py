"""The order service: POST /checkout runs one TCC transaction over three branches. When the
order is paid (its confirm), a confirmation mail to the customer goes into its outbox in the
same database transaction; its relay hands it to the coordinator as a reliable message for
the notify sample. A cancelled checkout sends nothing."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
from aiohttp import web

from participants import outbox
from participants.barrier import Connection
from participants.client import (
    Conflict,
    CoordinatorClient,
    CoordinatorError,
    MessageStep,
    Transaction,
    TryFailed,
    TryRefused,
    Unavailable,
)
from participants.http import BusinessFn, Refused, TccCall, tcc_routes
from participants.outbox_relay import relay_in_background
from participants.service import POOL, database

MIGRATIONS = Path(__file__).with_name("migrations")


@dataclass(frozen=True)
class Peers:
    coordinator: str
    wallet: str
    inventory: str
    public: str  # this service's own URL, for its branch's try/confirm/cancel
    coordinator_key: str | None = None  # API key for the coordinator (not needed --insecure)
    notify: str | None = None  # the notify sample: confirmation mails go there; None: no mail

    @property
    def service(self) -> str | None:
        """The service name to give the coordinator: with a key, the key names the service."""
        return None if self.coordinator_key else "order"


PEERS = web.AppKey("peers", Peers)
CLIENT = web.AppKey("client", CoordinatorClient)


class CheckoutIn(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    order_id: str | None = pydantic.Field(
        default=None,
        pattern=r"^[A-Za-z0-9._:-]{1,128}$",
        description="Your idempotency key: a retried checkout with the same id is the same order",
    )
    customer: str = pydantic.Field(min_length=1, max_length=100)
    sku: str = pydantic.Field(min_length=1, max_length=100)
    qty: int = pydantic.Field(gt=0, le=1000)
    timeout_s: float | None = pydantic.Field(default=None, gt=0, le=3600)
    call_timeout_s: float | None = pydantic.Field(default=None, gt=0, le=120)


# --- the order as a participant -------------------------------------------------------


async def create_order(conn: Connection, call: TccCall) -> dict[str, Any]:
    p = call.payload
    if not isinstance(p, dict):
        raise Refused("payload must describe the order")
    await conn.execute(
        "INSERT INTO orders (id, customer, sku, qty, amount, status)"
        " VALUES ($1, $2, $3, $4, $5, 'pending')",
        call.gid,
        p["customer"],
        p["sku"],
        p["qty"],
        p["amount"],
    )
    return {"order": call.gid, "status": "pending"}


async def _move(conn: Connection, gid: str, status: str) -> dict[str, Any] | None:
    moved = await conn.fetchval(
        "UPDATE orders SET status = $2, updated_at = now() WHERE id = $1 AND status = 'pending'"
        " RETURNING id",
        gid,
        status,
    )
    return {"order": gid, "status": status} if moved else None


def mail_gid(order_gid: str) -> str:
    """The confirmation message's gid: one per order, however often the confirm runs."""
    gid = f"{order_gid}.mail"
    if len(gid) <= 128:  # the coordinator's longest gid
        return gid
    return f"mail.{hashlib.sha256(order_gid.encode()).hexdigest()}"


def confirmation(order: dict[str, Any], notify: str) -> MessageStep:
    gid, customer = order["id"], order["customer"]
    return MessageStep(
        "mail",
        url=f"{notify}/notify/action",
        payload={
            "to": f"{customer}@example.test",
            "subject": f"Your order {gid} is confirmed",
            "body": (
                f"Hello {customer},\n\nthank you for your order {gid}: {order['qty']} x"
                f" {order['sku']}, {order['amount']} paid.\n\nThe shop\n"
            ),
        },
    )


def make_mark_paid(peers: Peers) -> BusinessFn:
    async def mark_paid(conn: Connection, call: TccCall) -> dict[str, Any] | None:
        order = await conn.fetchrow(
            "UPDATE orders SET status = 'paid', updated_at = now()"
            " WHERE id = $1 AND status = 'pending' RETURNING id, customer, sku, qty, amount",
            call.gid,
        )
        if order is None:
            return None
        result: dict[str, Any] = {"order": call.gid, "status": "paid"}
        if peers.notify:
            # In this confirm's own transaction: the mail goes if and only if the order is paid.
            result["mail"] = await outbox.add(
                conn,
                mail_gid(call.gid),
                [confirmation(dict(order), peers.notify)],
                service=peers.service,
                metadata={"order": call.gid},
            )
        return result

    return mark_paid


async def mark_cancelled(conn: Connection, call: TccCall) -> dict[str, Any] | None:
    return await _move(conn, call.gid, "cancelled")


# --- the order as the initiator ----------------------------------------------------------


async def checkout(request: web.Request) -> web.Response:
    try:
        body = CheckoutIn.model_validate_json(await request.read())
    except pydantic.ValidationError as exc:
        return web.json_response({"error": exc.errors(include_url=False)}, status=422)
    price = await request.app[POOL].fetchval("SELECT price FROM catalog WHERE sku = $1", body.sku)
    if price is None:
        return web.json_response({"error": f"unknown sku {body.sku!r}"}, status=422)
    amount = price * body.qty
    peers = request.app[PEERS]
    branches = (
        (
            "order",
            peers.public,
            {"customer": body.customer, "sku": body.sku, "qty": body.qty, "amount": amount},
        ),
        ("payment", peers.wallet, {"account": body.customer, "amount": amount, "payee": "shop"}),
        ("stock", peers.inventory, {"sku": body.sku, "qty": body.qty}),
    )
    holder: list[Transaction] = []
    try:
        async with request.app[CLIENT].transaction(
            body.order_id,
            timeout_s=body.timeout_s,
            call_timeout_s=body.call_timeout_s,
            metadata={"customer": body.customer, "sku": body.sku, "qty": body.qty},
        ) as tx:
            holder.append(tx)
            for branch_id, base, payload in branches:
                await tx.try_branch(
                    branch_id,
                    try_url=f"{base}/tcc/try",
                    confirm_url=f"{base}/tcc/confirm",
                    cancel_url=f"{base}/tcc/cancel",
                    payload=payload,
                )
    except (TryRefused, TryFailed, Conflict) as exc:
        gid = holder[0].gid if holder else None
        return web.json_response(
            {"order_id": gid, "status": "cancelled", "reason": _reason(exc)},
            status=409 if isinstance(exc, Conflict) else 502,
        )
    except (Unavailable, CoordinatorError) as exc:
        # The outcome is unknown (the decision may be logged already): hand back the id so
        # the caller can look it up, or retry with it, instead of placing a second order.
        gid = holder[0].gid if holder else body.order_id
        status = 503 if isinstance(exc, Unavailable) else 502
        return web.json_response(
            {"order_id": gid, "status": "unknown", "error": exc.detail}, status=status
        )
    outcome = tx.outcome
    assert outcome is not None
    return web.json_response(
        {"order_id": tx.gid, "amount": amount, "transaction": outcome.status},
        status=200 if outcome.finished else 202,
    )


def _reason(exc: CoordinatorError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    reply = body.get("participant") or {}
    participant_says = reply.get("body") if isinstance(reply, dict) else None
    if isinstance(participant_says, dict) and "error" in participant_says:
        return str(participant_says["error"])
    return exc.detail


async def list_orders(request: web.Request) -> web.Response:
    rows = await request.app[POOL].fetch(
        "SELECT id, customer, sku, qty, amount, status FROM orders"
        " ORDER BY created_at DESC LIMIT 100"
    )
    return web.json_response([dict(r) for r in rows])


async def list_catalog(request: web.Request) -> web.Response:
    rows = await request.app[POOL].fetch("SELECT sku, price FROM catalog ORDER BY sku")
    return web.json_response([dict(r) for r in rows])


async def get_order(request: web.Request) -> web.Response:
    row = await request.app[POOL].fetchrow(
        "SELECT id, customer, sku, qty, amount, status FROM orders WHERE id = $1",
        request.match_info["id"],
    )
    if row is None:
        return web.json_response({"error": "no such order"}, status=404)
    return web.json_response(dict(row))


def create_app(database_url: str, peers: Peers, schema: str = "orders") -> web.Application:
    app = web.Application()
    app[PEERS] = peers
    app.cleanup_ctx.append(database(database_url, schema, MIGRATIONS))

    async def client(app: web.Application) -> AsyncIterator[None]:
        # With a key the coordinator names the service after it; without, say who we are.
        app[CLIENT] = CoordinatorClient(
            peers.coordinator, service=peers.service, api_key=peers.coordinator_key
        )
        yield
        await app[CLIENT].close()

    app.cleanup_ctx.append(client)
    # After the pool's: it stops before the pool closes.
    app.cleanup_ctx.append(
        relay_in_background(
            POOL,
            peers.coordinator,
            dsn=database_url,
            schema=schema,
            service=peers.service,
            api_key=peers.coordinator_key,
        )
    )
    app.add_routes(
        tcc_routes(
            POOL,
            "/tcc",
            try_=create_order,
            confirm=make_mark_paid(peers),
            cancel=mark_cancelled,
        )
    )
    app.router.add_post("/checkout", checkout)
    app.router.add_get("/orders", list_orders)
    app.router.add_get("/orders/{id}", get_order)
    app.router.add_get("/catalog", list_catalog)
    return app
