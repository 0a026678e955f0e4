"""Transactions seen lately, so that the further requests of one transaction (its tries,
its decision) need not ask the log who owns it each time.

What is kept is only what never changes while a transaction is trying (its owner, dialect,
call timeout, options and trace context): its metadata, up to TCC_MAX_METADATA_BYTES of free
JSON that no participant call carries, is left out, and a transaction whose options are large
is not kept at all (it is read from the log instead). The number of entries is a setting and
each entry is small, so the memory this takes is bounded by configuration, not by traffic.
Entries also age out (a gid pruned by retention may be begun again), oldest first, whenever
one is added.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable

from coordinator.core.limits import json_size
from coordinator.core.records import Transaction

# How long an entry is trusted; short, so that a pruned and re-begun gid is soon read again.
MAX_AGE_S = 60.0
# Options bigger than this (as JSON) make a transaction too large to keep.
MAX_KEPT_OPTIONS_BYTES = 2048


class RecentTransactions:
    def __init__(
        self,
        max_entries: int,
        *,
        max_age_s: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self._clock = clock
        # gid -> (the transaction without metadata, when the entry expires); oldest first.
        self._entries: OrderedDict[str, tuple[Transaction, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, txn: Transaction) -> None:
        if self.max_entries == 0:
            return
        self._entries.pop(txn.gid, None)
        if txn.options and json_size(txn.options) > MAX_KEPT_OPTIONS_BYTES:
            return
        now = self._clock()
        kept = dataclasses.replace(txn, metadata={}) if txn.metadata else txn
        self._entries[txn.gid] = (kept, now + self.max_age_s)
        self._evict(now)

    def recall(self, gid: str) -> Transaction | None:
        """The transaction as last seen, without its metadata (its status may be old)."""
        entry = self._entries.get(gid)
        if entry is None or entry[1] < self._clock():
            return None
        return entry[0]

    def _evict(self, now: float) -> None:
        entries = self._entries
        while entries:
            _, (_, expires_at) = next(iter(entries.items()))
            if len(entries) <= self.max_entries and expires_at >= now:
                return
            entries.popitem(last=False)
