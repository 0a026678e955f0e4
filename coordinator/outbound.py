"""Calls to participants over HTTP: one shared keep-alive session, bounded in time and bytes,
under the participant URL policy (checked on the URL, and on every address DNS gives).

The engine depends on the ParticipantCaller protocol only, so its tests can script replies
without a network.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
from typing import Protocol

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from coordinator.core.jsonsafe import printable, storable_or_text
from coordinator.core.records import CallResult, OutboundCall
from coordinator.core.tls import (
    TlsProblem,
    alert_failure,
    closed_after_handshake,
    verify_failure,
)
from coordinator.core.urlpolicy import ParticipantPolicy, PolicyError, parse_target
from coordinator.tlsfiles import ParticipantTls

# How long the diagnosis of a dropped https connection may take, in each of its two steps.
DROP_DIAGNOSIS_S = 1.0


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
        tls: ParticipantTls | None = None,
    ) -> None:
        self.session = session
        self.max_response_bytes = max_response_bytes
        self.policy = policy
        # None: https calls use aiohttp's defaults (tools that call one participant).
        self.tls = tls

    async def _diagnose_drop(
        self, url: str, context: ssl.SSLContext, presents_certificate: bool, exc: BaseException
    ) -> TlsProblem | None:
        """An https call whose connection was dropped: was it our certificate? A TLS 1.3
        server judges the client's certificate after the client has finished its side of
        the handshake; one that then drops the connection without its alert (asyncio-based
        servers do) leaves only a reset. So: one more handshake, then listen without
        sending. A server that accepted us waits for a request; one that closes at once
        refused our certificate (or our lack of one)."""
        try:
            target = parse_target(url)
            async with asyncio.timeout(DROP_DIAGNOSIS_S):
                address = target.host
                if self.policy is not None:  # the same DNS rules as the call itself
                    found = await PolicyResolver(self.policy).resolve(target.host, target.port)
                    address = found[0]["host"]
                reader, writer = await asyncio.open_connection(
                    address, target.port, ssl=context, server_hostname=target.host
                )
        except Exception:  # no diagnosis: the call's own error stands
            return None
        try:
            async with asyncio.timeout(DROP_DIAGNOSIS_S):
                closed = await reader.read(1) == b""
        except TimeoutError:
            closed = False  # it waits for a request: the handshake was accepted
        except (OSError, ssl.SSLError) as read_error:
            problem = tls_problem(read_error)
            if problem is not None:
                return problem
            closed = True
        finally:
            writer.close()
        if not closed:
            return None
        return closed_after_handshake(presents_certificate, _describe(exc))

    async def send(self, call: OutboundCall, timeout_s: float) -> CallResult:
        started = time.perf_counter()
        if self.policy is not None:
            try:
                self.policy.check_url(call.url)  # names and literal addresses; DNS later
            except PolicyError as exc:
                return CallResult(None, None, f"refused by policy: {exc}", _ms_since(started))
        context: ssl.SSLContext | bool = True
        presents_certificate = False
        if self.tls is not None and call.url[:6].lower() == "https:":
            chosen = self.tls.context_for(call.url, call.tls_profile)
            if isinstance(chosen, TlsProblem):
                return _tls_failed(chosen, started)
            context, presents_certificate = chosen.context, chosen.presents_certificate
        try:
            async with asyncio.timeout(timeout_s):
                async with self.session.request(
                    call.method,
                    call.url,
                    data=call.body,
                    params=call.params,
                    headers=call.headers,
                    allow_redirects=False,
                    ssl=context,
                ) as response:
                    raw = await _read_capped(response, self.max_response_bytes)
                    status = response.status
        except TimeoutError:
            return CallResult(None, None, f"timed out after {timeout_s:g}s", _ms_since(started))
        except Exception as exc:  # a call must never break a round: it just did not succeed
            problem = tls_problem(exc)
            if problem is None and isinstance(context, ssl.SSLContext) and _was_dropped(exc):
                problem = await self._diagnose_drop(call.url, context, presents_certificate, exc)
            if problem is not None:
                return _tls_failed(problem, started)
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


def _tls_failed(problem: TlsProblem, started: float) -> CallResult:
    return CallResult(
        None, None, printable(problem.message[:500]), _ms_since(started), tls_failure=problem.kind
    )


def tls_problem(exc: BaseException) -> TlsProblem | None:
    """What TLS error, if any, lies under a failed call (aiohttp wraps OpenSSL's: at the
    handshake, or at the first read when a TLS 1.3 server refuses our certificate)."""
    for current in _chain(exc):
        # (aiohttp's own errors are ssl errors too, without OpenSSL's attributes: the ones
        # they carry have them.)
        if isinstance(current, ssl.SSLCertVerificationError) and hasattr(current, "verify_code"):
            return verify_failure(current.verify_code, current.verify_message)
        if isinstance(current, ssl.SSLError) and hasattr(current, "reason"):
            return alert_failure(current.reason, str(current))
    return None


def _was_dropped(exc: BaseException) -> bool:
    return any(
        isinstance(e, ConnectionResetError | aiohttp.ServerDisconnectedError) for e in _chain(exc)
    )


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        pending += [
            getattr(current, "certificate_error", None),
            getattr(current, "os_error", None),
            current.__cause__,
            current.__context__,
        ]
    return found


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
