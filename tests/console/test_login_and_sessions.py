"""Logging in and out for real: a `next` that would split a header, refused logins limited per
address and per key name (and counted), and sessions that end everywhere when logged out,
revoked from the command line, or when their key is removed (for good)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from coordinator.api.console.login import LoginLimits
from tests.conftest import CoordinatorClient
from tests.console.helpers import (
    KEYS,
    SECURED,
    MakeCoordinator,
    csrf_token,
    key_config,
    login,
    send,
)
from tests.processes import run_tcc_async, tcc_env

SECRET = {"session_secret": "a-session-secret-of-forty-characters-xx"}


@pytest.fixture
async def console(make_coordinator: MakeCoordinator) -> CoordinatorClient:
    return await make_coordinator(**SECURED, **SECRET, login_failure_limit=3)


async def _overview_status(c: CoordinatorClient, cookie: str) -> int:
    return (await send(c, "GET", "/v1/overview", cookie=cookie, html=False)).status


# --- a next page that would split the Location header ------------------------------------


@pytest.mark.parametrize(
    "next_page",
    ["/ui/x\r\nSet-Cookie: planted=1", "/ui/x\nLocation: //evil.example", "/ui/\x7fx", "/ui/ a"],
)
async def test_login__a_next_page_with_control_characters__goes_home(
    console: CoordinatorClient, next_page: str
) -> None:
    out = await send(
        console, "POST", "/ui/login", form={"name": "ops", "key": KEYS["ops"], "next": next_page}
    )
    assert (out.status, out.location) == (303, "/ui/")
    assert "planted" not in out.set_cookies
    assert "tcc_session" in out.set_cookies


async def test_login_form__a_next_page_with_a_newline__is_not_put_in_the_form(
    console: CoordinatorClient,
) -> None:
    out = await send(console, "GET", "/ui/login?next=/ui/%0d%0aSet-Cookie:%20x=1")
    assert out.status == 200
    assert 'name="next" value="/ui/"' in out.text


def test_a_library_error__is_logged_as_json_like_every_other_line() -> None:
    script = (
        "import logging\n"
        "from coordinator.logs import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "try:\n"
        "    raise ValueError('Newline or carriage return character detected')\n"
        "except ValueError:\n"
        "    logging.getLogger('aiohttp.server').exception('Error handling request')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines
    record = json.loads(lines[0])  # one JSON object, the traceback inside it
    assert len(lines) == 1
    assert record["event"] == "Error handling request"
    assert record["logger"] == "aiohttp.server"
    assert "ValueError" in record["exception"]


# --- refused logins are limited ----------------------------------------------------------


async def _refusals(c: CoordinatorClient) -> dict[str, float]:
    status, text, _ = await c.request("GET", "/metrics")
    assert status == 200
    found = re.findall(r'^tcc_console_login_refusals_total\{reason="(\w+)"\} (\S+)$', text, re.M)
    return {reason: float(n) for reason, n in found}


async def test_login__after_the_limit__is_refused_with_429__even_with_the_right_key(
    console: CoordinatorClient,
) -> None:
    for _ in range(3):
        out = await send(
            console, "POST", "/ui/login", form={"name": "ops", "key": "wrong-key-0123456789"}
        )
        assert out.status == 401
    out = await send(console, "POST", "/ui/login", form={"name": "ops", "key": KEYS["ops"]})
    assert out.status == 429
    assert "Too many refused logins" in out.text
    assert 0 < int(out.headers["Retry-After"]) <= 300
    assert "tcc_session" not in out.set_cookies
    counted = await _refusals(console)
    assert counted.get("wrong_key") == 3
    assert counted.get("rate_limited") == 1


async def test_login__needs_the_keys_name__and_the_right_one(console: CoordinatorClient) -> None:
    missing = await send(console, "POST", "/ui/login", form={"key": KEYS["ops"]})
    assert missing.status == 400
    assert "name" in missing.text
    other = await send(console, "POST", "/ui/login", form={"name": "eyes", "key": KEYS["ops"]})
    assert other.status == 401
    assert "tcc_session" not in other.set_cookies
    assert (await _refusals(console)) == {
        "wrong_key": 1,
        "service_key": 0,
        "rate_limited": 0,
        "bad_form": 1,
    }


async def test_login__a_service_key_counts_as_a_refusal(console: CoordinatorClient) -> None:
    for _ in range(3):
        assert (
            await send(console, "POST", "/ui/login", form={"name": "shop", "key": KEYS["shop"]})
        ).status == 403
    assert (
        await send(console, "POST", "/ui/login", form={"name": "eyes", "key": KEYS["eyes"]})
    ).status == 429
    assert (await _refusals(console)).get("service_key") == 3


async def test_login__a_success_clears_the_address_count(console: CoordinatorClient) -> None:
    for _ in range(2):
        await send(
            console, "POST", "/ui/login", form={"name": "ops", "key": "wrong-key-0123456789"}
        )
    await login(console, "ops")
    for _ in range(2):
        out = await send(
            console, "POST", "/ui/login", form={"name": "ops", "key": "wrong-key-0123456789"}
        )
        assert out.status == 401


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_login_limits__per_key_name__whatever_the_address() -> None:
    clock = Clock()
    limits = LoginLimits(3, clock=clock)
    for n in range(6):  # six addresses, one failure each, all naming ops
        assert limits.retry_after(f"10.0.0.{n}", "ops") is None
        limits.failed(f"10.0.0.{n}", "ops")
    assert limits.retry_after("10.0.0.99", "ops") is not None
    assert limits.retry_after("10.0.0.99", "eyes") is None
    clock.now += 301
    assert limits.retry_after("10.0.0.99", "ops") is None


def test_login_limits__per_address__and_for_how_long() -> None:
    clock = Clock()
    limits = LoginLimits(3, clock=clock)
    for _ in range(3):
        limits.failed("10.0.0.1", "")
        clock.now += 10
    wait = limits.retry_after("10.0.0.1", "")
    assert wait is not None
    assert wait == pytest.approx(300 - 30)
    assert limits.retry_after("10.0.0.2", "") is None
    clock.now += wait + 0.01
    assert limits.retry_after("10.0.0.1", "") is None


def test_login_limits__memory_is_bounded() -> None:
    limits = LoginLimits(3, clock=Clock())
    for n in range(30_000):
        limits.failed(f"addr-{n}", f"name-{n}")
    assert len(limits.by_address) <= 10_000
    assert len(limits.by_name) <= 10_000


# --- sessions end for real -------------------------------------------------------------------


async def test_logout__ends_the_session__a_copied_cookie_no_longer_works(
    console: CoordinatorClient,
) -> None:
    cookie = await login(console, "ops")
    copied = cookie
    token = await csrf_token(console, cookie)
    out = await send(console, "POST", "/ui/logout", cookie=cookie, form={"csrf_token": token})
    assert out.status == 303
    out = await send(console, "GET", "/v1/overview", cookie=copied, html=False)
    assert out.status == 401
    assert "logged out or revoked" in out.text
    assert (await send(console, "GET", "/ui/", cookie=copied)).location == "/ui/login"


async def test_logout__holds_on_every_coordinator_and_after_a_restart(
    make_coordinator: MakeCoordinator,
) -> None:
    one = await make_coordinator(**SECURED, **SECRET)
    other = await make_coordinator(**SECURED, **SECRET)
    cookie = await login(one, "ops")
    assert await _overview_status(other, cookie) == 200
    token = await csrf_token(one, cookie)
    await send(one, "POST", "/ui/logout", cookie=cookie, form={"csrf_token": token})
    assert await _overview_status(other, cookie) == 401
    restarted = await make_coordinator(**SECURED, **SECRET)
    assert await _overview_status(restarted, cookie) == 401


async def test_a_removed_key__ends_its_sessions__and_putting_it_back_does_not_revive_them(
    make_coordinator: MakeCoordinator,
) -> None:
    before = await make_coordinator(**SECURED, **SECRET)
    viewer = await login(before, "eyes")
    admin = await login(before, "ops")
    await make_coordinator(insecure=False, api_keys=key_config("ops", "shop"), **SECRET)
    # Ended on the coordinator that still has the key, too: the log says so.
    assert await _overview_status(before, viewer) == 401
    assert await _overview_status(before, admin) == 200
    restored = await make_coordinator(**SECURED, **SECRET)
    assert await _overview_status(restored, viewer) == 401
    assert await _overview_status(restored, admin) == 200


async def test_tcc_sessions__lists_and_revokes_on_every_coordinator(
    make_coordinator: MakeCoordinator, database_url: str
) -> None:
    one = await make_coordinator(**SECURED, **SECRET)
    other = await make_coordinator(**SECURED, **SECRET)
    lost_laptop = await login(one, "ops")
    second_ops = await login(other, "ops")
    viewer = await login(one, "eyes")
    env = tcc_env(database_url)

    code, out, err = await run_tcc_async("sessions", "list", env=env)
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()[1:]]
    assert sorted(r[1] for r in rows) == ["eyes", "ops", "ops"]

    code, out, err = await run_tcc_async("sessions", "revoke", "--key", "ops", env=env)
    assert (code, err) == (0, "")
    assert "ended 2 console session(s) of key ops" in out
    for coordinator in (one, other):
        for cookie, status in ((lost_laptop, 401), (second_ops, 401), (viewer, 200)):
            assert await _overview_status(coordinator, cookie) == status

    code, out, _ = await run_tcc_async("sessions", "list", env=env)
    (eyes_row,) = [line.split() for line in out.splitlines()[1:]]
    code, out, err = await run_tcc_async("sessions", "revoke", "--session", eyes_row[0], env=env)
    assert code == 0, err
    assert await _overview_status(one, viewer) == 401

    code, out, _ = await run_tcc_async("sessions", "list", "--all", env=env)
    assert out.count("cli:") == 3


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["revoke", "--session", "not-hex!"], "--session"),
        (["revoke", "--key", "bad name"], "--key"),
    ],
)
async def test_tcc_sessions__bad_input__one_line_and_exit_2(
    database_url: str, args: list[str], said: str
) -> None:
    code, _, err = await run_tcc_async("sessions", *args, env=tcc_env(database_url))
    assert code == 2
    assert err.count("\n") == 1
    assert said in err
    assert "Traceback" not in err
