"""An async client for services that start transactions.

    async with CoordinatorClient("http://127.0.0.1:36789", service="shop") as tcc:
        async with tcc.transaction(timeout_s=30) as tx:
            await tx.try_branch("pay", try_url=..., confirm_url=..., cancel_url=..., payload={...})
            await tx.try_branch("stock", ...)
        # confirmed here; an exception inside the block cancels instead, then re-raises

Coordinator errors come back as typed exceptions (TryRefused, Conflict, ...).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp


class CoordinatorError(Exception):
    """The coordinator answered with an error (or could not be reached)."""

    def __init__(self, status: int | None, detail: str, body: Any = None) -> None:
        super().__init__(f"{status or 'no answer'}: {detail}")
        self.status = status
        self.detail = detail
        self.body = body


class InvalidRequest(CoordinatorError):
    """400, 413 or 422: the request itself was wrong."""


class NotFound(CoordinatorError):
    """404: no such transaction."""


class Conflict(CoordinatorError):
    """409: e.g. confirm after a failed try or the deadline, or an add on a decided transaction."""


class TryRefused(Conflict):
    """409 from a try: the participant's business refused it; the transaction is cancelling."""


class TryFailed(CoordinatorError):
    """502 from a try: the participant failed or timed out; the transaction is cancelling."""


class Unavailable(CoordinatorError):
    """503, or no answer at all: safe to retry later, every call is idempotent."""


# The coordinator's final statuses, as its API spells them (the toolkit does not import the
# coordinator: it talks to it over HTTP only).
FINISHED = frozenset({"confirmed", "cancelled"})


@dataclass(frozen=True)
class TransactionState:
    gid: str
    status: str
    cancel_reason: str | None
    raw: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def of(cls, body: dict[str, Any]) -> TransactionState:
        return cls(body["gid"], body["status"], body.get("cancel_reason"), body)


def _error_for(status: int, body: Any) -> CoordinatorError:
    detail = body.get("detail", "") if isinstance(body, dict) else str(body)
    # Only a reply that carries the participant's verdict is about the participant;
    # a 409 for, say, a transaction that is no longer trying is a plain Conflict.
    verdict = body.get("verdict") if isinstance(body, dict) else None
    if status == 409 and verdict == "refused":
        return TryRefused(status, detail, body)
    if status == 502 and verdict == "failed":
        return TryFailed(status, detail, body)
    kind: type[CoordinatorError] = {
        400: InvalidRequest,
        413: InvalidRequest,
        422: InvalidRequest,
        404: NotFound,
        409: Conflict,
        503: Unavailable,
    }.get(status, CoordinatorError)
    return kind(status, detail, body)


def _branch(
    branch_id: str, confirm_url: str, cancel_url: str, payload: Any, name: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "branch_id": branch_id,
        "confirm_url": confirm_url,
        "cancel_url": cancel_url,
        "payload": payload,
    }
    if name:
        body["name"] = name
    return body


class CoordinatorClient:
    def __init__(
        self,
        base_url: str,
        *,
        service: str | None = None,
        api_key: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.service = service
        # With keys, the coordinator keeps each service's gids under "<service>:"; the
        # client puts the gids its caller chooses there, so an order id can still be one.
        self._namespace = f"{service}:" if service and api_key else None
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._own_session = session is None
        self._session = session or aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s)
        )

    async def __aenter__(self) -> CoordinatorClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session:
            await self._session.close()

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            async with self._session.request(
                method, self.base_url + path, json=body, headers=self._headers
            ) as resp:
                data = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(None, f"coordinator unreachable: {exc}") from exc
        except ValueError as exc:
            raise CoordinatorError(
                None, f"coordinator answered something that is not JSON: {exc}"
            ) from exc
        if status >= 400:
            raise _error_for(status, data)
        return status, data

    # --- the API --------------------------------------------------------------------

    async def begin(
        self,
        gid: str | None = None,
        *,
        timeout_s: float | None = None,
        call_timeout_s: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> TransactionState:
        body: dict[str, Any] = {"metadata": metadata or {}}
        for key, value in (
            ("gid", self.qualified(gid) if gid else None),
            ("service", self.service),
            ("timeout_s", timeout_s),
            ("call_timeout_s", call_timeout_s),
        ):
            if value is not None:
                body[key] = value
        _, data = await self._call("POST", "/v1/transactions", body)
        return TransactionState.of(data)

    def qualified(self, gid: str) -> str:
        """The gid as the coordinator knows it: inside this service's namespace, if any."""
        if self._namespace is None or gid.startswith(self._namespace):
            return gid
        return self._namespace + gid

    async def try_branch(
        self,
        gid: str,
        branch_id: str,
        *,
        try_url: str,
        confirm_url: str,
        cancel_url: str,
        payload: Any = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Register a branch and have the coordinator call its try; the participant's reply."""
        body = _branch(branch_id, confirm_url, cancel_url, payload, name)
        body["try_url"] = try_url
        _, data = await self._call("POST", f"/v1/transactions/{gid}/try", body)
        result: dict[str, Any] = data
        return result

    async def add_branch(
        self,
        gid: str,
        branch_id: str,
        *,
        confirm_url: str,
        cancel_url: str,
        payload: Any = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Register a branch whose try the caller runs itself."""
        body = _branch(branch_id, confirm_url, cancel_url, payload, name)
        _, data = await self._call("POST", f"/v1/transactions/{gid}/branches", body)
        result: dict[str, Any] = data
        return result

    async def confirm(self, gid: str) -> TransactionState:
        _, data = await self._call("POST", f"/v1/transactions/{gid}/confirm", {})
        return TransactionState.of(data)

    async def cancel(self, gid: str) -> TransactionState:
        _, data = await self._call("POST", f"/v1/transactions/{gid}/cancel", {})
        return TransactionState.of(data)

    async def get(self, gid: str) -> TransactionState:
        _, data = await self._call("GET", f"/v1/transactions/{gid}")
        return TransactionState.of(data)

    @asynccontextmanager
    async def transaction(
        self,
        gid: str | None = None,
        *,
        timeout_s: float | None = None,
        call_timeout_s: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AsyncIterator[Transaction]:
        """Confirm when the block ends normally; cancel (and re-raise) when it raises."""
        state = await self.begin(
            gid, timeout_s=timeout_s, call_timeout_s=call_timeout_s, metadata=metadata
        )
        tx = Transaction(self, state.gid)
        try:
            yield tx
        except BaseException:
            # If even the cancel fails, the deadline cancels it; the original error matters more.
            with contextlib.suppress(CoordinatorError):
                tx.outcome = await self.cancel(state.gid)
            raise
        tx.outcome = await self.confirm(state.gid)


class Transaction:
    """One global transaction inside ``CoordinatorClient.transaction()``."""

    def __init__(self, client: CoordinatorClient, gid: str) -> None:
        self.client = client
        self.gid = gid
        self.outcome: TransactionState | None = None

    async def try_branch(self, branch_id: str, **kwargs: Any) -> dict[str, Any]:
        return await self.client.try_branch(self.gid, branch_id, **kwargs)

    async def add_branch(self, branch_id: str, **kwargs: Any) -> dict[str, Any]:
        return await self.client.add_branch(self.gid, branch_id, **kwargs)
