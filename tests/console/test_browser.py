"""The console in a real browser: Debian's Chromium, driven by Playwright, against a real
coordinator (and a scripted participant) on 127.0.0.1.

Screenshots of each page go to $TCC_CONSOLE_SCREENSHOTS when it is set, else to the test's
temporary folder. Playwright never downloads a browser here: it drives /usr/bin/chromium,
which .ci/run installs with apt.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import BrowserContext, Page, async_playwright, expect

from tests.conftest import CoordinatorClient, fast_settings, start_coordinator
from tests.console.helpers import CONFIG, KEYS, bearer
from tests.helpers import eventually
from tests.participant_server import FakeParticipant, Reply

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-gpu",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)",
    ),
]

WAIT_MS = 15_000


@dataclass
class Console:
    """A coordinator with keys (admin ops, viewer eyes, service shop), a participant, and a
    browser of its own (a fresh profile)."""

    coordinator: CoordinatorClient
    participant: FakeParticipant
    browser: BrowserContext
    shots: Path

    @property
    def base(self) -> str:
        return self.coordinator.base.rstrip("/")

    async def page(self, width: int = 1280, height: int = 900) -> Page:
        page = await self.browser.new_page()
        await page.set_viewport_size({"width": width, "height": height})
        return page

    async def shot(self, page: Page, name: str) -> None:
        await page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    async def login(self, page: Page, who: str, then: str = "/ui/") -> None:
        await page.goto(f"{self.base}/ui/login?next={then}")
        await page.get_by_label("Key name").fill(who)
        await page.get_by_label("API key").fill(KEYS[who])
        await page.get_by_role("button", name="Log in").click()
        await expect(page.locator(".who-name")).to_contain_text(who, timeout=WAIT_MS)

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, out, _ = await self.coordinator.request(
            method, path, json=body, headers=bearer("ops")
        )
        return status, out

    async def confirmed(self, gid: str) -> None:
        branch = self.participant.branch("pay", "wallet")
        status, out = await self.api(
            "POST",
            "/v1/transactions",
            {"gid": gid, "service": "shop", "auto": True, "branches": [branch]},
        )
        assert status == 201, out

    async def parked(self, gid: str, *branch_ids: str) -> None:
        """A transaction whose confirm calls keep failing until it is parked."""
        self.participant.default("confirm", Reply(status=500), service="flaky")
        await self.api("POST", "/v1/transactions", {"gid": gid, "service": "shop"})
        for branch_id in branch_ids:
            status, out = await self.api(
                "POST", f"/v1/transactions/{gid}/try", self.participant.branch(branch_id, "flaky")
            )
            assert status == 200, out
        await self.api("POST", f"/v1/transactions/{gid}/confirm")
        await eventually(lambda: self.status(gid), lambda s: s == "failed_to_confirm")

    async def status(self, gid: str) -> str:
        status, out = await self.api("GET", f"/v1/transactions/{gid}")
        assert status == 200, out
        return str(out["status"])


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[BrowserContext]:
    """Debian's chromium, headless, with a fresh profile."""
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            yield context
        finally:
            await context.close()


@contextlib.asynccontextmanager
async def secured_console(
    database_url: str,
    participant: FakeParticipant,
    browser: BrowserContext,
    shots: Path,
    **settings: Any,
) -> AsyncIterator[Console]:
    """A coordinator with the console's keys, parking after a second of failures."""
    values: dict[str, Any] = {"insecure": False, "api_keys": CONFIG, "give_up_after_s": 1.0}
    values.update(settings)
    server, session = await start_coordinator(database_url, fast_settings(**values))
    try:
        yield Console(CoordinatorClient(server, session), participant, browser, shots)
    finally:
        await session.close()
        await server.close()


def action_panel(page: Page, label: str, within: str = "main") -> Any:
    return page.locator(f"{within} details.action").filter(
        has=page.locator("summary", has_text=label)
    )


# --- access ---------------------------------------------------------------------------


async def test_without_a_session__the_console_asks_for_a_key_then_comes_back(
    console: Console,
) -> None:
    await console.confirmed("shop:first")
    page = await console.page()
    await page.goto(f"{console.base}/ui/transactions/shop:first")
    assert re.search(r"/ui/login\?next=", page.url)
    await console.shot(page, "01-login")
    await page.get_by_label("Key name").fill("ops")
    await page.get_by_label("API key").fill(KEYS["ops"])
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(f"{console.base}/ui/transactions/shop:first", timeout=WAIT_MS)
    await expect(page.locator(".state-line .status")).to_have_text("confirmed")
    cookie = next(c for c in await console.browser.cookies() if c["name"] == "tcc_session")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert KEYS["ops"] not in cookie["value"]
    assert KEYS["ops"] not in page.url
    # Scripts cannot read the session.
    assert "tcc_session" not in await page.evaluate("document.cookie")


async def test_a_service_key__is_refused_by_the_login_form(console: Console) -> None:
    page = await console.page()
    await page.goto(f"{console.base}/ui/login")
    await page.get_by_label("Key name").fill("shop")
    await page.get_by_label("API key").fill(KEYS["shop"])
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("alert")).to_contain_text("service key")
    await console.shot(page, "02-login-refused-service-key")
    assert not [c for c in await console.browser.cookies() if c["name"] == "tcc_session"]
    await page.goto(f"{console.base}/ui/")
    assert "/ui/login" in page.url


# --- reading --------------------------------------------------------------------------


async def test_an_admin__filters_the_list__and_the_filters_survive_reload_and_refresh(
    console: Console,
) -> None:
    for gid in ("shop:order-1", "shop:order-2", "shop:refund-1"):
        await console.confirmed(gid)
    await console.api("POST", "/v1/transactions", {"gid": "shop:order-3", "service": "shop"})
    page = await console.page()
    await console.login(page, "ops")
    await console.shot(page, "03-overview")

    await page.get_by_role("link", name="Transactions", exact=True).click()
    await page.get_by_label("Status").select_option("confirmed")
    await page.get_by_label("GID starts with").fill("shop:order-")
    await page.get_by_role("button", name="Apply").click()
    await expect(page).to_have_url(re.compile(r"status=confirmed"), timeout=WAIT_MS)
    assert "service=" not in page.url  # empty filters stay out of the link
    rows = page.locator("#live tbody a.gid")
    await expect(rows).to_have_text(["shop:order-2", "shop:order-1"])
    await console.shot(page, "04-transactions-filtered")

    await page.reload()
    await expect(page.get_by_label("Status")).to_have_value("confirmed")
    await expect(page.get_by_label("GID starts with")).to_have_value("shop:order-")
    await expect(rows).to_have_text(["shop:order-2", "shop:order-1"])

    # Live refresh: a new match appears without a reload, and the filters stay.
    await console.confirmed("shop:order-4")
    await expect(rows).to_have_text(
        ["shop:order-4", "shop:order-2", "shop:order-1"], timeout=WAIT_MS
    )
    await expect(page.get_by_label("Status")).to_have_value("confirmed")

    await rows.first.click()
    await expect(page).to_have_url(f"{console.base}/ui/transactions/shop:order-4")
    await expect(page.locator("table.timeline")).to_contain_text("confirm call")
    await console.shot(page, "05-transaction-confirmed")

    phone = await console.page(width=375, height=812)
    await phone.goto(f"{console.base}/ui/transactions/shop:order-4")
    assert await phone.evaluate("document.documentElement.scrollWidth") <= 375
    await console.shot(phone, "06-transaction-on-a-phone")


# --- acting ---------------------------------------------------------------------------


async def test_retry_a_parked_transaction__with_a_reason__and_watch_it_confirm(
    console: Console,
) -> None:
    await console.parked("stuck-1", "pay")
    page = await console.page()
    await console.login(page, "ops", then="/ui/transactions/stuck-1")
    await expect(page.locator(".state-line .status")).to_have_text("failed to confirm")
    await console.shot(page, "07-transaction-parked")

    console.participant.default("confirm", Reply(status=200), service="flaky")
    panel = action_panel(page, "Retry")
    await panel.locator("summary").click()
    await panel.get_by_label("Reason for retrying").fill("wallet fixed, INC-42")
    await console.shot(page, "08-retry-with-a-reason")
    await panel.get_by_role("button", name="Retry").click()

    await expect(page.locator(".state-line .status")).to_have_text("confirmed", timeout=WAIT_MS)
    retry_row = page.locator("tr.event-admin_retry")
    await expect(retry_row).to_contain_text("console:ops")
    await expect(retry_row).to_contain_text("wallet fixed, INC-42")
    await console.shot(page, "09-retried-and-confirmed")
    assert await console.status("stuck-1") == "confirmed"


async def test_resolve_one_branch_by_hand__the_note_and_who_in_the_timeline(
    console: Console,
) -> None:
    await console.parked("stuck-2", "pay", "ship")
    page = await console.page()
    await console.login(page, "ops", then="/ui/transactions/stuck-2")
    page.on("dialog", lambda dialog: dialog.accept())

    row = page.locator('tr[data-branch="pay"]')
    panel = action_panel(page, "Mark confirmed by hand", within='tr[data-branch="pay"]')
    await panel.locator("summary").click()
    await panel.get_by_label("What was done by hand for pay").fill("refunded by hand, ticket 7")
    await panel.get_by_role("button", name="Mark confirmed by hand").click()

    await expect(row.locator(".status")).to_have_text("confirmed", timeout=WAIT_MS)
    resolved = page.locator("table.timeline tr", has_text="refunded by hand, ticket 7")
    await expect(resolved).to_contain_text("console:ops")
    await expect(resolved).to_contain_text("pay")
    # The other branch is still stuck: the transaction stays parked for its operator.
    await expect(page.locator(".state-line .status")).to_have_text("failed to confirm")
    await expect(page.locator('tr[data-branch="ship"] .status')).to_have_text("tried")
    await console.shot(page, "10-branch-resolved-by-hand")


async def test_an_action_the_state_forbids__is_refused_with_the_reason(console: Console) -> None:
    await console.parked("stuck-3", "pay")
    page = await console.page()
    await console.login(page, "ops", then="/ui/transactions/stuck-3")
    # Someone else resolves it while this page is open.
    status, _ = await console.api(
        "POST", "/v1/transactions/stuck-3/resolve", {"note": "done elsewhere"}
    )
    assert status == 200
    panel = action_panel(page, "Retry")
    await panel.locator("summary").click()
    await panel.get_by_label("Reason for retrying").fill("try again")
    await panel.get_by_role("button", name="Retry").click()
    # The refusal is said above the transaction, which is shown as it is now: nothing left
    # to retry.
    flash = page.locator("[data-flash]")
    await expect(flash).to_contain_text("Retry: refused", timeout=WAIT_MS)
    await expect(flash).to_contain_text("this one is confirmed")
    await expect(page.locator(".state-line .status")).to_have_text("confirmed")
    await expect(action_panel(page, "Retry")).to_have_count(0)
    await console.shot(page, "11-action-refused")
    assert await console.status("stuck-3") == "confirmed"


# --- forgery and the read-only scope -----------------------------------------------------------


async def test_a_page_of_another_origin__cannot_act_with_the_session(console: Console) -> None:
    await console.parked("stuck-4", "pay")
    target = f"{console.base}/v1/transactions/stuck-4/retry"
    # A JSON body smuggled in a text/plain form, and a no-cors fetch: both carry the
    # session cookie (127.0.0.1 on another port is the same site) but not the token.
    attack = f"""<!doctype html><html><body>
<form id="f" method="post" enctype="text/plain" action="{target}">
<input name='{{"reason": "forged", "x": "' value='"}}'></form>
<script>
fetch("{target}", {{method: "POST", mode: "no-cors", credentials: "include",
  body: JSON.stringify({{reason: "forged"}})}}).finally(() =>
  document.getElementById("f").submit());
</script></body></html>"""

    async def serve_attack(request: web.Request) -> web.Response:
        return web.Response(text=attack, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", serve_attack)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        page = await console.page()
        await console.login(page, "ops")
        async with page.expect_navigation(url=target, timeout=WAIT_MS):
            await page.goto(f"http://127.0.0.1:{port}/")
        body = await page.locator("body").inner_text()
        assert "cross-site request refused" in body
        await console.shot(page, "12-cross-site-refused")
    finally:
        await runner.cleanup()
    assert await console.status("stuck-4") == "failed_to_confirm"
    _, detail = await console.api("GET", "/v1/transactions/stuck-4")
    assert "admin_retry" not in [e["kind"] for e in detail["events"]]


async def test_a_viewer__sees_no_actions_and_is_refused_when_it_posts(console: Console) -> None:
    await console.parked("stuck-5", "pay")
    page = await console.page()
    await console.login(page, "eyes", then="/ui/transactions/stuck-5")
    await expect(page.locator(".state-line .status")).to_have_text("failed to confirm")
    await expect(page.locator("details.action")).to_have_count(0)
    await console.shot(page, "13-viewer")
    status = await page.evaluate(
        """async () => {
            const token = document.querySelector('meta[name="csrf-token"]').content;
            const response = await fetch("/v1/transactions/stuck-5/retry", {
                method: "POST",
                headers: {"Content-Type": "application/json", "X-CSRF-Token": token},
                body: JSON.stringify({reason: "I only look"}),
            });
            return response.status;
        }"""
    )
    assert status == 403
    assert await console.status("stuck-5") == "failed_to_confirm"


# --- insecure mode and the keyboard -------------------------------------------------------


async def test_insecure__open_to_all_and_saying_so__and_usable_with_the_keyboard(
    coordinator: CoordinatorClient, browser: BrowserContext, shots: Path
) -> None:
    await coordinator.post("/v1/transactions", {"gid": "local-1", "service": "shop"})
    page = await browser.new_page()
    await page.goto(coordinator.url("/ui/"))
    await expect(page.get_by_role("note")).to_contain_text("Authentication is off")
    await page.screenshot(path=str(shots / "14-insecure-overview.png"), full_page=True)

    # From the keyboard alone: skip to the content, reach the list, filter it.
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    await page.get_by_role("link", name="Transactions", exact=True).focus()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("note")).to_contain_text("Authentication is off")
    await page.get_by_label("GID starts with").focus()
    await page.keyboard.type("local-")
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(r"gid=local-"), timeout=WAIT_MS)
    await expect(page.locator("#live tbody a.gid")).to_have_text(["local-1"])
    await page.locator("#live tbody a.gid").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator(".state-line .status")).to_have_text("trying", timeout=WAIT_MS)
    await expect(page.get_by_role("note")).to_contain_text("Authentication is off")

    phone = await browser.new_page()
    await phone.set_viewport_size({"width": 375, "height": 812})
    await phone.goto(coordinator.url("/ui/"))
    assert await phone.evaluate("document.documentElement.scrollWidth") <= 375
    await phone.screenshot(path=str(shots / "15-overview-on-a-phone.png"), full_page=True)
