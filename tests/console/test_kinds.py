"""Sagas and messages in the console: the list's type column and filter, the kinds' own words
for statuses and steps, a step's URLs by what they do, the timeline's action, compensation,
course change and query entries in plain words, and why a saga or a message is parked.
Pages over HTTP against a real coordinator; one browser test photographs a compensated saga
at 1280 and 390 px."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from playwright.async_api import expect

from coordinator.api.console import views, words
from coordinator.core.records import Branch, Event
from coordinator.core.states import BranchStatus, EventKind, GlobalStatus, TransactionKind
from tests.conftest import CoordinatorClient, transaction_detail
from tests.console.helpers import MakeCoordinator, send
from tests.console.test_browser import CHROMIUM, WAIT_MS, Console
from tests.helpers import eventually
from tests.participant_server import FakeParticipant, Reply


def saga_steps(p: FakeParticipant, *steps: tuple[str, str]) -> list[dict[str, Any]]:
    """Steps (branch id, the participant's service) whose action and compensation go to
    the fake participant: /<service>/action and /<service>/compensate."""
    base = p.base_url()
    return [
        {
            "branch_id": step,
            "name": f"{step} step",
            "action_url": f"{base}/{service}/action",
            "compensate_url": f"{base}/{service}/compensate",
            "payload": {"step": step},
        }
        for step, service in steps
    ]


async def saga(c: CoordinatorClient, gid: str, steps: list[dict[str, Any]], **more: Any) -> None:
    status, out = await c.post("/v1/sagas", {"gid": gid, "service": "shop", "steps": steps, **more})
    assert status in (201, 202), out


async def succeeded_saga(c: CoordinatorClient, p: FakeParticipant, gid: str) -> None:
    await saga(c, gid, saga_steps(p, ("book", "svc"), ("pay", "svc")))
    assert (await transaction_detail(c, gid))["status"] == "confirmed"


async def compensated_saga(c: CoordinatorClient, p: FakeParticipant, gid: str) -> None:
    """``book`` is done, ``pay``'s action is refused (409): both are compensated."""
    p.default("action", Reply(status=409, body={"error": "card declined"}), service="refuse")
    await saga(c, gid, saga_steps(p, ("book", "svc"), ("pay", "refuse")))
    assert (await transaction_detail(c, gid))["status"] == "cancelled"


async def message(c: CoordinatorClient, p: FakeParticipant, gid: str, **more: Any) -> None:
    body = {
        "gid": gid,
        "service": "shop",
        "steps": [{"branch_id": "mail", "url": f"{p.base_url()}/notify/action"}],
        **more,
    }
    status, out = await c.post("/v1/messages", body)
    assert status == 201, out


async def prepared_message(
    c: CoordinatorClient, p: FakeParticipant, gid: str, timeout_s: float = 300
) -> None:
    # The fake participant answers POSTs only: the coordinator's GET of the query URL is
    # answered 405, which is no answer at all (asked again later).
    query = f"{p.base_url()}/notify/query"
    await message(c, p, gid, prepared=True, query_url=query, timeout_s=timeout_s)


async def confirmed_tcc(c: CoordinatorClient, p: FakeParticipant, gid: str) -> None:
    status, out = await c.post(
        "/v1/transactions", {"gid": gid, "auto": True, "branches": [p.branch("pay")]}
    )
    assert status == 201, out


def _row(html: str, gid: str) -> str:
    """The list's row of a transaction."""
    found = re.search(
        rf'<tr>\s*<th scope="row"><a class="gid clip" href="[^"]*" title="{gid}">'
        r".*?</tr>",
        html,
        re.S,
    )
    assert found is not None, f"no row for {gid}"
    return found.group(0)


def _gids(html: str) -> list[str]:
    return re.findall(r'<a class="gid clip" href="/ui/transactions/[^"]+"[^>]*>([^<]+)</a>', html)


def _dl_labels(html: str, branch_id: str) -> list[str]:
    row = html.split(f'data-branch="{branch_id}"', 1)[1].split("</tr>", 1)[0]
    block = row.split('<dl class="kv">', 1)[1].split("</dl>", 1)[0]
    return re.findall(r"<dt>([^<]+)</dt>", block)


def _what(html: str) -> list[str]:
    """The timeline's What column, each as text."""
    cells = re.findall(r'<td class="what">(.*?)</td>', html, re.S)
    return [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " | ", c)).strip(" |") for c in cells]


# --- the list -----------------------------------------------------------------------------


async def test_list__a_type_column__and_each_kind_s_words_beside_its_status(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await confirmed_tcc(coordinator, participant, "tcc-1")
    await succeeded_saga(coordinator, participant, "saga-ok")
    await compensated_saga(coordinator, participant, "saga-undone")
    await prepared_message(coordinator, participant, "msg-held")
    page = await send(coordinator, "GET", "/ui/transactions")
    assert page.status == 200
    assert '<th scope="col">Type</th>' in page.text
    tcc = _row(page.text, "tcc-1")
    assert '<span class="tag kind kind-tcc" title="Transaction">tcc</span>' in tcc
    # A TCC transaction's status is its word: nothing beside it.
    assert '<span class="status status-confirmed tone-done">confirmed</span>' in tcc
    ok = _row(page.text, "saga-ok")
    assert '<span class="tag kind kind-saga" title="Saga">saga</span>' in ok
    assert (
        '<span class="status status-confirmed tone-done">confirmed'
        ' <span class="kind-word">· succeeded</span></span>'
    ) in ok
    undone = _row(page.text, "saga-undone")
    assert 'cancelled <span class="kind-word">· compensated</span>' in undone
    # The stored reason, and what it means.
    assert "action_failed: pay" in undone
    assert "(the action of step pay failed)" in undone
    held = _row(page.text, "msg-held")
    assert '<span class="tag kind kind-msg" title="Message">msg</span>' in held
    assert 'trying <span class="kind-word">· prepared</span>' in held
    assert "submit by" in held


async def test_list__filters_by_type__kept_in_the_link_the_fragment_and_the_next_page(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await confirmed_tcc(coordinator, participant, "tcc-1")
    await succeeded_saga(coordinator, participant, "saga-1")
    await compensated_saga(coordinator, participant, "saga-2")
    await prepared_message(coordinator, participant, "msg-1")

    sagas = await send(coordinator, "GET", "/ui/transactions?kind=saga")
    assert sagas.status == 200
    assert _gids(sagas.text) == ["saga-2", "saga-1"]
    assert '<option value="saga" selected>saga</option>' in sagas.text
    # With a type chosen, the status filter speaks its words.
    assert '<option value="confirming">confirming · running actions</option>' in sagas.text
    assert '<option value="cancelled">cancelled · compensated</option>' in sagas.text

    messages = await send(coordinator, "GET", "/ui/transactions?kind=msg")
    assert _gids(messages.text) == ["msg-1"]
    assert '<option value="trying">trying · prepared</option>' in messages.text
    tcc = await send(coordinator, "GET", "/ui/transactions?kind=tcc")
    assert _gids(tcc.text) == ["tcc-1"]
    assert '<option value="trying">trying</option>' in tcc.text

    both = await send(coordinator, "GET", "/ui/transactions?kind=saga&status=cancelled")
    assert _gids(both.text) == ["saga-2"]
    fragment = await send(coordinator, "GET", "/ui/transactions?kind=saga&fragment=1")
    assert "<html" not in fragment.text
    assert _gids(fragment.text) == ["saga-2", "saga-1"]

    first = await send(coordinator, "GET", "/ui/transactions?kind=saga&limit=1")
    older = re.search(r'href="(/ui/transactions\?[^"]+)" rel="next"', first.text)
    assert older is not None
    link = older.group(1).replace("&amp;", "&")
    assert "kind=saga" in link
    assert _gids((await send(coordinator, "GET", link)).text) == ["saga-1"]

    every = await send(coordinator, "GET", "/ui/transactions")
    assert sorted(_gids(every.text)) == ["msg-1", "saga-1", "saga-2", "tcc-1"]
    assert 'href="/ui/transactions">Clear</a>' in sagas.text
    assert 'href="/ui/transactions">Clear</a>' not in every.text


async def test_list__a_type_it_does_not_know__is_shown_as_such(
    coordinator: CoordinatorClient,
) -> None:
    page = await send(coordinator, "GET", "/ui/transactions?kind=xa")
    assert page.status == 400
    assert "<strong>kind</strong>" in page.text
    assert "&#39;saga&#39;" in page.text  # the kinds it knows


# --- a saga's page --------------------------------------------------------------------------


async def test_a_succeeded_saga__its_type_steps_and_their_action_and_compensate_urls(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await succeeded_saga(coordinator, participant, "trip-1")
    page = await send(coordinator, "GET", "/ui/transactions/trip-1")
    assert page.status == 200
    text = page.text
    assert "<title>trip-1 · TCC console</title>" in text
    assert '<h1><span class="hint">Saga</span> <span class="gid whole">trip-1</span>' in text
    assert '<span class="tag kind kind-saga" title="Saga">saga</span></h1>' in text
    assert (
        '<p class="state-line"><span class="status status-confirmed tone-done">confirmed'
        ' <span class="kind-word">· succeeded</span></span>'
    ) in text
    assert "<dt>Type</dt><dd>saga" in text
    assert '<dt>Type</dt><dd>saga <span class="hint">(steps in order)</span></dd>' in text
    assert "The steps' actions run in order, one at a time;" in text
    assert '<th scope="col">Step</th>\n      <th scope="col">Phase</th>' in text
    assert "<dt>Submitted</dt>" in text
    assert '<h2 id="branches-heading">Steps <span class="badge">2</span></h2>' in text
    assert '<th scope="col">Step</th>' in text
    for step in ("book", "pay"):
        row = text.split(f'data-branch="{step}"', 1)[1].split("</tr>", 1)[0]
        assert 'confirmed <span class="kind-word">· action done</span>' in row
        assert _dl_labels(text, step) == ["action", "compensate"]
        assert f"{participant.base_url()}/svc/action</dd>" in row
        assert f"{participant.base_url()}/svc/compensate</dd>" in row
    what = _what(text)
    assert what.count("action call | action done") == 2
    assert "decision | run the actions" in what
    assert "confirmed | succeeded" in what
    assert "data-action" not in text  # nothing for an operator to do


async def test_a_compensated_saga__why_it_changed_course_and_each_compensation(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await compensated_saga(coordinator, participant, "trip-2")
    page = await send(coordinator, "GET", "/ui/transactions/trip-2")
    text = page.text
    assert (
        '<span class="status status-cancelled tone-done">cancelled'
        ' <span class="kind-word">· compensated</span></span>'
    ) in text
    assert "reason: action_failed: pay" in text
    assert "(the action of step pay failed)" in text
    for step in ("book", "pay"):
        row = text.split(f'data-branch="{step}"', 1)[1].split("</tr>", 1)[0]
        assert 'cancelled <span class="kind-word">· compensated</span>' in row
    what = _what(text)
    assert "action call | action done" in what
    assert "action call | action refused (FAILURE): compensating" in what
    # The course change says why, in words and as stored (in its details).
    assert "course changed | actions stopped, compensating: the action of step pay failed" in what
    course = text.split('class="event event-course_changed"', 1)[1].split("</tr>", 1)[0]
    assert "<dt>reason</dt><dd>action_failed: pay</dd>" in course
    assert what.count("compensate call | compensated") == 2
    assert "cancelled | compensated" in what
    # In reverse: the refused step first, then the one done before it.
    compensations = re.findall(
        r'class="event event-compensate_call".*?<span class="clip branch-id" title="([^"]+)"',
        text,
        re.S,
    )
    assert compensations == ["pay", "book"]
    # The phase column names the saga's phases.
    assert "<td>compensate</td>" in text
    assert "<td>action</td>" in text


async def test_a_saga_s_graph__says_what_each_step_waits_for(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    steps = saga_steps(participant, ("flight", "svc"), ("hotel", "svc"), ("mail", "svc"))
    steps[2]["after"] = ["flight", "hotel"]
    await saga(coordinator, "trip-3", steps)
    text = (await send(coordinator, "GET", "/ui/transactions/trip-3")).text
    assert "(steps as a graph)" in text
    assert "each once the steps it waits for are done" in text
    mail = text.split('data-branch="mail"', 1)[1].split("</tr>", 1)[0]
    assert '<span class="hint after">after flight, hotel</span>' in mail
    flight = text.split('data-branch="flight"', 1)[1].split("</tr>", 1)[0]
    assert "hint after" not in flight


# --- a message's page ------------------------------------------------------------------------


async def test_a_prepared_message__its_delivery_url_alone_and_abort_for_an_operator(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await prepared_message(coordinator, participant, "note-1")
    page = await send(coordinator, "GET", "/ui/transactions/note-1")
    text = page.text
    assert '<h1><span class="hint">Message</span> <span class="gid whole">note-1</span>' in text
    assert 'trying <span class="kind-word">· prepared</span>' in text
    assert "<dt>Submit by</dt>" in text
    assert "then its service is asked" in text
    assert "Try deadline" not in text
    mail = text.split('data-branch="mail"', 1)[1].split("</tr>", 1)[0]
    assert 'registered <span class="kind-word">· to deliver</span>' in mail
    # A message's step has one URL; its empty cancel URL is not shown.
    assert _dl_labels(text, "mail") == ["delivery URL"]
    assert "<summary>URL and payload</summary>" in mail
    assert "<dt>cancel</dt>" not in text
    assert "<dt>compensate</dt>" not in text
    assert "never compensated" in text
    # Insecure mode: the page is an admin's. A prepared message is aborted, not cancelled.
    assert "<summary>Abort…</summary>" in text
    assert "the message is never delivered" in text
    assert 'action="/v1/transactions/note-1/cancel"' in text


async def test_a_prepared_message_asked_about__the_answer_in_the_timeline(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await prepared_message(coordinator, participant, "note-2", timeout_s=0.2)

    async def asked() -> dict[str, Any]:
        return await transaction_detail(coordinator, "note-2")

    await eventually(asked, lambda d: any(e["kind"] == "query_prepared" for e in d["events"]))
    text = (await send(coordinator, "GET", "/ui/transactions/note-2")).text
    said = (
        "query prepared | its service was asked whether to deliver it:"
        " no usable answer; asked again later, backing off"
    )
    assert said in _what(text)
    entry = text.split('class="event event-query_prepared"', 1)[1].split("</tr>", 1)[0]
    assert "<dt>answer</dt><dd>retry</dd>" in entry
    assert '<td class="num">405</td>' in entry
    assert "<dt>Service asked</dt>" in text

    # The timeline's own pages speak the same words when the link says the kind.
    later = await send(coordinator, "GET", "/ui/transactions/note-2/timeline?after=0&kind=msg")
    assert later.status == 200
    assert said in _what(later.text)
    bad = await send(coordinator, "GET", "/ui/transactions/note-2/timeline?after=0&kind=xa")
    assert bad.status == 400
    assert "kind: one of tcc, saga, msg" in bad.text


async def test_a_delivered_message__its_words(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    await message(coordinator, participant, "note-3")

    async def now() -> str:
        return str((await transaction_detail(coordinator, "note-3"))["status"])

    await eventually(now, lambda s: s == "confirmed")
    text = (await send(coordinator, "GET", "/ui/transactions/note-3")).text
    assert 'confirmed <span class="kind-word">· delivered</span>' in text
    what = _what(text)
    assert "action call | delivered" in what
    assert "decision | submitted: deliver it" in what
    assert "confirmed | delivered" in what


# --- parked ------------------------------------------------------------------------------------


@pytest.fixture
async def quick(make_coordinator: MakeCoordinator) -> CoordinatorClient:
    """A coordinator that parks after a second of failed rounds."""
    return await make_coordinator(give_up_after_s=1.0)


async def parked(c: CoordinatorClient, gid: str, status: str) -> None:
    async def now() -> str:
        return str((await transaction_detail(c, gid))["status"])

    await eventually(now, lambda s: s == status)


async def test_a_saga_whose_compensation_keeps_failing__says_so_and_what_to_do(
    quick: CoordinatorClient, participant: FakeParticipant
) -> None:
    participant.default("compensate", Reply(status=500, body={"error": "ledger down"}), "ledger")
    participant.default("action", Reply(status=409, body={"error": "no room"}), service="refuse")
    steps = saga_steps(participant, ("book", "ledger"), ("pay", "refuse"))
    await saga(quick, "trip-stuck", steps, wait=False)
    await parked(quick, "trip-stuck", "failed_to_cancel")
    text = (await send(quick, "GET", "/ui/transactions/trip-stuck")).text
    assert "Why it is parked" in text
    assert 'failed to cancel <span class="kind-word">· compensations parked</span>' in text
    assert "Compensation of step book kept failing" in text
    stuck = text.split('<li data-stuck="book">', 1)[1].split("</li>", 1)[0]
    assert 'confirmed <span class="kind-word">· action done</span>' in stuck
    assert "ledger down" in stuck
    assert '<li data-stuck="pay">' not in text  # compensated already
    assert "the compensations not done yet run again with a fresh retry budget" in text
    assert "the steps are marked compensated and never called again" in text
    assert "<summary>Mark all compensated by hand…</summary>" in text
    book = text.split('data-branch="book"', 1)[1].split("</tr>", 1)[0]
    assert "<summary>Mark compensated by hand…</summary>" in book
    assert "Records that step book was compensated by hand" in book
    assert "one step at a time in its row" in text
    assert "compensations parked" in _what(text)[-1]


async def test_a_saga_whose_action_keeps_failing__says_so(
    quick: CoordinatorClient, participant: FakeParticipant
) -> None:
    participant.default("action", Reply(status=503, body={"error": "busy"}), service="busy")
    steps = saga_steps(participant, ("book", "svc"), ("pay", "busy"), ("ship", "svc"))
    await saga(quick, "trip-slow", steps, wait=False)
    await parked(quick, "trip-slow", "failed_to_confirm")
    text = (await send(quick, "GET", "/ui/transactions/trip-slow")).text
    # pay was called and failed; ship, after it in order, never ran.
    assert "The action of step pay kept failing" in text
    assert 'failed to confirm <span class="kind-word">· actions parked</span>' in text
    assert "the actions not done yet run again" in text
    assert "once you have done the steps&#39; actions by hand" in text
    assert "<summary>Mark all actions done by hand…</summary>" in text
    assert "Records that every unfinished step was action done by hand" not in text
    assert "Records that every unfinished step had its action done by hand" in text
    ship_stuck = text.split('<li data-stuck="ship">', 1)[1].split("</li>", 1)[0]
    assert "not called yet" in ship_stuck
    ship = text.split('data-branch="ship"', 1)[1].split("</tr>", 1)[0]
    assert 'registered <span class="kind-word">· to run</span>' in ship


async def test_a_message_whose_delivery_keeps_failing__says_so(
    quick: CoordinatorClient, participant: FakeParticipant
) -> None:
    participant.default("action", Reply(status=500, body={"error": "smtp down"}), "notify")
    await message(quick, participant, "note-stuck")
    await parked(quick, "note-stuck", "failed_to_confirm")
    text = (await send(quick, "GET", "/ui/transactions/note-stuck")).text
    assert "Delivery of step mail kept failing" in text
    assert 'failed to confirm <span class="kind-word">· delivery parked</span>' in text
    assert "the deliveries not done yet run again" in text
    assert "once the receivers have had the message another way" in text
    mail = text.split('data-branch="mail"', 1)[1].split("</tr>", 1)[0]
    assert "<summary>Mark delivered by hand…</summary>" in mail
    assert "action call | delivery not done; called again" in _what(text)


# --- the overview ------------------------------------------------------------------------------


async def test_overview__its_tables_show_the_type(
    quick: CoordinatorClient, participant: FakeParticipant
) -> None:
    participant.default("action", Reply(status=500, body={"error": "smtp down"}), "notify")
    await message(quick, participant, "note-stuck")
    await parked(quick, "note-stuck", "failed_to_confirm")
    await prepared_message(quick, participant, "note-held")
    text = (await send(quick, "GET", "/ui/")).text
    parked_list = text.split('class="listing parked-list"', 1)[1].split("</table>", 1)[0]
    assert '<th scope="col">Type</th>' in parked_list
    assert '<td data-label="Type"><span class="tag kind kind-msg"' in parked_list
    assert "delivery parked" in parked_list
    assert 'href="/ui/transactions/note-stuck#branch-mail"' in parked_list
    oldest = text.split('aria-label="Oldest unfinished"', 1)[1].split("</table>", 1)[0]
    assert '<th scope="col">Type</th>' in oldest
    held = _row(oldest, "note-held")
    assert '<span class="tag kind kind-msg" title="Message">msg</span>' in held
    assert "prepared" in held


async def test_overview__a_saga_parked_compensating__names_the_step_it_waits_on(
    quick: CoordinatorClient, participant: FakeParticipant
) -> None:
    participant.default("compensate", Reply(status=500, body={"error": "ledger down"}), "ledger")
    participant.default("action", Reply(status=409, body={"error": "no room"}), service="refuse")
    steps = saga_steps(participant, ("book", "ledger"), ("pay", "refuse"))
    await saga(quick, "trip-stuck", steps, wait=False)
    await parked(quick, "trip-stuck", "failed_to_cancel")
    text = (await send(quick, "GET", "/ui/")).text
    parked_list = text.split('class="listing parked-list"', 1)[1].split("</table>", 1)[0]
    assert "trip-stuck" in parked_list
    assert 'href="/ui/transactions/trip-stuck#branch-book"' in parked_list


# --- the words, one by one -------------------------------------------------------------------


def _event(kind: EventKind, **detail: Any) -> Event:
    return Event(
        id=1,
        at=datetime(2026, 1, 1, tzinfo=UTC),
        kind=kind,
        branch_id=None,
        phase=None,
        http_status=None,
        latency_ms=None,
        error=None,
        detail=detail,
        repeats=1,
        last_at=None,
    )


def _branch(confirm_url: str, cancel_url: str, try_url: str | None = None) -> Branch:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return Branch(
        gid="g",
        branch_id="b",
        position=0,
        name="b",
        try_url=try_url,
        confirm_url=confirm_url,
        cancel_url=cancel_url,
        payload=None,
        status=BranchStatus.REGISTERED,
        attempts=0,
        last_http_status=None,
        last_error=None,
        last_latency_ms=None,
        next_retry_at=None,
        created_at=at,
        updated_at=at,
        data=None,
    )


def test_words__status_labels_step_urls_reasons_and_timeline_notes() -> None:
    saga, msg, tcc = TransactionKind.SAGA, TransactionKind.MSG, TransactionKind.TCC
    assert words.kind_word(GlobalStatus.CONFIRMING, saga) == "running actions"
    assert words.kind_word(GlobalStatus.TRYING, msg) == "prepared"
    assert words.kind_word(GlobalStatus.CONFIRMED, tcc) is None
    assert words.kind_word(BranchStatus.CONFIRMED, "saga") == "action done"
    assert words.kind_word(BranchStatus.CONFIRMED, "tcc") is None
    assert words.kind_word(GlobalStatus.CANCELLED, "msg") == "aborted"
    assert words.kind_word(GlobalStatus.CANCELLED, None) is None

    assert words.step_urls(saga, _branch("http://a/do", "http://a/undo")) == [
        ("action", "http://a/do"),
        ("compensate", "http://a/undo"),
    ]
    assert words.step_urls(msg, _branch("http://a/deliver", "")) == [
        ("delivery URL", "http://a/deliver")
    ]
    assert words.step_urls(tcc, _branch("http://c", "http://x", "http://t")) == [
        ("try", "http://t"),
        ("confirm", "http://c"),
        ("cancel", "http://x"),
    ]

    assert words.reason_words(saga, "action_failed: pay") == "the action of step pay failed"
    assert words.reason_words(saga, "retry_limit: 3 rounds") == (
        "its retry limit was reached (3 rounds)"
    )
    assert words.reason_words(saga, "timeout: the actions ran past 5 s") == (
        "its deadline passed (the actions ran past 5 s)"
    )
    assert words.reason_words(msg, "query_refused: its service answered FAILURE when asked")
    assert words.reason_words(tcc, "try_failed: pay") is None
    assert words.reason_words(saga, "client") is None

    changed = _event(EventKind.COURSE_CHANGED, reason="retry_limit: 3 rounds", by="me")
    assert words.event_note(saga, changed) == (
        "actions stopped, compensating: its retry limit was reached (3 rounds)"
    )
    asked = _event(EventKind.QUERY_PREPARED, answer="ongoing", by="me")
    assert words.event_note(msg, asked) == (
        "its service was asked whether to deliver it: not yet; asked again at the normal interval"
    )
    # Without the kind (a timeline page whose link did not say it), the entries only sagas
    # or only messages make still read as such.
    assert words.event_note(None, asked) is not None
    assert words.event_note(None, _event(EventKind.DECISION, decision="confirm")) is None
    assert words.event_note(tcc, _event(EventKind.CONFIRM_CALL, done=True)) is None
    assert words.step_order(msg, {"concurrent": True}) == "all at once"
    assert words.step_order(saga, {"after": {"c": ["a"]}}) == "as a graph"
    assert words.step_order(tcc, {}) is None
    assert words.waits_for({"after": {"c": ["a", "b"]}}) == {"c": ["a", "b"]}
    # A long timeline's next page is linked with the kind, to go on in its words.
    asked_at = _event(EventKind.QUERY_PREPARED, answer="retry")
    assert views.later_events_url("g", [asked_at], 1, None, msg).endswith("&seq=2&kind=msg")
    assert "kind=" not in views.later_events_url("g", [asked_at], 1, None, tcc)


# --- in a browser ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)",
)
async def test_a_compensated_saga__in_a_browser_at_1280_and_390_px(console: Console) -> None:
    console.participant.default("action", Reply(status=409), service="refuse")
    status, out = await console.api(
        "POST",
        "/v1/sagas",
        {
            "gid": "shop:trip-9",
            "service": "shop",
            "steps": saga_steps(console.participant, ("book", "svc"), ("pay", "refuse")),
        },
    )
    assert status == 201, out
    assert out["status"] == "cancelled"
    page = await console.page()
    await console.login(page, "ops", then="/ui/transactions?kind=saga")
    await expect(page.locator("#live tbody a.gid")).to_have_text(["shop:trip-9"], timeout=WAIT_MS)
    await expect(page.locator("#live tbody .tag.kind")).to_have_text(["saga"])
    await console.shot(page, "kinds-saga-list-1280")
    await page.locator("#live tbody a.gid").click()
    await expect(page.locator(".state-line .status")).to_have_text("cancelled · compensated")
    await expect(page.locator("h1 .tag.kind")).to_have_text("saga")
    await expect(page.locator("table.timeline")).to_contain_text("actions stopped, compensating")
    await console.shot(page, "kinds-saga-compensated-1280")
    phone = await console.page(width=390, height=844)
    await phone.goto(f"{console.base}/ui/transactions/shop:trip-9")
    await expect(phone.locator(".state-line .status")).to_have_text("cancelled · compensated")
    assert await phone.evaluate("document.documentElement.scrollWidth") <= 390
    await console.shot(phone, "kinds-saga-compensated-390")
