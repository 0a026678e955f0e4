"""Calls to participants over HTTP: one shared keep-alive session, bounded in time and bytes,
under the participant URL policy (checked on the URL, and on every address DNS gives).

The engine depends on the ParticipantCaller protocol only, so its tests can script replies
without a network.
"""

from __future__ import annotations

import asyncio
import errno
import re
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
    closed_in_handshake,
    verify_failure,
)
from coordinator.core.urlpolicy import ParticipantPolicy, PolicyError, Target, parse_target
from coordinator.tlsfiles import ParticipantTls

# How long the diagnosis of a dropped https connection may take, in each of its two steps,
# and the least time left of the call for which it is tried at all.
DROP_DIAGNOSIS_S = 1.0
MIN_DIAGNOSIS_S = 0.2
_CONTEXT_REPR = re.compile(r"ssl:<ssl\.SSLContext object at 0x[0-9a-f]+>")


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
        self.diagnosis = DropDiagnosis(policy)

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
            problem = tls_problem(exc, presents_certificate)
            if problem is None and isinstance(context, ssl.SSLContext) and _was_dropped(exc):
                problem = await self.diagnosis.problem(
                    call.url,
                    context,
                    presents_certificate,
                    _describe(exc),
                    budget_s=timeout_s - (time.perf_counter() - started),
                )
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


class DropDiagnosis:
    """Why an https connection was dropped: was it our certificate?

    A TLS 1.3 server judges the client's certificate after the client has finished its side
    of the handshake, and a TLS 1.2 one during it; a server that then drops the connection
    without its alert (asyncio-based servers do) leaves only a reset. So: a TCP connection
    (is anyone there at all?), one more handshake, then listen without sending. A server
    that accepted us waits for a request; one that closes during the handshake or at once
    after it refused our certificate (or our lack of one).

    It spends at most what is left of the call's time (and two seconds), looks at most
    ``most_at_once`` times at once (beyond: no diagnosis), and remembers its verdict for a
    participant and context for ``remember_s``, so that a storm of resets costs a few
    looks, not one each."""

    def __init__(
        self,
        policy: ParticipantPolicy | None,
        *,
        most_at_once: int = 4,
        remember_s: float = 10.0,
    ) -> None:
        self.policy = policy
        self.most_at_once = most_at_once
        self.remember_s = remember_s
        self._running = 0
        self._verdicts: dict[tuple[str, int, int, bool], tuple[float, TlsProblem | None]] = {}

    async def problem(
        self,
        url: str,
        context: ssl.SSLContext,
        presents_certificate: bool,
        error: str,
        *,
        budget_s: float,
    ) -> TlsProblem | None:
        budget_s = min(budget_s, 2 * DROP_DIAGNOSIS_S)
        try:
            target = parse_target(url)
        except PolicyError:
            return None
        key = (target.host, target.port, id(context), presents_certificate)
        now = time.monotonic()
        remembered = self._verdicts.get(key)
        if remembered is not None and now - remembered[0] < self.remember_s:
            return _about(remembered[1], error)
        if budget_s < MIN_DIAGNOSIS_S or self._running >= self.most_at_once:
            return None
        self._running += 1
        try:
            verdict = await self._look(target, context, presents_certificate, budget_s)
        finally:
            self._running -= 1
        if len(self._verdicts) > 1000:  # (bounded: participants come and go)
            self._verdicts.clear()
        self._verdicts[key] = (time.monotonic(), verdict)
        return _about(verdict, error)

    async def _look(
        self,
        target: Target,
        context: ssl.SSLContext,
        presents_certificate: bool,
        budget_s: float,
    ) -> TlsProblem | None:
        """The verdict, with a slot for the call's own error (it is remembered)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        try:
            async with asyncio.timeout_at(deadline):
                address = target.host
                if self.policy is not None:  # the same DNS rules as the call itself
                    found = await PolicyResolver(self.policy).resolve(
                        target.host, target.port, socket.AF_UNSPEC
                    )
                    address = found[0]["host"]
                _, plain = await asyncio.open_connection(address, target.port)
                plain.close()
        except Exception:  # nobody there, or no time: the call's own error stands
            return None
        try:
            async with asyncio.timeout_at(deadline):
                reader, writer = await asyncio.open_connection(
                    address, target.port, ssl=context, server_hostname=target.host
                )
        except TimeoutError:
            return None
        except Exception as handshake_error:
            problem = tls_problem(handshake_error, presents_certificate)
            if problem is None and _was_dropped(handshake_error):
                problem = closed_in_handshake(
                    presents_certificate,
                    during=True,
                    error=_SLOT,
                    only_tls13=context.minimum_version is ssl.TLSVersion.TLSv1_3,
                )
            return problem
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + DROP_DIAGNOSIS_S)):
                closed = await reader.read(1) == b""
        except TimeoutError:
            closed = False  # it waits for a request: the handshake was accepted
        except Exception as read_error:
            problem = tls_problem(read_error, presents_certificate)
            if problem is not None:
                return problem
            closed = True
        finally:
            writer.close()
        if not closed:
            return None
        return closed_in_handshake(presents_certificate, during=False, error=_SLOT)


_SLOT = "\x00"  # where a verdict names the call's error (control characters never do)


def _about(verdict: TlsProblem | None, error: str) -> TlsProblem | None:
    """A verdict about this call: its own error in the slot."""
    if verdict is None or _SLOT not in verdict.message:
        return verdict
    return TlsProblem(verdict.kind, verdict.message.replace(_SLOT, error))


def tls_problem(exc: BaseException, presents_certificate: bool = False) -> TlsProblem | None:
    """What TLS error, if any, lies under a failed call (aiohttp wraps OpenSSL's: at the
    handshake, or at the first read when a TLS 1.3 server refuses our certificate)."""
    for current in _chain(exc):
        if isinstance(current, ssl.SSLEOFError):
            continue  # the other end just went: a drop (see DropDiagnosis), not an alert
        # (aiohttp's own errors are ssl errors too, without OpenSSL's attributes: the ones
        # they carry have them.)
        if isinstance(current, ssl.SSLCertVerificationError) and hasattr(current, "verify_code"):
            return verify_failure(current.verify_code, current.verify_message)
        if isinstance(current, ssl.SSLError) and hasattr(current, "reason"):
            return alert_failure(current.reason, str(current), presents_certificate)
    return None


def _was_dropped(exc: BaseException) -> bool:
    return any(
        isinstance(
            e,
            ConnectionResetError
            | aiohttp.ServerDisconnectedError
            | ssl.SSLEOFError
            | asyncio.IncompleteReadError,
        )
        for e in _chain(exc)
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
    # (aiohttp names the SSL context it used by its address in memory: of no use to anyone.)
    text = _CONTEXT_REPR.sub("ssl:tls", str(exc)) or type(exc).__name__
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
