"""The engine on the in-memory log: a clock the test moves, participants that answer as
scripted. No database, no network, and no test waits for time to pass."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from coordinator.engine.runtime import Runtime
from coordinator.txlog.memory import InMemoryLog, ManualClock
from tests.conftest import fast_settings
from tests.unit.engine.scripted import ScriptedCaller

MakeRuntime = Callable[..., Runtime]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2030, 1, 1, tzinfo=UTC))


@pytest.fixture
def txlog(clock: ManualClock) -> InMemoryLog:
    return InMemoryLog(clock)


@pytest.fixture
def caller() -> ScriptedCaller:
    return ScriptedCaller()


@pytest.fixture
async def make_runtime(txlog: InMemoryLog, clock: ManualClock) -> AsyncIterator[MakeRuntime]:
    """Coordinators sharing the one log, each with its caller and settings
    (fast_settings with overrides); all are stopped afterwards. Their breakers count time
    by the log's clock too."""
    built: list[Runtime] = []

    def make(
        caller: ScriptedCaller, *, rng: random.Random | None = None, **overrides: object
    ) -> Runtime:
        owner = f"coordinator-{len(built) + 1}"
        settings = fast_settings(**overrides)
        runtime = Runtime.build(
            settings,
            txlog,
            caller,
            owner=owner,
            rng=rng,
            clock=lambda: clock.now().timestamp(),
        )
        built.append(runtime)
        return runtime

    yield make
    for runtime in built:
        await runtime.stop()


@pytest.fixture
def runtime(make_runtime: MakeRuntime, caller: ScriptedCaller) -> Runtime:
    return make_runtime(caller)
