"""What every sample service shares: its database lifecycle and its command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import AsyncIterator, Callable
from importlib.resources.abc import Traversable

import asyncpg
import structlog
from aiohttp import web

from participants import barrier_purge, schema

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
    return parser


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


def serve(app: web.Application, host: str, port: int) -> None:
    configure_logging()
    web.run_app(app, host=host, port=port, print=lambda *_: None, access_log=None)
