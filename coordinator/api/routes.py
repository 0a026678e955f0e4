"""Every URL the coordinator serves, in one place."""

from __future__ import annotations

from aiohttp import web

from coordinator.api import v1 as views


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/openapi.json", views.openapi_document)
    app.router.add_get("/metrics", views.metrics)
    app.router.add_post("/v1/transactions", views.begin)
    app.router.add_get("/v1/transactions", views.list_transactions)
    app.router.add_get("/v1/transactions/{gid}", views.get_transaction)
    app.router.add_get("/v1/transactions/{gid}/events", views.list_events)
    app.router.add_post("/v1/transactions/{gid}/try", views.try_branch)
    app.router.add_post("/v1/transactions/{gid}/branches", views.register_branch)
    app.router.add_post("/v1/transactions/{gid}/confirm", views.confirm)
    app.router.add_post("/v1/transactions/{gid}/cancel", views.cancel)
    app.router.add_post("/v1/transactions/{gid}/retry", views.retry)
    app.router.add_post("/v1/transactions/{gid}/resolve", views.resolve)
