"""Which participant `tcc conformance` checks: its URLs as the command line gives them, or
as the coordinator's participant registry holds them (`--participant NAME`).

Every mistake on the command line is a UsageError (one line, exit 2); a registry that
cannot be asked, or does not know the name, a CoordinatorError (one line, exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import pydantic
from yarl import URL

from coordinator.core.errors import CoordinatorError, UsageError
from coordinator.core.states import TransactionKind
from coordinator.devtools.conformance_probe import Dialect, Target, Unreachable, snippet
from coordinator.settings import Settings

COORDINATOR_ENV = "TCC_URL"
API_KEY_ENV = "TCC_API_KEY"
DEFAULT_COORDINATOR = "http://127.0.0.1:36789"  # tcc up's, and DTM's port
# A call may take as long as the coordinator lets one take by default.
DEFAULT_TIMEOUT_S: float = Settings.model_fields["call_timeout_s"].default
LONGEST_TIMEOUT_S = 3600.0

URL_FLAGS = {
    TransactionKind.TCC: ("--try", "--confirm", "--cancel"),
    TransactionKind.SAGA: ("--action", "--compensate"),
}
WHICH = (
    "give --try, --confirm and --cancel (a TCC participant), --action and --compensate"
    " (a saga step) or --participant NAME"
)


class RegistryError(CoordinatorError):
    """The coordinator's registry could not tell the participant's URLs."""


@dataclass(frozen=True, slots=True)
class RegistryQuery:
    """`--participant NAME`: the URLs are the registry's; the other flags given still win."""

    name: str
    coordinator_url: str
    api_key: str | None
    try_url: str | None  # --try: a try URL the registry does not have (or another one)
    saga: bool  # --saga: check it as a saga step
    payload: Any
    dialect: Dialect | None
    timeout_s: float | None
    check_url: str | None


class RegistryEntry(pydantic.BaseModel):
    """A participant as `GET /v1/participants/{name}` answers it (other fields ignored; one
    with no dialect is called the coordinator's own way)."""

    model_config = pydantic.ConfigDict(extra="ignore")

    name: str
    try_url: str | None = None
    confirm_url: str
    cancel_url: str
    call_timeout_s: float | None = None
    dialect: Literal["tcc", "dtm"] = "tcc"


def read_command_line(args: argparse.Namespace) -> Target | RegistryQuery:
    """What the command line asks for, every value checked."""
    given = {
        flag: getattr(args, flag.removeprefix("--") + "_url")
        for flags in URL_FLAGS.values()
        for flag in flags
    }
    if args.participant is not None:
        return _registry_query(args, given)
    if args.saga:
        raise UsageError("--saga is for --participant: give --action and --compensate instead")
    kinds = [k for k, flags in URL_FLAGS.items() if any(given[f] for f in flags)]
    if len(kinds) > 1:
        raise UsageError(f"a participant is either TCC or a saga step: {WHICH}")
    if args.coordinator_url is not None or args.api_key is not None:
        raise UsageError("--url and --api-key are for --participant")
    if not kinds:
        raise UsageError(WHICH)
    kind = kinds[0]
    missing = [f for f in URL_FLAGS[kind] if not given[f]]
    if missing:
        raise UsageError(f"{' and '.join(missing)} missing: {WHICH}")
    # In flag order: TCC's try, confirm, cancel; a saga step's action, compensate (kept as a
    # branch keeps them: the action in the confirm URL, the compensation in the cancel URL).
    urls = [_url(f, given[f]) for f in URL_FLAGS[kind]]
    return Target(
        kind=kind,
        try_url=urls[0] if kind is TransactionKind.TCC else None,
        confirm_url=urls[-2],
        cancel_url=urls[-1],
        payload=_payload(args.payload),
        dialect=_dialect(args.dialect) or Dialect.V1,
        timeout_s=_timeout(args.timeout) or DEFAULT_TIMEOUT_S,
        check_url=_check_url(args.check_url),
    )


def _registry_query(args: argparse.Namespace, given: dict[str, str | None]) -> RegistryQuery:
    """--participant NAME, with --try or --saga when the registry leaves it open."""
    if not args.participant.strip():
        raise UsageError("--participant: give the participant's name")
    others = [f for f, value in given.items() if value and f != "--try"]
    if others:
        raise UsageError(
            f"--participant takes its URLs from the registry: {', '.join(others)} cannot go"
            " with it (only --try, for a try URL the registry does not have)"
        )
    if args.saga and given["--try"]:
        raise UsageError("--saga and --try: a saga step has no try")
    coordinator = args.coordinator_url or os.environ.get(COORDINATOR_ENV) or DEFAULT_COORDINATOR
    return RegistryQuery(
        name=args.participant,
        coordinator_url=_url("--url", coordinator),
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        try_url=_url("--try", given["--try"]) if given["--try"] else None,
        saga=args.saga,
        payload=_payload(args.payload),
        dialect=_dialect(args.dialect),
        timeout_s=_timeout(args.timeout),
        check_url=_check_url(args.check_url),
    )


def _check_url(text: str | None) -> str | None:
    return _url("--check-url", text) if text is not None else None


def _url(flag: str, value: str, error: type[CoordinatorError] = UsageError) -> str:
    try:
        url = URL(value)
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise error(f"{flag}: {value!r} is not an http(s) URL")
    return value


def _dialect(text: str | None) -> Dialect | None:
    if text is None:
        return None
    try:
        return Dialect(text)
    except ValueError:
        known = " or ".join(d.value for d in Dialect)
        raise UsageError(f"--dialect: {text!r} is none of {known}") from None


def _refuse_constant(word: str) -> Any:
    raise ValueError(f"{word} is not a number the coordinator accepts")


def _payload(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise UsageError(f"--payload is not JSON: {exc}") from None


def _timeout(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--timeout: {text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and 0 < value <= LONGEST_TIMEOUT_S):
        raise UsageError(f"--timeout must be above 0 and at most {LONGEST_TIMEOUT_S:g} seconds")
    return value


async def from_registry(session: aiohttp.ClientSession, query: RegistryQuery) -> Target:
    """The participant's URLs from `GET {coordinator}/v1/participants/{name}`. Without a try
    URL there (its callers run their tries themselves) the command line says what it is:
    --try gives the try URL, --saga makes it a saga step, whose action is the confirm URL and
    compensation the cancel URL, as a saga's branch keeps them."""
    entry = await _read_entry(session, query)
    where = f"the registry's {entry.name!r}"
    try_url = query.try_url or (
        _url(f"{where} try_url", entry.try_url, RegistryError) if entry.try_url else None
    )
    if query.saga:
        kind, try_url = TransactionKind.SAGA, None
    elif try_url is not None:
        kind = TransactionKind.TCC
    else:
        raise UsageError(
            f"participant {query.name!r} has no try URL in the registry (its callers run their"
            " tries themselves): give --try URL to check it as TCC, or --saga for a saga step"
        )
    dialect = query.dialect or (Dialect.DTM if entry.dialect == "dtm" else Dialect.V1)
    return Target(
        kind=kind,
        try_url=try_url,
        confirm_url=_url(f"{where} confirm_url", entry.confirm_url, RegistryError),
        cancel_url=_url(f"{where} cancel_url", entry.cancel_url, RegistryError),
        payload=query.payload,
        dialect=dialect,
        timeout_s=query.timeout_s or entry.call_timeout_s or DEFAULT_TIMEOUT_S,
        check_url=query.check_url,
        source=f"participant {query.name!r} of the registry at {query.coordinator_url}",
    )


async def _read_entry(session: aiohttp.ClientSession, query: RegistryQuery) -> RegistryEntry:
    base = query.coordinator_url.rstrip("/")
    url = f"{base}/v1/participants/{quote(query.name, safe='')}"
    headers = {"Authorization": f"Bearer {query.api_key}"} if query.api_key else {}
    try:
        async with asyncio.timeout(query.timeout_s or DEFAULT_TIMEOUT_S):
            async with session.get(url, headers=headers, allow_redirects=False) as response:
                status, text = response.status, await response.text()
    except TimeoutError:
        raise Unreachable(f"the coordinator at {base} did not answer in time") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise Unreachable(f"cannot reach the coordinator at {base}: {_reason(exc)}") from None
    if status == 404:
        raise RegistryError(
            f"no participant named {query.name!r} in the registry at {base}{_detail(text)}"
        )
    if status in (401, 403):
        raise RegistryError(
            f"the coordinator at {base} refused the request ({status}{_detail(text)}): give"
            f" an API key that may read the registry with --api-key or {API_KEY_ENV}"
        )
    if status != 200:
        raise RegistryError(f"the coordinator at {base} answered {status}{_detail(text)}")
    try:
        return RegistryEntry.model_validate_json(text)
    except pydantic.ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"]) or "the answer"
        raise RegistryError(
            f"the coordinator at {base} answered no participant record ({field}: {err['msg']})"
        ) from None


def _detail(text: str) -> str:
    """A problem+json answer's detail (or the start of any other answer), as ': ...'."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return f": {body['detail']}"
    return f": {snippet(text, 120)}" if text.strip() else ""


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
