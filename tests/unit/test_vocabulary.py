"""The words the SQL and the migrations use for statuses are the enums' words, and the
records' fields are the log's columns: the log and the code cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

from coordinator.core.states import (
    BranchStatus,
    CancelReason,
    Decision,
    EventKind,
    GlobalStatus,
    Phase,
)
from coordinator.dialects.registry import names as dialect_names

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


# The keys of the event details that the SQL builds itself (jsonb_build_object).
DETAIL_KEYS = {"by", "verdict", "late", "reason", "decision", "name", "coordinator_runs_try"}
DETAIL_KEYS |= {"rounds", "actor"}
# Labels the overview's queries give their parts, and date_trunc's unit.
LABELS = {"open", "recent", "parked", "retrying_long", "oldest_unfinished", "near_deadline"}
LABELS |= {"minute"}
ENUM_WORDS = STATUS_WORDS | {e.value for e in (*EventKind, *Phase, *Decision, *CancelReason)}


def test_every_word_quoted_in_the_queries__is_a_word_of_the_enums() -> None:
    # Table names given to to_regclass() and detail keys are the only other quoted words.
    quoted = set(re.findall(r"'([a-z_]+)'", QUERIES)) - {"tcc_schema_migrations"}
    quoted -= DETAIL_KEYS | LABELS
    assert quoted & STATUS_WORDS, "the queries quote no status: this test reads the wrong file"
    assert quoted <= ENUM_WORDS, quoted - ENUM_WORDS


def test_the_dialects_the_migrations_default_to__are_registered() -> None:
    defaults = set(re.findall(r"dialect\s+text NOT NULL DEFAULT '([a-z]+)'", MIGRATIONS))
    assert defaults
    assert defaults <= set(dialect_names())
