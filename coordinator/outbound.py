"""Calls to participants over HTTP: one shared keep-alive session, bounded in time and bytes,
under the participant URL policy (checked on the URL, and on every address DNS gives).

The engine depends on the ParticipantCaller protocol only, so its tests can script replies
without a network.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from typing import Protocol

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from coordinator.core.jsonsafe import printable, storable_or_text
from coordinator.core.records import CallResult, OutboundCall
from coordinator.core.urlpolicy import ParticipantPolicy, PolicyError


class ParticipantCaller(Protocol):
    async def send(self, call: OutboundCall, timeout_s: float) -> CallResult:
        """Make the call; never raises: a failure is a result with an error and no status."""
        ...


class HttpCaller:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        max_response_bytes: int,
        policy: ParticipantPolicy | None = None,
    ) -> None:
        self.session = session
        self.max_response_bytes = max_response_bytes
        self.policy = policy

    async def send(self, call: OutboundCall, timeout_s: float) -> CallResult:
        started = time.perf_counter()
        if self.policy is not None:
            try:
                self.policy.check_url(call.url)  # names and literal addresses; DNS later
            except PolicyError as exc:
                return CallResult(None, None, f"refused by policy: {exc}", _ms_since(started))
        try:
            async with asyncio.timeout(timeout_s):
                async with self.session.request(
                    call.method,
                    call.url,
                    data=call.body,
                    params=call.params,
                    headers=call.headers,
                    allow_redirects=False,
                ) as response:
                    raw = await _read_capped(response, self.max_response_bytes)
                    status = response.status
        except TimeoutError:
            return CallResult(None, None, f"timed out after {timeout_s:g}s", _ms_since(started))
        except Exception as exc:  # a call must never break a round: it just did not succeed
            return CallResult(None, None, _describe(exc), _ms_since(started))
        latency = _ms_since(started)
        text = printable(raw.decode("utf-8", errors="replace"))
        error = None if 200 <= status < 300 else f"HTTP {status}: {_snippet(raw)}"
        return CallResult(status, storable_or_text(raw), error, latency, text)


def http_session(policy: ParticipantPolicy, max_connections: int) -> aiohttp.ClientSession:
    """The one client session participant calls share: bounded, and DNS under the policy."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            # Bounded, so the open-file budget (coordinator/api/server.py) holds.
            limit=max_connections,
            limit_per_host=100,
            resolver=PolicyResolver(policy),
        ),
    )


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """The whole reply up to ``cap`` bytes (one read() returns only what has arrived)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(16_384):
        chunks.append(chunk[: cap - size])
        size += len(chunks[-1])
        if size >= cap:
            break
    return b"".join(chunks)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return printable(f"{type(exc).__name__}: {text}"[:500])


def _snippet(raw: bytes) -> str:
    return printable(raw[:300].decode("utf-8", errors="replace").strip()) or "(empty body)"


class PolicyResolver(AbstractResolver):
    """DNS for participant calls: resolves, then refuses the call unless the policy allows
    every address found (none is silently dropped: the error names the one refused)."""

    def __init__(self, policy: ParticipantPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner if inner is not None else ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        try:
            self.policy.check_resolved(host, port, [r["host"] for r in results])
        except PolicyError as exc:
            # (errno, text): aiohttp keeps only these two when it wraps the error.
            raise OSError(errno.EACCES, f"participant URL policy: {exc}") from None
        return results

    async def close(self) -> None:
        await self._inner.close()
