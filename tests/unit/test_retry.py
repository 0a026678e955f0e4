"""RetryPolicy in coordinator/retry.py: capped exponential backoff with full jitter."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.core.retry import RetryPolicy

DEFAULT = RetryPolicy()


class FixedDraw(random.Random):
    """A Random whose uniform() returns a chosen fraction of the range and records the call."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a + (b - a) * self.fraction


# Policies whose parameters make the documented guarantees hold: the floor is below the
# first ceiling and the growth is strong enough to reach the cap within the exponent limit.
sane_policies = st.builds(
    RetryPolicy,
    initial_interval=st.floats(min_value=0.01, max_value=10.0),
    backoff_coefficient=st.floats(min_value=1.5, max_value=10.0),
    maximum_interval=st.floats(min_value=10.0, max_value=3600.0),
    minimum_interval=st.floats(min_value=0.0, max_value=0.01),
)
attempts = st.integers(min_value=0, max_value=10_000)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


# --- construction -----------------------------------------------------------------------


def test_defaults__are_the_documented_ones() -> None:
    assert DEFAULT.initial_interval == 0.5
    assert DEFAULT.backoff_coefficient == 2.0
    assert DEFAULT.maximum_interval == 60.0
    assert DEFAULT.minimum_interval == 0.05
    assert DEFAULT.give_up_after == 24 * 3600.0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("initial_interval", 0.0, "retry intervals must be positive"),
        ("initial_interval", -1.0, "retry intervals must be positive"),
        ("maximum_interval", 0.0, "retry intervals must be positive"),
        ("maximum_interval", -0.5, "retry intervals must be positive"),
        ("backoff_coefficient", 0.999, "backoff_coefficient must be at least 1"),
        ("backoff_coefficient", 0.0, "backoff_coefficient must be at least 1"),
        ("give_up_after", 0.0, "give_up_after must be positive"),
        ("give_up_after", -60.0, "give_up_after must be positive"),
    ],
)
def test_post_init__rejects_an_invalid_field(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**{field: value})


def test_post_init__accepts_a_coefficient_of_exactly_one_as_constant_backoff() -> None:
    policy = RetryPolicy(initial_interval=2.0, backoff_coefficient=1.0)
    assert {policy.ceiling(a) for a in (0, 1, 2, 50, 10_000)} == {2.0}


def test_policy__is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT.initial_interval = 1.0  # type: ignore[misc]


# --- ceiling ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(-5, 0.5), (0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (7, 32.0), (8, 60.0),
     (9, 60.0), (100, 60.0), (10**12, 60.0)],
)  # fmt: skip
def test_ceiling__doubles_from_the_initial_interval_up_to_the_maximum(
    attempt: int, expected: float
) -> None:
    assert DEFAULT.ceiling(attempt) == expected


def test_ceiling__with_a_maximum_below_the_initial_interval__is_the_maximum() -> None:
    policy = RetryPolicy(initial_interval=10.0, maximum_interval=3.0)
    assert policy.ceiling(1) == 3.0


@given(sane_policies, st.integers(min_value=1, max_value=200))
def test_ceiling__grows_by_the_coefficient_until_capped(policy: RetryPolicy, attempt: int) -> None:
    now, after = policy.ceiling(attempt), policy.ceiling(attempt + 1)
    assert after >= now
    expected = min(policy.maximum_interval, now * policy.backoff_coefficient)
    assert math.isclose(after, expected, rel_tol=1e-9)


@given(sane_policies, attempts)
def test_ceiling__stays_between_the_initial_interval_and_the_cap(
    policy: RetryPolicy, attempt: int
) -> None:
    ceiling = policy.ceiling(attempt)
    assert math.isfinite(ceiling)
    assert min(policy.initial_interval, policy.maximum_interval) <= ceiling
    assert ceiling <= policy.maximum_interval


@given(sane_policies)
def test_ceiling__reaches_the_cap_for_large_attempts(policy: RetryPolicy) -> None:
    assert policy.ceiling(10_000) == policy.maximum_interval
    assert policy.ceiling(10**100) == policy.maximum_interval


# --- delay ------------------------------------------------------------------------------


@given(attempts, seeds)
def test_delay__lies_between_the_floor_and_the_ceiling(attempt: int, seed: int) -> None:
    delay = DEFAULT.delay(attempt, random.Random(seed))
    assert DEFAULT.minimum_interval <= delay <= DEFAULT.ceiling(attempt)


@given(sane_policies, attempts, seeds)
def test_delay__lies_between_the_floor_and_the_ceiling_for_any_sane_policy(
    policy: RetryPolicy, attempt: int, seed: int
) -> None:
    delay = policy.delay(attempt, random.Random(seed))
    assert policy.minimum_interval <= delay <= policy.ceiling(attempt)


@given(attempts, seeds)
def test_delay__is_deterministic_for_a_seeded_random(attempt: int, seed: int) -> None:
    first = DEFAULT.delay(attempt, random.Random(seed))
    assert DEFAULT.delay(attempt, random.Random(seed)) == first


def test_delay__draws_a_sequence_that_repeats_for_the_same_seed() -> None:
    def run(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [DEFAULT.delay(attempt, rng) for attempt in range(1, 20)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_delay__draws_uniformly_from_zero_to_the_ceiling() -> None:
    rng = FixedDraw(0.5)
    assert DEFAULT.delay(4, rng) == 2.0
    assert rng.calls == [(0.0, 4.0)]


def test_delay__a_zero_draw__is_raised_to_the_minimum_interval() -> None:
    assert DEFAULT.delay(1, FixedDraw(0.0)) == DEFAULT.minimum_interval
    assert DEFAULT.delay(10_000, FixedDraw(0.0)) == DEFAULT.minimum_interval


def test_delay__a_full_draw__is_the_ceiling() -> None:
    assert DEFAULT.delay(100, FixedDraw(1.0)) == DEFAULT.maximum_interval


def test_delay__huge_attempts__do_not_overflow() -> None:
    for attempt in (10**6, 10**18, 10**100):
        delay = DEFAULT.delay(attempt, random.Random(attempt))
        assert math.isfinite(delay)
        assert DEFAULT.minimum_interval <= delay <= DEFAULT.maximum_interval


def test_delay__without_a_random__uses_the_module_random(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[float, float]] = []

    def fake_uniform(a: float, b: float) -> float:
        calls.append((a, b))
        return 1.25

    monkeypatch.setattr(random, "uniform", fake_uniform)
    assert DEFAULT.delay(3) == 1.25
    assert calls == [(0.0, 2.0)]


# --- edge cases of the cap and the floor ------------------------------------------------


def test_ceiling__with_a_small_coefficient__still_reaches_the_maximum_eventually() -> None:
    policy = RetryPolicy(backoff_coefficient=1.05)  # 0.5 * 1.05**64 is only ~11.4s
    assert policy.ceiling(1_000) == policy.maximum_interval


def test_ceiling__with_a_huge_coefficient__is_capped_instead_of_overflowing() -> None:
    policy = RetryPolicy(backoff_coefficient=1e6)
    assert policy.ceiling(100) == policy.maximum_interval


def test_delay__never_exceeds_the_ceiling_even_with_a_tiny_initial_interval() -> None:
    policy = RetryPolicy(initial_interval=0.01)  # below the default minimum_interval of 0.05
    assert policy.delay(1, FixedDraw(1.0)) <= policy.ceiling(1)
