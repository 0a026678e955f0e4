"""The console as an operator meets it at night (issue 16), in Debian's Chromium against a
real coordinator and participant on 127.0.0.1: why a transaction is parked and what to do,
branches resolved by hand, long names, the timeline's times and numbers, a page kept fresh
after a refused action, the icon, JavaScript off, and the link to the tracing backend.

Every page is photographed at 1280 and 390 px into $TCC_CONSOLE_SCREENSHOTS (else the test's
temporary folder), named ``op-<what>-<width>.png``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from coordinator.api.console import pages
from coordinator.api.console.render import CONTENT_SECURITY_POLICY
from tests.console.helpers import KEYS
from tests.console.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    WAIT_MS,
    Console,
    action_panel,
    secured_console,
)
from tests.helpers import eventually
from tests.participant_server import FakeParticipant, Reply

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)",
    ),
]

WIDTHS = (1280, 390)
PHONE = 390

# Valid ids and names as long as the (115 characters).
LONG_GID = ("shop:order-" + "0123456789" * 12)[:115]
LONG_SERVICE = ("warehouse-" + "stockkeeping" * 10)[:115]
LONG_BRANCH = ("reserve-stock-" + "abcdefghij" * 11)[:115]


async def park(
    console: Console,
    gid: str,
    failing: tuple[str, ...],
    fine: tuple[str, ...] = (),
    service: str = "shop",
) -> None:
    """A transaction whose ``failing`` branches keep refusing confirm (HTTP 500) until it is
    parked, while its ``fine`` ones confirm."""
    console.participant.default(
        "confirm", Reply(status=500, body={"error": "wallet down"}), service="flaky"
    )
    status, out = await console.api("POST", "/v1/transactions", {"gid": gid, "service": service})
    assert status == 201, out
    for branch_id, where in [(b, "flaky") for b in failing] + [(b, "svc") for b in fine]:
        branch = console.participant.branch(branch_id, where)
        status, out = await console.api("POST", f"/v1/transactions/{gid}/try", branch)
        assert status == 200, out
    await console.api("POST", f"/v1/transactions/{gid}/confirm")
    await eventually(lambda: console.status(gid), lambda s: s == "failed_to_confirm")


async def shot(console: Console, page: Page, what: str, width: int) -> None:
    await console.shot(page, f"op-{what}-{width}")


async def page_width(page: Page) -> int:
    return int(await page.evaluate("document.documentElement.scrollWidth"))


async def within_viewport(page: Page, selector: Any, width: int) -> None:
    """The element can be seen and reached on a page ``width`` wide without scrolling
    sideways."""
    await selector.scroll_into_view_if_needed()
    box = await selector.bounding_box()
    assert box is not None
    assert box["x"] >= 0, box
    assert box["x"] + box["width"] <= width + 0.5, box


async def inside(inner: Any, outer: Any) -> None:
    """``inner`` does not spill out of ``outer`` on the right."""
    a = await inner.bounding_box()
    b = await outer.bounding_box()
    assert a is not None
    assert b is not None
    assert a["x"] + a["width"] <= b["x"] + b["width"] + 0.5, (a, b)


# --- 9. why, since when, what to do -------------------------------------------------------


async def test_a_parked_transaction__says_why_since_when_and_what_to_do(
    console: Console,
) -> None:
    await park(console, "stuck-why", failing=("pay",), fine=("ship",))
    _, detail = await console.api("GET", "/v1/transactions/stuck-why")
    park_event = [e for e in detail["events"] if e["kind"] == "failed_to_confirm"][-1]

    for width in WIDTHS:
        page = await console.page(width=width)
        if width == WIDTHS[0]:
            await console.login(page, "ops", then="/ui/transactions/stuck-why")
        else:
            await page.goto(f"{console.base}/ui/transactions/stuck-why")
        why = page.locator(".parked-why")
        await expect(why).to_contain_text("Confirm kept failing for 1 branch")
        # Which branch, and what it last answered: only the one that failed.
        stuck = why.locator("[data-stuck]")
        await expect(stuck).to_have_count(1)
        await expect(stuck).to_have_attribute("data-stuck", "pay")
        await expect(stuck).to_contain_text("last HTTP 500")
        await expect(stuck).to_contain_text("wallet down")
        # Since when: the park in the timeline.
        since = why.locator("time").first
        shown = datetime.fromisoformat(str(await since.get_attribute("datetime")))
        parked_at = datetime.fromisoformat(park_event["at"])
        assert abs((shown - parked_at).total_seconds()) < 0.001
        assert await why.locator(f'a[href="#event-{park_event["id"]}"]').count() == 1
        # What to do, in the console and with the CLI.
        await expect(why).to_contain_text('tcc retry stuck-why --reason "…"')
        await expect(why).to_contain_text('tcc resolve stuck-why --note "…"')
        # Decided, not a long-past try deadline; and the story comes before the facts.
        facts = page.locator(".facts")
        await expect(facts).not_to_contain_text("deadline")
        await expect(facts.locator("dt", has_text="Decided: confirm")).to_have_count(1)
        why_box = await why.bounding_box()
        facts_box = await facts.bounding_box()
        assert why_box is not None
        assert facts_box is not None
        assert why_box["y"] < facts_box["y"]

        assert await page_width(page) <= width
        # The failing branch and its action are in reach, on a phone too.
        row = page.locator('tr[data-branch="pay"]')
        summary = action_panel(page, "Mark confirmed by hand", within='tr[data-branch="pay"]')
        await within_viewport(page, row.locator(".error-text"), width)
        await within_viewport(page, summary.locator("summary"), width)
        await summary.locator("summary").click()
        await within_viewport(page, summary.get_by_role("button"), width)
        await summary.locator("summary").click()  # closed again before the photograph
        await page.evaluate("window.scrollTo(0, 0)")
        await shot(console, page, "parked-why", width)


# --- 10. resolved by hand -----------------------------------------------------------------


async def test_a_branch_resolved_by_hand__reads_as_resolved_by_whom_and_why(
    console: Console,
) -> None:
    await park(console, "stuck-hand", failing=("pay", "ship"))
    page = await console.page()
    await console.login(page, "ops", then="/ui/transactions/stuck-hand")
    page.on("dialog", lambda dialog: dialog.accept())
    panel = action_panel(page, "Mark confirmed by hand", within='tr[data-branch="pay"]')
    await panel.locator("summary").click()
    await panel.get_by_label("What was done by hand for pay").fill("refunded by hand, ticket 7")
    await panel.get_by_role("button", name="Mark confirmed by hand").click()

    for width in WIDTHS:
        if width != WIDTHS[0]:
            page = await console.page(width=width)
            await page.goto(f"{console.base}/ui/transactions/stuck-hand")
        pay = page.locator('tr[data-branch="pay"]')
        note = pay.locator(".by-hand-note")
        await expect(note).to_contain_text("resolved by console:ops", timeout=WAIT_MS)
        await expect(note).to_contain_text("refunded by hand, ticket 7")
        await expect(pay.locator(".status")).to_have_text("confirmed")
        await expect(pay.locator(".tag")).to_have_text("by hand")
        # Not an error: no error cell, not the error's colour, the old HTTP status muted.
        await expect(pay.locator(".error-text")).to_have_count(0)
        await expect(pay).not_to_contain_text("Last error")
        await expect(pay.locator('td[data-label="Last HTTP"] .hint')).to_have_text("500")
        ship_error = page.locator('tr[data-branch="ship"] .error-text')
        await expect(ship_error).to_contain_text("HTTP 500")
        colours = await page.evaluate(
            """([a, b]) => [a, b].map(s => getComputedStyle(document.querySelector(s)).color)""",
            ['tr[data-branch="pay"] .by-hand-note', 'tr[data-branch="ship"] .error-text'],
        )
        assert colours[0] != colours[1]
        # The parked story now names only the branch still failing.
        await expect(page.locator(".parked-why [data-stuck]")).to_have_count(1)
        await expect(page.locator(".parked-why [data-stuck]")).to_have_attribute(
            "data-stuck", "ship"
        )
        assert await page_width(page) <= width
        await within_viewport(page, note, width)
        await page.evaluate("window.scrollTo(0, 0)")
        await shot(console, page, "resolved-by-hand", width)

    # The rest resolved by a script with the admin key: the transaction says so.
    status, _ = await console.api(
        "POST", "/v1/transactions/stuck-hand/resolve", {"note": "shipped by hand"}
    )
    assert status == 200
    await page.reload()
    await expect(page.locator(".state-line")).to_contain_text(
        "resolved by hand by api:ops (127.0.0.1): “shipped by hand”"
    )
    await expect(page.locator(".parked-why")).to_have_count(0)
    await expect(page.locator("tr.resolved-by-hand")).to_have_count(2)
    await shot(console, page, "resolved-by-hand-all", PHONE)


# --- 11. long names ------------------------------------------------------------------------


async def _cut_but_whole(page: Page, link: Any, value: str) -> None:
    """A long value cut to its column, whole in its title and in what is copied."""
    await expect(link).to_have_attribute("title", value)
    assert await link.text_content() == value
    box = await link.bounding_box()
    assert box is not None
    assert box["width"] < 400, box  # cut, not 115 characters wide
    selected = await link.evaluate(
        """el => { const range = document.createRange(); range.selectNodeContents(el);
                   const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
                   const text = sel.toString(); sel.removeAllRanges(); return text; }"""
    )
    assert selected == value


async def test_long_gids_services_and_branch_ids__stay_in_their_columns_whole_on_hover_and_copy(
    console: Console,
) -> None:
    await park(console, LONG_GID, failing=(LONG_BRANCH,), service=LONG_SERVICE)
    await console.confirmed("shop:short-1")
    page = await console.page()
    await console.login(page, "ops")
    await console.browser.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=console.base
    )

    for width in WIDTHS:
        page = await console.page(width=width)
        for path, what in (("/ui/", "overview"), ("/ui/transactions", "list")):
            await page.goto(f"{console.base}{path}")
            link = page.locator("#live table.listing a.gid", has_text=LONG_GID).first
            await expect(link).to_be_visible()
            await _cut_but_whole(page, link, LONG_GID)
            service = page.locator("#live table.listing .clip.service", has_text=LONG_SERVICE)
            await _cut_but_whole(page, service.first, LONG_SERVICE)
            await shot(console, page, f"long-names-{what}", width)
            assert await page_width(page) <= width, (path, width)
            if width > PHONE:
                # Every column stays in view: the table does not even scroll in its box.
                wraps = await page.locator("#live .table-wrap").evaluate_all(
                    "els => els.map(e => e.scrollWidth - e.clientWidth)"
                )
                assert max(wraps) <= 1, wraps

        await page.goto(f"{console.base}/ui/transactions/{LONG_GID}")
        await expect(page.locator(".state-line .status")).to_have_text("failed to confirm")
        assert await page_width(page) <= width
        card = page.locator(".fact-trace")
        await inside(card.locator(".trace-id"), card)
        await inside(card.locator("button.copy"), card)
        # The whole trace id is shown (two cards wide), not cut.
        assert await card.locator(".trace-id").evaluate("e => e.scrollWidth <= e.clientWidth")
        service = page.locator(".facts .clip.service")
        await inside(service, page.locator(".facts > div").filter(has=page.locator(".service")))
        branch = page.locator(f'tr[data-branch="{LONG_BRANCH}"]')
        await _cut_but_whole(page, branch.locator(".branch-id"), LONG_BRANCH)
        await within_viewport(
            page, branch.locator("details.action summary", has_text="Mark confirmed"), width
        )
        stuck = page.locator(".parked-why [data-stuck] a")
        await _cut_but_whole(page, stuck, LONG_BRANCH)
        await within_viewport(page, stuck, width)
        # The heading's gid is shown whole, and its Copy button copies it.
        await page.evaluate("window.scrollTo(0, 0)")
        heading = page.locator("h1 .gid")
        assert await heading.text_content() == LONG_GID
        await inside(heading, page.locator("main"))
        await page.locator("h1 button.copy").click()
        await expect(page.locator("h1 button.copy")).to_have_text("Copied")
        assert await page.evaluate("navigator.clipboard.readText()") == LONG_GID
        await shot(console, page, "long-names-transaction", width)


# --- 12. the timeline ---------------------------------------------------------------------

# Words of the timeline drawn over more than one line (a token broken mid-way).
BROKEN_TOKENS = """root => {
  const broken = [];
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    const words = /\\S+/g;
    let found;
    while ((found = words.exec(node.textContent))) {
      const range = document.createRange();
      range.setStart(node, found.index);
      range.setEnd(node, found.index + found[0].length);
      const lines = new Set([...range.getClientRects()]
        .filter(r => r.width > 0).map(r => Math.round(r.top)));
      if (lines.size > 1) broken.push(found[0]);
    }
  }
  return broken;
}"""


async def _rows(page: Page) -> list[dict[str, str]]:
    return list(
        await page.locator("table.timeline tbody tr").evaluate_all(
            """rows => rows.map(r => ({
                id: r.dataset.eventId,
                seq: r.querySelector('.seq').textContent.trim(),
                time: r.querySelector('.when time').textContent.trim(),
                iso: r.querySelector('.when time').getAttribute('datetime'),
                since: r.querySelector('.since').textContent.trim(),
                days: String(r.querySelectorAll('.when .day').length),
            }))"""
        )
    )


async def test_the_timeline__milliseconds_time_since_begin_numbers_from_one_and_whole_tokens(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another transaction first, so that the log's own event ids are not 1, 2, 3...
    await console.confirmed("shop:before")
    await park(console, "stuck-time", failing=("pay",), fine=("ship",))
    status, everything = await console.api("GET", "/v1/transactions/stuck-time/events?limit=1000")
    assert status == 200
    total = len(everything["events"])
    monkeypatch.setattr(pages, "EVENTS_PER_PAGE", 4)  # pages of 4: several of them
    assert total > 8

    for width in WIDTHS:
        page = await console.page(width=width)
        if width == WIDTHS[0]:
            await console.login(page, "ops", then="/ui/transactions/stuck-time")
        else:
            await page.goto(f"{console.base}/ui/transactions/stuck-time")
        seen: list[dict[str, str]] = []
        page_number = 0
        while True:
            rows = await _rows(page)
            assert rows
            assert rows[0]["days"] == "1"  # the date once a page, not on every row
            assert all(r["days"] == "0" for r in rows[1:])
            seen += rows
            broken = await page.locator("table.timeline tbody").evaluate(BROKEN_TOKENS)
            assert broken == [], broken
            assert await page_width(page) <= width
            page_number += 1
            await shot(console, page, f"timeline-page-{page_number}", width)
            later = page.get_by_role("link", name="Later events »")
            if not await later.count():
                break
            await later.click()
            await expect(page.locator("h1")).to_contain_text("Timeline of")

        assert [r["seq"] for r in seen] == [str(n) for n in range(1, total + 1)]
        assert [r["id"] for r in seen] == [str(e["id"]) for e in everything["events"]]
        assert [r["id"] for r in seen] != [r["seq"] for r in seen]
        for row in seen:
            assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", row["time"]), row
            assert row["iso"].endswith(row["time"] + "+00:00"), row
            assert re.fullmatch(r"\+\d+\.\d{3} s", row["since"]), row
        since = [float(r["since"][1:-2]) for r in seen]
        assert since == sorted(since)
        assert since[0] < 1.0
        # Milliseconds tell apart what whole seconds did not.
        assert len({r["time"] for r in seen}) > len({r["time"][:8] for r in seen})


# --- 13. after an action, the page as it is now --------------------------------------------


async def test_after_a_refused_action__the_page_shows_the_transaction_as_it_is_and_why(
    console: Console,
) -> None:
    for width, gid in zip(WIDTHS, ("stuck-stale-1", "stuck-stale-2"), strict=True):
        await park(console, gid, failing=("pay",))
        page = await console.page(width=width)
        if width == WIDTHS[0]:
            await console.login(page, "ops", then=f"/ui/transactions/{gid}")
        else:
            await page.goto(f"{console.base}/ui/transactions/{gid}")
        await page.evaluate("window.notReloaded = true")
        # Someone else resolves it while this page is open (and paused, so only the
        # action's answer can refresh it).
        await page.get_by_role("button", name="Pause live updates").click()
        status, _ = await console.api(
            "POST", f"/v1/transactions/{gid}/resolve", {"note": "done elsewhere"}
        )
        assert status == 200
        panel = action_panel(page, "Retry")
        await panel.locator("summary").click()
        await panel.get_by_label("Reason for retrying").fill("try again")
        await panel.get_by_role("button", name="Retry").click()

        flash = page.locator("[data-flash]")
        await expect(flash).to_contain_text("Retry: refused", timeout=WAIT_MS)
        await expect(flash).to_contain_text("this one is confirmed")
        await expect(flash).to_be_focused()
        await expect(page.locator(".state-line .status")).to_have_text("confirmed")
        await expect(page.locator("details.action")).to_have_count(0)
        await expect(page.locator(".state-line")).to_contain_text("done elsewhere")
        assert await page.evaluate("window.notReloaded") is True  # refreshed, not reloaded
        assert await page_width(page) <= width
        await shot(console, page, "action-refused", width)


async def test_after_an_accepted_action__the_page_refreshes_without_a_reload(
    console: Console,
) -> None:
    await park(console, "stuck-fixed", failing=("pay",))
    page = await console.page(width=PHONE)
    await console.login(page, "ops", then="/ui/transactions/stuck-fixed")
    await page.evaluate("window.notReloaded = true")
    console.participant.default("confirm", Reply(status=200), service="flaky")
    panel = action_panel(page, "Retry")
    await panel.locator("summary").click()
    await panel.get_by_label("Reason for retrying").fill("wallet fixed")
    await panel.get_by_role("button", name="Retry").click()
    await expect(page.locator("[data-flash]")).to_contain_text("Retry: done", timeout=WAIT_MS)
    await expect(page.locator(".state-line .status")).to_have_text("confirmed", timeout=WAIT_MS)
    await expect(page.locator("details.action")).to_have_count(0)
    assert await page.evaluate("window.notReloaded") is True
    await shot(console, page, "action-done", PHONE)


# --- 17. the icon, and JavaScript off --------------------------------------------------------


async def test_every_page__has_an_icon_and_nothing_it_loads_is_missing(
    console: Console,
) -> None:
    await park(console, "stuck-icon", failing=("pay",))
    answers: list[tuple[str, int]] = []
    for width in WIDTHS:
        answers.clear()
        page = await console.page(width=width)
        page.on("response", lambda r: answers.append((r.url, r.status)))
        if width == WIDTHS[0]:
            await page.goto(f"{console.base}/ui/login")
            await expect(page.locator('link[rel="icon"]')).to_have_count(1)
            await console.login(page, "ops")
        for path in (
            "/ui/",
            "/ui/transactions",
            "/ui/transactions/stuck-icon",
            "/ui/transactions/stuck-icon/timeline?after=0",
        ):
            await page.goto(f"{console.base}{path}")
            await page.wait_for_load_state("load")
            icon = page.locator('link[rel="icon"]')
            href = await icon.get_attribute("href")
            assert href is not None
            assert href.startswith("/ui/static/favicon.svg?v=")
        answer = await page.request.get(f"{console.base}{href}")
        assert answer.status == 200
        assert answer.headers["content-type"].startswith("image/svg+xml")
        assert (await answer.text()).startswith("<svg")
        assert [a for a in answers if a[1] == 404] == []
        assert not [a for a in answers if a[0].endswith("/favicon.ico")]
        # The icon itself, large and at a tab's size, for the record.
        icon_url = f"{console.base}{href}"
        await page.set_content(
            f'<p><img src="{icon_url}" width="128" alt="icon"> <img src="{icon_url}" width="16"'
            f' alt="icon"> the TCC console\'s icon</p>'
        )
        await expect(page.locator("img").first).to_have_js_property("complete", True)
        await shot(console, page, "favicon", width)


@contextlib.asynccontextmanager
async def chromium_without_profile() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def test_with_javascript_off__nothing_that_needs_it_is_offered(console: Console) -> None:
    await park(console, "stuck-nojs", failing=("pay", "ship"))
    # With the script, the same page offers its buttons (what is hidden below is there).
    scripted = await console.page()
    await console.login(scripted, "ops", then="/ui/transactions/stuck-nojs")
    await expect(scripted.locator("details.action").first).to_be_visible()
    await expect(scripted.locator("h1 button.copy")).to_be_visible()
    await expect(scripted.locator(".no-js").first).to_be_hidden()

    async with chromium_without_profile() as browser:
        for width in WIDTHS:
            context = await browser.new_context(
                java_script_enabled=False, viewport={"width": width, "height": 900}
            )
            page = await context.new_page()
            # Logging in is a plain form.
            await page.goto(f"{console.base}/ui/login?next=/ui/transactions/stuck-nojs")
            await page.get_by_label("Key name").fill("ops")
            await page.get_by_label("API key").fill(KEYS["ops"])
            await page.get_by_role("button", name="Log in").click()
            await expect(page.locator(".state-line .status")).to_have_text("failed to confirm")

            needing = page.locator(".needs-js, [data-live-controls], button[data-copy]")
            assert await needing.count() > 0
            for i in range(await needing.count()):
                await expect(needing.nth(i)).to_be_hidden()
            await expect(page.locator("details.action")).to_have_count(4)  # all hidden
            visible = [
                (await b.text_content() or "").strip()
                for b in await page.locator("button").all()
                if await b.is_visible()
            ]
            assert visible == ["Log out"], visible
            # What to do instead is said, with the commands.
            await expect(page.locator(".no-js").first).to_be_visible()
            await expect(page.locator(".parked-why")).to_contain_text("tcc retry stuck-nojs")
            assert await page_width(page) <= width
            await shot(console, page, "javascript-off-transaction", width)

            await page.goto(f"{console.base}/ui/transactions")
            visible = [
                (await b.text_content() or "").strip()
                for b in await page.locator("button").all()
                if await b.is_visible()
            ]
            assert sorted(visible) == ["Apply", "Log out"], visible
            await shot(console, page, "javascript-off-list", width)
            await context.close()


# --- 18. the trace link ---------------------------------------------------------------------


async def test_the_trace_id__links_to_the_tracing_backend(
    database_url: str, participant: FakeParticipant, shots: Path, browser: BrowserContext
) -> None:
    template = "http://127.0.0.1:9/jaeger/trace/{trace_id}?uiFind=tcc"
    async with secured_console(
        database_url, participant, browser, shots, trace_url_template=template
    ) as console:
        await console.confirmed("shop:traced")
        traceparent = participant.calls_for(gid="shop:traced")[0].headers["traceparent"]
        trace_id = traceparent.split("-")[1]
        problems: list[str] = []
        for width in WIDTHS:
            page = await console.page(width=width)
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            if width == WIDTHS[0]:
                await console.login(page, "ops", then="/ui/transactions/shop:traced")
            else:
                await page.goto(f"{console.base}/ui/transactions/shop:traced")
            link = page.locator(".fact-trace a.trace-id")
            await expect(link).to_have_text(trace_id)
            await expect(link).to_have_attribute("href", template.replace("{trace_id}", trace_id))
            await expect(link).to_have_attribute("rel", "noopener noreferrer")
            await expect(link).to_have_attribute("target", "_blank")
            card = page.locator(".fact-trace")
            await inside(link, card)
            await inside(card.locator("button.copy"), card)
            assert await link.evaluate("e => e.scrollWidth <= e.clientWidth")  # whole
            assert await page_width(page) <= width
            await shot(console, page, "trace-link", width)
        # A plain link: the page's policy is the one it always was, and nothing broke it.
        answer = await page.request.get(f"{console.base}/ui/transactions/shop:traced")
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert not [p for p in problems if "Content Security Policy" in p], problems


async def test_the_overview__says_why_each_parked_one_waits__and_which_coordinators_run(
    console: Console,
) -> None:
    await park(console, "shop:night-1", ("pay",), ("ship",))
    owner = console.coordinator.runtime.driver.owner
    page = await console.page()
    await console.login(page, "ops")
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 900})
        await page.goto(f"{console.base}/ui/")
        parked = page.locator("table.parked-list tbody tr").filter(has_text="shop:night-1")
        await expect(parked).to_have_count(1, timeout=WAIT_MS)
        waiting = parked.locator("a.branch")
        await expect(waiting).to_have_text("pay")
        await expect(parked).to_contain_text("HTTP 500")
        await expect(parked).to_contain_text("wallet down")
        coordinators = page.locator("table.coordinators tbody tr").filter(has_text=owner)
        await expect(coordinators).to_have_count(1, timeout=WAIT_MS)
        await expect(coordinators).to_contain_text("alive")
        assert await page_width(page) <= width
        await within_viewport(page, waiting, width)  # no scrolling sideways, on a phone too
        await within_viewport(page, page.locator("#coordinators-heading"), width)
        await shot(console, page, "overview-parked-why", width)
        # The waiting branch's link leads to its row on the transaction's page.
        await waiting.click()
        await expect(page.locator("#branch-pay")).to_be_visible(timeout=WAIT_MS)
