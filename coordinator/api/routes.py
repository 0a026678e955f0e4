"""Every URL the coordinator serves, for both APIs, in one table."""

from __future__ import annotations

from aiohttp import web

from coordinator.api import dtm, v1
from coordinator.api.console import login, pages

V1_ROUTES = [
    web.get("/healthz", v1.healthz),
    web.get("/readyz", v1.readyz),
    web.get("/openapi.json", v1.openapi_document),
    web.get("/metrics", v1.metrics_scrape),
    web.post("/v1/transactions", v1.begin),
    web.post("/v1/sagas", v1.begin_saga),
    web.post("/v1/messages", v1.post_message),
    web.post("/v1/messages/{gid}/submit", v1.submit_message),
    web.post("/v1/messages/{gid}/abort", v1.abort_message),
    web.get("/v1/transactions", v1.list_transactions),
    web.get("/v1/transactions/{gid}", v1.get_transaction),
    web.get("/v1/transactions/{gid}/events", v1.list_events),
    web.post("/v1/transactions/{gid}/try", v1.try_branch),
    web.post("/v1/transactions/{gid}/branches", v1.register_branch),
    web.post("/v1/transactions/{gid}/confirm", v1.confirm),
    web.post("/v1/transactions/{gid}/cancel", v1.cancel),
    web.post("/v1/transactions/{gid}/retry", v1.retry),
    web.post("/v1/transactions/{gid}/resolve", v1.resolve),
    web.post("/v1/transactions/{gid}/branches/{branch_id}/resolve", v1.resolve_branch),
    web.get("/v1/overview", v1.overview),
    web.get("/v1/participants", v1.list_participants),
    web.get("/v1/participants/{name}", v1.get_participant),
    web.put("/v1/participants/{name}", v1.register_participant),
    web.delete("/v1/participants/{name}", v1.remove_participant),
    web.post("/v1/participants/{name}/breaker/reset", v1.reset_breaker),
]

# DTM's protocol, on DTM's paths (TCC only); switched off with TCC_DTM_API=false.
DTM = "/api/dtmsvr"
DTM_ROUTES = [
    web.get(f"{DTM}/newGid", dtm.new_gid),
    web.post(f"{DTM}/prepare", dtm.prepare),
    web.post(f"{DTM}/registerBranch", dtm.register_branch),
    web.post(f"{DTM}/registerTccBranch", dtm.register_branch),  # older SDKs
    web.post(f"{DTM}/submit", dtm.submit),
    web.post(f"{DTM}/abort", dtm.abort),
    web.get(f"{DTM}/query", dtm.query),
    web.get(f"{DTM}/all", dtm.list_all),
    web.get(f"{DTM}/version", dtm.version),
    web.get("/api/ping", dtm.ping),
]

# The admin console: HTML pages; its actions are the /v1 operator endpoints above.
CONSOLE_ROUTES = [
    web.get("/ui", pages.to_home),
    web.get("/ui/", pages.overview),
    web.get("/ui/transactions", pages.transactions),
    web.get("/ui/transactions/{gid}", pages.transaction),
    web.get("/ui/transactions/{gid}/timeline", pages.timeline),
    web.get("/ui/participants", pages.participants),
    web.get("/ui/login", login.login_form),
    web.post("/ui/login", login.login),
    web.post("/ui/logout", login.logout),
    web.get("/ui/static/{name}", pages.static_file),
    web.get("/favicon.ico", pages.favicon),
]


def setup_routes(app: web.Application, *, dtm_api: bool) -> None:
    app.add_routes(V1_ROUTES)
    app.add_routes(CONSOLE_ROUTES)
    if dtm_api:
        app.add_routes(DTM_ROUTES)
