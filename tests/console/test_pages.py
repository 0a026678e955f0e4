"""The console's pages over HTTP (no browser): what they show, their filters, fragments,
errors as pages, the static files and the headers every page carries."""

from __future__ import annotations

import re

from coordinator.api.console.render import CONTENT_SECURITY_POLICY, static_files
from tests.conftest import CoordinatorClient
from tests.console.helpers import send
from tests.participant_server import FakeParticipant


async def _confirmed(c: CoordinatorClient, p: FakeParticipant, gid: str) -> None:
    status, out = await c.post(
        "/v1/transactions",
        {"gid": gid, "service": "shop", "auto": True, "branches": [p.branch("pay")]},
    )
    assert status == 201, out


def _gids(html: str) -> list[str]:
    return re.findall(r'<a class="gid" href="/ui/transactions/[^"]+">([^<]+)</a>', html)


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
        assert f"<td>{kind}</td>" in page.text, kind
    assert "data-live-final" in page.text  # nothing more to watch
    assert "data-action" not in page.text  # a confirmed transaction allows no action
    traceparent = participant.calls_for(gid="seen-1")[0].headers["traceparent"]
    assert f"<code>{traceparent.split('-')[1]}</code>" in page.text  # to find its trace


async def test_transaction__a_long_timeline_goes_on_on_its_own_pages(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await _confirmed(coordinator, participant, "long-1")
    page = await send(coordinator, "GET", "/ui/transactions/long-1/timeline?after=2")
    assert page.status == 200
    ids = re.findall(r'<tr class="event[^"]*">\s*<td class="num">(\d+)</td>', page.text)
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
    assert set(static_files()) == {"console.css", "console.js"}
    for name, content_type in (("console.css", "text/css"), ("console.js", "text/javascript")):
        version = static_files()[name].version
        out = await send(coordinator, "GET", f"/ui/static/{name}?v={version}")
        assert out.status == 200
        assert out.content_type == content_type
        assert "immutable" in out.headers["Cache-Control"]
    for path in ("/ui/static/nothing.js", "/ui/static/..%2Fpages.py", "/ui/static/"):
        assert (await send(coordinator, "GET", path)).status == 404, path
