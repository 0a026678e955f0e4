"""Small bounded waiting helpers: every loop here stops by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], bool],
    timeout_s: float = 15.0,
    interval_s: float = 0.05,
) -> T:
    """Call ``probe`` until ``until(result)`` holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s; last value: {value!r}")
        await asyncio.sleep(interval_s)


def event_kinds(detail: Any) -> list[str]:
    return [e["kind"] for e in detail["events"]]


def event_count(detail: Any, kind: str) -> int:
    """How many times ``kind`` happened: identical failures in a row are one event with
    a repeat count."""
    return sum(e["repeats"] for e in detail["events"] if e["kind"] == kind)
