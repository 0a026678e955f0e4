"""The Participants page (issue 20): every registered participant with its health in words
(its circuit breaker), its calls, error rate and latency by phase over the last 15 minutes,
the transactions waiting on it, and, for an admin, closing an open breaker. Over HTTP
against the real app on a real Postgres, and once in Debian's Chromium."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.async_api import expect

from coordinator.api.console.health import Health, participant_rows, spark
from coordinator.core import breaker
from coordinator.core.breaker import BreakerState
from coordinator.core.records import Participant, ParticipantUsage, PhaseUsage
from coordinator.core.states import Phase
from tests.conftest import CoordinatorClient
from tests.console.helpers import SECURED, MakeCoordinator, bearer, login, send
from tests.console.test_browser import CHROMIUM, WAIT_MS, Console, action_panel
from tests.participant_server import FakeParticipant, Reply

REASON = "5 calls failed in a row"
PHONE = 390


async def _register(
    c: CoordinatorClient, name: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    status, out, _ = await c.request("PUT", f"/v1/participants/{name}", json=body, headers=headers)
    assert status in (200, 201), out


async def _trip(c: CoordinatorClient, name: str) -> None:
    """Open the participant's breaker as a coordinator does when its calls keep failing."""
    move = breaker.trip(name, REASON, 0, c.runtime.settings.breaker_policy)
    assert await c.runtime.log.move_breaker(move) is not None


def _row(page: str, name: str) -> str:
    found = re.search(rf'<tr id="participant-{name}".*?</tr>', page, re.S)
    assert found is not None, name
    return html.unescape(found.group(0))


def _health(row: str) -> str:
    found = re.search(r'<span class="status health [^"]*">([^<]*)</span>', row)
    assert found is not None, row
    return found.group(1)


# --- over HTTP -------------------------------------------------------------------------------


async def test_an_empty_registry__says_how_to_register_one(coordinator: CoordinatorClient) -> None:
    page = await send(coordinator, "GET", "/ui/participants")
    assert page.status == 200
    text = html.unescape(page.text)
    assert "No participant is registered" in text
    assert "PUT /v1/participants/NAME" in text
    assert "tcc participants register NAME --base-url URL" in text
    assert "<table" not in text
    # Every page leads to it; this one says it is where you are.
    assert '<a href="/ui/participants" aria-current="page">Participants</a>' in text
    overview = await send(coordinator, "GET", "/ui/")
    assert '<a href="/ui/participants">Participants</a>' in overview.text


async def test_a_participant_in_use__its_urls_calls_errors_and_latency_by_phase(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    base = f"{participant.base_url()}/wallet"
    await _register(
        coordinator,
        "wallet",
        {"base_url": base, "health_url": f"{base}/health", "owner_service": "shop"},
    )
    # Two transactions confirmed through it, one whose try it refused with a 500.
    for gid in ("paid-1", "paid-2"):
        status, out = await coordinator.post(
            "/v1/transactions",
            {"gid": gid, "auto": True, "branches": [participant.branch("pay", "wallet")]},
        )
        assert status == 201, out
    participant.script("try", Reply(status=500), service="wallet")
    await coordinator.post(
        "/v1/transactions",
        {"gid": "refused-1", "auto": True, "branches": [participant.branch("pay", "wallet")]},
    )
    await coordinator.runtime.participants.flush()  # this process's counts, into the log

    page = await send(coordinator, "GET", "/ui/participants")
    assert page.status == 200
    row = _row(page.text, "wallet")
    assert _health(row) == "healthy"
    assert 'data-health="healthy"' in row
    assert "owner" in row
    assert "shop" in row
    assert f"<dt>base</dt><dd>{base}</dd>" in row
    assert f"<dt>health</dt><dd>{base}/health</dd>" in row
    assert f"<dt>confirm</dt><dd>{base}/confirm</dd>" in row  # under "Phase URLs"
    # The last 15 minutes: tries 3 (one failed), confirms 2, cancels 1.
    calls = re.search(r'<span class="num-value">([^<]*)</span>', row)
    assert calls is not None
    assert calls.group(1) == "0.4"  # 6 calls over 15 minutes
    assert "6 calls, peak 6/min" in row
    assert re.search(r'data-label="Error rate" class="num error-text">16\.7\xa0%</td>', row)
    phases = dict(
        re.findall(r"<dt>(try|confirm|cancel)</dt>\s*<dd>([^\n]*?)</dd>", row.split("By phase")[-1])
    )
    assert phases["try"].startswith("3 calls, ")
    assert "1 failed (33.3\xa0%)" in phases["try"]
    assert phases["confirm"].startswith("2 calls; ")
    assert re.search(r"\d+\.\d ms / \d+\.\d ms$", phases["confirm"])
    assert phases["cancel"].startswith("1 call; ")
    # A bar a minute, the current minute last, each saying its count.
    bars = re.findall(r"<title>([^<]*)</title>", row)
    assert len(bars) == 15
    assert bars[-1] == "this minute: 6 calls"
    assert bars[0] == "14 min ago: 0 calls"
    assert re.search(r'data-label="Waiting" class="num waiting">0</td>', row)
    assert "data-action" not in row  # a closed breaker has nothing to close


async def test_an_open_breaker__calls_held_why_since_when_until_the_next_probe(
    make_coordinator: MakeCoordinator,
) -> None:
    console = await make_coordinator(**SECURED)
    ops = bearer("ops")
    await _register(console, "stock", {"base_url": "http://127.0.0.1:9/stock"}, ops)
    # A transaction with a branch on it, registered while the breaker was closed.
    for method, path, body in (
        ("POST", "/v1/transactions", {"gid": "held-1", "timeout_s": 300}),
        ("POST", "/v1/transactions/held-1/branches", {"branch_id": "b1", "participant": "stock"}),
    ):
        status, out, _ = await console.request(method, path, json=body, headers=ops)
        assert status in (200, 201), out
    await _trip(console, "stock")
    # Its confirm is held: the transaction waits on the participant.
    status, out, _ = await console.request("POST", "/v1/transactions/held-1/confirm", headers=ops)
    assert status in (200, 202), out
    _, registered, _ = await console.request("GET", "/v1/participants/stock", headers=ops)

    page = await send(console, "GET", "/ui/participants", cookie=await login(console, "ops"))
    assert page.status == 200
    row = _row(page.text, "stock")
    assert _health(row) == "calls held"
    assert "tone-parked" in row
    assert f"why: {REASON}" in re.sub(r"<[^>]+>", "", row)
    since = datetime.fromisoformat(registered["breaker_since"]).astimezone(UTC)
    assert f'since <time datetime="{since.isoformat(timespec="milliseconds")}"' in row
    assert "until the next probe, <time" in row
    assert "phase-two calls to it wait, new tries to it fail at once" in row
    assert "none: probed with one real call" in row
    assert re.search(r'data-label="Waiting" class="num waiting">1</td>', row)
    # The admin's action: the /v1 endpoint, asked for confirmation, no words needed.
    form = re.search(r"<form [^>]*data-action[^>]*>", row)
    assert form is not None
    assert 'action="/v1/participants/stock/breaker/reset"' in form.group(0)
    assert "data-field" not in form.group(0)
    assert 'data-confirm="Close the breaker of stock? Its held calls will go out again."' in (
        form.group(0)
    )
    assert "<textarea" not in row
    assert "tcc participants reset NAME" in page.text

    # A viewer sees the same, without the action.
    seen = await send(console, "GET", "/ui/participants", cookie=await login(console, "eyes"))
    assert seen.status == 200
    row = _row(seen.text, "stock")
    assert _health(row) == "calls held"
    assert "data-action" not in seen.text
    assert "Close breaker" not in seen.text
    assert "tcc participants reset" not in seen.text


async def test_a_closed_breaker__reads_as_recovering_while_its_calls_ramp_up(
    coordinator: CoordinatorClient,
) -> None:
    await _register(coordinator, "stock", {"base_url": "http://127.0.0.1:9/stock"})
    await _trip(coordinator, "stock")
    status, out = await coordinator.post("/v1/participants/stock/breaker/reset")
    assert status == 200, out
    assert out["breaker_state"] == "closed"
    page = await send(coordinator, "GET", "/ui/participants")
    row = _row(page.text, "stock")
    assert _health(row) == "recovering: calls ramping up"
    assert "ramping up until <time" in row
    assert "data-action" not in row


async def test_phase_urls_without_a_base__and_no_try_url(
    coordinator: CoordinatorClient,
) -> None:
    await _register(
        coordinator,
        "mailer",
        {"confirm_url": "http://127.0.0.1:9/send", "cancel_url": "http://127.0.0.1:9/drop"},
    )
    row = _row((await send(coordinator, "GET", "/ui/participants")).text, "mailer")
    assert '<dt>try</dt><dd><span class="hint">none: its callers run their tries</span></dd>' in row
    assert "<dt>confirm</dt><dd>http://127.0.0.1:9/send</dd>" in row
    assert "<dt>cancel</dt><dd>http://127.0.0.1:9/drop</dd>" in row
    assert "no owner service" in row
    assert "no calls" in row
    assert "Phase URLs" not in row


async def test_the_fragment__is_the_live_part_alone(coordinator: CoordinatorClient) -> None:
    await _register(coordinator, "stock", {"base_url": "http://127.0.0.1:9/stock"})
    fragment = await send(coordinator, "GET", "/ui/participants?fragment=1")
    assert fragment.status == 200
    assert "<html" not in fragment.text
    assert 'data-participant="stock"' in fragment.text
    page = await send(coordinator, "GET", "/ui/participants")
    assert '<div id="live" data-live="4">' in page.text
    assert "data-flash" in page.text


async def test_breakers_switched_off__the_page_says_so(make_coordinator: MakeCoordinator) -> None:
    off = await make_coordinator(breaker=False)
    page = await send(off, "GET", "/ui/participants")
    assert "Circuit breakers are off on this coordinator" in page.text


# --- the rows, pure ---------------------------------------------------------------------------

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def _participant(state: BreakerState, **changes: Any) -> Participant:
    values: dict[str, Any] = {
        "name": "stock",
        "base_url": None,
        "try_url": None,
        "confirm_url": "http://s/confirm",
        "cancel_url": "http://s/cancel",
        "health_url": None,
        "call_timeout_s": None,
        "tls_profile": None,
        "owner_service": None,
        "registered_by": None,
        "created_at": NOW - timedelta(hours=1),
        "updated_at": NOW - timedelta(hours=1),
        "breaker_state": state,
        "breaker_since": NOW - timedelta(seconds=20),
        "breaker_reason": None,
        "breaker_retry_at": None,
        "breaker_opens": 0,
        "probe_owner": None,
        "probe_expires_at": None,
        "ramp_started_at": None,
    }
    values.update(changes)
    return Participant(**values)


USAGE = ParticipantUsage("stock", [PhaseUsage(Phase.CONFIRM, 10, 3, 5.0, 9.0)], [0] * 14 + [10], 2)


@pytest.mark.parametrize(
    ("participant", "health", "probe_due", "action"),
    [
        (_participant(BreakerState.CLOSED), Health.HEALTHY, False, False),
        (
            _participant(BreakerState.CLOSED, ramp_started_at=NOW - timedelta(seconds=10)),
            Health.RECOVERING,
            False,
            False,
        ),
        (
            _participant(BreakerState.CLOSED, ramp_started_at=NOW - timedelta(seconds=31)),
            Health.HEALTHY,
            False,
            False,
        ),
        (
            _participant(BreakerState.OPEN, breaker_retry_at=NOW + timedelta(seconds=5)),
            Health.HELD,
            False,
            True,
        ),
        (
            _participant(BreakerState.OPEN, breaker_retry_at=NOW - timedelta(seconds=1)),
            Health.HELD,
            True,
            True,
        ),
        (_participant(BreakerState.HALF_OPEN), Health.PROBING, False, True),
    ],
)
def test_a_row__its_health_from_the_breaker_and_the_ramp(
    participant: Participant, health: Health, probe_due: bool, action: bool
) -> None:
    (row,) = participant_rows([(participant, USAGE)], 30.0, NOW)
    assert row.health is health
    assert row.probe_due is probe_due
    assert (row.action is not None) is action
    assert (row.ramp_ends_at is not None) is (health is Health.RECOVERING)
    assert row.calls == 10
    assert row.calls_per_minute == pytest.approx(10 / 15)
    assert row.error_rate == pytest.approx(0.3)


def test_the_spark__a_bar_a_minute_scaled_to_the_peak__a_call_never_invisible() -> None:
    drawn = spark([0, 1, 100, 50])
    assert drawn.peak == 100
    assert [b.height for b in drawn.bars] == [0.0, 1.0, 24.0, 12.0]
    assert [b.label for b in drawn.bars] == [
        "3 min ago: 0 calls",
        "2 min ago: 1 call",
        "1 min ago: 100 calls",
        "this minute: 50 calls",
    ]
    assert spark([]).bars == []


# --- in a browser --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)",
)
async def test_an_admin_closes_an_open_breaker_from_the_page(console: Console) -> None:
    # Beside it, one in use, with its calls over the window.
    wallet = f"{console.participant.base_url()}/wallet"
    for name, body in (
        ("stock", {"base_url": "http://127.0.0.1:9/stock"}),
        ("wallet", {"base_url": wallet, "health_url": f"{wallet}/health"}),
    ):
        status, out = await console.api("PUT", f"/v1/participants/{name}", body)
        assert status == 201, out
    await console.confirmed("paid-1")
    await console.coordinator.runtime.participants.flush()
    await _trip(console.coordinator, "stock")
    page = await console.page()
    await console.login(page, "ops", then="/ui/participants")
    row = page.locator('tr[data-participant="stock"]')
    await expect(row.locator(".health")).to_have_text("calls held")
    await expect(row).to_contain_text(REASON)
    used = page.locator('tr[data-participant="wallet"]')
    await expect(used.locator(".health")).to_have_text("healthy")
    await expect(used.locator(".spark .bar")).to_have_count(1)  # this minute's
    await expect(used.locator(".spark title").last).to_have_text("this minute: 2 calls")
    await console.shot(page, "participants-open-1280")

    asked: list[str] = []

    async def accept(dialog: Any) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.on("dialog", accept)
    panel = action_panel(page, "Close breaker", within='tr[data-participant="stock"]')
    await panel.locator("summary").click()
    await panel.get_by_role("button", name="Close breaker").click()

    await expect(page.locator("[data-flash]")).to_contain_text(
        "Close breaker: done. Its breaker is now closed.", timeout=WAIT_MS
    )
    await expect(row.locator(".health")).to_have_text(
        "recovering: calls ramping up", timeout=WAIT_MS
    )
    await expect(row.locator("details.action")).to_have_count(0)
    assert asked == ["Close the breaker of stock? Its held calls will go out again."]
    _, out = await console.api("GET", "/v1/participants/stock")
    assert out["breaker_state"] == "closed"
    await console.shot(page, "participants-closed-1280")

    # On a phone: a participant a card, the page never scrolls sideways.
    await _trip(console.coordinator, "stock")  # open again: reset counted no opens
    phone = await console.page(width=PHONE)
    await phone.goto(f"{console.base}/ui/participants")
    close = action_panel(phone, "Close breaker", within='tr[data-participant="stock"]')
    await expect(close.locator("summary")).to_be_visible()
    assert await phone.evaluate("document.documentElement.scrollWidth") <= PHONE
    await console.shot(phone, f"participants-open-{PHONE}")
