"""Backoff for confirm and cancel calls: pure arithmetic, the caller supplies randomness."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, until a give-up time.

    ``attempt`` counts phase-two rounds already made (1 after the first).
    The delay before the next round is uniform in ``[0, min(cap, initial * coef^(attempt-1))]``,
    and never below ``minimum_interval`` (unless the ceiling itself is lower).
    """

    initial_interval: float = 0.5
    backoff_coefficient: float = 2.0
    maximum_interval: float = 60.0
    minimum_interval: float = 0.05
    give_up_after: float = 24 * 3600.0

    def __post_init__(self) -> None:
        if not all(
            math.isfinite(v) and v > 0 for v in (self.initial_interval, self.maximum_interval)
        ):
            raise ValueError("retry intervals must be positive and finite")
        if not (math.isfinite(self.give_up_after) and self.give_up_after > 0):
            raise ValueError("give_up_after must be positive")
        if not (math.isfinite(self.backoff_coefficient) and self.backoff_coefficient >= 1):
            raise ValueError("backoff_coefficient must be at least 1")
        if not (math.isfinite(self.minimum_interval) and self.minimum_interval >= 0):
            raise ValueError("minimum_interval must be zero or positive")

    def ceiling(self, attempt: int) -> float:
        """The largest delay allowed after ``attempt`` rounds."""
        exponent = max(attempt - 1, 0)
        if self.initial_interval >= self.maximum_interval or self.backoff_coefficient == 1:
            return min(self.maximum_interval, self.initial_interval)
        # Compare in log space so no coefficient or attempt count can overflow a float.
        steps_to_cap = math.log(self.maximum_interval / self.initial_interval) / math.log(
            self.backoff_coefficient
        )
        if exponent >= steps_to_cap:
            return self.maximum_interval
        return min(
            self.maximum_interval, self.initial_interval * self.backoff_coefficient**exponent
        )

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = self.ceiling(attempt)
        draw = (rng or random).uniform(0.0, ceiling)
        # The floor keeps a run of near-zero draws from spinning, but never passes the ceiling.
        return max(min(self.minimum_interval, ceiling), draw)
