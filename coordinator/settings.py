"""Configuration from ``TCC_*`` environment variables; ``tcc serve`` mirrors each as a flag."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from coordinator.core.apikeys import parse_keys
from coordinator.core.breaker import BreakerPolicy
from coordinator.core.forwarding import clean_prefix, parse_trusted
from coordinator.core.hosts import parse_allowed_hosts
from coordinator.core.limits import Limits
from coordinator.core.retry import RetryPolicy
from coordinator.core.tls import parse_host_rules
from coordinator.core.urlpolicy import ParticipantPolicy, PolicyError, parse_rules


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("tcc-coordinator")) / "pgdata"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TCC_", extra="ignore", frozen=True)

    database_url: str | None = Field(
        default=None,
        description="Postgres URL; when unset an embedded Postgres is started in data_dir",
    )
    database_sslmode: (
        Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None
    ) = Field(
        default=None,
        description="TLS to the log database, as libpq's sslmode (production: verify-full);"
        " also accepted in the URL",
    )
    database_sslrootcert: Path | None = Field(
        default=None, description="CA certificate(s) that sign the database server's certificate"
    )
    database_sslcert: Path | None = Field(
        default=None, description="Client certificate presented to the database"
    )
    database_sslkey: Path | None = Field(
        default=None, description="The database client certificate's private key"
    )
    database_sslpassword: SecretStr | None = Field(
        default=None, description="Password of an encrypted database client key"
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the embedded Postgres keeps its data (kept across restarts)",
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP API listens on")
    workers: int = Field(
        default=1, ge=1, le=64, description="Coordinator processes sharing the port"
    )
    port: int = Field(default=36789, ge=0, le=65535, description="Port of the HTTP API")

    default_timeout_s: float = Field(
        default=60.0, gt=0, description="Transaction timeout when a begin gives none"
    )
    max_timeout_s: float = Field(
        default=3600.0, gt=0, description="Largest timeout_s a client may ask for"
    )
    call_timeout_s: float = Field(
        default=10.0, gt=0, description="Timeout of one participant call (per transaction too)"
    )
    max_call_timeout_s: float = Field(
        default=120.0, gt=0, description="Largest call_timeout_s a client may ask for"
    )
    confirm_wait_s: float = Field(
        default=10.0,
        ge=0,
        description="How long confirm/cancel/auto requests wait for phase two before 202",
    )

    retry_initial_s: float = Field(
        default=0.5, gt=0, le=86400, description="First retry delay ceiling"
    )
    retry_coefficient: float = Field(default=2.0, ge=1, description="Backoff growth per round")
    retry_max_s: float = Field(default=60.0, gt=0, le=86400, description="Largest retry delay")
    max_retry_interval_s: float = Field(
        default=3600.0,
        gt=0,
        le=86400,
        description="Largest retry_interval (DTM option) a client may ask for",
    )
    give_up_after_s: float = Field(
        default=86400.0,
        gt=0,
        description="After this long in phase two a transaction is parked as failed_to_*",
    )

    breaker: bool = Field(
        default=True,
        description="A circuit breaker per registered participant: calls to one that keeps"
        " failing wait, and resume at a ramped rate once it answers again",
    )
    breaker_failures: int = Field(
        default=5, ge=0, description="Consecutive failed calls that open a breaker (0: never)"
    )
    breaker_error_rate: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Or this share of failed calls over TCC_BREAKER_WINDOW_S opens it",
    )
    breaker_window_s: float = Field(
        default=30.0, gt=0, le=3600, description="The window of TCC_BREAKER_ERROR_RATE"
    )
    breaker_min_calls: int = Field(
        default=20,
        ge=0,
        description="Calls the window must hold before its error rate counts (0: never)",
    )
    breaker_open_s: float = Field(
        default=10.0,
        gt=0,
        le=86400,
        description="How long a breaker stays open the first time (each next time twice as"
        " long, up to TCC_BREAKER_MAX_OPEN_S) before a probe",
    )
    breaker_max_open_s: float = Field(
        default=300.0, gt=0, le=86400, description="Longest a breaker stays open"
    )
    breaker_ramp_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="After a recovery, calls to the participant resume at a rate that doubles"
        " five times over this long, then the limit goes",
    )
    breaker_ramp_start_per_s: float = Field(
        default=5.0,
        gt=0,
        description="The ramp's first rate, in calls a second shared by all coordinators",
    )

    recovery_interval_s: float = Field(
        default=1.0, gt=0, description="How often each coordinator scans for due work"
    )
    recovery_batch: int = Field(default=100, ge=1, description="Transactions claimed per scan")
    lease_ttl_s: float = Field(
        default=30.0, gt=0, description="How long a claim on a transaction lasts unrenewed"
    )

    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest request body")
    header_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Close a connection whose request line and headers have not all arrived"
        " in this time",
    )
    keepalive_timeout_s: float = Field(
        default=15.0, gt=0, description="Close an idle keep-alive connection after this long"
    )
    body_grace_s: float = Field(
        default=5.0,
        gt=0,
        description="Time a request body may take before it must keep the minimum rate",
    )
    body_min_bytes_per_s: int = Field(
        default=1024,
        ge=1,
        description="Slowest accepted request body after the grace time (slower: 408)",
    )
    max_connections: int | None = Field(
        default=None,
        ge=16,
        description="Most inbound connections at once (default: derived from the open-file"
        " limit, leaving room for database and participant connections)",
    )
    max_participant_connections: int = Field(
        default=256, ge=1, description="Most outbound connections to participants at once"
    )
    recent_transactions_kept: int = Field(
        default=10_000,
        ge=0,
        description="Transactions each process remembers for a minute (without their"
        " metadata), so that a transaction's further requests need not read its owner from"
        " the log; bounds that memory (about 2 KB each at most); 0: always read",
    )
    max_branches: int = Field(default=100, ge=1, description="Branches per transaction")
    max_response_bytes: int = Field(
        default=65_536, ge=256, description="Bytes of a participant reply kept and logged"
    )

    shutdown_grace_s: float = Field(
        default=10.0,
        ge=0,
        description="On SIGTERM, how long in-flight requests and rounds may take to finish",
    )

    pool_min_size: int = Field(default=2, ge=1, description="Database pool minimum")
    pool_max_size: int = Field(default=20, ge=1, description="Database pool maximum")
    migrate: bool = Field(default=True, description="Apply migrations when serve starts")
    api_keys: str | None = Field(
        default=None,
        description="API keys as name:scope:sha256hex entries, comma-separated (tcc key-hash)",
    )
    insecure: bool = Field(
        default=False, description="Run without API keys (local development only)"
    )
    session_secret: str | None = Field(
        default=None,
        min_length=32,
        description="Secret that signs the console's session cookies (at least 32 characters;"
        " default: derived from api_keys, so changing the keys logs everyone out)",
    )
    console_session_ttl_s: float = Field(
        default=8 * 3600.0,
        gt=0,
        le=30 * 86400,
        description="How long a console login lasts",
    )
    allowed_hosts: str | None = Field(
        default=None,
        description="Host names (comma-separated, optionally with :port) this coordinator"
        " answers to besides localhost and loopback addresses; enforced when set, and always"
        " when insecure (a DNS-rebinding page cannot then reach a local coordinator)",
    )
    trusted_proxies: str | None = Field(
        default=None,
        description="Addresses or ranges of the gateways in front (comma-separated): from"
        " them, and only them, Forwarded / X-Forwarded-For, -Proto, -Host and -Prefix are"
        " believed (the client's address in logs and audits, https, the path prefix)",
    )
    path_prefix: str | None = Field(
        default=None,
        description="The path the gateway serves the coordinator under (e.g. /tcc), having"
        " stripped it from requests: console links, redirects and cookies carry it",
    )
    login_failure_limit: int = Field(
        default=10,
        ge=1,
        description="Refused console logins allowed per client address in 5 minutes (per key"
        " name: twice as many); then 429 until the window has passed",
    )
    protect_health: bool = Field(
        default=False, description="Require an API key for /healthz, /readyz and /metrics"
    )
    gid_namespaces: bool = Field(
        default=True,
        description="A service key's gids must begin with its name and a colon (shop:...),"
        " so that no service can take or probe another's gids",
    )
    participant_allow: str | None = Field(
        default=None,
        description="Participant URL allowlist: hosts, .suffixes, CIDRs, each with :port",
    )
    participant_tls_ca: Path | None = Field(
        default=None,
        description="PEM bundle of the CAs whose certificates participants may present over"
        " https (besides the system's trust store, unless TCC_PARTICIPANT_TLS_SYSTEM_CA is"
        " false); re-read when it changes",
    )
    participant_tls_system_ca: bool = Field(
        default=True,
        description="Also trust the system's CA store for participants (false: only the"
        " configured bundles)",
    )
    participant_tls_cert: Path | None = Field(
        default=None,
        description="Client certificate (PEM, with its chain) presented to participants that"
        " ask for one; re-read when it changes, so a rotated certificate needs no restart",
    )
    participant_tls_key: Path | None = Field(
        default=None,
        description="The client certificate's private key (PEM; default: read from"
        " TCC_PARTICIPANT_TLS_CERT); never logged or shown",
    )
    participant_tls_key_password: SecretStr | None = Field(
        default=None, description="Password of an encrypted client key"
    )
    participant_tls_profiles_dir: Path | None = Field(
        default=None,
        description="A directory of TLS profiles, a subdirectory each holding tls.crt,"
        " tls.key and ca.crt (as a Kubernetes TLS secret is mounted): a registered"
        " participant's tls_profile or a TCC_PARTICIPANT_TLS_HOSTS rule names one",
    )
    participant_tls_hosts: str | None = Field(
        default=None,
        description="Which TLS profile calls to a host use when their participant names none:"
        " rule=profile entries, comma-separated (rules as in TCC_PARTICIPANT_ALLOW)",
    )
    participant_tls_min_version: Literal["1.2", "1.3"] = Field(
        default="1.2", description="Oldest TLS version accepted from participants"
    )
    participant_tls_insecure_skip_verify: bool = Field(
        default=False,
        description="DEVELOPMENT ONLY: accept any participant certificate and host name"
        " (a warning in the log at every start)",
    )
    max_payload_bytes: int = Field(
        default=65_536, ge=16, description="Largest branch payload (JSON) or DTM data"
    )
    max_metadata_bytes: int = Field(default=16_384, ge=16, description="Largest metadata (JSON)")
    max_headers: int = Field(default=64, ge=8, description="Most request headers")
    max_header_bytes: int = Field(default=8190, ge=256, description="Largest request header")
    dtm_api: bool = Field(default=True, description="Serve DTM's HTTP protocol under /api/dtmsvr")

    otlp_endpoint: str | None = Field(
        default=None,
        description="Export spans over OTLP/HTTP to this URL, e.g."
        " http://collector:4318/v1/traces (needs the otel extra); trace context is"
        " propagated to participants either way",
    )
    trace_url_template: str | None = Field(
        default=None,
        description="Link from a transaction's trace id to your tracing backend, with"
        " {trace_id} where the id goes, e.g. http://jaeger:16686/trace/{trace_id}",
    )
    alert_webhook: str | None = Field(
        default=None,
        description="POST an alert here when a transaction is parked or keeps retrying;"
        " checked against TCC_PARTICIPANT_ALLOW like a participant URL",
    )
    alert_secret: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="Signs each alert's body (HMAC-SHA256, X-TCC-Signature header);"
        " required with alert_webhook, at least 16 characters",
    )
    alert_after_rounds: int = Field(
        default=10,
        ge=0,
        description="Also alert when a transaction has made this many phase-two rounds"
        " (0: alert on parking only)",
    )
    alert_give_up_after_s: float = Field(
        default=86_400.0,
        gt=0,
        description="Stop retrying the delivery of an alert this long after it was raised",
    )
    retention_days: float | None = Field(
        default=None,
        gt=0,
        description="Delete finished (confirmed, cancelled) transactions older than this,"
        " with their branches and timeline; unset: keep everything",
    )

    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info")
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a terminal, JSON otherwise"
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> Settings:
        if self.default_timeout_s > self.max_timeout_s:
            raise ValueError("default_timeout_s must not exceed max_timeout_s")
        if self.call_timeout_s > self.max_call_timeout_s:
            raise ValueError("call_timeout_s must not exceed max_call_timeout_s")
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("pool_min_size must not exceed pool_max_size")
        parse_keys(self.api_keys or "")  # a bad entry fails at start-up, not at first use
        parse_rules(self.participant_allow)
        parse_host_rules(self.participant_tls_hosts)
        if self.participant_tls_hosts and self.participant_tls_profiles_dir is None:
            raise ValueError(
                "participant_tls_hosts names profiles: set participant_tls_profiles_dir too"
            )
        if self.participant_tls_key is not None and self.participant_tls_cert is None:
            raise ValueError("participant_tls_key needs participant_tls_cert, its certificate")
        if (
            self.participant_tls_key_password is not None
            and self.participant_tls_cert is None
            and self.participant_tls_profiles_dir is None
        ):
            raise ValueError(
                "participant_tls_key_password unlocks no key: set participant_tls_cert (and"
                " its key), or participant_tls_profiles_dir"
            )
        if not self.participant_tls_system_ca and self.participant_tls_ca is None:
            raise ValueError(
                "participant_tls_system_ca is false and participant_tls_ca is unset: no"
                " participant certificate could be trusted"
            )
        if self.database_url is None and self.database_tls_given:
            raise ValueError(
                "database_ssl* settings need database_url: the embedded Postgres is reached"
                " over a local socket, without TLS"
            )
        parse_allowed_hosts(self.allowed_hosts)
        parse_trusted(self.trusted_proxies)
        clean_prefix(self.path_prefix)
        template = self.trace_url_template
        if template is not None and (
            "{trace_id}" not in template or not template.startswith(("http://", "https://"))
        ):
            raise ValueError("trace_url_template must be an http(s) URL containing {trace_id}")
        if self.alert_webhook:
            if self.alert_secret is None:
                raise ValueError("alert_webhook needs alert_secret, which signs every alert")
            try:
                # The same rules as a participant's URL: an alert must not reach what a
                # participant may not (DNS answers are judged again at every delivery).
                ParticipantPolicy.from_config(self.participant_allow).check_url(self.alert_webhook)
            except PolicyError as exc:
                raise ValueError(f"alert_webhook is not allowed: {exc}") from exc
        return self

    def as_environment(self) -> dict[str, str]:
        """Every setting that is set, as the TCC_* variables that give it back (secrets in
        clear: for the workers of `tcc serve --workers N`, which must match their parent)."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"TCC_{name.upper()}"] = str(value)
        return env

    @property
    def database_tls_given(self) -> bool:
        return any(
            value is not None
            for value in (
                self.database_sslmode,
                self.database_sslrootcert,
                self.database_sslcert,
                self.database_sslkey,
                self.database_sslpassword,
            )
        )

    @property
    def limits(self) -> Limits:
        return Limits(
            max_timeout_s=self.max_timeout_s,
            max_call_timeout_s=self.max_call_timeout_s,
            max_retry_interval_s=self.max_retry_interval_s,
            max_branches=self.max_branches,
            max_payload_bytes=self.max_payload_bytes,
            max_metadata_bytes=self.max_metadata_bytes,
        )

    @property
    def breaker_policy(self) -> BreakerPolicy:
        return BreakerPolicy(
            failures=self.breaker_failures,
            error_rate=self.breaker_error_rate,
            window_s=self.breaker_window_s,
            min_calls=self.breaker_min_calls,
            open_s=self.breaker_open_s,
            max_open_s=max(self.breaker_max_open_s, self.breaker_open_s),
            ramp_s=self.breaker_ramp_s,
            ramp_start_per_s=self.breaker_ramp_start_per_s,
            # Any call, the probe included, ends within max_call_timeout_s.
            probe_ttl_s=self.max_call_timeout_s + 5,
        )

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            initial_interval=self.retry_initial_s,
            backoff_coefficient=self.retry_coefficient,
            maximum_interval=self.retry_max_s,
            give_up_after=self.give_up_after_s,
        )
