"""structlog set-up: readable on a terminal, JSON lines otherwise; no secret in any line.

Two guards keep API keys out of the logs. aiohttp's server logs a malformed request with the
parser's error, which quotes the offending header line verbatim (an Authorization header
with a control character in it carries the key): that record is replaced by one naming only
the kind of error. And every line, ours or a library's, passes a redaction of anything that
follows ``Authorization`` or ``Bearer``, in case some other path quotes a header.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Literal

import structlog
from aiohttp.http_exceptions import HttpProcessingError

from coordinator import tracing

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# A credential after one of these words, up to the end of the line, quote or comma.
_SECRET = re.compile(
    r"(?i)(authorization[\"']?\s*[:=]\s*|bearer\s+|\bbearer\b\W{0,3})[^\r\n\"',}\]]+"
)


def redact(text: str) -> str:
    return _SECRET.sub(r"\1***", text)


class _MalformedRequestGuard(logging.Filter):
    """Rewrites aiohttp's "Error handling request" records about unparseable requests so
    that they carry no request bytes: the error's class and status code only."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "malformed request from %s refused: %s (HTTP %s)"
            record.args = (remote, type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _redact_rendered(_logger: Any, _name: str, rendered: Any) -> Any:
    """The last structlog processor: the rendered line, with credentials masked."""
    return redact(rendered) if isinstance(rendered, str) else rendered


_SERVER_GUARD = _MalformedRequestGuard()


def guard_server_logs() -> None:
    """Idempotent: install the malformed-request guard on aiohttp's server logger."""
    server_logger = logging.getLogger("aiohttp.server")
    if _SERVER_GUARD not in server_logger.filters:
        server_logger.addFilter(_SERVER_GUARD)


def add_trace_ids(
    _logger: Any, _name: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    """The current trace and span ids on every line logged inside a span, so that a log
    search by trace id finds the coordinator's lines of one transaction."""
    ids = tracing.ids()
    if ids is not None:
        event.setdefault("trace_id", ids[0])
        event.setdefault("span_id", ids[1])
    return event


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    # What every line gets, ours and the libraries' alike.
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: list[structlog.types.Processor] = (
        [structlog.dev.ConsoleRenderer()]  # renders tracebacks itself
        if use_console
        else [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    )
    structlog.configure(
        processors=[*shared, *renderer, _redact_rendered],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # One write per line: several workers may share one log file.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # aiohttp and asyncpg log through the standard library: their records are rendered by
    # the same processors, so a JSON log stays JSON lines even for a library's traceback.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *renderer,
                _redact_rendered,
            ],
        )
    )
    logging.basicConfig(level=max(_LEVELS[level], logging.WARNING), handlers=[handler], force=True)
    guard_server_logs()
