"""Rendering console pages: the template environment, what every page knows (who is looking,
whether authentication is off, the CSRF token), and the headers every page carries."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

from coordinator.api.appkeys import SESSIONS, SETTINGS
from coordinator.api.console import words as kind_words
from coordinator.api.console.views import transaction_url
from coordinator.api.gateway import prefix_of
from coordinator.api.guard import PRINCIPAL, SESSION
from coordinator.api.sessions import COOKIE_NAME
from coordinator.core.states import FINAL_STATUSES, PARKED_STATUSES, GlobalStatus

# Only this server's own files; nothing inline, so an injected tag could not run.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Pages carry a CSRF token and live data: never kept by a cache or the back button.
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    version: str  # a digest of the body, in the URL: a new release is fetched anew


_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


@cache
def static_files() -> dict[str, StaticFile]:
    """The console's stylesheet, script and icon, read once from the package."""
    folder = resources.files(__package__) / "static"
    found: dict[str, StaticFile] = {}
    for entry in folder.iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if entry.is_file() and suffix in _STATIC_TYPES:
            body = entry.read_bytes()
            version = hashlib.sha256(body).hexdigest()[:12]
            found[entry.name] = StaticFile(body, _STATIC_TYPES[suffix], version)
    return found


def static_url(name: str) -> str:
    return f"/ui/static/{name}?v={static_files()[name].version}"


# --- how values are shown ------------------------------------------------------------

NOTHING = "\u2013"  # an en dash: no value


def format_time(value: datetime | None) -> str:
    if value is None:
        return NOTHING
    # The hour and its zone stay together where a line breaks (a no-break space).
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S\u00a0UTC")


def clock(value: datetime) -> str:
    """Hours and minutes, UTC: the throughput chart's minutes."""
    return value.astimezone(UTC).strftime("%H:%M")


def clock_ms(value: datetime) -> str:
    """Hours to milliseconds, UTC: a timeline's rows, many within one second."""
    return value.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


def day(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d")


def since(seconds: float | None) -> str:
    """Time since a beginning: +0.123 s, +2 min 05.250 s, +3 h 02 min 05.250 s."""
    if seconds is None:
        return ""
    sign = "-" if seconds < 0 else "+"
    millis = round(abs(seconds) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    if hours:
        return f"{sign}{hours} h {minutes:02d} min {millis / 1000:06.3f} s"
    if minutes:
        return f"{sign}{minutes} min {millis / 1000:06.3f} s"
    return f"{sign}{millis / 1000:.3f} s"


def iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat(timespec="milliseconds")


def relative(value: datetime | None, now: datetime | None = None) -> str:
    """'3 min ago' or 'in 20 s', for people scanning a list."""
    if value is None:
        return ""
    seconds = ((now or datetime.now(UTC)) - value).total_seconds()
    ahead = seconds < 0
    seconds = abs(seconds)
    if seconds < 90:
        amount = f"{seconds:.0f} s"
    elif seconds < 5400:
        amount = f"{seconds / 60:.0f} min"
    elif seconds < 172_800:
        amount = f"{seconds / 3600:.0f} h"
    else:
        amount = f"{seconds / 86400:.0f} d"
    return f"in {amount}" if ahead else f"{amount} ago"


def latency(value: float | None) -> str:
    return NOTHING if value is None else f"{value:.1f} ms"


def amount(value: float) -> str:
    """A count that may be fractional (calls a minute): one decimal, none when whole."""
    return f"{value:.1f}".removesuffix(".0")


def percent(value: float | None) -> str:
    """A share: 2.5 %; a share too small for a decimal is not rounded down to none."""
    if value is None:
        return NOTHING
    if 0 < value < 0.001:
        return "<0.1\u00a0%"
    return f"{amount(value * 100)}\u00a0%"


def status_class(status: Any) -> str:
    """A CSS class per kind of status: done, open, parked."""
    text = getattr(status, "value", status)
    try:
        global_status = GlobalStatus(text)
    except ValueError:
        return f"status status-{text}"
    if global_status in PARKED_STATUSES:
        tone = "parked"
    elif global_status in FINAL_STATUSES:
        tone = "done"
    else:
        tone = "open"
    return f"status status-{text} tone-{tone}"


def as_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def detail_value(value: Any) -> str:
    """A value of an event's details, as JSON writes it (true, null, 60.0) or as the text
    it is; a list of plain values as a comma-separated list. Nested ones get as_json."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return ", ".join(str(v) for v in value)
    return json.dumps(value, ensure_ascii=False, default=str)


LONG_WORD = 40


def has_long_word(value: Any) -> bool:
    """Whether a value shown as text has a word too long for a column (a URL, a digest):
    the only kind a page lets break inside a word."""
    return any(len(word) > LONG_WORD for word in str(value).split())


def is_nested(value: Any) -> bool:
    if isinstance(value, dict):
        return True
    return isinstance(value, list) and not all(isinstance(v, str | int | float) for v in value)


def words(value: Any) -> str:
    """An enum member or identifier as words: failed_to_confirm -> failed to confirm."""
    return str(getattr(value, "value", value)).replace("_", " ")


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__ or "coordinator.api.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        time=format_time,
        iso=iso,
        clock=clock,
        clock_ms=clock_ms,
        day=day,
        since=since,
        relative=relative,
        latency=latency,
        amount=amount,
        percent=percent,
        status_class=status_class,
        as_json=as_json,
        words=words,
        detail_value=detail_value,
        transaction_url=transaction_url,
        kind_word=kind_words.kind_word,
        reason_words=kind_words.reason_words,
    )
    env.globals.update(
        static_url=static_url,
        kind_noun=kind_words.noun,
        has_steps=kind_words.has_steps,
    )
    env.tests.update(nested=is_nested, long_word=has_long_word)
    return env


# --- responses -----------------------------------------------------------------------

# An attribute holding a path from the root (not "//host/..."): what a path prefix goes before.
_ROOTED = re.compile(r'\b(href|action|src)="/(?!/)')


def page_context(request: web.Request) -> dict[str, Any]:
    """What every page shows or needs: who is looking, whether they may act, the token that
    their actions must carry, and whether authentication is off."""
    principal = request.get(PRINCIPAL)  # None on the login page
    session = request.get(SESSION)
    cookie = request.cookies.get(COOKIE_NAME)
    csrf = request.app[SESSIONS].csrf_token(cookie) if session is not None and cookie else ""
    return {
        "insecure": request.app[SETTINGS].insecure,
        "who": principal.name if principal else None,
        "scope": principal.scope.value if principal else None,
        "can_act": principal is not None and principal.is_admin,
        "signed_in": session is not None,
        "csrf_token": csrf,
        "path": request.path,
    }


def render(
    request: web.Request,
    template: str,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> web.Response:
    html = environment().get_template(template).render(**page_context(request), **context)
    prefix = prefix_of(request)
    if prefix:
        # Behind a gateway that serves us under a path: every link, form and file of the
        # page (all written from the root, "/ui/...", "/v1/...") is asked for under it.
        html = _ROOTED.sub(rf'\1="{prefix}/', html)
    response = web.Response(
        status=status, text=html, content_type="text/html", headers=PAGE_HEADERS
    )
    if headers:
        response.headers.update(headers)
    return response
