"""Dialects by name: every module of this package that defines ``DIALECT``."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from coordinator import dialects
from coordinator.core.errors import InvalidInput
from coordinator.dialects.base import Dialect


@cache
def _registry() -> dict[str, Dialect]:
    found: dict[str, Dialect] = {}
    for module_info in pkgutil.iter_modules(dialects.__path__):
        module = importlib.import_module(f"{dialects.__name__}.{module_info.name}")
        dialect: Dialect | None = getattr(module, "DIALECT", None)
        if dialect is not None:
            found[dialect.name] = dialect
    return found


def dialect(name: str) -> Dialect:
    try:
        return _registry()[name]
    except KeyError:
        raise InvalidInput(f"unknown dialect {name!r}; known: {', '.join(names())}") from None


def names() -> list[str]:
    return sorted(_registry())
