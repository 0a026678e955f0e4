"""How `tcc bench --profile` gives each sampled stack to a part of the code."""

from __future__ import annotations

import pytest

from coordinator.devtools.bench_profile import Part, ms_per_tx, part_of, shares

LOOP_ROOT = "serve (coordinator/cli.py:343);run (asyncio/runners.py:118)"


@pytest.mark.parametrize(
    ("stack", "part"),
    [
        # The innermost marked frame decides: a participant call made by the driver.
        (
            f"{LOOP_ROOT};PhaseDriver._send (coordinator/engine/driver.py:160);"
            "HttpCaller.send (coordinator/outbound.py:51);"
            "ClientSession._request (aiohttp/client.py:900)",
            Part.HTTP_OUT,
        ),
        # Shared plumbing (aiohttp's writer, the standard library) goes to its caller.
        (
            f"{LOOP_ROOT};begin (coordinator/api/v1.py:65);"
            "Coordinator.begin (coordinator/engine/service.py:253);"
            "PostgresLog._batch (coordinator/txlog/postgres.py:420);"
            "Connection.fetch (asyncpg/connection.py:690);"
            "_writelines (aiohttp/http_writer.py:116)",
            Part.LOG_WRITES,
        ),
        (
            f"{LOOP_ROOT};begin (coordinator/api/v1.py:65);"
            "read_body (coordinator/api/wire.py:40);"
            "BaseModel.model_validate_json (pydantic/main.py:847)",
            Part.MODELS,
        ),
        (
            f"{LOOP_ROOT};PhaseDriver.decide (coordinator/engine/driver.py:200);"
            "span (coordinator/tracing.py:200);helper (contextlib.py:301)",
            Part.TRACING,
        ),
        (f"{LOOP_ROOT};Metrics.ended (coordinator/metrics.py:90)", Part.METRICS),
        (f"{LOOP_ROOT};BoundLogger.info (structlog/_native.py:134)", Part.LOGGING),
        (
            f"{LOOP_ROOT};RequestHandler.start (aiohttp/web_protocol.py:510)",
            Part.HTTP_IN,
        ),
        (
            f"{LOOP_ROOT};PhaseDriver._end_round (coordinator/engine/driver.py:520);"
            "round_outcome (coordinator/core/states.py:300)",
            Part.DRIVER,
        ),
        (LOOP_ROOT, Part.LOOP),
        # aiohttp's run_app holds the loop of a process it serves: that is the loop's time.
        (
            "main (coordinator/devtools/null_coordinator.py:134);run_app (aiohttp/web.py:502)",
            Part.LOOP,
        ),
        (
            "main (coordinator/devtools/null_coordinator.py:134);run_app (aiohttp/web.py:502);"
            "begin (coordinator/devtools/null_coordinator.py:77)",
            Part.DRIVER,
        ),
    ],
)
def test_a_stack_belongs_to_the_part_of_its_innermost_marked_frame(stack: str, part: Part) -> None:
    assert part_of(stack.split(";")) is part


def test_shares_count_samples_and_become_milliseconds_per_transaction() -> None:
    raw = [
        f"{LOOP_ROOT};HttpCaller.send (coordinator/outbound.py:51) 3\n",
        f"{LOOP_ROOT} 1\n",
        "\n",  # nothing sampled on that line: ignored
    ]
    found = shares(raw)
    assert set(found) == set(Part)
    assert found[Part.HTTP_OUT] == pytest.approx(0.75)
    assert found[Part.LOOP] == pytest.approx(0.25)
    assert sum(found.values()) == pytest.approx(1.0)
    assert ms_per_tx(found, 2.0)[Part.HTTP_OUT.value] == pytest.approx(1.5)
    assert ms_per_tx(found, None) == {}


def test_no_samples_are_no_shares() -> None:
    assert all(share == 0.0 for share in shares([]).values())
