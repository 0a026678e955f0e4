"""The OpenAPI 3.1 document of /v1, built from the same pydantic models that validate
requests and render responses, so it cannot drift from what the server does.

    python -m coordinator.api.openapi            # the JSON document
    python -m coordinator.api.openapi --markdown # docs/api.md
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from typing import Any

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from coordinator.api.schemas import (
    GID_PATTERN,
    BeginIn,
    BranchIn,
    BranchOut,
    EmptyIn,
    EventPageOut,
    EventsQuery,
    ListQuery,
    MessageIn,
    MessageStepIn,
    OverviewOut,
    OverviewQuery,
    ParticipantIn,
    ParticipantListOut,
    ParticipantOut,
    ReasonIn,
    ResolveIn,
    SagaIn,
    SagaStepIn,
    TransactionDetailOut,
    TransactionPageOut,
    TryBranchIn,
    TryOut,
)
from coordinator.api.sessions import COOKIE_NAME


class Problem(BaseModel):
    """RFC 9457 problem details, as every error of the API is answered."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = Field(description="What exactly is wrong, naming the field where there is one")
    errors: list[dict[str, str]] | None = Field(
        default=None, description="One {field, message} per invalid field"
    )


class Health(BaseModel):
    status: str
    database: str | None = None
    migrations: str | None = None
    warning: str | None = None


REQUEST_MODELS: list[type[BaseModel]] = [
    BeginIn,
    ParticipantIn,
    SagaIn,
    SagaStepIn,
    MessageIn,
    MessageStepIn,
    TryBranchIn,
    BranchIn,
    EmptyIn,
    ResolveIn,
    ReasonIn,
]
RESPONSE_MODELS: list[type[BaseModel]] = [
    TransactionDetailOut,
    ParticipantOut,
    ParticipantListOut,
    TransactionPageOut,
    EventPageOut,
    TryOut,
    BranchOut,
    OverviewOut,
    Problem,
    Health,
]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    request: type[BaseModel] | None = None
    responses: dict[int, tuple[str, type[BaseModel]]] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    query: type[BaseModel] | None = None
    secured: bool = True


DETAIL = TransactionDetailOut
OPERATIONS: list[Operation] = [
    Operation(
        "post",
        "/v1/transactions",
        "Begin a transaction (or run it whole with auto)",
        BeginIn,
        {
            201: ("Created (auto: phase two over)", DETAIL),
            200: ("An identical begin was made before", DETAIL),
            202: ("auto: decided, phase two still retrying", DETAIL),
        },
        (400, 401, 403, 409, 413, 422, 503),
    ),
    Operation(
        "post",
        "/v1/sagas",
        "Run a saga: its steps' actions in order (or as a graph); a step that fails for good"
        " has every step that may have started compensated, in reverse",
        SagaIn,
        {
            201: ("Created (with wait: over, succeeded or compensated)", DETAIL),
            200: ("An identical saga was begun before", DETAIL),
            202: ("wait: still running (retrying a step, or parked)", DETAIL),
        },
        (400, 401, 403, 409, 413, 422, 503),
    ),
    Operation(
        "post",
        "/v1/messages",
        "Send a reliable message: each step delivered at least once, in order (prepared:"
        " held until submitted, its service asked at query_url if not in time)",
        MessageIn,
        {
            201: ("Logged (and submitted unless prepared)", DETAIL),
            200: ("An identical message was sent before", DETAIL),
        },
        (400, 401, 403, 409, 413, 422, 503),
    ),
    Operation(
        "post",
        "/v1/messages/{gid}/submit",
        "Submit a prepared message: deliver it",
        EmptyIn,
        {200: ("Submitted (delivered, or delivering)", DETAIL)},
        (400, 401, 404, 409, 413, 422, 503),
    ),
    Operation(
        "post",
        "/v1/messages/{gid}/abort",
        "Abort a prepared message: it is never delivered",
        ReasonIn,
        {200: ("Aborted", DETAIL)},
        (400, 401, 404, 409, 413, 422, 503),
    ),
    Operation(
        "get",
        "/v1/transactions",
        "List transactions, newest first (admin)",
        None,
        {200: ("A page", TransactionPageOut)},
        (400, 401, 403, 422, 503),
        query=ListQuery,
    ),
    Operation(
        "get",
        "/v1/transactions/{gid}",
        "A transaction, its branches and timeline",
        None,
        {200: ("The transaction", DETAIL)},
        (400, 401, 404, 503),
    ),
    Operation(
        "get",
        "/v1/transactions/{gid}/events",
        "A page of a transaction's timeline, oldest first",
        None,
        {200: ("A page of events", EventPageOut)},
        (400, 401, 404, 422, 503),
        query=EventsQuery,
    ),
    Operation(
        "post",
        "/v1/transactions/{gid}/try",
        "Register a branch and call its try",
        TryBranchIn,
        {
            200: ("Tried", TryOut),
            202: ("The first try is in flight", TryOut),
            409: ("Refused by the participant, or cancelled", Problem),
            502: ("The try failed or timed out", Problem),
        },
        (400, 401, 404, 413, 422, 503),
    ),
    Operation(
        "post",
        "/v1/transactions/{gid}/branches",
        "Register a branch whose try the caller runs",
        BranchIn,
        {201: ("Registered", BranchOut), 200: ("Registered before", BranchOut)},
        (400, 401, 404, 409, 413, 422, 503),
    ),
    Operation(
        "post",
        "/v1/transactions/{gid}/confirm",
        "Decide confirm",
        EmptyIn,
        {
            200: ("Phase two is over", DETAIL),
            202: ("Decided; phase two still retrying or parked", DETAIL),
        },
        (400, 401, 404, 409, 413, 422, 503),
    ),
    Operation(
        "post",
        "/v1/transactions/{gid}/cancel",
        "Decide cancel (with a reason: an admin's operator cancel, audited)",
        ReasonIn,
        {
            200: ("Phase two is over", DETAIL),
            202: ("Decided; phase two still retrying or parked", DETAIL),
        },
        (400, 401, 404, 409, 413, 422, 503),
    ),
    Operation(
        "post",
        "/v1/transactions/{gid}/retry",
        "Send a failed_to_* transaction back into phase two (admin), saying why",
        ReasonIn,
        {200: ("Phase two is over", DETAIL), 202: ("Retrying", DETAIL)},
        (400, 401, 403, 404, 409, 413, 422, 503),
    ),
    Operation(
        "post",
        "/v1/transactions/{gid}/resolve",
        "Mark a failed_to_* transaction done after finishing its branches by hand (admin)",
        ResolveIn,
        {200: ("Resolved", DETAIL)},
        (400, 401, 403, 404, 409, 413, 422, 503),
    ),
    Operation(
        "post",
        "/v1/transactions/{gid}/branches/{branch_id}/resolve",
        "Mark one branch of a failed_to_* transaction done by hand (admin); the last one"
        " resolves the transaction",
        ResolveIn,
        {200: ("Resolved", DETAIL)},
        (400, 401, 403, 404, 409, 413, 422, 503),
    ),
    Operation(
        "get",
        "/v1/overview",
        "Open transactions, what needs attention, the last minutes (admin or viewer)",
        None,
        {200: ("The overview", OverviewOut)},
        (400, 401, 403, 422, 503),
        query=OverviewQuery,
    ),
    Operation(
        "get",
        "/v1/participants",
        "Every registered participant, its breaker, its calls over the last 15 minutes and"
        " the transactions waiting on it",
        None,
        {200: ("The registry", ParticipantListOut)},
        (401, 503),
    ),
    Operation(
        "get",
        "/v1/participants/{name}",
        "One registered participant and its breaker",
        None,
        {200: ("The participant", ParticipantOut)},
        (400, 401, 404, 503),
    ),
    Operation(
        "put",
        "/v1/participants/{name}",
        "Register a participant (a base URL or its phase URLs), or replace its registration"
        " (its breaker is kept); branches may then name it instead of giving URLs",
        ParticipantIn,
        {
            201: ("Registered", ParticipantOut),
            200: ("Registered again (replaced)", ParticipantOut),
        },
        (400, 401, 403, 413, 422, 503),
    ),
    Operation(
        "delete",
        "/v1/participants/{name}",
        "Take a participant out of the registry (branches that named it keep their URLs)",
        None,
        {200: ("Removed (as it was)", ParticipantOut)},
        (400, 401, 403, 404, 503),
    ),
    Operation(
        "post",
        "/v1/participants/{name}/breaker/reset",
        "Close a participant's circuit breaker: its calls resume at once, ramping up (admin)",
        EmptyIn,
        {200: ("Closed", ParticipantOut)},
        (400, 401, 403, 404, 422, 503),
    ),
    Operation(
        "get", "/healthz", "The process is up", None, {200: ("Up", Health)}, (401,), secured=False
    ),
    Operation(
        "get",
        "/readyz",
        "The database answers and migrations are current",
        None,
        {200: ("Ready", Health)},
        (401, 503),
        secured=False,
    ),
]

_REASONS = {
    400: "The request cannot be read (malformed JSON, bad gid in the path, bad cursor)",
    401: "No valid API key",
    403: "The key's scope does not allow this",
    404: "No such transaction (or not the caller's)",
    409: "Conflicts with what the log holds (the detail says why)",
    408: "The body arrived slower than the minimum rate",
    413: "The body is too large",
    422: "A field is invalid (the detail and errors name it)",
    503: "The transaction log is unavailable; retry after Retry-After seconds",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _content(model: type[BaseModel], media: str = "application/json") -> dict[str, Any]:
    return {media: {"schema": _ref(model)}}


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(op)}
    params: list[dict[str, Any]] = []
    if "{gid}" in op.path:
        params.append(
            {
                "name": "gid",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": GID_PATTERN},
            }
        )
    if "{name}" in op.path:
        params.append(
            {
                "name": "name",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": GID_PATTERN},
            }
        )
    if "{branch_id}" in op.path:
        params.append(
            {
                "name": "branch_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": GID_PATTERN},
            }
        )
    if op.query is not None:
        schema = op.query.model_json_schema()
        defs = schema.get("$defs", {})
        for name, prop in schema["properties"].items():
            params.append(
                {"name": name, "in": "query", "required": False, "schema": _inline(prop, defs)}
            )
    if params:
        out["parameters"] = params
    if op.request is not None:
        out["requestBody"] = {
            "required": op.request is not EmptyIn,
            "content": _content(op.request),
        }
    responses: dict[str, Any] = {}
    for code, (text, model) in op.responses.items():
        media = "application/problem+json" if model is Problem else "application/json"
        responses[str(code)] = {"description": text, "content": _content(model, media)}
    # Every operation that reads a body cuts one that arrives too slowly.
    errors = (*op.errors, 408) if op.request is not None else op.errors
    for code in errors:
        responses.setdefault(
            str(code),
            {
                "description": _REASONS[code],
                "content": _content(Problem, "application/problem+json"),
            },
        )
    out["responses"] = dict(sorted(responses.items()))
    out["security"] = [{"bearerAuth": []}, {"consoleSession": []}] if op.secured else []
    return out


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """Query parameters stand alone in OpenAPI: replace local $refs by what they point to."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.rsplit("/", 1)[1]], defs)
        return {k: _inline(v, defs) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def _operation_id(op: Operation) -> str:
    words = [w.strip("{}") for w in op.path.strip("/").split("/") if w != "v1"]
    return op.method + "_" + "_".join(words)


def build() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(m, "validation") for m in REQUEST_MODELS]
        + [(m, "serialization") for m in RESPONSE_MODELS],
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tcc-coordinator",
            "version": metadata.version("tcc-coordinator"),
            "description": "TCC (Try-Confirm-Cancel) transaction coordinator: the /v1 API.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from TCC_API_KEYS",
                },
                "consoleSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": COOKIE_NAME,
                    "description": "The console's session (POST /ui/login with an admin or"
                    " viewer key); a request that changes anything also needs the page's"
                    " X-CSRF-Token header",
                },
            },
        },
    }


@cache
def document_json(prefix: str = "") -> str:
    """The document, its ``servers`` naming the path prefix a gateway serves us under."""
    doc = build()
    doc["servers"] = [{"url": prefix or "/"}]
    return json.dumps(doc)


def markdown(doc: dict[str, Any]) -> str:
    """A readable API reference, generated from the document (docs/api.md)."""
    lines = [
        "# API reference (`/v1`)",
        "",
        "Generated from the OpenAPI document the server serves at `/openapi.json`",
        "(`python -m coordinator.api.openapi --markdown > docs/api.md`; a test keeps it in step).",
        "Every operation but the health checks takes `Authorization: Bearer <key>`;",
        "errors are `application/problem+json`.",
        "",
    ]
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            lines += [f"## `{method.upper()} {path}`", "", op["summary"] + ".", ""]
            body = op.get("requestBody")
            if body:
                ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                lines += [f"Request body: `{ref}`", ""]
                lines += _fields(doc["components"]["schemas"][ref])
            query = [p for p in op.get("parameters", []) if p["in"] == "query"]
            if query:
                lines += ["Query parameters: " + ", ".join(f"`{p['name']}`" for p in query), ""]
            lines += ["| status | meaning |", "|---|---|"]
            for code, response in op["responses"].items():
                lines.append(f"| {code} | {response['description']} |")
            lines.append("")
    return "\n".join(lines)


def _fields(schema: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    rows = ["| field | required | description |", "|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        text = prop.get("description", "")
        rows.append(f"| `{name}` | {'yes' if name in required else 'no'} | {text} |")
    return [*rows, ""]


if __name__ == "__main__":
    document = build()
    if "--markdown" in sys.argv:
        print(markdown(document), end="")
    else:
        print(json.dumps(document, indent=2))
