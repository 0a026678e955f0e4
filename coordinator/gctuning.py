"""The garbage collector, tuned for a long-running server.

CPython's default (a young collection every 700 new container objects) was made for small
scripts. A coordinator allocates thousands of short-lived containers per transaction (request
models, records, asyncpg rows, aiohttp's request objects), nearly all freed by reference
counting, so the default runs several collections per transaction, and each older one walks
every object the process holds: profiled under load, a quarter of the coordinator's CPU
(docs/performance.md, "Where the time goes"). Two changes, made once the server is up:

- what start-up built (modules, the app, pools, caches) is frozen: no collection walks it again;
- a young collection every 10,000 new containers, not 700: each still frees any cycles, at
  most a few megabytes later.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
OLDER_THRESHOLDS = (10, 10)


def tune_for_serving() -> None:
    """Call once the server is listening (in each worker process)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
