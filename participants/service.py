"""What every sample service shares: its database lifecycle and its command line."""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from importlib.resources.abc import Traversable

import asyncpg
import structlog
from aiohttp import web

from participants import barrier_purge, schema, tls

log = structlog.get_logger(__name__)

POOL = web.AppKey("pool", asyncpg.Pool)


def database(
    dsn: str, schema_name: str, migrations: Traversable
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx: migrate the service's schema, then open its pool for the app's life.

    While the pool is open, old barrier rows are purged in the background as
    TCC_BARRIER_KEEP_FOR (default 7d, or off) and TCC_BARRIER_PURGE_EVERY (default 1h) say;
    a bad value of either fails here, when the app is built.
    """
    retention = barrier_purge.Retention.from_env()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        applied = await schema.migrate(dsn, schema_name, migrations)
        for name in applied:
            log.info("participant_migration_applied", migration=name)
        app[POOL] = await schema.connect_pool(dsn, schema_name)
        if retention is None:
            log.info("barrier_purge_off", setting=barrier_purge.KEEP_ENV)
            yield
        else:
            async with barrier_purge.running(app[POOL], retention):
                yield
        await app[POOL].close()

    return lifecycle


def base_parser(description: str, default_port: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--database-url", required=True, help="Postgres URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    tls.add_options(parser)  # HTTPS, and client certificates (participants/tls.py)
    return parser


def server_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The HTTPS the parsed --tls-* options ask for (None: plain HTTP). A bad option ends the
    program before it serves anything: one line on stderr, exit status 2."""
    try:
        return tls.server_context(args)
    except tls.TlsOptionError as exc:
        print(f"{_program()}: {exc}", file=sys.stderr)
        sys.exit(2)


def _program() -> str:
    """How this program was started, for its error line (`python -m participants.wallet`)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None)
    if isinstance(name, str) and name:
        return f"python -m {name.removesuffix('.__main__')}"
    return sys.argv[0] or "participant"


def configure_logging() -> None:
    """JSON lines on stderr (the samples run as child processes with a log file each)."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
    )


def serve(
    app: web.Application, host: str, port: int, tls_context: ssl.SSLContext | None = None
) -> None:
    """Run the app until SIGINT/SIGTERM; over HTTPS with ``tls_context`` (see server_tls)."""
    configure_logging()
    if tls_context is not None:
        log.info(
            "serving_https",
            port=port,
            client_certificate=(
                "required" if tls_context.verify_mode == ssl.CERT_REQUIRED else "not asked for"
            ),
        )
    web.run_app(
        app,
        host=host,
        port=port,
        ssl_context=tls_context,
        print=lambda *_: None,
        access_log=None,
    )
