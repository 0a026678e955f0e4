"""Serving the HTTP API so that slow or numerous clients cannot take the coordinator down.

``web.run_app`` accepts every connection and keeps it as long as the client dribbles bytes
(or 75 s when it sends nothing). Here the app runs on a site of our own whose protocol factory
wraps aiohttp's ``RequestHandler``:

* inbound connections are counted and capped below the open-file limit, so participant calls
  and database connections always find a free file descriptor; past the cap a connection gets
  a canned 503 and is closed at once;
* a connection must deliver a request line and all headers within ``header_timeout_s`` of
  opening (or of starting its next request after a keep-alive pause), else it is closed;
* idle keep-alive connections close after ``keepalive_timeout_s`` (aiohttp's own timer, set in
  the app's handler args, as is a short lingering time for unread bodies).

It also raises the soft open-file limit at start-up and says in one line why a port cannot be
listened on, naming the process that holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import resource
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from coordinator.core.errors import StartRefused
from coordinator.settings import Settings

log = structlog.get_logger(__name__)


# --- the open-file limit and the inbound connection cap -------------------------------------

# Files the process needs besides inbound, database and participant connections: stdio, log
# files, the event loop's own descriptors, listening sockets, migrations' connection, module
# imports, DNS look-ups.
RESERVED_FILES = 64
# The listen backlog is also how many sockets asyncio accepts in one loop turn. A refused
# socket is only closed two turns after it was accepted (task, connection_made, close), so
# under a flood up to three bursts hold descriptors beyond the cap at once: measured peaks
# were 3 x backlog over it, and with less room accept() hit EMFILE.
ACCEPT_BACKLOG = 128
ACCEPT_BURSTS_IN_FLIGHT = 3
MIN_INBOUND_CONNECTIONS = 16
# An "unlimited" hard limit is raised to this much, no further (the kernel refuses more than
# fs.nr_open anyway, and a coordinator never needs millions of descriptors).
UNLIMITED_FILES = 65_536


@dataclass(frozen=True)
class FileLimit:
    soft_before: int
    hard_before: int
    soft: int
    hard: int


@dataclass(frozen=True)
class ConnectionBudget:
    """How the open-file limit is shared out. ``room`` is what it leaves for inbound
    connections; ``max_connections`` is the cap in force (``room`` unless configured)."""

    files: FileLimit
    database: int
    participants: int
    reserved: int
    room: int
    max_connections: int
    from_setting: bool


def _finite(limit: int) -> int:
    return UNLIMITED_FILES if limit == resource.RLIM_INFINITY else limit


def raise_file_limit() -> FileLimit:
    """Raise the soft RLIMIT_NOFILE to the hard limit: the soft one (often 1,024) is only a
    default for programs that do not know better."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _finite(hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        # Above fs.nr_open the kernel says no: keep what we have then.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    new_soft, new_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FileLimit(soft_before=soft, hard_before=hard, soft=new_soft, hard=new_hard)


def plan_connections(settings: Settings) -> ConnectionBudget:
    """Raise the file limit and decide the inbound cap; refuse if too few would be left."""
    files = raise_file_limit()
    reserved = RESERVED_FILES + ACCEPT_BACKLOG * ACCEPT_BURSTS_IN_FLIGHT
    room = (
        _finite(files.soft)
        - settings.pool_max_size
        - settings.max_participant_connections
        - reserved
    )
    if settings.max_connections is None and room < MIN_INBOUND_CONNECTIONS:
        raise StartRefused(
            f"the open-file limit ({_finite(files.soft)}) leaves room for {max(room, 0)} inbound"
            f" connections after {settings.pool_max_size} database,"
            f" {settings.max_participant_connections} participant and {reserved} reserved ones;"
            f" at least {MIN_INBOUND_CONNECTIONS} are needed: raise the hard limit (ulimit -Hn)"
            " or lower TCC_POOL_MAX_SIZE / TCC_MAX_PARTICIPANT_CONNECTIONS"
        )
    configured = settings.max_connections
    return ConnectionBudget(
        files=files,
        database=settings.pool_max_size,
        participants=settings.max_participant_connections,
        reserved=reserved,
        room=room,
        max_connections=room if configured is None else configured,
        from_setting=configured is not None,
    )


def _shown(limit: int) -> int | str:
    return "unlimited" if limit == resource.RLIM_INFINITY else limit


def log_connection_budget(budget: ConnectionBudget) -> None:
    files = budget.files
    log.info(
        "file_limit",
        soft_before=_shown(files.soft_before),
        hard_before=_shown(files.hard_before),
        soft=_shown(files.soft),
        hard=_shown(files.hard),
        max_connections=budget.max_connections,
        max_connections_from="setting" if budget.from_setting else "file limit",
        database_connections=budget.database,
        participant_connections=budget.participants,
        reserved_files=budget.reserved,
    )
    if budget.max_connections > budget.room:
        log.warning(
            "max_connections_above_file_room",
            max_connections=budget.max_connections,
            room=budget.room,
            message="a full set of inbound connections can starve participant calls and the"
            " database pool of file descriptors",
        )


# --- ports: is one free, and if not, who holds it -------------------------------------------

_TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


@dataclass(frozen=True)
class PortHolder:
    pid: int
    command: str


def port_problem(
    host: str, port: int, *, label: str | None = None, reuse_port: bool = False
) -> str | None:
    """Why ``host:port`` cannot be listened on (one line), or None when it can.

    Binds a probe socket the way asyncio's create_server will, and closes it at once.
    """
    if port == 0:
        return None  # any free port will do
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror}"
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                return describe_bind_failure(str(address[0]), port, exc, label=label)
    return None


def ensure_port_free(host: str, port: int, *, reuse_port: bool = False) -> None:
    problem = port_problem(host, port, reuse_port=reuse_port)
    if problem is not None:
        raise StartRefused(problem)


def describe_bind_failure(host: str, port: int, exc: OSError, *, label: str | None = None) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if label:
        where += f" ({label})"
    if exc.errno == errno.EADDRINUSE:
        holder = find_port_holder(port)
        who = f"pid {holder.pid} ({holder.command})" if holder else "another process"
        return f"cannot listen on {where}: the port is in use by {who}"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: that address is not one of this host's"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def find_port_holder(port: int) -> PortHolder | None:
    """The process owning a TCP socket bound to ``port``, from Linux's /proc; None when it
    cannot be seen (another user's process, another network namespace, not Linux)."""
    inodes = _socket_inodes_on_port(port)
    pid = _process_owning(inodes) if inodes else None
    if pid is None:
        return None
    try:
        command = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        command = "?"
    return PortHolder(pid, command)


def _socket_inodes_on_port(port: int) -> list[int]:
    """Inodes of TCP sockets whose local port is ``port``, listening ones first."""
    listening: list[int] = []
    others: list[int] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            inode = int(fields[9])
            if local_port == port and inode:  # inode 0: TIME_WAIT, owned by nobody
                (listening if fields[3] == _TCP_LISTEN else others).append(inode)
    return listening + others


def _process_owning(inodes: list[int]) -> int | None:
    """The lowest pid with a descriptor on the first of ``inodes`` that any process holds."""
    rank = {f"socket:[{inode}]": i for i, inode in enumerate(inodes)}
    best: tuple[int, int] | None = None  # (rank, pid)
    pids = sorted(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    for pid in pids:
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or not ours to look at
        for fd in descriptors:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            found = rank.get(target)
            if found is not None and (best is None or found < best[0]):
                best = (found, pid)
                if found == 0:
                    return pid
    return best[1] if best else None


# --- aiohttp internals the header deadline relies on ----------------------------------------
# aiohttp has no public hook for "the request line and headers have been parsed". These two
# read RequestHandler state (aiohttp 3.14, web_protocol.py); tests/acceptance/
# test_slow_clients.py fails if either stops meaning what it says here.


def parsed_requests(handler: RequestHandler) -> int:
    """How many header blocks the connection's parser has completed (malformed ones too):
    ``_request_count`` grows in ``data_received`` as each one is parsed."""
    return handler._request_count


def awaiting_next_request(handler: RequestHandler) -> bool:
    """True while the handler sits idle waiting for the next request's headers: the same test
    aiohttp's own keep-alive timer makes before closing an idle connection."""
    waiter = handler._waiter
    return waiter is not None and not waiter.done()


# --- the connection guard -------------------------------------------------------------------

SHED_LOG_INTERVAL_S = 5.0


def canned_response(status: int, reason: str, detail: str, *, retry_after: bool) -> bytes:
    """A complete problem+json response that closes the connection, for paths that never
    reach the application."""
    body = json.dumps({"title": reason, "status": status, "detail": detail}).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/problem+json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after:
        head.append("Retry-After: 1")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class ShedReport:
    """Counts connections refused at the cap or closed for slow headers, and logs them at
    most once every SHED_LOG_INTERVAL_S: under a flood one line per connection would be a
    second flood. The first event after a quiet spell is logged at once."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        max_connections: int,
        open_connections: Callable[[], int],
    ) -> None:
        self._loop = loop
        self._max_connections = max_connections
        self._open_connections = open_connections
        self._over_limit = 0
        self._slow_headers = 0
        self._window: asyncio.TimerHandle | None = None

    def refused(self) -> None:
        self._over_limit += 1
        self._note()

    def slow_headers(self) -> None:
        self._slow_headers += 1
        self._note()

    def close(self) -> None:
        if self._window is not None:
            self._window.cancel()
            self._window = None
        self._emit()

    def _note(self) -> None:
        if self._window is None:
            self._emit()
            self._window = self._loop.call_later(SHED_LOG_INTERVAL_S, self._window_ended)

    def _window_ended(self) -> None:
        self._window = None
        if self._over_limit or self._slow_headers:
            self._emit()
            self._window = self._loop.call_later(SHED_LOG_INTERVAL_S, self._window_ended)

    def _emit(self) -> None:
        if not (self._over_limit or self._slow_headers):
            return
        log.warning(
            "connections_shed",
            refused_over_limit=self._over_limit,
            closed_for_slow_headers=self._slow_headers,
            open_connections=self._open_connections(),
            max_connections=self._max_connections,
            window_s=SHED_LOG_INTERVAL_S,
        )
        self._over_limit = self._slow_headers = 0


class ConnectionGuard:
    """The protocol factory handed to ``loop.create_server``: one GuardedConnection per
    accepted socket, all sharing this count of open connections."""

    def __init__(
        self,
        make_handler: Callable[[], RequestHandler],
        *,
        max_connections: int,
        header_timeout_s: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.make_handler = make_handler
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.loop = loop
        self.open = 0
        self.report = ShedReport(loop, max_connections, lambda: self.open)
        self.busy_response = canned_response(
            503,
            "Service Unavailable",
            "too many open connections; retry shortly",
            retry_after=True,
        )
        self.header_timeout_response = canned_response(
            408,
            "Request Timeout",
            f"the request line and headers must arrive within {header_timeout_s:g} s",
            retry_after=False,
        )

    def __call__(self) -> GuardedConnection:
        return GuardedConnection(self)

    def admit(self) -> bool:
        if self.open >= self.max_connections:
            self.report.refused()
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


class GuardedConnection(asyncio.Protocol):
    """Sits between one socket's transport and aiohttp's RequestHandler, passing every event
    through, except that it refuses the connection when the cap is reached and closes it when
    its request headers are too slow."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._transport: asyncio.Transport | None = None
        self._handler: RequestHandler | None = None
        self._header_deadline: asyncio.TimerHandle | None = None
        self._requests_when_armed = 0
        self._received_since_armed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)
        if not self._guard.admit():
            # close() sends the buffered 503, then frees the descriptor on the next loop turn.
            stream.write(self._guard.busy_response)
            stream.close()
            return
        self._transport = stream
        # The handler is made only for admitted connections: a flood costs no parsers.
        self._handler = self._guard.make_handler()
        self._handler.connection_made(stream)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        handler = self._handler
        if handler is None:
            return
        if self._header_deadline is None and awaiting_next_request(handler):
            self._arm_header_deadline()  # a kept-alive connection starts its next request
        self._received_since_armed = True
        handler.data_received(data)
        if self._header_deadline is not None and (
            parsed_requests(handler) > self._requests_when_armed
        ):
            self._disarm_header_deadline()

    def eof_received(self) -> None:
        # Returning nothing lets the transport close on EOF, as aiohttp's handler wants.
        if self._handler is not None:
            self._handler.eof_received()

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        handler, self._handler = self._handler, None
        self._transport = None
        if handler is not None:
            self._guard.release()
            handler.connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        assert self._handler is not None
        self._requests_when_armed = parsed_requests(self._handler)
        self._received_since_armed = False
        self._header_deadline = self._guard.loop.call_later(
            self._guard.header_timeout_s, self._header_deadline_passed
        )

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        handler = self._handler
        if handler is None or parsed_requests(handler) > self._requests_when_armed:
            return
        if self._received_since_armed and self._transport is not None:
            # Part of a request arrived: say why it ends. A connection that sent nothing is
            # closed silently, as an idle one would be.
            self._transport.write(self._guard.header_timeout_response)
        self._guard.report.slow_headers()
        handler.force_close()


# --- the site and the serving loop ----------------------------------------------------------


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout_s: float


class GuardedSite(web.BaseSite):
    """aiohttp's TCPSite, except that connections go through a ConnectionGuard."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        limits: ConnectionLimits,
        *,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, backlog=ACCEPT_BACKLOG)
        self._host = host
        self._port = port
        self._limits = limits
        self._reuse_port = reuse_port
        self._bound_port: int | None = None
        self.guard: ConnectionGuard | None = None

    @property
    def name(self) -> str:
        host = self._host or "0.0.0.0"
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port once started (the configured one may be 0)."""
        return self._bound_port or self._port

    async def start(self) -> None:
        await super().start()  # registers the site with its runner
        make_handler = self._runner.server
        assert make_handler is not None
        loop = asyncio.get_running_loop()
        self.guard = ConnectionGuard(
            make_handler,
            max_connections=self._limits.max_connections,
            header_timeout_s=self._limits.header_timeout_s,
            loop=loop,
        )
        listening = await loop.create_server(
            self.guard,
            self._host or None,
            self._port,
            backlog=self._backlog,
            reuse_port=self._reuse_port or None,
        )
        self._server = listening
        if listening.sockets:
            self._bound_port = int(listening.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        await super().stop()
        if self.guard is not None:
            self.guard.report.close()


async def serve_app(
    app: web.Application, settings: Settings, max_connections: int, *, reuse_port: bool
) -> None:
    """Serve ``app`` until SIGTERM or SIGINT.

    Shutdown is web.run_app's: stop accepting, close idle connections, give in-flight
    requests shutdown_grace_s, run on_shutdown, then the cleanup context (which stops
    recovery and releases the leases of unfinished rounds).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_grace_s)
    try:
        await runner.setup()
        try:
            limits = ConnectionLimits(max_connections, settings.header_timeout_s)
            site = GuardedSite(runner, settings.host, settings.port, limits, reuse_port=reuse_port)
            await _start(site, settings.host, settings.port)
            log.info(
                "http_listening",
                url=site.name,
                max_connections=max_connections,
                header_timeout_s=settings.header_timeout_s,
                keepalive_timeout_s=settings.keepalive_timeout_s,
            )
            await stop.wait()
        finally:
            await runner.cleanup()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _start(site: GuardedSite, host: str, port: int) -> None:
    """Start listening; a port taken since the start-up check is still one clear line."""
    try:
        await site.start()
    except OSError as exc:
        raise StartRefused(describe_bind_failure(host, port, exc)) from exc
