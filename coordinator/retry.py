"""Backoff for confirm and cancel calls: pure arithmetic, the caller supplies randomness."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, until a give-up time.

    ``attempt`` counts phase-two rounds already made (1 after the first).
    The delay before the next round is uniform in ``[0, min(cap, initial * coef^(attempt-1))]``,
    never below ``minimum_interval`` so a run of zero draws cannot spin.
    """

    initial_interval: float = 0.5
    backoff_coefficient: float = 2.0
    maximum_interval: float = 60.0
    minimum_interval: float = 0.05
    give_up_after: float = 24 * 3600.0

    def __post_init__(self) -> None:
        if self.initial_interval <= 0 or self.maximum_interval <= 0:
            raise ValueError("retry intervals must be positive")
        if self.backoff_coefficient < 1:
            raise ValueError("backoff_coefficient must be at least 1")
        if self.give_up_after <= 0:
            raise ValueError("give_up_after must be positive")

    def ceiling(self, attempt: int) -> float:
        """The largest delay allowed after ``attempt`` rounds."""
        exponent = max(attempt - 1, 0)
        # Cap the exponent so huge attempt counts do not overflow a float.
        growth = self.backoff_coefficient ** min(exponent, 64)
        return min(self.maximum_interval, self.initial_interval * growth)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        draw = (rng or random).uniform(0.0, self.ceiling(attempt))
        return max(self.minimum_interval, draw)
