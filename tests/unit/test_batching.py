"""Group commit (coordinator/txlog/batching.py): no timer, one flush at a time carrying what
queued meanwhile, one transaction's writes never in one flush, errors to their own callers;
at close everything accepted is written, nothing new is taken, and no flusher is left."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from coordinator.core.errors import LogClosed
from coordinator.txlog.batching import Batcher


class Recorder:
    """A flush that records its batches and waits until told to finish."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def flush(self, items: list[tuple[str, int]]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await self.release.wait()
        return [ValueError(f"bad {n}") if n < 0 else n * 10 for _, n in items]


def batcher(recorder: Recorder) -> Batcher[tuple[str, int], int]:
    return Batcher(recorder.flush, key=lambda item: item[0])


async def test_an_item_alone__is_flushed_at_once_by_itself() -> None:
    recorder = Recorder()
    assert await batcher(recorder).submit(("a", 1)) == 10
    assert recorder.batches == [[("a", 1)]]


async def test_items_arriving_during_a_flush__share_the_next_one() -> None:
    recorder = Recorder()
    batch = batcher(recorder)
    recorder.release.clear()
    first = asyncio.create_task(batch.submit(("a", 1)))
    await asyncio.sleep(0)  # the first flush is now in flight, held open
    others = [asyncio.create_task(batch.submit((f"g{i}", i))) for i in range(2, 6)]
    await asyncio.sleep(0)
    recorder.release.set()
    assert await first == 10
    assert [await t for t in others] == [20, 30, 40, 50]
    assert recorder.batches == [[("a", 1)], [("g2", 2), ("g3", 3), ("g4", 4), ("g5", 5)]]


async def test_two_writes_of_one_transaction__never_share_a_flush() -> None:
    recorder = Recorder()
    batch = batcher(recorder)
    recorder.release.clear()
    held = asyncio.create_task(batch.submit(("x", 0)))
    await asyncio.sleep(0)
    same = [asyncio.create_task(batch.submit(("g", n))) for n in (1, 2)]
    await asyncio.sleep(0)
    recorder.release.set()
    await held
    assert [await t for t in same] == [10, 20]
    assert recorder.batches[1:] == [[("g", 1)], [("g", 2)]]


async def test_an_items_error__reaches_only_its_caller() -> None:
    recorder = Recorder()
    batch = batcher(recorder)
    recorder.release.clear()
    held = asyncio.create_task(batch.submit(("x", 0)))
    await asyncio.sleep(0)
    good = asyncio.create_task(batch.submit(("a", 1)))
    bad = asyncio.create_task(batch.submit(("b", -1)))
    await asyncio.sleep(0)
    recorder.release.set()
    await held
    assert await good == 10
    with pytest.raises(ValueError, match="bad -1"):
        await bad


async def test_a_failed_flush__fails_every_caller_in_it_and_the_next_flush_still_runs() -> None:
    calls = 0

    async def flaky(items: list[str]) -> list[str | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database gone")
        return [item.upper() for item in items]

    batch: Batcher[str, str] = Batcher(flaky, key=lambda item: item)
    with pytest.raises(ConnectionError):
        await batch.submit("a")
    assert await batch.submit("b") == "B"


async def test_a_caller_that_gave_up__does_not_hold_up_the_others() -> None:
    recorder = Recorder()
    batch = batcher(recorder)
    recorder.release.clear()
    held = asyncio.create_task(batch.submit(("x", 0)))
    await asyncio.sleep(0)
    gone = asyncio.create_task(batch.submit(("a", 1)))
    kept = asyncio.create_task(batch.submit(("b", 2)))
    await asyncio.sleep(0)
    gone.cancel()
    recorder.release.set()
    await held
    assert await kept == 20
    assert recorder.batches[1] == [("b", 2)]  # the cancelled one was never written


# --- shutdown: drained, refused after, the flusher owned --------------------------------


def group_commit_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("group-commit")]


async def test_close__writes_everything_accepted_before_it_returns() -> None:
    recorder = Recorder()
    batch = batcher(recorder)
    recorder.release.clear()
    first = asyncio.create_task(batch.submit(("a", 1)))
    await asyncio.sleep(0)  # in flight, held open
    queued = [asyncio.create_task(batch.submit((f"g{i}", i))) for i in range(2, 5)]
    await asyncio.sleep(0)
    closing = asyncio.create_task(batch.close())
    await asyncio.sleep(0)
    assert not closing.done()  # waits for the writes
    recorder.release.set()
    await closing
    assert all(t.done() for t in (first, *queued))  # answered before close returned
    assert [first.result(), *(t.result() for t in queued)] == [10, 20, 30, 40]
    assert recorder.batches == [[("a", 1)], [("g2", 2), ("g3", 3), ("g4", 4)]]
    assert group_commit_tasks() == []


async def test_a_submit_after_close__is_refused_and_never_written() -> None:
    recorder = Recorder()
    batch = batcher(recorder)
    await batch.close()
    with pytest.raises(LogClosed, match="closing: writes are not taken"):
        await batch.submit(("a", 1))
    assert recorder.batches == []
    assert batch.closed


async def test_close__with_nothing_ever_submitted__returns_at_once() -> None:
    batch = batcher(Recorder())
    await batch.close()
    await batch.close()  # and again


async def test_close_cut_short__cancels_the_flusher_and_its_callers_hear_why() -> None:
    recorder = Recorder()
    batch = batcher(recorder)
    recorder.release.clear()  # the flush never ends by itself
    held = asyncio.create_task(batch.submit(("a", 1)))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(batch.submit(("b", 2)))
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(batch.close(), 0.05)
    for caller in (held, waiting):
        with pytest.raises(LogClosed):
            await caller
    await asyncio.sleep(0)
    assert group_commit_tasks() == []


async def test_a_flusher_that_crashes__is_logged_and_its_callers_hear_it() -> None:
    def key(item: str) -> str:
        if item == "boom":
            raise KeyError("a bug in the key")
        return item

    async def flush(items: list[str]) -> list[str | BaseException]:
        return [item.upper() for item in items]

    batch: Batcher[str, str] = Batcher(flush, key=key, name="tests")
    with capture_logs() as logs, pytest.raises(KeyError, match="a bug in the key"):
        await batch.submit("boom")
    assert [(e["event"], e["writes"]) for e in logs] == [("group_commit_crashed", "tests")]
    assert await batch.submit("fine") == "FINE"  # a new flusher takes over
    await batch.close()


async def test_a_flush_giving_the_wrong_number_of_results__fails_its_callers_loudly() -> None:
    release = asyncio.Event()

    async def short(items: list[str]) -> list[str | BaseException]:
        await release.wait()
        return [items[0]]

    batch: Batcher[str, str] = Batcher(short, key=lambda item: item, name="tests")
    held = asyncio.create_task(batch.submit("a"))
    await asyncio.sleep(0)
    pair = [asyncio.create_task(batch.submit(x)) for x in ("b", "c")]
    await asyncio.sleep(0)
    with capture_logs() as logs:
        release.set()
        assert await held == "a"
        results = await asyncio.gather(*pair, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert "tests: a flush of 2 gave 1 results" in str(results[0])
    assert [e["event"] for e in logs] == ["group_commit_flush_broken"]
    await batch.close()
