"""The named SQL blocks of sql/queries.sql ("-- name: x"), read once and compiled for asyncpg.

A block takes named parameters (``:gids``, ``:lease_ttl_s``). Compiling turns each into
asyncpg's ``$n`` and keeps the names in that order, so that a caller names every value::

    await conn.fetch(*statement("claim_due", owner=owner, limit=limit, lease_ttl_s=ttl))

and a missing or unknown name raises at once. A ``{name}`` is a set of statuses the core
decides (STATUS_SETS), written into the statement when the file is read: a partial index
(tcc_transactions_due, _parked) is only used when the statement names its statuses itself,
which a parameter cannot do under the connections' generic plans.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

import asyncpg

from coordinator.core import states

_BLOCK_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
# Outside quotes and comments: a parameter (":name", not the "::" of a cast) or a status set.
_TOKEN = re.compile(r"'[^']*'|--[^\n]*|(?<![:\w]):([a-z_][a-z0-9_]*)|\{([a-z_]+)\}")

DbConnection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

# The statuses that reads and scans name ({name} in the SQL), each the core's set.
STATUS_SETS: Mapping[str, Iterable[StrEnum]] = {
    "all_statuses": states.GlobalStatus,
    "active_statuses": states.ACTIVE_STATUSES,
    "undecided_statuses": states.UNDECIDED_STATUSES,
    "phase_two_statuses": states.PHASE_TWO_STATUSES,
    "parked_statuses": states.PARKED_STATUSES,
    "unfinished_statuses": states.UNFINISHED_STATUSES,
    "final_statuses": states.FINAL_STATUSES,
}


class QueryArgumentError(TypeError):
    """A statement called without one of its parameters, or with one it does not take."""


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    sql: str  # asyncpg's form: $1, $2, ...
    params: tuple[str, ...]  # the name of $1, $2, ...

    def args(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        """The values in $n order; every parameter named exactly once."""
        if len(values) != len(self.params) or not all(p in values for p in self.params):
            missing = [p for p in self.params if p not in values]
            unknown = sorted(set(values) - set(self.params))
            raise QueryArgumentError(
                f"query {self.name!r}: missing {missing or 'nothing'}, unknown {unknown or 'none'}"
            )
        return tuple(values[p] for p in self.params)


def _literal_list(statuses: Iterable[StrEnum]) -> str:
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(statuses)) + ")"


def compile_block(name: str, text: str) -> Query:
    """A block's SQL with ``:name`` numbered in order of first use and ``{name}`` filled in."""
    params: list[str] = []

    def replace(match: re.Match[str]) -> str:
        param, status_set = match[1], match[2]
        if status_set is not None:
            if status_set not in STATUS_SETS:
                raise ValueError(f"query {name!r}: no status set {{{status_set}}}")
            return _literal_list(STATUS_SETS[status_set])
        if param is None:
            return match[0]  # a quoted string or a comment, as it is
        if param not in params:
            params.append(param)
        return f"${params.index(param) + 1}"

    return Query(name, _TOKEN.sub(replace, text), tuple(params))


@cache
def queries() -> dict[str, Query]:
    """The named blocks of sql/queries.sql, compiled once."""
    text = resources.files("coordinator.txlog").joinpath("sql/queries.sql").read_text("utf-8")
    parts = _BLOCK_HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {
        name: compile_block(name, body.strip())
        for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def query(name: str) -> Query:
    return queries()[name]


def q(name: str) -> str:
    """A block's SQL in asyncpg's form (for EXPLAIN and tools that pass values by position;
    see Query.params for their order)."""
    return queries()[name].sql


def statement(name: str, /, **values: Any) -> tuple[Any, ...]:
    """The block's SQL and its values in order, for ``conn.fetch(*statement(...))``."""
    found = queries()[name]
    return (found.sql, *found.args(values))
