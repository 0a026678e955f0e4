"""Group commit: the same write from many transactions, sent as one statement.

Callers submit an item and wait for its own result. A flush takes whatever has queued and
writes it in one round trip; items that arrive while a flush is in flight wait for the next
one. So there is no timer: alone, an item is written at once; under load, each flush carries
the writes that piled up during the previous one, and every caller still gets its answer only
after its own write is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

# What a flush returns for each item: its result, or the error that item alone raised.
Flush = Callable[[list[In]], Awaitable[list[Out | BaseException]]]


class Batcher(Generic[In, Out]):
    def __init__(
        self, flush: Flush[In, Out], key: Callable[[In], Hashable], max_batch: int = 200
    ) -> None:
        """``key``: items with the same key never share a flush (one transaction's writes
        stay in order); ``max_batch`` bounds the size of one statement."""
        self._flush = flush
        self._key = key
        self._max_batch = max_batch
        self._queue: list[tuple[In, asyncio.Future[Out]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._drain(), name="group-commit")
        return await future

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
            except BaseException as exc:  # the whole statement failed: every caller hears it
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), result in zip(live, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
