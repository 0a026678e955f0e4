"""Reading request bodies with a size cap and a minimum rate, so that a client dribbling
bytes cannot hold a connection (and a file descriptor) for as long as it likes."""

from __future__ import annotations

import asyncio

from aiohttp import web

from coordinator.core.errors import CoordinatorError


class BodyTooSlow(CoordinatorError):
    """The request body arrived slower than the minimum rate (408)."""


class BodyTooLarge(CoordinatorError):
    """The request body is larger than the configured limit (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than {limit} bytes")


async def read_body_bytes(
    request: web.Request, *, max_bytes: int, grace_s: float, min_bytes_per_s: int
) -> bytes:
    """The whole body. After ``grace_s`` the body must keep arriving at ``min_bytes_per_s``
    on average since it started (BodyTooSlow otherwise); more than ``max_bytes`` is 413."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyTooLarge(max_bytes)
    loop = asyncio.get_running_loop()
    started = loop.time()
    chunks: list[bytes] = []
    received = 0
    while True:
        # The deadline moves forward with every byte received: slow but steady is fine.
        deadline = started + grace_s + received / min_bytes_per_s
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await request.content.readany()
        except TimeoutError as exc:
            raise BodyTooSlow(
                f"the request body arrived too slowly ({received} bytes in"
                f" {loop.time() - started:.1f} s; at least {min_bytes_per_s} bytes/s are needed)"
            ) from exc
        if not chunk:
            return b"".join(chunks)
        received += len(chunk)
        if received > max_bytes:
            raise BodyTooLarge(max_bytes)
        chunks.append(chunk)
