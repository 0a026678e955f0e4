"""Group commit: the same write from many transactions, sent as one statement.

Callers submit an item and wait for its own result. A flush takes whatever has queued and
writes it in one round trip; items that arrive while a flush is in flight wait for the next
one. So there is no timer: alone, an item is written at once; under load, each flush carries
the writes that piled up during the previous one, and every caller still gets its answer only
after its own write is done.

The batcher owns its flusher task: it holds it while it runs, logs it if it ever fails by a
fault of its own (its callers hear the error), and ``close`` drains it: everything accepted
before is written before close returns, and anything submitted after is refused (LogClosed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import structlog

from coordinator.core.errors import LogClosed

log = structlog.get_logger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

# What a flush returns for each item: its result, or the error that item alone raised.
Flush = Callable[[list[In]], Awaitable[list[Out | BaseException]]]


class Batcher(Generic[In, Out]):
    def __init__(
        self,
        flush: Flush[In, Out],
        key: Callable[[In], Hashable],
        max_batch: int = 200,
        name: str = "writes",
    ) -> None:
        """``key``: items with the same key never share a flush (one transaction's writes
        stay in order); ``max_batch`` bounds the size of one statement; ``name`` says which
        writes these are, in errors and logs."""
        self._flush = flush
        self._key = key
        self._max_batch = max_batch
        self._name = name
        self._queue: list[tuple[In, asyncio.Future[Out]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def submit(self, item: In) -> Out:
        if self._closed:
            raise LogClosed(f"the transaction log is closing: {self._name} are not taken")
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._drain(), name=f"group-commit:{self._name}")
            self._flusher.add_done_callback(self._flusher_ended)
        return await future

    async def close(self) -> None:
        """Refuse new items and wait until every accepted one is written (or has failed).
        If this wait is cancelled, the flusher is cancelled with it: the items it had not
        confirmed fail with LogClosed."""
        self._closed = True
        flusher = self._flusher
        if flusher is None or flusher.done():
            return
        try:
            await asyncio.wait({flusher})
        finally:
            if not flusher.done():
                flusher.cancel()

    def _take(self) -> list[tuple[In, asyncio.Future[Out]]]:
        batch: list[tuple[In, asyncio.Future[Out]]] = []
        seen: set[Hashable] = set()
        rest: list[tuple[In, asyncio.Future[Out]]] = []
        for entry in self._queue:
            key = self._key(entry[0])
            if len(batch) < self._max_batch and key not in seen:
                seen.add(key)
                batch.append(entry)
            else:
                rest.append(entry)
        self._queue = rest
        return batch

    async def _drain(self) -> None:
        while self._queue:
            batch = self._take()
            live = [(item, future) for item, future in batch if not future.cancelled()]
            if not live:
                continue
            try:
                results = await self._flush([item for item, _ in live])
            except asyncio.CancelledError:
                _fail(live, LogClosed(f"the log closed while {self._name} were being written"))
                raise
            except BaseException as exc:  # the whole statement failed: every caller hears it
                _fail(live, exc)
                continue
            if len(results) != len(live):  # a fault of the flush itself
                error = RuntimeError(
                    f"{self._name}: a flush of {len(live)} gave {len(results)} results"
                )
                log.error("group_commit_flush_broken", writes=self._name, error=str(error))
                _fail(live, error)
                continue
            for (_, future), result in zip(live, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _flusher_ended(self, task: asyncio.Task[None]) -> None:
        """A flusher that crashed or was cancelled leaves nobody waiting: its error (a crash
        is logged) or LogClosed goes to every item still queued."""
        if task.cancelled():
            error: BaseException = LogClosed(f"the log closed before {self._name} were written")
        else:
            crash = task.exception()
            if crash is None:
                return
            log.error("group_commit_crashed", writes=self._name, exc_info=crash)
            error = crash
        queued, self._queue = self._queue, []
        _fail(queued, error)


def _fail(entries: list[tuple[In, asyncio.Future[Out]]], error: BaseException) -> None:
    for _, future in entries:
        if not future.done():
            future.set_exception(error)
