"""Serving the HTTP API so that slow or numerous clients cannot take the coordinator down.

``web.run_app`` accepts every connection and keeps it as long as the client dribbles bytes
(or 75 s when it sends nothing). Here the app runs on a site of our own whose protocol factory
wraps aiohttp's ``RequestHandler``:

* inbound connections are counted and capped below the open-file limit, so participant calls
  and database connections always find a free file descriptor. The cap is shared out so that
  idle sockets, however many, cannot crowd out real traffic:

  - when a new connection finds no free slot, the connection idle longest is cut to make
    room (silently, as a keep-alive timeout would): first those that never sent a complete
    request line and headers, by arrival, then those kept alive between requests, by their
    last request. A connection with a request in progress is never cut;
  - connections without a complete request may hold at most 90% of the general slots; the
    rest is a reserve that only connections that have sent a request (kept-alive clients,
    requests in progress) can hold, so a flood of silent sockets never touches them;
  - an eighth of the cap (at most 8 slots) is kept for health checks, used only when every
    general slot serves a request: there the guard reads the request line itself, answers
    ``GET``/``HEAD`` of ``/healthz`` and ``/readyz`` (one per connection), gives another
    request a general slot if one has come free, else a canned 503; only with these slots
    full too is a connection refused (503) as it opens;

  "Idle" is read from aiohttp's handler (no complete headers yet, or waiting for the next
  request), so the guard never has to guess. The counts by state, the cap and what was cut or
  refused go to the metrics (tcc_inbound_connections*, refreshed every second);
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
from enum import Enum
from pathlib import Path
from typing import cast

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from coordinator import gctuning
from coordinator.api.appkeys import COORDINATOR
from coordinator.core.errors import StartRefused
from coordinator.metrics import ConnectionState, Metrics, ShedReason
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
# Of the cap, up to this many slots (an eighth of it, at least one) are kept for health checks
# when every other slot is serving a request.
HEALTH_SLOTS = 8
HEALTH_PATHS = frozenset({b"/healthz", b"/readyz"})
HEALTH_METHODS = frozenset({b"GET", b"HEAD"})
# What a connection in a health slot may send before its request line ends.
MAX_REQUEST_LINE = 2048
# Connections that have not sent a complete request may hold at most this share of the other
# slots (at least MIN_RESERVE are kept from them): the rest is reserved for connections that
# have, so a flood of sockets that never send a request cannot crowd out real clients.
RESERVE_SHARE = 0.1
MIN_RESERVE = 4
# How often the connection gauges are brought up to date, and health-slot connections that
# have had their answer closed.
REFRESH_S = 1.0


class Slot(Enum):
    GENERAL = "general"
    HEALTH = "health"


@dataclass(frozen=True)
class SlotPlan:
    """How a cap of ``total`` connections is shared out."""

    total: int
    health: int  # for /healthz and /readyz only, once the general slots are all busy
    general: int
    new_limit: int  # general slots that connections without a complete request may hold

    @classmethod
    def for_cap(cls, total: int) -> SlotPlan:
        health = max(1, min(HEALTH_SLOTS, total // 8)) if total > 1 else 0
        general = total - health
        reserve = min(max(MIN_RESERVE, int(general * RESERVE_SHARE)), general - 1)
        return cls(total, health, general, general - reserve)


def is_health_check(request_line: bytes) -> bool:
    """``GET /healthz HTTP/1.1`` and the like (a query string is allowed)."""
    parts = request_line.split(b" ")
    if len(parts) != 3 or parts[0] not in HEALTH_METHODS:
        return False
    return parts[1].split(b"?", 1)[0] in HEALTH_PATHS


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
    """Counts connections cut, refused or closed for slow headers (in the metrics, when
    given), and logs them at most once every SHED_LOG_INTERVAL_S: under a flood one line per
    connection would be a second flood. The first event after a quiet spell is logged at
    once."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        max_connections: int,
        open_connections: Callable[[], int],
        metrics: Metrics | None = None,
    ) -> None:
        self._loop = loop
        self._max_connections = max_connections
        self._open_connections = open_connections
        self._metrics = metrics
        self._counts = dict.fromkeys(ShedReason, 0)
        self._window: asyncio.TimerHandle | None = None

    def shed(self, reason: ShedReason) -> None:
        self._counts[reason] += 1
        if self._metrics is not None:
            self._metrics.connections_shed(reason)
        if self._window is None:
            self._emit()
            self._window = self._loop.call_later(SHED_LOG_INTERVAL_S, self._window_ended)

    def close(self) -> None:
        if self._window is not None:
            self._window.cancel()
            self._window = None
        self._emit()

    def _window_ended(self) -> None:
        self._window = None
        if any(self._counts.values()):
            self._emit()
            self._window = self._loop.call_later(SHED_LOG_INTERVAL_S, self._window_ended)

    def _emit(self) -> None:
        counts = self._counts
        if not any(counts.values()):
            return
        log.warning(
            "connections_shed",
            cut_idle=counts[ShedReason.IDLE_CUT],
            refused_over_limit=counts[ShedReason.REFUSED],
            closed_for_slow_headers=counts[ShedReason.SLOW_HEADERS],
            open_connections=self._open_connections(),
            max_connections=self._max_connections,
            window_s=SHED_LOG_INTERVAL_S,
        )
        self._counts = dict.fromkeys(ShedReason, 0)


class ConnectionGuard:
    """The protocol factory handed to ``loop.create_server``: one GuardedConnection per
    accepted socket, all sharing these slots.

    General slots are held in two queues, each in the order to cut from: ``new``
    (connections without a complete request yet, by arrival) and ``seasoned`` (those that
    have had one, by the start of their latest request). A connection moves to the back of
    ``seasoned`` when a request starts, or when it is found busy while looking for one to
    cut, so the front is the one idle longest.
    """

    def __init__(
        self,
        make_handler: Callable[[], RequestHandler],
        *,
        max_connections: int,
        header_timeout_s: float,
        loop: asyncio.AbstractEventLoop,
        metrics: Metrics | None = None,
    ) -> None:
        self.make_handler = make_handler
        self.max_connections = max_connections
        self.plan = SlotPlan.for_cap(max_connections)
        self.header_timeout_s = header_timeout_s
        self.loop = loop
        self.metrics = metrics
        self.new: dict[GuardedConnection, None] = {}
        self.seasoned: dict[GuardedConnection, None] = {}
        self.health: set[GuardedConnection] = set()
        self.report = ShedReport(loop, max_connections, lambda: self.open, metrics)
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
        self._refresh_timer: asyncio.TimerHandle | None = None

    def __call__(self) -> GuardedConnection:
        return GuardedConnection(self)

    @property
    def open(self) -> int:
        """Connections holding a general slot."""
        return len(self.new) + len(self.seasoned)

    # --- slots ---------------------------------------------------------------------

    def admit(self, conn: GuardedConnection) -> Slot | None:
        """A slot for a connection just accepted, making room if need be; None: refused."""
        if self._make_room():
            self.new[conn] = None
            return Slot.GENERAL
        if len(self.health) < self.plan.health:
            self.health.add(conn)
            return Slot.HEALTH
        self.report.shed(ShedReason.REFUSED)
        return None

    def promote(self, conn: GuardedConnection) -> bool:
        """A general slot for a health-slot connection whose request is not a health check."""
        self.health.discard(conn)
        if not self._make_room():
            return False
        self.new[conn] = None
        return True

    def request_started(self, conn: GuardedConnection) -> None:
        """``conn`` has sent a complete request line and headers: to the back of seasoned."""
        if conn in self.new:
            del self.new[conn]
        elif conn in self.seasoned:
            del self.seasoned[conn]
        else:
            return  # a health slot, or already closed
        self.seasoned[conn] = None

    def forget(self, conn: GuardedConnection) -> None:
        self.new.pop(conn, None)
        self.seasoned.pop(conn, None)
        self.health.discard(conn)

    def _make_room(self) -> bool:
        """True when a new connection may take a general slot, once the oldest idle one is
        cut if that is what it takes."""
        if len(self.new) >= self.plan.new_limit:
            self._cut(next(iter(self.new)))  # the reserve is not for them
            return True
        if self.open < self.plan.general:
            return True
        victim = self._oldest_idle()
        if victim is None:
            return False
        self._cut(victim)
        return True

    def _oldest_idle(self) -> GuardedConnection | None:
        if self.new:
            return next(iter(self.new))
        for _ in range(len(self.seasoned)):
            conn = next(iter(self.seasoned))
            if conn.state() is not ConnectionState.ACTIVE:
                return conn
            del self.seasoned[conn]  # busy: to the back, so the next look starts past it
            self.seasoned[conn] = None
        return None

    def _cut(self, conn: GuardedConnection) -> None:
        self.report.shed(ShedReason.IDLE_CUT)
        conn.close_now()

    # --- gauges and housekeeping, every REFRESH_S -------------------------------------

    def start(self) -> None:
        if self.metrics is not None:
            self.metrics.connection_limit(self.max_connections)
        self._refresh()

    def close(self) -> None:
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()
            self._refresh_timer = None
        self.report.close()
        if self.metrics is not None:
            self.metrics.connections({})
            self.metrics.connection_limit(0)

    def counts(self) -> dict[ConnectionState, int]:
        counts = dict.fromkeys(ConnectionState, 0)
        counts[ConnectionState.NEW] = len(self.new)
        for conn in (*self.seasoned, *self.health):
            counts[conn.state()] += 1
        return counts

    def _refresh(self) -> None:
        self._refresh_timer = self.loop.call_later(REFRESH_S, self._refresh)
        for conn in [c for c in self.health if c.answered()]:
            conn.close_now()  # a health slot serves one request
        if self.metrics is not None:
            self.metrics.connections(self.counts())


class GuardedConnection(asyncio.Protocol):
    """Sits between one socket's transport and aiohttp's RequestHandler, passing every event
    through, except that it refuses the connection when no slot can be had, closes it when
    its request headers are too slow or when it is the oldest idle one and room is needed,
    and reads the request line itself in a health slot."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._transport: asyncio.Transport | None = None
        self._handler: RequestHandler | None = None
        self._slot: Slot | None = None
        self._head = b""  # a health-slot connection's bytes until its request line ends
        self._header_deadline: asyncio.TimerHandle | None = None
        self._requests_when_armed = 0
        self._requests_seen = 0
        self._received_since_armed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)
        slot = self._guard.admit(self)
        if slot is None:
            # close() sends the buffered 503, then frees the descriptor on the next loop turn.
            stream.write(self._guard.busy_response)
            stream.close()
            return
        self._transport = stream
        self._slot = slot
        if slot is Slot.GENERAL:
            # The handler is made only for admitted connections: a flood costs no parsers.
            self._start_handler()
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        handler = self._handler
        if handler is None:
            if self._transport is not None and self._slot is Slot.HEALTH:
                self._read_request_line(data)
            return
        if self._slot is Slot.HEALTH and self.answered():
            self.close_now()  # one request per health slot
            return
        if self._header_deadline is None and awaiting_next_request(handler):
            self._arm_header_deadline()  # a kept-alive connection starts its next request
        self._received_since_armed = True
        handler.data_received(data)
        parsed = parsed_requests(handler)
        if parsed > self._requests_seen:
            self._requests_seen = parsed
            self._guard.request_started(self)
            if self._header_deadline is not None and parsed > self._requests_when_armed:
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
        self._guard.forget(self)
        self._disarm_header_deadline()
        handler, self._handler = self._handler, None
        self._transport = None
        if handler is not None:
            handler.connection_lost(exc)

    # --- what the guard asks ------------------------------------------------------------

    def state(self) -> ConnectionState:
        handler = self._handler
        if handler is None or parsed_requests(handler) == 0:
            return ConnectionState.NEW
        return ConnectionState.IDLE if awaiting_next_request(handler) else ConnectionState.ACTIVE

    def answered(self) -> bool:
        """At least one request answered, and nothing in progress."""
        return self.state() is ConnectionState.IDLE

    def close_now(self) -> None:
        """Close at once (what is already written is still sent) and give the slot back."""
        self._guard.forget(self)
        self._disarm_header_deadline()
        if self._handler is not None:
            self._handler.force_close()
        elif self._transport is not None:
            self._transport.close()

    # --- inside ---------------------------------------------------------------------------

    def _start_handler(self) -> None:
        assert self._transport is not None
        self._handler = self._guard.make_handler()
        self._handler.connection_made(self._transport)

    def _read_request_line(self, data: bytes) -> None:
        """In a health slot: a health check is served there; another request gets a
        general slot if one has come free or can be made, else a 503."""
        self._received_since_armed = True
        self._head += data
        end = self._head.find(b"\r\n")
        if end < 0:
            if len(self._head) > MAX_REQUEST_LINE:
                self._refuse()
            return
        if not is_health_check(self._head[:end]):
            if not self._guard.promote(self):
                self._refuse()
                return
            self._slot = Slot.GENERAL
        head, self._head = self._head, b""
        self._start_handler()
        self.data_received(head)

    def _refuse(self) -> None:
        self._guard.report.shed(ShedReason.REFUSED)
        if self._transport is not None:
            self._transport.write(self._guard.busy_response)
        self.close_now()

    def _arm_header_deadline(self) -> None:
        handler = self._handler
        self._requests_when_armed = 0 if handler is None else parsed_requests(handler)
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
        if handler is not None and parsed_requests(handler) > self._requests_when_armed:
            return
        if self._transport is None:
            return
        if self._received_since_armed:
            # Part of a request arrived: say why it ends. A connection that sent nothing is
            # closed silently, as an idle one would be.
            self._transport.write(self._guard.header_timeout_response)
        self._guard.report.shed(ShedReason.SLOW_HEADERS)
        self.close_now()


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
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(runner, backlog=ACCEPT_BACKLOG)
        self._host = host
        self._port = port
        self._limits = limits
        self._reuse_port = reuse_port
        self._metrics = metrics
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
            metrics=self._metrics,
        )
        self.guard.start()
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
            self.guard.close()


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
            coordinator = app.get(COORDINATOR)
            site = GuardedSite(
                runner,
                settings.host,
                settings.port,
                limits,
                reuse_port=reuse_port,
                metrics=None if coordinator is None else coordinator.metrics,
            )
            await _start(site, settings.host, settings.port)
            gctuning.tune_for_serving()
            plan = SlotPlan.for_cap(max_connections)
            log.info(
                "http_listening",
                url=site.name,
                max_connections=max_connections,
                health_slots=plan.health,
                new_connection_slots=plan.new_limit,
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
