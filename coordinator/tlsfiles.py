"""The TLS contexts of participant calls, built from files and rebuilt when the files change.

One context per profile (core.tls says which profile a call uses): the default one from
``TCC_PARTICIPANT_TLS_*``, and one per directory under ``TCC_PARTICIPANT_TLS_PROFILES_DIR``.
Each call asks for its context; at most once a second per profile, that also looks at the
files' identity (inode, size, modification time, following symbolic links: a Kubernetes
secret is swapped by replacing a link). A changed file rebuilds the context, so a rotated
certificate is presented on the next new connection without a restart (a connection already
open keeps the certificate it was made with; the pool closes idle ones after a few seconds).
A rotation caught half-way (a new certificate beside the old key) keeps the last good context
and tries again at the next look.

Keys are read by OpenSSL from their files and never held as text here: nothing a log line,
the console or the API shows can contain one.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from cryptography import x509

from coordinator.core.errors import CoordinatorError
from coordinator.core.tls import (
    DEFAULT_PROFILE,
    PROFILE_CA_FILE,
    PROFILE_CERT_FILE,
    PROFILE_KEY_FILE,
    HostRule,
    TlsProblem,
    check_profile_name,
    configuration_failure,
    parse_host_rules,
    profile_for,
)
from coordinator.core.urlpolicy import PolicyError, parse_target
from coordinator.settings import Settings

log = structlog.get_logger()

# How often a profile's files are looked at again (a stat each) while calls use it.
RECHECK_S = 1.0
# A client certificate expiring sooner than this is logged as a warning at each load.
EXPIRY_WARNING = dt.timedelta(days=14)

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsConfigError(CoordinatorError):
    """The configured TLS files cannot be used: the coordinator refuses to start."""


@dataclass(frozen=True, slots=True)
class ProfileFiles:
    """What one profile is made of (paths; a file that does not exist is not part of it for
    a profile directory, and an error for a configured default)."""

    name: str
    ca: Path | None
    cert: Path | None
    key: Path | None

    def paths(self) -> list[Path]:
        return [p for p in (self.ca, self.cert, self.key) if p is not None]


@dataclass(frozen=True, slots=True)
class LoadedCertificate:
    """What may be said about a client certificate: never its key."""

    subject: str
    not_after: dt.datetime


@dataclass(frozen=True, slots=True)
class Chosen:
    """The context a call uses, and whether it presents a client certificate."""

    context: ssl.SSLContext
    presents_certificate: bool


@dataclass(slots=True)
class _Loaded:
    context: ssl.SSLContext | None  # None: never loaded successfully
    fingerprint: tuple[tuple[int, int, int, int] | None, ...]
    certificate: LoadedCertificate | None = None
    problem: TlsProblem | None = None
    checked_at: float = 0.0
    reported: tuple[tuple[int, int, int, int] | None, ...] | None = field(default=None)


class ParticipantTls:
    """Which SSL context each participant call uses (see the module's docstring)."""

    def __init__(
        self,
        *,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        key_password: str | None = None,
        system_ca: bool = True,
        profiles_dir: Path | None = None,
        host_rules: list[HostRule] | None = None,
        min_version: str = "1.2",
        skip_verify: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._default = ProfileFiles(DEFAULT_PROFILE, ca, cert, key)
        self._key_password = key_password
        self._system_ca = system_ca
        self._profiles_dir = profiles_dir
        self._host_rules = host_rules or []
        self._min_version = _VERSIONS[min_version]
        self.skip_verify = skip_verify
        self._clock = clock
        self._loaded: dict[str, _Loaded] = {}
        # Told of each client certificate as it is loaded (a metric of when it expires).
        self._on_certificate: Callable[[str, dt.datetime], None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ParticipantTls:
        password = settings.participant_tls_key_password
        return cls(
            ca=settings.participant_tls_ca,
            cert=settings.participant_tls_cert,
            key=settings.participant_tls_key,
            key_password=password.get_secret_value() if password else None,
            system_ca=settings.participant_tls_system_ca,
            profiles_dir=settings.participant_tls_profiles_dir,
            host_rules=parse_host_rules(settings.participant_tls_hosts),
            min_version=settings.participant_tls_min_version,
            skip_verify=settings.participant_tls_insecure_skip_verify,
        )

    # --- at start ----------------------------------------------------------------------

    def load_all(self) -> None:
        """Load the default profile and every profile directory now: a coordinator whose TLS
        files cannot be used refuses to start (TlsConfigError, one line)."""
        if self.skip_verify:
            log.warning(
                "participant_tls_verification_off",
                message="TCC_PARTICIPANT_TLS_INSECURE_SKIP_VERIFY: participant certificates"
                " and host names are NOT verified; anyone on the path can impersonate a"
                " participant. Development only.",
            )
        for name in [DEFAULT_PROFILE, *self.profile_names()]:
            loaded = self._load(name)
            if loaded.problem is not None:
                raise TlsConfigError(loaded.problem.message)

    def profile_names(self) -> list[str]:
        """The named profiles configured on this coordinator (directories found)."""
        if self._profiles_dir is None:
            return []
        try:
            entries = sorted(self._profiles_dir.iterdir())
        except OSError as exc:
            raise TlsConfigError(
                f"TLS configuration: cannot read TCC_PARTICIPANT_TLS_PROFILES_DIR"
                f" {self._profiles_dir}: {exc.strerror or exc}"
            ) from None
        names = []
        for entry in entries:
            # Kubernetes mounts add hidden ..data links; only visible directories count.
            if entry.is_dir() and not entry.name.startswith("."):
                try:
                    names.append(check_profile_name(entry.name))
                except ValueError:
                    continue
        return names

    def has_profile(self, name: str) -> bool:
        return self._profile_dir(name) is not None

    # --- per call ----------------------------------------------------------------------

    def context_for(self, url: str, registered_profile: str | None) -> Chosen | TlsProblem:
        """The context for an https call to ``url`` by a participant registered with
        ``registered_profile`` (or none), or the problem that stops the call."""
        try:
            target = parse_target(url)
        except PolicyError as exc:  # (the URL policy refuses it first; kept for safety)
            return configuration_failure(f"cannot tell the host of {url!r}: {exc}")
        name = profile_for(registered_profile, target, self._host_rules) or DEFAULT_PROFILE
        loaded = self._loaded.get(name)
        if loaded is None or self._clock() - loaded.checked_at >= RECHECK_S:
            loaded = self._refresh(name)
        if loaded.context is None:
            assert loaded.problem is not None
            return loaded.problem
        return Chosen(loaded.context, loaded.certificate is not None)

    def context(self, profile: str = DEFAULT_PROFILE) -> ssl.SSLContext:
        """A profile's context now, for tools that call with one profile (TlsConfigError
        when its files cannot be used)."""
        loaded = self._refresh(profile)
        if loaded.context is None:
            assert loaded.problem is not None
            raise TlsConfigError(loaded.problem.message)
        return loaded.context

    def report_certificates(self, report: Callable[[str, dt.datetime], None]) -> None:
        """``report(profile, not_after)`` for each client certificate loaded so far, and
        for every one loaded from now on."""
        self._on_certificate = report
        for name, loaded in self._loaded.items():
            if loaded.certificate is not None:
                report(name, loaded.certificate.not_after)

    def certificate(self, profile: str = DEFAULT_PROFILE) -> LoadedCertificate | None:
        """The client certificate a profile presents, as last loaded."""
        loaded = self._loaded.get(profile)
        return loaded.certificate if loaded else None

    # --- loading -----------------------------------------------------------------------

    def _files(self, name: str) -> ProfileFiles | TlsProblem:
        if name == DEFAULT_PROFILE:
            return self._default
        directory = self._profile_dir(name)
        if directory is None:
            where = self._profiles_dir or "(TCC_PARTICIPANT_TLS_PROFILES_DIR is not set)"
            return configuration_failure(
                f"TLS profile {name!r} is not configured on this coordinator (no directory"
                f" {name!r} in {where})"
            )
        ca, cert, key = (
            directory / f for f in (PROFILE_CA_FILE, PROFILE_CERT_FILE, PROFILE_KEY_FILE)
        )
        return ProfileFiles(
            name,
            ca if ca.exists() else self._default.ca,
            cert if cert.exists() else None,
            key if key.exists() else None,
        )

    def _profile_dir(self, name: str) -> Path | None:
        return profile_directory(self._profiles_dir, name)

    def _refresh(self, name: str) -> _Loaded:
        loaded = self._loaded.get(name)
        files = self._files(name)
        if isinstance(files, TlsProblem):
            fingerprint: tuple[tuple[int, int, int, int] | None, ...] = ()
        else:
            fingerprint = tuple(_identity(p) for p in files.paths())
        if loaded is not None and loaded.fingerprint == fingerprint:
            loaded.checked_at = self._clock()
            return loaded
        return self._load(name)

    def _load(self, name: str) -> _Loaded:
        previous = self._loaded.get(name)
        files = self._files(name)
        if isinstance(files, TlsProblem):
            fresh = _Loaded(None, (), problem=files, checked_at=self._clock())
            self._loaded[name] = fresh
            return fresh
        fingerprint = tuple(_identity(p) for p in files.paths())  # before reading: see _refresh
        try:
            context = self._build(files)
            certificate = _describe_certificate(files.cert) if files.cert else None
        except (OSError, ssl.SSLError, ValueError) as exc:
            problem = configuration_failure(f"profile {name!r}: {_why_unusable(files, exc)}")
            if previous is not None and previous.context is not None:
                # A rotation caught half-way: keep calling with what worked, look again soon.
                if previous.reported != fingerprint:
                    log.warning(
                        "participant_tls_reload_failed",
                        profile=name,
                        error=problem.message,
                        keeps="the previous certificate and CA bundle",
                    )
                previous.reported = fingerprint
                previous.checked_at = self._clock()
                previous.fingerprint = ()  # whatever the files become, read them again
                return previous
            fresh = _Loaded(None, fingerprint, problem=problem, checked_at=self._clock())
            self._loaded[name] = fresh
            return fresh
        fresh = _Loaded(context, fingerprint, certificate, checked_at=self._clock())
        self._loaded[name] = fresh
        self._log_loaded(name, files, certificate, reloaded=previous is not None)
        return fresh

    def _build(self, files: ProfileFiles) -> ssl.SSLContext:
        if self._system_ca:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks host names
        context.minimum_version = self._min_version
        if files.ca is not None:
            context.load_verify_locations(cafile=str(files.ca))
        if files.cert is not None:
            context.load_cert_chain(
                str(files.cert),
                str(files.key) if files.key is not None else None,
                password=self._key_password,
            )
        elif files.key is not None:
            raise ValueError(f"{files.key} is a key without its certificate ({PROFILE_CERT_FILE})")
        if self.skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _log_loaded(
        self,
        name: str,
        files: ProfileFiles,
        certificate: LoadedCertificate | None,
        *,
        reloaded: bool,
    ) -> None:
        fields: dict[str, object] = {
            "profile": name,
            "ca": str(files.ca) if files.ca else None,
            "system_ca": self._system_ca,
        }
        if certificate is not None:
            fields |= {
                "client_certificate": str(files.cert),
                "subject": certificate.subject,
                "not_after": certificate.not_after.isoformat(),
            }
        if files.paths() or reloaded:  # (nothing configured: nothing to say)
            event = "participant_tls_reloaded" if reloaded else "participant_tls_loaded"
            log.info(event, **fields)
        if certificate is not None and self._on_certificate is not None:
            self._on_certificate(name, certificate.not_after)
        if certificate is not None:
            left = certificate.not_after - dt.datetime.now(dt.UTC)
            if left < EXPIRY_WARNING:
                log.warning(
                    "participant_tls_certificate_expiring",
                    profile=name,
                    not_after=certificate.not_after.isoformat(),
                    days_left=round(left.total_seconds() / 86400, 1),
                )


def profile_directory(profiles_dir: Path | None, name: str) -> Path | None:
    """The directory of the profile ``name``, if this coordinator has one."""
    if profiles_dir is None:
        return None
    try:
        check_profile_name(name)
    except ValueError:
        return None
    directory = profiles_dir / name
    return directory if directory.is_dir() else None


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _describe_certificate(path: Path) -> LoadedCertificate:
    cert = x509.load_pem_x509_certificate(path.read_bytes())  # the first one: the leaf
    return LoadedCertificate(cert.subject.rfc4514_string(), cert.not_valid_after_utc)


def _why_unusable(files: ProfileFiles, exc: BaseException) -> str:
    """What is wrong, in words, naming the file (never its contents)."""
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        path = exc.filename or next((p for p in files.paths() if not p.exists()), "?")
        return f"cannot read {path}: {exc.strerror}"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if reason == "KEY_VALUES_MISMATCH":
            return f"the key {files.key or files.cert} is not the key of {files.cert}"
        if reason in {"NO_CERTIFICATE_OR_CRL_FOUND", "NO_START_LINE"}:
            return f"no PEM certificate in {files.ca}" if files.ca else str(exc)
        if reason == "BAD_DECRYPT":
            return f"cannot decrypt the key {files.key or files.cert} (wrong password?)"
        return f"{files.cert or files.ca}: {exc.reason or exc}"
    if isinstance(exc, ValueError):
        return f"{files.cert}: not a PEM certificate ({exc})" if "PEM" in str(exc) else str(exc)
    return str(exc)
