"""An async client for services that start transactions.

    async with CoordinatorClient("http://127.0.0.1:36789", service="shop") as tcc:
        async with tcc.transaction(timeout_s=30) as tx:
            await tx.try_branch("pay", try_url=..., confirm_url=..., cancel_url=..., payload={...})
            await tx.try_branch("stock", ...)
        # confirmed here; an exception inside the block cancels instead, then re-raises

Sagas and reliable messages, through the same client:

    state = await tcc.run_saga([SagaStep("pay", action_url=..., compensate_url=..., payload=...)])
    await tcc.send_message([MessageStep("mail", url=..., payload={...})], gid="order-42.mail")
    await tcc.prepare_message(steps, gid="g", query_url=...)  # then submit_message / abort_message

Coordinator errors come back as typed exceptions (TryRefused, Conflict, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
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
        """Over for good: a TCC transaction confirmed or cancelled, or any transaction (a saga,
        a message) the coordinator gave an end time."""
        return self.status in FINISHED or self.raw.get("finished_at") is not None

    @property
    def kind(self) -> str:
        """tcc, saga or msg."""
        return str(self.raw.get("kind", "tcc"))

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


@dataclass(frozen=True, slots=True)
class MessageStep:
    """One step of a reliable message: ``url`` is POSTed the payload, at least once."""

    branch_id: str
    url: str
    payload: Any = None

    def as_json(self) -> dict[str, Any]:
        return {"branch_id": self.branch_id, "url": self.url, "payload": self.payload}


@dataclass(frozen=True, slots=True)
class SagaStep:
    """One step of a saga: its action, and the compensation that undoes it. ``after`` names
    the steps it waits for (a DAG; with concurrent=True)."""

    branch_id: str
    action_url: str
    compensate_url: str
    payload: Any = None
    after: tuple[str, ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "branch_id": self.branch_id,
            "action_url": self.action_url,
            "compensate_url": self.compensate_url,
            "payload": self.payload,
        }
        if self.after:
            body["after"] = list(self.after)
        return body


def _optional(body: dict[str, Any], **values: Any) -> dict[str, Any]:
    body.update({key: value for key, value in values.items() if value is not None})
    return body


def message_request(
    steps: Iterable[MessageStep],
    *,
    gid: str | None = None,
    service: str | None = None,
    metadata: dict[str, Any] | None = None,
    concurrent: bool = False,
    prepared: bool = False,
    query_url: str | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """The body of ``POST /v1/messages``, as the client sends it and the outbox stores it."""
    listed = [step.as_json() for step in steps]
    if not listed:
        raise ValueError("a message needs at least one step")
    if prepared and not query_url:
        raise ValueError("a prepared message needs a query_url the coordinator can ask")
    body: dict[str, Any] = {"steps": listed, "concurrent": concurrent, "prepared": prepared}
    return _optional(
        body,
        gid=gid,
        service=service,
        metadata=metadata,
        query_url=query_url,
        timeout_s=timeout_s,
    )


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

    # --- reliable messages ----------------------------------------------------------

    async def post_message(self, request: dict[str, Any]) -> TransactionState:
        """``POST /v1/messages`` with a body made by ``message_request``. Idempotent by gid: a
        repeat of the same body answers the message as it is, a different body under the same
        gid raises Conflict."""
        body = dict(request)
        if body.get("gid"):
            body["gid"] = self.qualified(str(body["gid"]))
        _, data = await self._call("POST", "/v1/messages", body)
        return TransactionState.of(data)

    async def send_message(
        self,
        steps: Iterable[MessageStep],
        gid: str | None = None,
        *,
        metadata: dict[str, Any] | None = None,
        concurrent: bool = False,
    ) -> TransactionState:
        """A message decided at once: the coordinator delivers every step, at least once, in
        order (or all at once with ``concurrent``). Choose the gid to make a resend safe."""
        return await self.post_message(
            message_request(
                steps, gid=gid, service=self.service, metadata=metadata, concurrent=concurrent
            )
        )

    async def prepare_message(
        self,
        steps: Iterable[MessageStep],
        gid: str | None = None,
        *,
        query_url: str,
        timeout_s: float | None = None,
        metadata: dict[str, Any] | None = None,
        concurrent: bool = False,
    ) -> TransactionState:
        """A message held until ``submit_message`` (deliver) or ``abort_message`` (never). If
        neither comes within ``timeout_s``, the coordinator asks ``GET query_url?gid=...``:
        2xx delivers, 409 aborts, anything else asks again later."""
        return await self.post_message(
            message_request(
                steps,
                gid=gid,
                service=self.service,
                metadata=metadata,
                concurrent=concurrent,
                prepared=True,
                query_url=query_url,
                timeout_s=timeout_s,
            )
        )

    async def submit_message(self, gid: str) -> TransactionState:
        _, data = await self._call("POST", f"/v1/messages/{self.qualified(gid)}/submit", {})
        return TransactionState.of(data)

    async def abort_message(self, gid: str) -> TransactionState:
        _, data = await self._call("POST", f"/v1/messages/{self.qualified(gid)}/abort", {})
        return TransactionState.of(data)

    # --- sagas -----------------------------------------------------------------------

    async def begin_saga(
        self,
        steps: Iterable[SagaStep],
        gid: str | None = None,
        *,
        concurrent: bool = False,
        timeout_s: float | None = None,
        retry_limit: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> TransactionState:
        """``POST /v1/sagas``: the saga as the coordinator answers it (finished or not)."""
        listed = [step.as_json() for step in steps]
        if not listed:
            raise ValueError("a saga needs at least one step")
        body = _optional(
            {"steps": listed, "concurrent": concurrent, "metadata": metadata or {}},
            gid=self.qualified(gid) if gid else None,
            service=self.service,
            timeout_s=timeout_s,
            retry_limit=retry_limit,
        )
        _, data = await self._call("POST", "/v1/sagas", body)
        return TransactionState.of(data)

    async def run_saga(
        self,
        steps: Iterable[SagaStep],
        gid: str | None = None,
        *,
        concurrent: bool = False,
        timeout_s: float | None = None,
        retry_limit: int | None = None,
        metadata: dict[str, Any] | None = None,
        wait_s: float = 30.0,
        poll_s: float = 0.2,
    ) -> TransactionState:
        """Run a saga and return its final state: every action done, or the failed saga
        compensated. A saga still running after ``wait_s`` (a participant down, the
        coordinator retrying) is returned as it is then, with ``finished`` False: look it
        up again later with ``get``."""
        state = await self.begin_saga(
            steps,
            gid,
            concurrent=concurrent,
            timeout_s=timeout_s,
            retry_limit=retry_limit,
            metadata=metadata,
        )
        deadline = time.monotonic() + wait_s
        while not state.finished and time.monotonic() < deadline:
            await asyncio.sleep(poll_s)
            state = await self.get(state.gid)
        return state

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
