"""The words the migrations use for statuses are the enums' words, and the SQL uses none of
them at all (the core hands every status and event kind to it): the log and the code
cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coordinator.core.breaker import BreakerState
from coordinator.core.states import (
    ACTIVE_STATUSES,
    PARKED_STATUSES,
    AlertKind,
    BranchStatus,
    CancelReason,
    Decision,
    EventKind,
    GlobalStatus,
    Phase,
    TryVerdict,
)
from coordinator.dialects.registry import names as dialect_names
from coordinator.txlog.queries import STATUS_SETS

ROOT = Path(__file__).resolve().parents[2]
QUERIES = (ROOT / "coordinator" / "txlog" / "sql" / "queries.sql").read_text()
MIGRATIONS = "\n".join(p.read_text() for p in sorted((ROOT / "migrations").glob("*.sql")))
STATUS_WORDS = {s.value for s in GlobalStatus} | {s.value for s in BranchStatus}


def _check_constraint(table: str) -> set[str]:
    """The words of the status CHECK of a table's CREATE TABLE."""
    body = MIGRATIONS.split(f"CREATE TABLE {table} (", 1)[1].split(");", 1)[0]
    check = re.search(r"status\s+text NOT NULL CHECK \(status IN \(([^)]*)\)\)", body, re.S)
    assert check is not None, f"{table} has no status CHECK"
    return set(re.findall(r"'([a-z_]+)'", check[1]))


def test_the_transaction_status_check__lists_exactly_the_global_statuses() -> None:
    assert _check_constraint("tcc_transactions") == {s.value for s in GlobalStatus}


def test_the_branch_status_check__lists_exactly_the_branch_statuses() -> None:
    assert _check_constraint("tcc_branches") == {s.value for s in BranchStatus}


def test_the_alert_kind_check__lists_exactly_the_alert_kinds() -> None:
    # The latest definition: migration 0011 replaced the one of CREATE TABLE.
    checks = re.findall(r"tcc_alerts_kind_check CHECK \(kind IN \(([^)]*)\)\)", MIGRATIONS)
    assert checks, "no tcc_alerts_kind_check found"
    assert set(re.findall(r"'([a-z_]+)'", checks[-1])) == {k.value for k in AlertKind}


def test_the_breaker_state_check__lists_exactly_the_breaker_states() -> None:
    body = MIGRATIONS.split("CREATE TABLE tcc_participants (", 1)[1].split(");", 1)[0]
    check = re.search(r"CHECK \(breaker_state IN \(([^)]*)\)\)", body)
    assert check is not None
    assert set(re.findall(r"'([a-z_]+)'", check[1])) == {s.value for s in BreakerState}


# Every word a write could decide: none of them is written in the SQL, which takes them all
# as parameters (or, for the reads a partial index serves, as {status sets} from the core).
RULE_WORDS = STATUS_WORDS | {
    e.value for e in (*EventKind, *Phase, *Decision, *CancelReason, *TryVerdict)
}
# What the SQL does quote: a table name given to to_regclass(), the labels the overview's
# queries give their parts, a detail key the SQL adds (the rounds a stay took), intervals.
QUOTED = {"tcc_schema_migrations", "rounds", "minute", "1 minute", "30 seconds", "%", "{}"}
QUOTED |= {"open", "recent", "parked", "retrying_long", "oldest_unfinished", "near_deadline"}


def test_the_queries__quote_no_status_event_kind_phase_decision_or_reason() -> None:
    assert "-- name: begin_transactions" in QUERIES, "this test reads the wrong file"
    code = re.sub(r"--[^\n]*", "", QUERIES)  # the comments' apostrophes are no quotes
    quoted = set(re.findall(r"'([^']*)'", code))
    assert not quoted & RULE_WORDS, quoted & RULE_WORDS
    assert quoted <= QUOTED, quoted - QUOTED


def _index_statuses(index: str) -> set[str]:
    """The statuses of a partial index's WHERE status IN (...)."""
    found = re.search(rf"CREATE INDEX {index} .*?WHERE status IN \(([^)]*)\);", MIGRATIONS, re.S)
    assert found is not None, index
    return set(re.findall(r"'([a-z_]+)'", found[1]))


@pytest.mark.parametrize(
    ("index", "status_set", "query", "statuses"),
    [
        ("tcc_transactions_due", "active_statuses", "claim_due", ACTIVE_STATUSES),
        ("tcc_transactions_parked", "parked_statuses", "overview_attention", PARKED_STATUSES),
    ],
)
def test_a_partial_index__covers_the_core_statuses_the_query_it_serves_names(
    index: str, status_set: str, query: str, statuses: frozenset[GlobalStatus]
) -> None:
    # The statement names the set; queries.py writes the core's statuses in, which must be
    # the index's for the planner to use it (test_store.py checks it does for claim_due).
    assert _index_statuses(index) == {s.value for s in statuses}
    assert set(STATUS_SETS[status_set]) == statuses
    block = QUERIES.split(f"-- name: {query}\n", 1)[1].split("-- name:", 1)[0]
    assert f"status IN {{{status_set}}}" in block


def test_the_dialects_the_migrations_default_to__are_registered() -> None:
    defaults = set(re.findall(r"dialect\s+text NOT NULL DEFAULT '([a-z]+)'", MIGRATIONS))
    assert defaults
    assert defaults <= set(dialect_names())
