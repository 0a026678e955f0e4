"""Console sessions, the coordinators' own rows, and what the overview says about them and
about parked transactions: the same contract on Postgres and on the in-memory log."""

from __future__ import annotations

import hashlib

import pytest

from coordinator.core.apikeys import Scope
from coordinator.core.errors import CoordinatorError
from coordinator.core.records import NewSession
from coordinator.core.states import Decision
from coordinator.txlog.interface import TransactionLog
from tests.txlog.conftest import LogTime
from tests.txlog.test_contract import confirming, parked
from tests.txlog.test_upkeep_contract import park


def sid(n: int) -> str:
    return hashlib.sha256(f"session-{n}".encode()).hexdigest()


def session(
    n: int, key: str = "ops", scope: Scope = Scope.ADMIN, ttl_s: float = 3600
) -> NewSession:
    return NewSession(sid(n), key, scope, f"digest-{key}", "127.0.0.1", ttl_s)


async def test_session__live_until_it_expires(store: TransactionLog, log_time: LogTime) -> None:
    await store.open_session(session(1, ttl_s=60))
    assert await store.session_is_live(sid(1))
    assert not await store.session_is_live(sid(2))
    await log_time.jump(61)
    assert not await store.session_is_live(sid(1))


async def test_session__revoked_one_by_its_id_prefix(store: TransactionLog) -> None:
    await store.open_session(session(1))
    await store.open_session(session(2))
    assert await store.revoke_sessions("logout:ops", id_prefix=sid(1)[:12]) == 1
    assert not await store.session_is_live(sid(1))
    assert await store.session_is_live(sid(2))
    # Already ended: nothing more to end.
    assert await store.revoke_sessions("again", id_prefix=sid(1)) == 0


async def test_session__revoked_by_key_name__or_all(store: TransactionLog) -> None:
    await store.open_session(session(1, "ops"))
    await store.open_session(session(2, "ops"))
    await store.open_session(session(3, "eyes", Scope.VIEWER))
    assert await store.revoke_sessions("cli:root", key_name="ops") == 2
    assert [await store.session_is_live(sid(n)) for n in (1, 2, 3)] == [False, False, True]
    assert await store.revoke_sessions("cli:root") == 1
    assert not await store.session_is_live(sid(3))


async def test_session__of_a_key_no_longer_configured__is_ended(store: TransactionLog) -> None:
    await store.open_session(session(1, "ops"))
    await store.open_session(session(2, "eyes", Scope.VIEWER))
    ended = await store.revoke_sessions_of_other_keys(
        "key removed", [("eyes", Scope.VIEWER, "digest-eyes")]
    )
    assert ended == 1
    assert not await store.session_is_live(sid(1))
    assert await store.session_is_live(sid(2))
    # Putting the key back does not revive its sessions.
    configured = [("eyes", Scope.VIEWER, "digest-eyes"), ("ops", Scope.ADMIN, "digest-ops")]
    assert await store.revoke_sessions_of_other_keys("key removed", configured) == 0
    assert not await store.session_is_live(sid(1))


async def test_session__a_key_with_the_same_name_but_another_hash_ends_it(
    store: TransactionLog,
) -> None:
    await store.open_session(session(1, "ops"))
    ended = await store.revoke_sessions_of_other_keys(
        "key removed", [("ops", Scope.ADMIN, "digest-of-a-new-key")]
    )
    assert ended == 1


async def test_sessions__listed_newest_first__ended_ones_on_request(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.open_session(session(1))
    await log_time.sleep(0.01)
    await store.open_session(session(2))
    await store.revoke_sessions("logout:ops", id_prefix=sid(1))
    live = await store.list_sessions(include_ended=False, limit=10)
    assert [s.id for s in live] == [sid(2)]
    every = await store.list_sessions(include_ended=True, limit=10)
    assert [s.id for s in every] == [sid(2), sid(1)]
    assert every[1].revoked_by == "logout:ops"
    assert every[1].revoked_at is not None
    assert every[0].scope is Scope.ADMIN


async def test_sessions__that_ended_long_ago_are_pruned(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.open_session(session(1, ttl_s=60))
    await store.open_session(session(2, ttl_s=7200))
    await store.revoke_sessions("logout", id_prefix=sid(2))
    await store.open_session(session(3, ttl_s=7 * 86400))
    await log_time.jump(3600)
    assert await store.prune_sessions(1800) == 2
    remaining = await store.list_sessions(include_ended=True, limit=10)
    assert [s.id for s in remaining] == [sid(3)]


@pytest.mark.parametrize("bad", ["not-a-digest", "A" * 64])
async def test_session__an_id_that_is_no_digest_is_refused(store: TransactionLog, bad: str) -> None:
    with pytest.raises(CoordinatorError):
        await store.open_session(NewSession(bad, "ops", Scope.ADMIN, "d", None, 60))


async def test_coordinators__seen_at_each_scan__with_what_they_claimed(
    store: TransactionLog,
) -> None:
    await store.coordinator_seen("host:1:a", 0, 0)
    await store.coordinator_seen("host:1:a", 3, 1)
    await store.coordinator_seen("host:2:b", 0, 0)
    overview = await store.overview(900, 10)
    by_owner = {c.owner: c for c in overview.coordinators}
    assert set(by_owner) == {"host:1:a", "host:2:b"}
    a = by_owner["host:1:a"]
    assert (a.scans, a.claimed, a.taken_over) == (2, 3, 1)
    assert a.last_claim_at is not None
    assert a.stopped_at is None
    assert by_owner["host:2:b"].last_claim_at is None


async def test_coordinators__show_the_leases_they_hold_and_when_they_stopped(
    store: TransactionLog,
) -> None:
    await confirming(store, "g1")  # decided by owner "a": "a" holds its lease
    await store.coordinator_seen("a", 0, 0)
    await store.coordinator_seen("b", 0, 0)
    await store.coordinator_stopped("b")
    by_owner = {c.owner: c for c in (await store.overview(900, 10)).coordinators}
    assert by_owner["a"].leases_held == 1
    assert by_owner["b"].leases_held == 0
    assert by_owner["b"].stopped_at is not None


async def test_coordinators__gone_for_long__drop_out_and_are_pruned(
    store: TransactionLog, log_time: LogTime
) -> None:
    await store.coordinator_seen("old", 0, 0)
    await log_time.jump(2 * 86400)
    await store.coordinator_seen("new", 0, 0)
    assert [c.owner for c in (await store.overview(900, 10)).coordinators] == ["new"]
    assert await store.prune_coordinators(86400) == 1
    assert await store.prune_coordinators(86400) == 0


async def test_overview__says_which_branch_keeps_a_parked_transaction_waiting(
    store: TransactionLog,
) -> None:
    await park(store, "g")
    overview = await store.overview(900, 10)
    assert [t.gid for t in overview.parked] == ["g"]
    waiting = overview.parked_branches["g"]
    assert waiting.branch_id == "stuck"
    assert waiting.last_http_status == 500
    assert waiting.last_error == "HTTP 500"


async def test_overview__a_parked_cancel_names_its_waiting_branch_too(
    store: TransactionLog,
) -> None:
    await parked(store, "c", Decision.CANCEL)
    overview = await store.overview(900, 10)
    assert "c" in overview.parked_branches
