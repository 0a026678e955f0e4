"""The console's sessions and the guard, without a browser: logging in, what a session
cookie holds and how long it lasts, refusals, and protection against cross-site requests."""

from __future__ import annotations

import logging
import time

import pytest
from structlog.testing import capture_logs

from coordinator.api.appkeys import SESSIONS
from coordinator.api.guard import same_origin
from coordinator.core.apikeys import ApiKey, Scope, hash_key
from tests.conftest import CoordinatorClient
from tests.console.helpers import (
    KEYS,
    SECURED,
    MakeCoordinator,
    bearer,
    begin_trying,
    csrf_token,
    key_config,
    login,
    send,
    status_of,
)


@pytest.fixture
async def console(make_coordinator: MakeCoordinator) -> CoordinatorClient:
    return await make_coordinator(**SECURED)


# --- logging in ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "scope"), [("ops", "admin"), ("eyes", "viewer")])
async def test_login__with_an_admin_or_viewer_key__opens_a_session_naming_the_key(
    console: CoordinatorClient, name: str, scope: str
) -> None:
    out = await send(
        console,
        "POST",
        "/ui/login",
        form={"name": name, "key": KEYS[name], "next": "/ui/transactions"},
    )
    assert (out.status, out.location) == (303, "/ui/transactions")
    morsel = out.set_cookies["tcc_session"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/"
    assert morsel["max-age"] == str(8 * 3600)
    assert not morsel["secure"]  # plain http here; over https it is Secure
    # The cookie names the key; it carries neither the key nor its hash.
    assert KEYS[name] not in morsel.value
    assert hash_key(KEYS[name]) not in morsel.value

    page = await send(console, "GET", "/ui/transactions", cookie=morsel.value)
    assert page.status == 200
    assert f'{name} <span class="scope">{scope}</span>' in page.text
    assert KEYS[name] not in page.text


async def test_login__over_https__the_cookie_is_secure(console: CoordinatorClient) -> None:
    out = await send(
        console,
        "POST",
        "/ui/login",
        form={"name": "ops", "key": KEYS["ops"]},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert out.status == 303
    assert out.set_cookies["tcc_session"]["secure"] is True


async def test_login__with_a_service_key__is_refused_saying_why(console: CoordinatorClient) -> None:
    out = await send(console, "POST", "/ui/login", form={"name": "shop", "key": KEYS["shop"]})
    assert out.status == 403
    assert "service key, which cannot open the console" in out.text
    assert "tcc_session" not in out.set_cookies
    assert KEYS["shop"] not in out.text


async def test_login__with_a_wrong_key__is_refused_and_the_key_is_nowhere(
    console: CoordinatorClient, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "not-a-configured-key-4242424242"
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs:
        out = await send(
            console, "POST", "/ui/login", form={"name": "ops", "key": wrong, "next": "/ui/"}
        )
    assert wrong not in caplog.text
    assert out.status == 401
    assert "is configured on this coordinator" in out.text
    assert "tcc_session" not in out.set_cookies
    assert wrong not in out.text
    assert wrong not in repr(logs)
    assert any(entry["event"] == "console_login_refused" for entry in logs)


async def test_login__never_logs_the_key(console: CoordinatorClient) -> None:
    with capture_logs() as logs:
        await login(console, "ops")
    assert [e["event"] for e in logs] == ["console_login"]
    assert KEYS["ops"] not in repr(logs)
    assert hash_key(KEYS["ops"]) not in repr(logs)


@pytest.mark.parametrize("next_page", ["//evil.example/", "https://evil.example/", "/v1/x"])
async def test_login__goes_back_only_to_a_console_page(
    console: CoordinatorClient, next_page: str
) -> None:
    out = await send(
        console, "POST", "/ui/login", form={"name": "ops", "key": KEYS["ops"], "next": next_page}
    )
    assert (out.status, out.location) == (303, "/ui/")


async def test_login_form__posted_from_another_site__is_refused(
    console: CoordinatorClient,
) -> None:
    out = await send(
        console,
        "POST",
        "/ui/login",
        form={"name": "ops", "key": KEYS["ops"]},
        headers={"Origin": "http://evil.example"},
    )
    assert out.status == 403
    assert "tcc_session" not in out.set_cookies


async def test_logout__needs_the_page_token_and_clears_the_cookie(
    console: CoordinatorClient,
) -> None:
    cookie = await login(console, "ops")
    refused = await send(console, "POST", "/ui/logout", cookie=cookie, form={})
    assert refused.status == 403
    token = await csrf_token(console, cookie)
    out = await send(console, "POST", "/ui/logout", cookie=cookie, form={"csrf_token": token})
    assert (out.status, out.location) == (303, "/ui/login")
    assert out.set_cookies["tcc_session"]["max-age"] == "0"


# --- refusals without a (valid) session ---------------------------------------------------


async def test_pages_without_a_session__send_the_browser_to_the_login_form(
    console: CoordinatorClient,
) -> None:
    out = await send(console, "GET", "/ui/transactions?status=trying")
    assert out.status == 303
    assert out.location == "/ui/login?next=/ui/transactions?status%3Dtrying"
    assert (await send(console, "GET", "/ui/")).location == "/ui/login"
    login_page = await send(console, "GET", "/ui/login")
    assert login_page.status == 200
    assert 'type="password"' in login_page.text


async def test_requests_without_a_session__that_are_not_page_loads__are_401_problems(
    console: CoordinatorClient,
) -> None:
    for path in ("/ui/transactions", "/ui/transactions?fragment=1", "/v1/overview"):
        out = await send(console, "GET", path, html=False)
        assert out.status == 401, path
        assert out.content_type == "application/problem+json"
    fragment = await send(console, "GET", "/ui/transactions?fragment=1")
    assert fragment.status == 401


def _cookie_for(c: CoordinatorClient, name: str, scope: Scope, *, now: float | None = None) -> str:
    key = ApiKey(name, scope, bytes.fromhex(hash_key(KEYS[name])))
    return c.server.app[SESSIONS].issue(key, now=now).cookie


async def test_an_expired_session__is_refused(console: CoordinatorClient) -> None:
    expired = _cookie_for(console, "ops", Scope.ADMIN, now=time.time() - 8 * 3600 - 5)
    assert (await send(console, "GET", "/ui/", cookie=expired)).location == "/ui/login"
    out = await send(console, "GET", "/v1/overview", cookie=expired, html=False)
    assert out.status == 401
    assert "session has ended" in out.text


async def test_a_tampered_session__is_refused(console: CoordinatorClient) -> None:
    import base64
    import json

    viewer = _cookie_for(console, "eyes", Scope.VIEWER)
    payload, signature = viewer.split(".")
    fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    fields["s"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")
    for cookie in (f"{forged}.{signature}", viewer[:-2] + "xx", "garbage", viewer + ".x"):
        out = await send(console, "GET", "/v1/overview", cookie=cookie, html=False)
        assert out.status == 401, cookie


async def test_a_session_signed_elsewhere__is_refused(make_coordinator: MakeCoordinator) -> None:
    one = await make_coordinator(**SECURED, session_secret="a" * 32)
    other = await make_coordinator(**SECURED, session_secret="b" * 32)
    cookie = await login(one, "ops")
    assert (await send(other, "GET", "/v1/overview", cookie=cookie, html=False)).status == 401


async def test_a_session__holds_in_every_coordinator_with_the_same_keys(
    make_coordinator: MakeCoordinator,
) -> None:
    # No session_secret: both derive it from the same TCC_API_KEYS (as workers do).
    one = await make_coordinator(**SECURED)
    other = await make_coordinator(**SECURED)
    cookie = await login(one, "ops")
    assert (await send(other, "GET", "/v1/overview", cookie=cookie, html=False)).status == 200


async def test_a_session__ends_when_its_key_is_removed_or_replaced(
    make_coordinator: MakeCoordinator,
) -> None:
    secret = {"session_secret": "s" * 40}
    before = await make_coordinator(**SECURED, **secret)
    viewer = await login(before, "eyes")
    admin = await login(before, "ops")
    without_eyes = await make_coordinator(insecure=False, api_keys=key_config("ops"), **secret)
    for cookie, status in ((viewer, 401), (admin, 200)):
        out = await send(without_eyes, "GET", "/v1/overview", cookie=cookie, html=False)
        assert out.status == status
    rotated = {**KEYS, "ops": "a-brand-new-ops-key-9876543210"}
    new_ops_key = await make_coordinator(
        insecure=False, api_keys=key_config("ops", keys=rotated), **secret
    )
    assert (await send(new_ops_key, "GET", "/v1/overview", cookie=admin, html=False)).status == 401


async def test_a_session_cookie__does_not_open_the_dtm_api_or_metrics(
    make_coordinator: MakeCoordinator,
) -> None:
    c = await make_coordinator(**SECURED, protect_health=True)
    cookie = await login(c, "ops")
    for path in ("/api/dtmsvr/all", "/metrics"):
        assert (await send(c, "GET", path, cookie=cookie, html=False)).status == 401, path


# --- cross-site requests ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing X-CSRF-Token"),
        ({"X-CSRF-Token": "forged"}, "wrong X-CSRF-Token"),
        ({"X-CSRF-Token": "<token>", "Origin": "http://evil.example"}, "cross-site request"),
        ({"X-CSRF-Token": "<token>", "Origin": "null"}, "cross-site request"),
        ({"X-CSRF-Token": "<token>", "Sec-Fetch-Site": "cross-site"}, "cross-site request"),
    ],
)
async def test_a_change_with_the_session_cookie__without_the_token_or_from_elsewhere__is_403(
    console: CoordinatorClient, headers: dict[str, str], reason: str
) -> None:
    await begin_trying(console, "shop:victim")
    cookie = await login(console, "ops")
    token = await csrf_token(console, cookie)
    sent = {k: (token if v == "<token>" else v) for k, v in headers.items()}
    out = await send(
        console,
        "POST",
        "/v1/transactions/shop:victim/cancel",
        cookie=cookie,
        headers=sent,
        json={"reason": "forged"},
        html=False,
    )
    assert out.status == 403
    assert out.content_type == "application/problem+json"
    assert reason in out.text
    assert await status_of(console, "shop:victim") == "trying"


async def test_a_change_with_the_session_and_its_token__from_this_origin__goes_through(
    console: CoordinatorClient,
) -> None:
    await begin_trying(console, "shop:asked")
    cookie = await login(console, "ops")
    token = await csrf_token(console, cookie)
    out = await send(
        console,
        "POST",
        "/v1/transactions/shop:asked/cancel",
        cookie=cookie,
        headers={"X-CSRF-Token": token, "Origin": console.base.rstrip("/")},
        json={"reason": "customer called"},
        html=False,
    )
    assert out.status == 200, out.text
    assert await status_of(console, "shop:asked") == "cancelled"
    _, detail, _ = await console.request(
        "GET", "/v1/transactions/shop:asked", headers=bearer("ops")
    )
    assert "console:ops" in str(detail["events"])
    assert "customer called" in str(detail["events"]) + str(detail["cancel_reason"])


async def test_a_token__belongs_to_one_session(console: CoordinatorClient) -> None:
    await begin_trying(console, "shop:mixed")
    first, second = await login(console, "ops"), await login(console, "ops")
    out = await send(
        console,
        "POST",
        "/v1/transactions/shop:mixed/cancel",
        cookie=second,
        headers={"X-CSRF-Token": await csrf_token(console, first)},
        json={"reason": "x"},
        html=False,
    )
    assert out.status == 403
    assert await status_of(console, "shop:mixed") == "trying"


async def test_a_bearer_key__needs_no_csrf_token(console: CoordinatorClient) -> None:
    await begin_trying(console, "shop:scripted")
    status, out, _ = await console.request(
        "POST",
        "/v1/transactions/shop:scripted/cancel",
        json={"reason": "script"},
        headers={**bearer("ops"), "Origin": "http://elsewhere.example"},
    )
    assert status == 200, out


async def test_a_viewer__sees_no_actions_and_is_refused_if_it_posts(
    console: CoordinatorClient,
) -> None:
    await begin_trying(console, "shop:looked-at")
    cookie = await login(console, "eyes")
    page = await send(console, "GET", "/ui/transactions/shop:looked-at", cookie=cookie)
    assert page.status == 200
    assert "data-action" not in page.text
    admin_page = await send(
        console, "GET", "/ui/transactions/shop:looked-at", cookie=await login(console, "ops")
    )
    assert "data-action" in admin_page.text
    out = await send(
        console,
        "POST",
        "/v1/transactions/shop:looked-at/cancel",
        cookie=cookie,
        headers={"X-CSRF-Token": await csrf_token(console, cookie)},
        json={"reason": "just looking"},
        html=False,
    )
    assert out.status == 403
    assert await status_of(console, "shop:looked-at") == "trying"


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
        ("http://127.0.0.1:8081", "127.0.0.1:8080", False),
        ("http://localhost:8080", "127.0.0.1:8080", False),
        ("https://tcc.example.com", "tcc.example.com", True),
        ("https://tcc.example.com", "tcc.example.com:443", True),
        ("http://tcc.example.com", "tcc.example.com", True),
        ("https://tcc.example.com.evil.example", "tcc.example.com", False),
        ("null", "tcc.example.com", False),
        ("file://", "tcc.example.com", False),
    ],
)
def test_same_origin(origin: str, host: str, same: bool) -> None:
    assert same_origin(origin, host) is same


# --- insecure mode -----------------------------------------------------------------


async def test_insecure__every_page_is_open_and_says_so(coordinator: CoordinatorClient) -> None:
    await coordinator.post("/v1/transactions", {"gid": "open-one"})
    for path in ("/ui/", "/ui/transactions", "/ui/transactions/open-one"):
        page = await send(coordinator, "GET", path)
        assert page.status == 200, path
        assert "Authentication is off" in page.text, path
    assert (await send(coordinator, "GET", "/ui/login")).location == "/ui/"


async def test_insecure__a_console_action_is_recorded_as_the_console(
    coordinator: CoordinatorClient,
) -> None:
    await coordinator.post("/v1/transactions", {"gid": "open-two"})
    out = await send(
        coordinator,
        "POST",
        "/v1/transactions/open-two/cancel",
        headers={"X-TCC-Client": "console"},
        json={"reason": "testing"},
        html=False,
    )
    assert out.status == 200, out.text
    assert "console (insecure)" in out.text
