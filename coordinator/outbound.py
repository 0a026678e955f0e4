"""HTTP calls to participants: one shared keep-alive session, bounded time and bytes."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from coordinator.core.jsonsafe import printable, storable_or_text
from coordinator.core.states import Phase
from coordinator.core.urlpolicy import ParticipantPolicy, PolicyError


@dataclass(frozen=True, slots=True)
class CallResult:
    http_status: int | None  # None: no HTTP answer at all
    body: Any  # parsed JSON if it was JSON, else text, capped in size
    error: str | None
    latency_ms: float
    text: str = ""  # the reply as text (capped), for protocols that read words in it


def idempotency_key(gid: str, branch_id: str, phase: Phase) -> str:
    return f"{gid}:{branch_id}:{phase.value}"


class ParticipantCaller:
    """Calls try/confirm/cancel URLs the way the coordinator's contract says."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        max_response_bytes: int,
        policy: ParticipantPolicy | None = None,
    ) -> None:
        self.session = session
        self.max_response_bytes = max_response_bytes
        self.policy = policy

    async def call(
        self,
        url: str,
        *,
        gid: str,
        branch_id: str,
        phase: Phase,
        payload: Any,
        timeout_s: float,
    ) -> CallResult:
        """Our contract: POST {gid, branch_id, phase, payload} as JSON."""
        body = {"gid": gid, "branch_id": branch_id, "phase": phase.value, "payload": payload}
        return await self._send(
            "POST",
            url,
            data=json.dumps(body).encode(),
            params=None,
            headers=_protocol_headers(gid, branch_id, phase),
            timeout_s=timeout_s,
        )

    async def call_dtm(
        self,
        url: str,
        *,
        gid: str,
        branch_id: str,
        phase: Phase,
        data: str | None,
        extra_headers: dict[str, str],
        timeout_s: float,
    ) -> CallResult:
        """DTM's contract: the branch's data string as the body (a GET when there is none),
        with gid, trans_type, branch_id and op as query parameters."""
        params = {"gid": gid, "trans_type": "tcc", "branch_id": branch_id, "op": phase.value}
        headers = {**extra_headers, **_protocol_headers(gid, branch_id, phase)}
        return await self._send(
            "POST" if data else "GET",
            url,
            data=data.encode() if data else None,
            params=params,
            headers=headers,
            timeout_s=timeout_s,
        )

    async def _send(
        self,
        method: str,
        url: str,
        *,
        data: bytes | None,
        params: dict[str, str] | None,
        headers: dict[str, str],
        timeout_s: float,
    ) -> CallResult:
        started = time.perf_counter()
        if self.policy is not None:
            try:
                self.policy.check_url(url)  # names and literal addresses; DNS answers later
            except PolicyError as exc:
                return CallResult(None, None, f"refused by policy: {exc}", _ms_since(started))
        try:
            async with asyncio.timeout(timeout_s):
                async with self.session.request(
                    method,
                    url,
                    data=data,
                    params=params,
                    headers=headers,
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


def _protocol_headers(gid: str, branch_id: str, phase: Phase) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-TCC-Gid": gid,
        "X-TCC-Branch": branch_id,
        "X-TCC-Phase": phase.value,
        "Idempotency-Key": idempotency_key(gid, branch_id, phase),
    }


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return printable(f"{type(exc).__name__}: {text}"[:500])


def _snippet(raw: bytes) -> str:
    return printable(raw[:300].decode("utf-8", errors="replace").strip()) or "(empty body)"
