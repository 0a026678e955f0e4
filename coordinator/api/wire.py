"""Reading requests and writing responses: bodies bounded in size and rate, JSON the log can
hold, path parameters, cursors."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from coordinator.api.appkeys import SETTINGS
from coordinator.api.body import read_body_bytes
from coordinator.api.problems import BadRequest
from coordinator.api.schemas import is_valid_gid
from coordinator.core import jsonsafe

M = TypeVar("M", bound=BaseModel)


async def read_request(request: web.Request) -> bytes:
    """The raw body, bounded in size and in how slowly it may arrive."""
    settings = request.app[SETTINGS]
    return await read_body_bytes(
        request,
        max_bytes=settings.max_body_bytes,
        grace_s=settings.body_grace_s,
        min_bytes_per_s=settings.body_min_bytes_per_s,
    )


def parse_object(raw: bytes) -> dict[str, Any]:
    """A body as a JSON object the log can hold."""
    try:
        data = jsonsafe.parse(raw)
    except jsonsafe.UnreadableJson as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    jsonsafe.check_storable(data)
    return data


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object (an empty body is {})."""
    raw = await read_request(request)
    return parse_object(raw if raw.strip() else b"{}")


async def read_body(request: web.Request, model: type[M]) -> M:
    raw = await read_request(request)
    if not raw.strip():
        raw = b"{}"
    parse_object(raw)
    # JSON mode keeps JSON's rules (strict types, error messages that speak JSON).
    return model.model_validate_json(raw)


def path_gid(request: web.Request) -> str:
    gid = request.match_info["gid"]
    if not is_valid_gid(gid):
        raise BadRequest("gid must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return gid


def path_branch(request: web.Request) -> str:
    branch_id = request.match_info["branch_id"]
    if not is_valid_gid(branch_id):
        raise BadRequest("branch_id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return branch_id


def path_participant(request: web.Request) -> str:
    name = request.match_info["name"]
    if not is_valid_gid(name):
        raise BadRequest("a participant's name must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return name


def json_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=model.model_dump_json(), content_type="application/json"
    )


def encode_cursor(created_at: datetime, gid: str) -> str:
    raw = json.dumps([created_at.isoformat(), gid]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, gid = json.loads(raw)
        if not isinstance(gid, str) or not is_valid_gid(gid):
            raise ValueError("bad gid")
        return datetime.fromisoformat(created_at), gid
    except (ValueError, TypeError, binascii.Error) as exc:
        raise BadRequest("cursor: not a cursor this API returned") from exc
