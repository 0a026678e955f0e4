"""Behind a real nginx (Debian's package) that serves the coordinator under /tcc/: the console
logs in, acts and links under the prefix in Debian's Chromium, and the audit names the client's
address (told by the trusted gateway), not the gateway's.

Addresses on loopback: the browser reaches nginx on 127.0.0.3 from 127.0.0.1; nginx reaches the
coordinator from 127.0.0.2 (proxy_bind), which is the only trusted proxy.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import expect

from tests.conftest import CoordinatorClient
from tests.console.helpers import CONFIG, KEYS, MakeCoordinator
from tests.console.test_browser import CHROMIUM, WAIT_MS, action_panel, chromium
from tests.participant_server import FakeParticipant, Reply
from tests.processes import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
GATEWAY_HOST = "127.0.0.3"
PROXY_ADDRESS = "127.0.0.2"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(NGINX).exists(),
        reason="Debian's nginx is not installed (apt-get install nginx; .ci/run does)",
    ),
]

CONFIG_TEMPLATE = """
worker_processes 1;
error_log {root}/error.log warn;
pid {root}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen {host}:{port};
        location /tcc/ {{
            proxy_pass http://127.0.0.1:{upstream}/;
            proxy_bind {proxy};
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Prefix /tcc;
        }}
    }}
}}
"""


@pytest.fixture
def nginx_port() -> int:
    return free_port()


def _start_nginx(root: Path, port: int, upstream: int) -> subprocess.Popen[bytes]:
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(
        CONFIG_TEMPLATE.format(
            root=root, host=GATEWAY_HOST, port=port, upstream=upstream, proxy=PROXY_ADDRESS
        )
    )
    return subprocess.Popen(
        [NGINX, "-p", str(root), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
async def gateway(
    make_coordinator: MakeCoordinator, tmp_path: Path, nginx_port: int
) -> AsyncIterator[tuple[CoordinatorClient, str]]:
    coordinator = await make_coordinator(
        insecure=False,
        api_keys=CONFIG,
        give_up_after_s=1.0,
        trusted_proxies=f"{PROXY_ADDRESS}/32",
    )
    upstream = coordinator.server.port
    assert upstream is not None
    proc = await asyncio.to_thread(_start_nginx, tmp_path / "nginx", nginx_port, upstream)
    base = f"http://{GATEWAY_HOST}:{nginx_port}/tcc"
    try:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while True:
                assert proc.poll() is None, (tmp_path / "nginx" / "error.log").read_text()
                try:
                    async with http.get(f"{base}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "nginx did not come up"
                await asyncio.sleep(0.2)
        yield coordinator, base
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _parked(c: CoordinatorClient, p: FakeParticipant, gid: str) -> None:
    p.default("confirm", Reply(status=500, body={"error": "down"}), service="flaky")
    headers = {"Authorization": f"Bearer {KEYS['shop']}"}
    status, out, _ = await c.request("POST", "/v1/transactions", {"gid": gid}, headers=headers)
    assert status == 201, out
    status, out, _ = await c.request(
        "POST", f"/v1/transactions/{gid}/try", p.branch("pay", "flaky"), headers=headers
    )
    assert status == 200, out
    await c.request("POST", f"/v1/transactions/{gid}/confirm", headers=headers)
    ops = {"Authorization": f"Bearer {KEYS['ops']}"}
    deadline = time.monotonic() + 20
    while True:
        _, out, _ = await c.request("GET", f"/v1/transactions/{gid}", headers=ops)
        if out["status"] == "failed_to_confirm":
            return
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
async def test_console_under_a_path_prefix__logs_in_acts_and_every_link_works(
    gateway: tuple[CoordinatorClient, str], participant: FakeParticipant, tmp_path: Path
) -> None:
    coordinator, base = gateway
    await _parked(coordinator, participant, "shop:behind-the-gateway")
    async with chromium(tmp_path / "profile") as browser:
        page = await browser.new_page()
        await page.goto(f"{base}/ui/transactions/shop:behind-the-gateway")
        assert page.url.startswith(f"{base}/ui/login?next=")  # the redirect keeps the prefix
        await page.get_by_label("Key name").fill("ops")
        await page.get_by_label("API key").fill(KEYS["ops"])
        await page.get_by_role("button", name="Log in").click()
        await expect(page).to_have_url(f"{base}/ui/transactions/shop:behind-the-gateway")
        cookie = next(c for c in await browser.cookies() if c["name"] == "tcc_session")
        assert cookie["path"] == "/tcc/"

        # Act: retry with a reason, through the gateway (the participant is back).
        participant.default("confirm", Reply(status=200), service="flaky")
        panel = action_panel(page, "Retry")
        await panel.locator("summary").click()
        await panel.get_by_label("Reason for retrying").fill("participant is back")
        await panel.get_by_role("button", name="Retry").click()
        await expect(page.locator(".state-line .status")).to_have_text("confirmed", timeout=WAIT_MS)
        await expect(page.locator("tr.event-admin_retry")).to_contain_text("(127.0.0.1)")

        # Follow every link of the overview, the list and the transaction.
        seen: set[str] = set()
        for start in ("/ui/", "/ui/transactions", "/ui/transactions/shop:behind-the-gateway"):
            await page.goto(base + start)
            hrefs = await page.eval_on_selector_all(
                "a[href], link[href], script[src]", "els => els.map(e => e.href || e.src)"
            )
            posted = await page.eval_on_selector_all(
                "form[action]", "els => els.map(e => e.action)"
            )
            assert all(url.startswith(base + "/") for url in posted), posted
            for href in hrefs:
                if not href.startswith(f"http://{GATEWAY_HOST}:") or href in seen:
                    continue
                seen.add(href)
                assert href.startswith(base + "/"), href  # nothing escapes the prefix
                answer = await page.request.get(href)
                assert answer.status < 400, (href, answer.status)
        assert len(seen) >= 8, seen

    ops = {"Authorization": f"Bearer {KEYS['ops']}"}
    _, detail, _ = await coordinator.request(
        "GET", "/v1/transactions/shop:behind-the-gateway", headers=ops
    )
    retried = next(e for e in detail["events"] if e["kind"] == "admin_retry")
    # The client's address as the gateway told it, not the gateway's own.
    assert retried["detail"]["actor"] == "console:ops (127.0.0.1)"


async def test_api_under_a_path_prefix__location_and_openapi_carry_it(
    gateway: tuple[CoordinatorClient, str],
) -> None:
    _, base = gateway
    headers = {"Authorization": f"Bearer {KEYS['shop']}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/v1/transactions", json={"gid": "shop:via-nginx"}, headers=headers
        ) as resp:
            assert resp.status == 201
            assert resp.headers["Location"] == "/tcc/v1/transactions/shop:via-nginx"
        async with http.get(f"{base}/openapi.json") as resp:
            assert (await resp.json())["servers"] == [{"url": "/tcc"}]
        async with http.get(
            f"{base}/ui/", allow_redirects=False, headers={"Accept": "text/html"}
        ) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == "/tcc/ui/login"
