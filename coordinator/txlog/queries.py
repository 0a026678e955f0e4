"""The named SQL blocks of sql/queries.sql ("-- name: x"), parsed once; code refers to
queries by name."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

import asyncpg

_BLOCK_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)

DbConnection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


@cache
def queries() -> dict[str, str]:
    """The named blocks of sql/queries.sql, parsed once."""
    text = resources.files("coordinator.txlog").joinpath("sql/queries.sql").read_text("utf-8")
    parts = _BLOCK_HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def q(name: str) -> str:
    return queries()[name]
