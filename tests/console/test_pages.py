"""The console's pages over HTTP (no browser): what they show, their filters, fragments,
errors as pages, the static files and the headers every page carries."""

from __future__ import annotations

import html
import re

import pytest

from coordinator.api.console import pages, views
from coordinator.api.console.render import (
    CONTENT_SECURITY_POLICY,
    has_long_word,
    since,
    static_files,
)
from tests.conftest import CoordinatorClient, transaction_detail
from tests.console.helpers import SECURED, MakeCoordinator, bearer, login, send, status_of
from tests.helpers import eventually
from tests.participant_server import FakeParticipant, Reply


async def _confirmed(c: CoordinatorClient, p: FakeParticipant, gid: str) -> None:
    status, out = await c.post(
        "/v1/transactions",
        {"gid": gid, "service": "shop", "auto": True, "branches": [p.branch("pay")]},
    )
    assert status == 201, out


def _gids(html: str) -> list[str]:
    return re.findall(r'<a class="gid clip" href="/ui/transactions/[^"]+"[^>]*>([^<]+)</a>', html)


async def test_overview__counts_and_lists_what_needs_attention(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await _confirmed(coordinator, participant, "ok-1")
    await coordinator.post("/v1/transactions", {"gid": "open-1", "timeout_s": 30})
    page = await send(coordinator, "GET", "/ui/")
    assert page.status == 200
    assert '<span class="tile-count" data-count="trying">1</span>' in page.text
    assert "open-1" in page.text  # the oldest unfinished
    assert "<svg" in page.text


async def test_list__filters_live_in_the_url_and_are_shown_again(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    for gid in ("order-1", "order-2", "refund-1"):
        await _confirmed(coordinator, participant, gid)
    await coordinator.post("/v1/transactions", {"gid": "order-3"})
    page = await send(coordinator, "GET", "/ui/transactions?gid=order-&status=confirmed")
    assert page.status == 200
    assert sorted(_gids(page.text)) == ["order-1", "order-2"]
    assert 'name="gid" value="order-"' in page.text
    assert '<option value="confirmed" selected>' in page.text
    every = await send(coordinator, "GET", "/ui/transactions")
    assert sorted(_gids(every.text)) == ["order-1", "order-2", "order-3", "refund-1"]


async def test_list__pages_with_a_cursor_that_keeps_the_filters(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    for i in range(3):
        await _confirmed(coordinator, participant, f"paged-{i}")
    first = await send(coordinator, "GET", "/ui/transactions?limit=2&gid=paged")
    assert _gids(first.text) == ["paged-2", "paged-1"]
    older = re.search(r'href="(/ui/transactions\?[^"]+)" rel="next"', first.text)
    assert older is not None
    link = older.group(1).replace("&amp;", "&")
    assert "gid=paged" in link
    assert "limit=2" in link
    second = await send(coordinator, "GET", link)
    assert _gids(second.text) == ["paged-0"]
    assert 'rel="next"' not in second.text


async def test_list__filters_that_cannot_be_read__are_shown_as_such(
    coordinator: CoordinatorClient,
) -> None:
    page = await send(
        coordinator, "GET", "/ui/transactions?created_from=yesterday&gid=bad%20gid&dialect=x"
    )
    assert page.status == 400
    for field in ("created_from", "gid", "dialect"):
        assert f"<strong>{field}</strong>" in page.text
    assert 'value="yesterday"' in page.text
    bad_cursor = await send(coordinator, "GET", "/ui/transactions?cursor=nonsense")
    assert bad_cursor.status == 400
    assert "start again" in bad_cursor.text


async def test_a_fragment__is_the_live_part_alone(coordinator: CoordinatorClient) -> None:
    await coordinator.post("/v1/transactions", {"gid": "live-1"})
    fragment = await send(coordinator, "GET", "/ui/transactions?status=trying&fragment=1")
    assert fragment.status == 200
    assert "<html" not in fragment.text
    assert '<table class="listing">' in fragment.text
    assert _gids(fragment.text) == ["live-1"]


async def test_transaction__its_state_branches_and_timeline(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await _confirmed(coordinator, participant, "seen-1")
    page = await send(coordinator, "GET", "/ui/transactions/seen-1")
    assert page.status == 200
    assert '<span class="status status-confirmed tone-done">confirmed</span>' in page.text
    assert 'data-branch="pay"' in page.text
    for kind in ("begin", "try result", "decision", "confirm call", "confirmed"):
        assert f'<td class="what">{kind}</td>' in page.text, kind
    assert "data-live-final" in page.text  # nothing more to watch
    assert "data-action" not in page.text  # a confirmed transaction allows no action
    traceparent = participant.calls_for(gid="seen-1")[0].headers["traceparent"]
    trace_id = traceparent.split("-")[1]
    # To find its trace: shown whole (no tracing backend configured here, so no link).
    assert f'<code class="clip trace-id" title="{trace_id}">{trace_id}</code>' in page.text


async def test_transaction__a_long_timeline_goes_on_on_its_own_pages(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await _confirmed(coordinator, participant, "long-1")
    page = await send(coordinator, "GET", "/ui/transactions/long-1/timeline?after=2")
    assert page.status == 200
    ids = re.findall(r'<tr id="event-\d+" data-event-id="(\d+)"', page.text)
    assert ids
    assert all(int(i) > 2 for i in ids)
    bad = await send(coordinator, "GET", "/ui/transactions/long-1/timeline?after=x")
    assert bad.status == 400


async def test_errors__are_pages_with_the_problem_in_words(coordinator: CoordinatorClient) -> None:
    missing = await send(coordinator, "GET", "/ui/transactions/nobody-home")
    assert missing.status == 404
    assert missing.content_type == "text/html"
    assert "no transaction &#39;nobody-home&#39;" in missing.text
    assert (await send(coordinator, "GET", "/ui/transactions/bad%20gid")).status == 400


async def test_pages__carry_a_strict_content_security_policy_and_are_not_cached(
    coordinator: CoordinatorClient,
) -> None:
    page = await send(coordinator, "GET", "/ui/transactions")
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-store"
    # Nothing inline for the policy to forbid.
    assert "<script>" not in page.text
    assert "style=" not in page.text


async def test_static_files__are_served_from_the_package(coordinator: CoordinatorClient) -> None:
    assert set(static_files()) == {"console.css", "console.js", "favicon.svg"}
    for name, content_type in (
        ("console.css", "text/css"),
        ("console.js", "text/javascript"),
        ("favicon.svg", "image/svg+xml"),
    ):
        version = static_files()[name].version
        out = await send(coordinator, "GET", f"/ui/static/{name}?v={version}")
        assert out.status == 200
        assert out.content_type == content_type
        assert "immutable" in out.headers["Cache-Control"]
    for path in ("/ui/static/nothing.js", "/ui/static/..%2Fpages.py", "/ui/static/"):
        assert (await send(coordinator, "GET", path)).status == 404, path


# --- issue 16: what an operator is told -------------------------------------------------


async def _parked(c: CoordinatorClient, p: FakeParticipant, gid: str, *failing: str) -> None:
    """A transaction whose ``failing`` branches keep refusing confirm until it is parked
    (with a give-up time of a second), beside a branch that confirms."""
    p.default("confirm", Reply(status=500, body={"error": "wallet down"}), service="flaky")
    status, out = await c.post("/v1/transactions", {"gid": gid, "service": "shop"})
    assert status == 201, out
    branches = [p.branch(b, "flaky") for b in failing] + [p.branch("fine")]
    for branch in branches:
        status, out = await c.post(f"/v1/transactions/{gid}/try", branch)
        assert status == 200, out
    await c.post(f"/v1/transactions/{gid}/confirm")

    async def status_now() -> str:
        return str((await transaction_detail(c, gid))["status"])

    await eventually(status_now, lambda s: s == "failed_to_confirm")


@pytest.fixture
async def quick(make_coordinator: MakeCoordinator) -> CoordinatorClient:
    """A coordinator that parks a transaction after a second of failed rounds."""
    return await make_coordinator(give_up_after_s=1.0)


async def test_a_trying_transaction__shows_its_try_deadline_and_no_decision(
    coordinator: CoordinatorClient,
) -> None:
    await coordinator.post("/v1/transactions", {"gid": "open-1", "timeout_s": 300})
    page = await send(coordinator, "GET", "/ui/transactions/open-1")
    assert "<dt>Try deadline</dt>" in page.text
    assert "in 300 s" in page.text or "in 5 min" in page.text
    assert "<dt>Decided" not in page.text
    assert "Why it is parked" not in page.text


async def test_a_parked_transaction__says_which_branch_failed_since_when_and_what_to_do(
    quick: CoordinatorClient, participant: FakeParticipant
) -> None:
    await _parked(quick, participant, "stuck-1", "pay", "ship")
    detail = await transaction_detail(quick, "stuck-1")
    park = [e for e in detail["events"] if e["kind"] == "failed_to_confirm"][-1]
    page = await send(quick, "GET", "/ui/transactions/stuck-1")
    text = html.unescape(page.text)
    assert "Why it is parked" in text
    assert "Confirm kept failing for 2 branches" in text
    assert re.findall(r'data-stuck="([^"]+)"', text) == ["pay", "ship"]  # not "fine"
    assert "last HTTP <strong>500</strong>" in text
    assert "wallet down" in text
    assert f'<a href="#event-{park["id"]}"><time datetime="' in text  # since the park
    assert 'tcc retry stuck-1 --reason "…"' in text
    assert 'tcc resolve stuck-1 --note "…"' in text
    assert 'tcc resolve stuck-1 --branch pay --note "…"' in text
    # Decided, not a try deadline long past.
    assert "<dt>Decided: confirm</dt>" in text
    assert "deadline" not in text.lower().split('<h2 id="timeline-heading"')[0]


async def test_a_viewer__reads_why_it_is_parked__and_that_acting_needs_an_admin(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    console = await make_coordinator(give_up_after_s=1.0, **SECURED)
    participant.default("confirm", Reply(status=500), service="flaky")
    for body, path in (
        ({"gid": "stuck-v", "service": "shop"}, "/v1/transactions"),
        (participant.branch("pay", "flaky"), "/v1/transactions/stuck-v/try"),
        (None, "/v1/transactions/stuck-v/confirm"),
    ):
        await console.request("POST", path, json=body, headers=bearer("ops"))
    await eventually(lambda: status_of(console, "stuck-v"), lambda s: s == "failed_to_confirm")
    page = await send(
        console, "GET", "/ui/transactions/stuck-v", cookie=await login(console, "eyes")
    )
    assert "Why it is parked" in page.text
    assert "Acting needs an admin key." in page.text
    assert "data-action" not in page.text


async def test_a_branch_resolved_by_hand__says_by_whom_and_why__even_past_the_first_page(
    quick: CoordinatorClient, participant: FakeParticipant, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _parked(quick, participant, "stuck-2", "pay", "ship")
    status, _ = await quick.post(
        "/v1/transactions/stuck-2/branches/pay/resolve", {"note": "refunded, ticket 7"}
    )
    assert status == 200
    page = await send(quick, "GET", "/ui/transactions/stuck-2")
    row = _row(page.text, "pay")
    assert 'class="resolved-by-hand"' in row
    assert "resolved by <strong>api:api (insecure) (127.0.0.1)</strong>" in row
    assert "refunded, ticket 7" in row
    assert 'class="error-text"' not in row
    assert '<span class="tag">by hand</span>' in row
    assert 'class="error-text"' in _row(page.text, "ship")  # still failing, still an error

    # The resolve event on a later page of the timeline: the branch still reads as resolved
    # by hand, with the note the log keeps (who is on the later page).
    monkeypatch.setattr(pages, "EVENTS_PER_PAGE", 2)
    page = await send(quick, "GET", "/ui/transactions/stuck-2")
    row = _row(page.text, "pay")
    assert "resolved by <strong>an operator</strong>" in row
    assert "refunded, ticket 7" in row
    assert 'class="error-text"' not in row

    # The last one resolved: the transaction says by whom, on the first page of its timeline.
    monkeypatch.setattr(pages, "EVENTS_PER_PAGE", 200)
    await quick.post("/v1/transactions/stuck-2/resolve", {"note": "shipped by hand"})
    page = await send(quick, "GET", "/ui/transactions/stuck-2")
    by_whom = "resolved by hand by <strong>api:api (insecure) (127.0.0.1)</strong>"
    assert f"{by_whom}: “shipped by hand”" in page.text
    assert "Why it is parked" not in page.text


def _row(html: str, branch_id: str) -> str:
    found = re.search(rf'<tr id="branch-{branch_id}".*?</tr>', html, re.S)
    assert found is not None, branch_id
    return found.group(0)


async def test_the_timeline__numbers_rows_from_one_with_times_since_begin_across_pages(
    coordinator: CoordinatorClient, participant: FakeParticipant, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _confirmed(coordinator, participant, "other")  # the log's ids are not 1, 2, 3
    await _confirmed(coordinator, participant, "timed-1")
    monkeypatch.setattr(pages, "EVENTS_PER_PAGE", 2)
    first = await send(coordinator, "GET", "/ui/transactions/timed-1")
    seqs = re.findall(r'<td class="num seq">(\d*)</td>', first.text)
    assert seqs == ["1", "2"]
    assert re.findall(r'<td class="num since">([^<]*)</td>', first.text)[0].startswith("+0.0")
    assert len(re.findall(r'<span class="day">', first.text)) == 1
    later = re.search(r'href="(/ui/transactions/timed-1/timeline\?[^"]+)" rel="next"', first.text)
    assert later is not None
    link = later.group(1).replace("&amp;", "&")
    assert "seq=3" in link
    assert "begun=" in link
    numbers: list[str] = seqs
    while link:
        page = await send(coordinator, "GET", link)
        assert page.status == 200
        numbers += re.findall(r'<td class="num seq">(\d*)</td>', page.text)
        assert all(
            re.fullmatch(r"\+\d+\.\d{3} s", s)
            for s in re.findall(r'<td class="num since">([^<]*)</td>', page.text)
        )
        found = re.search(r'href="([^"]+)" rel="next"', page.text)
        link = found.group(1).replace("&amp;", "&") if found else ""
    total = len((await transaction_detail(coordinator, "timed-1"))["events"])
    assert numbers == [str(n) for n in range(1, total + 1)]
    # An old link without the numbers still opens; a wrong one is refused.
    plain = await send(coordinator, "GET", "/ui/transactions/timed-1/timeline?after=0")
    assert plain.status == 200
    assert '<td class="num seq"></td>' in plain.text
    for bad in ("seq=x", "begun=-1", "seq=1234567890", "begun=999999999999999"):
        out = await send(coordinator, "GET", f"/ui/transactions/timed-1/timeline?after=0&{bad}")
        assert out.status == 400, bad


async def test_the_trace_id__links_to_the_tracing_backend_when_one_is_configured(
    make_coordinator: MakeCoordinator, participant: FakeParticipant
) -> None:
    traced = await make_coordinator(trace_url_template="https://tempo.example/t/{trace_id}")
    await _confirmed(traced, participant, "traced-1")
    trace_id = participant.calls_for(gid="traced-1")[0].headers["traceparent"].split("-")[1]
    page = await send(traced, "GET", "/ui/transactions/traced-1")
    assert (
        f'<a class="clip trace-id" href="https://tempo.example/t/{trace_id}"'
        ' rel="noopener noreferrer" target="_blank"'
    ) in page.text
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_values_as_the_pages_show_them() -> None:
    assert [since(s) for s in (0.0, 0.1234, 61.5, 3725.25, None)] == [
        "+0.000 s",
        "+0.123 s",
        "+1 min 01.500 s",
        "+1 h 02 min 05.250 s",
        "",
    ]
    assert has_long_word("http://" + "x" * 40)
    assert not has_long_word("HTTP 500: wallet down")
    assert views.trace_id("00-" + "ab" * 16 + "-" + "cd" * 8 + "-01") == "ab" * 16
    assert views.trace_id("00-" + "0" * 32 + "-" + "cd" * 8 + "-01") is None
    assert views.trace_id("nonsense") is None
    assert views.trace_url(None, "ab" * 16) is None
    assert views.trace_url("http://j/{trace_id}", None) is None


async def test_the_icon__is_served_from_the_package__also_where_browsers_look_for_it(
    coordinator: CoordinatorClient,
) -> None:
    page = await send(coordinator, "GET", "/ui/")
    icon = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', page.text)
    assert icon is not None
    out = await send(coordinator, "GET", icon.group(1).replace("&amp;", "&"))
    assert out.status == 200
    assert out.content_type == "image/svg+xml"
    assert out.text.startswith("<svg")
    # Where browsers look for it without a page's link: open, even with keys and no session.


async def test_favicon_ico__answers_the_icon_without_a_session(
    make_coordinator: MakeCoordinator,
) -> None:
    secured = await make_coordinator(**SECURED)
    out = await send(secured, "GET", "/favicon.ico", html=False)
    assert out.status == 200
    assert out.content_type == "image/svg+xml"
    assert out.text.startswith("<svg")


async def test_overview__a_parked_transaction_names_its_waiting_branch_and_last_answer(
    quick: CoordinatorClient, participant: FakeParticipant
) -> None:
    await _parked(quick, participant, "stuck-1", "pay")
    page = await send(quick, "GET", "/ui/")
    text = html.unescape(page.text)
    parked = text.split('class="listing parked-list"', 1)[1].split("</table>", 1)[0]
    assert "stuck-1" in parked
    assert 'href="/ui/transactions/stuck-1#branch-pay"' in parked
    assert "HTTP 500" in parked
    assert "wallet down" in parked


async def test_overview__lists_the_coordinators_on_the_log_with_their_leases(
    make_coordinator: MakeCoordinator,
) -> None:
    one = await make_coordinator()
    two = await make_coordinator()
    owners = [c.runtime.driver.owner for c in (one, two)]

    async def listed() -> str:
        return html.unescape((await send(one, "GET", "/ui/")).text)

    text = await eventually(listed, lambda t: all(o in t for o in owners))
    table = text.split('class="listing coordinators"', 1)[1].split("</table>", 1)[0]
    assert table.count("alive") == 2
    status, out = await one.get("/v1/overview")
    assert status == 200
    assert {c["owner"] for c in out["coordinators"]} >= set(owners)
    # One stops cleanly: it says so.
    await two.session.close()
    await two.server.close()
    text = await eventually(listed, lambda t: "stopped" in t)
    assert owners[1] in text
