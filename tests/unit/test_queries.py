"""The named SQL blocks (coordinator/txlog/queries.py): named parameters compiled to asyncpg's
$n, checked at every call; each block says what it does; no block is dead, none missing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from coordinator.core.states import ACTIVE_STATUSES
from coordinator.txlog.interface import TransactionLog
from coordinator.txlog.memory import InMemoryLog
from coordinator.txlog.postgres import PostgresLog
from coordinator.txlog.queries import (
    QueryArgumentError,
    compile_block,
    queries,
    query,
    statement,
)

ROOT = Path(__file__).resolve().parents[2]
QUERIES_SQL = (ROOT / "coordinator" / "txlog" / "sql" / "queries.sql").read_text()


def test_compiling__numbers_names_in_order_of_first_use_and_reuses_a_number() -> None:
    compiled = compile_block("x", "SELECT :b, :a::text, :b + 1, x::int FROM t WHERE y = :a")
    assert compiled.sql == "SELECT $1, $2::text, $1 + 1, x::int FROM t WHERE y = $2"
    assert compiled.params == ("b", "a")


def test_compiling__leaves_quoted_text_and_comments_alone() -> None:
    text = "-- takes :not_this\nSELECT ':nor_this', '{active_statuses}', :this -- or :that"
    compiled = compile_block("x", text)
    assert compiled.params == ("this",)
    assert compiled.sql == (
        "-- takes :not_this\nSELECT ':nor_this', '{active_statuses}', $1 -- or :that"
    )


def test_compiling__writes_in_the_core_status_sets() -> None:
    compiled = compile_block("x", "SELECT 1 WHERE status IN {active_statuses}")
    listed = re.findall(r"'([a-z_]+)'", compiled.sql)
    assert set(listed) == {s.value for s in ACTIVE_STATUSES}
    assert compiled.params == ()
    with pytest.raises(ValueError, match="no status set"):
        compile_block("x", "SELECT 1 WHERE status IN {made_up}")


def test_a_statement__with_a_missing_or_unknown_value__is_refused_at_once() -> None:
    with pytest.raises(QueryArgumentError, match=r"missing \['token'\], unknown none"):
        statement("release_lease", gid="g")
    with pytest.raises(QueryArgumentError, match=r"unknown \['tokn'\]"):
        statement("release_lease", gid="g", tokn="t")
    with pytest.raises(QueryArgumentError, match=r"missing \['token'\], unknown \['tokn'\]"):
        statement("release_lease", gid="g", tokn="t")
    assert statement("release_lease", token="t", gid="g") == (
        query("release_lease").sql,
        "g",
        "t",
    )


def test_every_block__opens_with_a_line_saying_what_it_does() -> None:
    blocks = re.split(r"^-- name: \w+\s*$", QUERIES_SQL, flags=re.MULTILINE)[1:]
    assert len(blocks) == len(queries())
    for name, block in zip(queries(), blocks, strict=True):
        assert block.strip().startswith("-- "), f"{name} does not say what it does"


def test_no_block__is_left_with_a_positional_parameter() -> None:
    code = re.sub(r"--[^\n]*|'[^']*'", "", QUERIES_SQL)
    assert not re.search(r"\$\d", code)


def _names_used(path: Path) -> set[str]:
    """The query names a module passes to statement(), query() or q()."""
    used: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"statement", "query", "q"}
            and node.args
        ):
            name = node.args[0]
            if isinstance(name, ast.Name):
                continue  # a name passed along by a helper; its callers name it
            # A name, or a choice of two names ("a" if ... else "b").
            for found in (name.body, name.orelse) if isinstance(name, ast.IfExp) else (name,):
                assert isinstance(found, ast.Constant), ast.unparse(node)
                assert isinstance(found.value, str), ast.unparse(node)
                used.add(found.value)
    return used


def test_every_block__is_run_by_the_log_and_every_name_run__is_a_block() -> None:
    txlog = ROOT / "coordinator" / "txlog"
    used = _names_used(txlog / "postgres.py") | _names_used(txlog / "migrator.py")
    assert used - set(queries()) == set(), "a name with no block"
    assert set(queries()) - used == set(), "a block nobody runs"


def _public_methods(kind: type) -> set[str]:
    return {name for name in vars(kind) if not name.startswith("_")}


def test_both_logs__offer_the_contract_and_nothing_else_nobody_calls() -> None:
    contract = _public_methods(TransactionLog)
    assert _public_methods(InMemoryLog) == contract
    # Postgres' own: how it is opened, and a connection for tools and tests.
    assert _public_methods(PostgresLog) == contract | {"connect", "connection"}


def test_every_method_of_the_contract__is_called_outside_the_log() -> None:
    sources = "\n".join(
        p.read_text()
        for p in (ROOT / "coordinator").rglob("*.py")
        if "txlog" not in p.parts and "devtools" not in p.parts
    )
    uncalled = {m for m in _public_methods(TransactionLog) if f".{m}(" not in sources}
    assert uncalled == set()
