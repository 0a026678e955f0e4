"""The coordinator's Prometheus metrics, kept by prometheus-client.

One process (`tcc serve`, or a test's in-process coordinator): a registry of its own, so two
coordinators in one process never mix their counts.

Several (`tcc serve --workers N`): the supervisor gives its workers one directory in
PROMETHEUS_MULTIPROC_DIR, where prometheus-client keeps every worker's values in files;
whichever worker answers a scrape adds up all of them, so each scrape shows the whole server.
When a worker dies the supervisor folds its counters and histograms into one archive file per
kind (``counter_archive.db``, ``histogram_archive.db``: prometheus-client's own mmap format,
read by the same collector), drops its gauges (every gauge here is ``live*``: it describes a
running process) and removes its files, so counts of a dead worker stay in the totals and the
directory holds the live workers' files and the archive, however many workers have died. The
fold and the scrape take a lock file in the directory (exclusive and shared), so no scrape sees
a dead worker's counts twice or not at all. The log's gauges (open transactions, the oldest)
are read from the database at scrape time, the same whichever worker answers.

Labels are small fixed sets (statuses, phases, outcomes, dialects, actions); never a gid, a
URL or a key.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from coordinator.core.breaker import BreakerState
from coordinator.core.records import UNREGISTERED, Backlog
from coordinator.core.states import FINAL_STATUSES, PARKED_STATUSES, GlobalStatus
from coordinator.core.tls import TlsFailure

SHARED_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 3600.0)
OPEN_STATUSES = tuple(s for s in GlobalStatus if s not in FINAL_STATUSES)
BREAKER_STATES = tuple(s.value for s in BreakerState)

# A `_created` series beside every counter doubles a scrape for nothing Grafana uses.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


class AlertOutcome(StrEnum):
    """What became of one delivery of an alert (the tcc_alerts_total label)."""

    DELIVERED = "delivered"
    FAILED = "failed"  # to be tried again
    GIVEN_UP = "given_up"


class ConnectionState(StrEnum):
    """What an inbound connection is doing (the tcc_inbound_connections label)."""

    NEW = "new"  # connected, no complete request line and headers yet
    ACTIVE = "active"  # a request in progress
    IDLE = "idle"  # kept alive between requests


class ShedReason(StrEnum):
    """Why the connection guard closed or refused an inbound connection."""

    IDLE_CUT = "idle_cut"  # an idle connection closed to make room, oldest first
    REFUSED = "refused"  # 503: every slot held by a request in progress
    SLOW_HEADERS = "slow_headers"  # request line and headers not in within the header timeout


class LoginRefusal(StrEnum):
    """Why the console refused a login (the tcc_console_login_refusals label)."""

    WRONG_KEY = "wrong_key"
    SERVICE_KEY = "service_key"
    RATE_LIMITED = "rate_limited"
    BAD_FORM = "bad_form"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._begun = Counter(
            "tcc_transactions_begun",
            "Transactions begun, by dialect and type (tcc, saga, msg)",
            ["dialect", "type"],
            registry=r,
        )
        self._ended = Counter(
            "tcc_transactions_ended",
            "Transactions that reached a final status, or were parked for an operator",
            ["status", "dialect", "type"],
            registry=r,
        )
        self._duration = Histogram(
            "tcc_transaction_duration_seconds",
            "From begin to a final or parked status",
            ["status"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._decisions = Counter(
            "tcc_decisions",
            "Decisions taken, by why (a cancel's reason kind; confirm: requested)",
            ["decision", "reason"],
            registry=r,
        )
        # participant: the registered name (never a URL), or "unregistered".
        self._calls = Counter(
            "tcc_participant_calls",
            "Calls to participants",
            ["participant", "phase", "outcome"],
            registry=r,
        )
        self._call_seconds = Histogram(
            "tcc_participant_call_seconds",
            "Participant call latency",
            ["participant", "phase", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._held = Counter(
            "tcc_participant_calls_held",
            "Calls not sent because the participant's circuit is open or ramping up"
            " (a held try fails its transaction at once)",
            ["participant", "phase"],
            registry=r,
        )
        self._tls_failures = Counter(
            "tcc_participant_tls_failures",
            "Participant calls that failed at TLS, by kind (untrusted_certificate,"
            " expired_certificate, hostname_mismatch, client_certificate_missing,"
            " client_certificate_rejected, protocol, configuration, other)",
            ["participant", "kind"],
            registry=r,
        )
        self._breaker_moves = Counter(
            "tcc_breaker_transitions",
            "Circuit breaker moves made by this coordinator, by event (tripped, probing,"
            " recovered, still_down, reset)",
            ["participant", "event"],
            registry=r,
        )
        self._claims = Counter(
            "tcc_recovery_claims", "Transactions claimed by recovery", ["status"], registry=r
        )
        self._takeovers = Counter(
            "tcc_lease_takeovers",
            "Recovery claims of a transaction whose holder let its lease lapse",
            registry=r,
        )
        self._timeouts = Counter(
            "tcc_timeouts", "Transactions cancelled at their deadline", registry=r
        )
        self._admin = Counter("tcc_admin_actions", "Operator actions", ["action"], registry=r)
        self._alerts = Counter(
            "tcc_alerts", "Alert webhook deliveries by outcome", ["outcome"], registry=r
        )
        self._pruned = Counter(
            "tcc_pruned_transactions",
            "Finished transactions deleted by retention",
            registry=r,
        )
        self._rounds = Gauge(
            "tcc_active_rounds",
            "Phase-two rounds running now",
            multiprocess_mode="livesum",
            registry=r,
        )
        self._connections = Gauge(
            "tcc_inbound_connections",
            "Inbound HTTP connections open now, by state (new, active, idle)",
            ["state"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self._certificate_expiry = Gauge(
            "tcc_participant_tls_certificate_expiry_timestamp_seconds",
            "When the client certificate a TLS profile presents to participants expires (Unix"
            " time, as last loaded: a rotated certificate moves it)",
            ["profile"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self._connection_limit = Gauge(
            "tcc_inbound_connections_limit",
            "Most inbound HTTP connections at once (the cap; 0 when not served by tcc serve)",
            multiprocess_mode="livesum",
            registry=r,
        )
        self._shed = Counter(
            "tcc_inbound_connections_shed",
            "Inbound connections closed or refused by the connection guard, by why",
            ["reason"],
            registry=r,
        )
        self._login_refusals = Counter(
            "tcc_console_login_refusals",
            "Console logins refused, by why",
            ["reason"],
            registry=r,
        )
        # Every known label value from the start: a series at 0 rather than none.
        for state in ConnectionState:
            self._connections.labels(state.value)
        for shed in ShedReason:
            self._shed.labels(shed.value)
        for refusal in LoginRefusal:
            self._login_refusals.labels(refusal.value)

    # --- what happened -----------------------------------------------------------------

    def began(self, dialect: str, kind: str = "tcc") -> None:
        self._begun.labels(dialect, kind).inc()

    def ended(
        self, status: GlobalStatus, dialect: str, duration_s: float, kind: str = "tcc"
    ) -> None:
        self._ended.labels(status.value, dialect, kind).inc()
        self._duration.labels(status.value).observe(max(duration_s, 0.0))

    def decided(self, decision: str, reason: str | None) -> None:
        """``reason``: the stored cancel reason; only its kind (before ": ") is a label."""
        kind = reason.split(":", 1)[0] if reason else "requested"
        self._decisions.labels(decision, kind).inc()

    def participant_call(
        self, participant: str | None, phase: str, outcome: str, seconds: float
    ) -> None:
        name = participant or UNREGISTERED
        self._calls.labels(name, phase, outcome).inc()
        self._call_seconds.labels(name, phase, outcome).observe(seconds)

    def tls_failed(self, participant: str | None, kind: TlsFailure) -> None:
        self._tls_failures.labels(participant or UNREGISTERED, kind.value).inc()

    def client_certificate_loaded(self, profile: str, not_after: datetime | None) -> None:
        """``None``: the profile presents no certificate any more (its series goes)."""
        if not_after is None:
            with contextlib.suppress(KeyError):
                self._certificate_expiry.remove(profile)
            return
        self._certificate_expiry.labels(profile).set(not_after.timestamp())

    def call_held(self, participant: str, phase: str) -> None:
        self._held.labels(participant, phase).inc()

    def breaker_moved(self, participant: str, event: str) -> None:
        self._breaker_moves.labels(participant, event).inc()

    def recovery_claimed(self, status: GlobalStatus, *, took_over: bool) -> None:
        self._claims.labels(status.value).inc()
        if took_over:
            self._takeovers.inc()

    def timed_out(self) -> None:
        self._timeouts.inc()

    def admin_action(self, action: str) -> None:
        self._admin.labels(action).inc()

    def alert_delivery(self, outcome: AlertOutcome) -> None:
        self._alerts.labels(outcome.value).inc()

    def pruned(self, count: int) -> None:
        self._pruned.inc(count)

    def round_started(self) -> None:
        self._rounds.inc()

    def round_ended(self) -> None:
        self._rounds.dec()

    def login_refused(self, reason: str) -> None:
        """A console login refused; ``reason`` is one of LoginRefusal's values."""
        self._login_refusals.labels(reason).inc()

    # --- the inbound connection guard (coordinator/api/server.py) ---------------------

    def connection_limit(self, limit: int) -> None:
        self._connection_limit.set(limit)

    def connections(self, counts: dict[ConnectionState, int]) -> None:
        for state in ConnectionState:
            self._connections.labels(state.value).set(counts.get(state, 0))

    def connections_shed(self, reason: ShedReason, count: int = 1) -> None:
        self._shed.labels(reason.value).inc(count)

    # --- the scrape -------------------------------------------------------------------

    def exposition(
        self, gauges: Backlog | None, breakers: Mapping[str, str] | None = None
    ) -> bytes:
        """The text format: this server's counters (every worker's, when shared), then the
        log's gauges; ``None`` when the log could not be read (``tcc_log_up`` says so).
        ``breakers``: each registered participant's breaker state, as the log holds it."""
        logged = generate_latest(_log_registry(gauges, breakers or {}))
        shared = os.environ.get(SHARED_DIR_ENV)
        if not shared:
            return generate_latest(self.registry) + logged
        registry = CollectorRegistry()
        MultiProcessCollector(registry, shared)  # type: ignore[no-untyped-call]
        with _dir_lock(Path(shared), fcntl.LOCK_SH):
            ours = generate_latest(registry)
        return ours + logged


def _log_registry(gauges: Backlog | None, breakers: Mapping[str, str]) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(_BacklogCollector(gauges, breakers))
    return registry


class _BacklogCollector(Collector):
    """The log's gauges as families made for one scrape: built directly, never as Gauge
    objects, which in shared mode would write into the workers' files."""

    def __init__(self, gauges: Backlog | None, breakers: Mapping[str, str]) -> None:
        self.gauges = gauges
        self.breakers = breakers

    def collect(self) -> Iterator[Metric]:
        g = self.gauges
        yield GaugeMetricFamily(
            "tcc_log_up", "1 if the transaction log answered this scrape", 0 if g is None else 1
        )
        if g is None:
            return
        unfinished = GaugeMetricFamily(
            "tcc_unfinished_transactions", "Transactions not final, by status", labels=["status"]
        )
        for status in OPEN_STATUSES:
            unfinished.add_metric([status.value], g.unfinished.get(status, 0))
        yield unfinished
        parked = sum(g.unfinished.get(s, 0) for s in PARKED_STATUSES)
        yield GaugeMetricFamily(
            "tcc_parked_transactions", "Transactions waiting for an operator (failed_to_*)", parked
        )
        yield GaugeMetricFamily(
            "tcc_oldest_unfinished_age_seconds",
            "Age of the oldest transaction not final (0 when there is none)",
            g.oldest_unfinished_age_s or 0.0,
        )
        state = GaugeMetricFamily(
            "tcc_breaker_state",
            "1 for each registered participant's breaker state (closed, open, half_open)",
            labels=["participant", "state"],
        )
        for name, current in sorted(self.breakers.items()):
            for word in BREAKER_STATES:
                state.add_metric([name, word], 1 if word == current else 0)
        yield state


# --- the shared directory under --workers ------------------------------------------------

LOCK_FILE = "merge.lock"  # not *.db: the collector reads only those
ARCHIVE = "archive"  # {kind}_archive.db: the values of workers that are gone
# Kinds whose values a dead worker leaves in the totals (prometheus-client's file prefixes).
KEPT_KINDS = ("counter", "histogram", "summary")


@contextlib.contextmanager
def _dir_lock(path: Path, mode: int) -> Iterator[None]:
    """The shared directory's lock: shared for a scrape, exclusive for folding a dead
    worker's files into the archive."""
    with open(path / LOCK_FILE, "a+b") as lock:
        fcntl.flock(lock.fileno(), mode)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def prepare_shared_dir(path: Path) -> None:
    """Before the workers start: an empty directory (values of an earlier run would be
    added to this one's)."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in (*path.glob("*.db"), *path.glob("*.tmp")):
        stale.unlink()


def worker_gone(pid: int, path: Path) -> None:
    """A worker exited: its counters and histograms are added into the archive, its gauges
    go, and none of its files is left. Call it once the process is surely dead (after wait)."""
    with _dir_lock(path, fcntl.LOCK_EX):
        mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
        for kind in KEPT_KINDS:
            dead = path / f"{kind}_{pid}.db"
            if dead.exists():
                _fold_into_archive(path / f"{kind}_{ARCHIVE}.db", dead)
        for rest in path.glob(f"*_{pid}.db"):  # gauges of other modes: per process, gone
            rest.unlink()


def _fold_into_archive(archive: Path, dead: Path) -> None:
    """Write archive + dead into a new archive file, swap it in, remove ``dead``."""
    sources = [str(f) for f in (archive, dead) if f.exists()]
    # accumulate=False: bucket counts stay per bucket and no _count is made, as in the
    # workers' own files (the collector accumulates when it reads them).
    merged = MultiProcessCollector.merge(sources, accumulate=False)  # type: ignore[no-untyped-call]
    fresh = archive.with_suffix(".tmp")
    fresh.unlink(missing_ok=True)
    values = MmapedDict(str(fresh))  # type: ignore[no-untyped-call]
    try:
        for metric in merged:
            for sample in metric.samples:
                key = mmap_key(
                    metric.name,
                    sample.name,
                    list(sample.labels),
                    list(sample.labels.values()),
                    metric.documentation,
                )
                values.write_value(key, sample.value, 0.0)  # type: ignore[no-untyped-call]
    finally:
        values.close()  # type: ignore[no-untyped-call]
    os.replace(fresh, archive)
    dead.unlink()
