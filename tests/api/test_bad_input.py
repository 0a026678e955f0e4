"""Hostile and careless input: always problem+json with a useful detail, never a 500."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import CoordinatorClient

GOOD_BRANCH = {
    "branch_id": "b",
    "try_url": "http://127.0.0.1:9/try",
    "confirm_url": "http://127.0.0.1:9/confirm",
    "cancel_url": "http://127.0.0.1:9/cancel",
}


async def problem_of(
    coordinator: CoordinatorClient,
    method: str,
    path: str,
    *,
    json: Any = None,
    data: bytes | str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    status, body, resp = await coordinator.request(
        method, path, json=json, data=data, headers=headers
    )
    assert resp.content_type == "application/problem+json", (status, body)
    assert isinstance(body, dict)
    assert body["status"] == status
    assert body["detail"]
    return status, body


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"gid": "x"', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
    ],
)
async def test_unreadable_body__is_400(
    coordinator: CoordinatorClient, raw: bytes, expected: str
) -> None:
    status, body = await problem_of(coordinator, "POST", "/v1/transactions", data=raw)
    assert status == 400
    assert expected in body["detail"]


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"surprise": 1}, "surprise", "unknown field"),
        ({"timeout_s": "ten"}, "timeout_s", "number"),
        ({"timeout_s": 0}, "timeout_s", "greater than 0"),
        ({"timeout_s": True}, "timeout_s", "number"),
        ({"gid": ""}, "gid", "pattern"),
        ({"gid": "has space"}, "gid", "pattern"),
        ({"gid": "x" * 129}, "gid", "pattern"),
        ({"gid": "ünïcode"}, "gid", "pattern"),
        ({"metadata": [1]}, "metadata", "object"),
        ({"service": ""}, "service", "at least 1"),
        ({"auto": True}, "(body)", "at least one branch"),
        ({"branches": [GOOD_BRANCH]}, "(body)", "auto"),
        ({"auto": True, "branches": [GOOD_BRANCH, GOOD_BRANCH]}, "(body)", "unique"),
        (
            {"auto": True, "branches": [{**GOOD_BRANCH, "try_url": "ftp://h/x"}]},
            "branches.0.try_url",
            "http",
        ),
        (
            {"auto": True, "branches": [{k: v for k, v in GOOD_BRANCH.items() if k != "try_url"}]},
            "branches.0.try_url",
            "required",
        ),
    ],
)
async def test_begin__invalid_field__is_422_naming_the_field(
    coordinator: CoordinatorClient, payload: dict[str, Any], field: str, message: str
) -> None:
    status, body = await problem_of(coordinator, "POST", "/v1/transactions", json=payload)
    assert status == 422
    fields = [e["field"] for e in body["errors"]]
    assert field in fields, body
    assert message in body["detail"], body


async def test_begin__timeout_above_the_maximum__is_422(coordinator: CoordinatorClient) -> None:
    status, body = await problem_of(
        coordinator, "POST", "/v1/transactions", json={"timeout_s": 999_999}
    )
    assert status == 422
    assert "timeout_s: must be at most 3600" in body["detail"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "http"),
        ("http://", "host"),
        ("javascript:alert(1)", "http"),
        ("http://user:pw@127.0.0.1/x", "credentials"),
    ],
)
async def test_register__bad_participant_url__is_422(
    coordinator: CoordinatorClient, url: str, message: str
) -> None:
    await coordinator.post("/v1/transactions", {"gid": "u"})
    status, body = await problem_of(
        coordinator,
        "POST",
        "/v1/transactions/u/try",
        json={**GOOD_BRANCH, "confirm_url": url},
    )
    assert status == 422
    assert "confirm_url" in body["detail"]
    assert message in body["detail"]


async def test_oversized_body__is_413(
    make_coordinator: Callable[..., Awaitable[CoordinatorClient]],
) -> None:
    coordinator = await make_coordinator(max_body_bytes=2048)
    status, body = await problem_of(
        coordinator, "POST", "/v1/transactions", json={"metadata": {"blob": "x" * 5000}}
    )
    assert status == 413
    assert "2048 bytes" in body["detail"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/transactions/bad%20gid", 400),
        ("POST", "/v1/transactions/" + "x" * 129 + "/confirm", 400),
        ("GET", "/v1/transactions/missing", 404),
        ("POST", "/v1/transactions/missing/confirm", 404),
        ("POST", "/v1/transactions/missing/cancel", 404),
        ("POST", "/v1/transactions/missing/branches", 422),
        ("GET", "/v1/nowhere", 404),
        ("DELETE", "/v1/transactions", 405),
    ],
)
async def test_bad_paths_and_methods__get_problems(
    coordinator: CoordinatorClient, method: str, path: str, status: int
) -> None:
    got, _ = await problem_of(coordinator, method, path)
    assert got == status


async def test_register_on_a_missing_transaction__is_404(coordinator: CoordinatorClient) -> None:
    status, body = await problem_of(
        coordinator, "POST", "/v1/transactions/missing/try", json=GOOD_BRANCH
    )
    assert status == 404
    assert "missing" in body["detail"]


async def test_confirm__with_fields__is_422(coordinator: CoordinatorClient) -> None:
    await coordinator.post("/v1/transactions", {"gid": "c"})
    status, body = await problem_of(
        coordinator, "POST", "/v1/transactions/c/confirm", json={"force": True}
    )
    assert status == 422
    assert "force: unknown field" in body["detail"]


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("status=bogus", 422, "status"),
        ("limit=0", 422, "limit"),
        ("limit=100000", 422, "limit"),
        ("created_from=yesterday", 422, "created_from"),
        ("created_from=2026-01-01T00:00:00", 400, "time zone"),
        ("cursor=%%%", 400, "cursor"),
        ("colour=blue", 422, "colour"),
    ],
)
async def test_list__bad_query__is_refused(
    coordinator: CoordinatorClient, query: str, status: int, message: str
) -> None:
    got, body = await problem_of(coordinator, "GET", f"/v1/transactions?{query}")
    assert got == status
    assert message in body["detail"]


async def test_nothing_bad__was_logged_by_the_bad_requests(
    coordinator: CoordinatorClient,
) -> None:
    """Refused requests leave no trace in the log."""
    await problem_of(coordinator, "POST", "/v1/transactions", json={"gid": "g", "x": 1})
    status, _ = await coordinator.get("/v1/transactions/g")
    assert status == 404


async def test_register__with_a_try_url__points_to_the_try_endpoint(
    coordinator: CoordinatorClient,
) -> None:
    await coordinator.post("/v1/transactions", {"gid": "reg"})
    status, body = await problem_of(
        coordinator, "POST", "/v1/transactions/reg/branches", json=GOOD_BRANCH
    )
    assert status == 422
    assert "POST .../try" in body["detail"]


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (b'{"service": "a\\u0000b"}', 422, "service: contains a NUL character"),
        (b'{"metadata": {"k": ["x", "\\u0000"]}}', 422, "metadata.k.1: contains a NUL"),
        (b'{"metadata": {"k\\u0000": 1}}', 422, "a key contains a NUL"),
        (b'{"metadata": {"n": NaN}}', 400, "NaN is not a JSON number"),
        (b'{"metadata": {"n": Infinity}}', 400, "Infinity is not a JSON number"),
        (b'{"metadata": {"n": 1e400}}', 422, "metadata.n: number out of range"),
        (b'{"metadata": {"d": ' + b"[" * 40 + b"]" * 40 + b"}}", 422, "nested deeper than 32"),
        (b'{"metadata": {"d": ' + b"[" * 100000 + b"]" * 100000 + b"}}", 400, "nested too deeply"),
    ],
)
async def test_begin__values_the_log_cannot_hold__are_refused(
    coordinator: CoordinatorClient, raw: bytes, status: int, message: str
) -> None:
    got, body = await problem_of(coordinator, "POST", "/v1/transactions", data=raw)
    assert got == status
    assert message in body["detail"]


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("service=%00", 422, "NUL"),
        ("created_from=0001-01-01T00:00:00%2B14:00", 400, "out of range"),
        ("cursor=WyIyMDI2LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgImFcdTAwMDAiXQ", 400, "cursor"),
    ],
)
async def test_list__hostile_query__is_refused(
    coordinator: CoordinatorClient, query: str, status: int, message: str
) -> None:
    got, body = await problem_of(coordinator, "GET", f"/v1/transactions?{query}")
    assert got == status
    assert message in body["detail"]
