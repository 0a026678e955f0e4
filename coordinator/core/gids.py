"""The gids the coordinator makes for transactions begun without one.

32 hex digits, as before (a uuid4's hex), in UUIDv7's order: the time in milliseconds (12
digits), then 80 random bits (20 digits). Gids begun together sort together, so the log's
indexes keyed by gid (the transactions' primary key and prefix index, the branches' key and
the timeline's) grow at their right edge like a sequence, instead of every new transaction
writing to a random page of each: fewer pages dirtied and written per transaction
(docs/performance.md, "What each index and timeline row costs"). The random part keeps a gid
unguessable. The host's clock only orders gids here; no deadline is read from it.
"""

from __future__ import annotations

import secrets
import time

RANDOM_BITS = 80


def time_ordered_hex() -> str:
    return f"{time.time_ns() // 1_000_000:012x}{secrets.randbits(RANDOM_BITS):020x}"
