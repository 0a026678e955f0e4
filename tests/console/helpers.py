"""Keys, logging in and reading pages, for the console's tests."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any

import aiohttp

from coordinator.core.apikeys import hash_key
from tests.conftest import CoordinatorClient

MakeCoordinator = Callable[..., Awaitable[CoordinatorClient]]

# admin "ops", viewer "eyes", service "shop".
KEYS = {
    "ops": "ops-console-key-0123456789abcdef",
    "eyes": "eyes-console-key-0123456789abcdef",
    "shop": "shop-service-key-0123456789abcdef",
}
SCOPES = {"ops": "admin", "eyes": "viewer", "shop": "service"}


def key_config(*names: str, keys: dict[str, str] | None = None) -> str:
    keys = keys or KEYS
    return ",".join(f"{n}:{SCOPES[n]}:{hash_key(keys[n])}" for n in names or tuple(KEYS))


CONFIG = key_config()
SECURED: dict[str, Any] = {"insecure": False, "api_keys": CONFIG}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


class Response:
    """What a test wants of an answer: status, headers, text, and the cookie set."""

    def __init__(self, resp: aiohttp.ClientResponse, text: str) -> None:
        self.status = resp.status
        self.headers = resp.headers
        self.text = text
        self.content_type = resp.content_type
        self.set_cookies = SimpleCookie()
        for header in resp.headers.getall("Set-Cookie", []):
            self.set_cookies.load(header)

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")


async def send(
    c: CoordinatorClient,
    method: str,
    path: str,
    *,
    cookie: str | None = None,
    headers: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
    json: Any = None,
    html: bool = True,
) -> Response:
    """One request, redirects not followed, the session cookie sent by hand (aiohttp's
    cookie jar keeps none for an IP address)."""
    all_headers = {"Accept": "text/html"} if html else {"Accept": "application/json"}
    if cookie is not None:
        all_headers["Cookie"] = f"tcc_session={cookie}"
    all_headers.update(headers or {})
    async with c.session.request(
        method,
        c.url(path),
        headers=all_headers,
        data=form,
        json=json,
        allow_redirects=False,
    ) as resp:
        return Response(resp, await resp.text())


async def login(c: CoordinatorClient, name: str) -> str:
    """Log in with a key; the session cookie's value."""
    out = await send(c, "POST", "/ui/login", form={"name": name, "key": KEYS[name], "next": "/ui/"})
    assert out.status == 303, out.text
    return out.set_cookies["tcc_session"].value


CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]*)">')


async def csrf_token(c: CoordinatorClient, cookie: str, path: str = "/ui/transactions") -> str:
    page = await send(c, "GET", path, cookie=cookie)
    assert page.status == 200, page.text
    found = CSRF_META.search(page.text)
    assert found is not None, "the page carries no CSRF token"
    assert found.group(1), "the page's CSRF token is empty"
    return found.group(1)


async def begin_trying(c: CoordinatorClient, gid: str) -> None:
    """A transaction left trying, begun by the service key."""
    status, out, _ = await c.request(
        "POST", "/v1/transactions", json={"gid": gid, "timeout_s": 300}, headers=bearer("shop")
    )
    assert status == 201, out


async def status_of(c: CoordinatorClient, gid: str) -> str:
    status, out, _ = await c.request("GET", f"/v1/transactions/{gid}", headers=bearer("ops"))
    assert status == 200, out
    return str(out["status"])
