"""The gids the coordinator makes (coordinator/core/gids.py)."""

from __future__ import annotations

import re
import time

from coordinator.core import gids


def test_a_gid_is_32_hex_digits_that_sort_by_the_time_it_was_made() -> None:
    first = gids.time_ordered_hex()
    time.sleep(0.002)  # the order is by millisecond
    second = gids.time_ordered_hex()
    assert re.fullmatch(r"[0-9a-f]{32}", first), first
    assert first < second
    assert abs(int(first[:12], 16) - time.time_ns() // 1_000_000) < 60_000


def test_gids_made_in_the_same_millisecond_differ_in_their_random_part() -> None:
    made = {gids.time_ordered_hex() for _ in range(10_000)}
    assert len(made) == 10_000
    assert len({g[12:] for g in made}) == 10_000
