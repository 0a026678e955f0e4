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

import asyncio
import contextlib
import datetime as dt
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from coordinator.core.errors import CoordinatorError
from coordinator.core.tls import (
    DEFAULT_PROFILE,
    PROFILE_CA_FILE,
    PROFILE_CERT_FILE,
    PROFILE_KEY_FILE,
    HostRule,
    TlsProblem,
    configuration_failure,
    is_profile_name,
    parse_host_rules,
    profile_for,
)
from coordinator.core.urlpolicy import PolicyError, parse_target
from coordinator.settings import Settings

log = structlog.get_logger()

# How often a profile's files are looked at again (a stat each) while calls use it.
RECHECK_S = 1.0
# How often every profile is looked at, used or not (the expiry metric follows rotations).
KEEP_FRESH_S = 60.0
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
    fingerprint: Fingerprint | None  # None: read the files again at the next look
    certificate: LoadedCertificate | None = None
    problem: TlsProblem | None = None
    checked_at: float = 0.0
    reported: Fingerprint | None = None  # the files last warned about


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
        # Told of each profile's client certificate as it is loaded (None: it presents
        # none now): a metric of when it expires.
        self._on_certificate: Callable[[str, dt.datetime | None], None] | None = None

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
        files cannot be used, or whose host rules name a profile it does not have, refuses
        to start (TlsConfigError, one line)."""
        if self.skip_verify:
            log.warning(
                "participant_tls_verification_off",
                message="TCC_PARTICIPANT_TLS_INSECURE_SKIP_VERIFY: participant certificates"
                " and host names are NOT verified; anyone on the path can impersonate a"
                " participant. Development only.",
            )
        names = self.profile_names()
        for rule in self._host_rules:
            if rule.profile not in names:
                raise TlsConfigError(
                    f"TLS configuration: TCC_PARTICIPANT_TLS_HOSTS names the profile"
                    f" {rule.profile!r}, which {self._profiles_dir} has no directory for"
                )
        # (Nothing configured for the default profile: it is made at its first use.)
        default = [DEFAULT_PROFILE] if self._default.paths() else []
        for name in [*default, *names]:
            loaded = self._load(name)
            if loaded.problem is not None:
                raise TlsConfigError(loaded.problem.message)

    def profile_names(self) -> list[str]:
        """The named profiles configured on this coordinator (directories found)."""
        if self._profiles_dir is None:
            return []
        try:
            entries = sorted(self._profiles_dir.iterdir())
            # Kubernetes mounts add hidden ..data links; only visible directories count.
            found = [e.name for e in entries if not e.name.startswith(".") and e.is_dir()]
        except OSError as exc:
            raise TlsConfigError(
                f"TLS configuration: cannot read TCC_PARTICIPANT_TLS_PROFILES_DIR"
                f" {self._profiles_dir}: {exc.strerror or exc}"
            ) from None
        return [name for name in found if is_profile_name(name)]

    async def keep_fresh(self, every_s: float = KEEP_FRESH_S) -> None:
        """Look at every profile's files now and then, used or not, so that what is said of
        their certificates (the expiry metric, the warnings) follows a rotation on disk."""
        while True:
            await asyncio.sleep(every_s)
            names = set(self._loaded)
            with contextlib.suppress(TlsConfigError):
                names |= set(self.profile_names())
            for name in sorted(names):
                self._refresh(name)

    # --- per call ----------------------------------------------------------------------

    def context_for(self, url: str, registered_profile: str | None) -> Chosen | TlsProblem:
        """The context for an https call to ``url`` by a participant registered with
        ``registered_profile`` (or none), or the problem that stops the call. Never raises."""
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

    def report_certificates(self, report: Callable[[str, dt.datetime | None], None]) -> None:
        """``report(profile, not_after)`` for each client certificate loaded so far, and
        for every one loaded from now on (``None``: the profile presents none any more)."""
        self._on_certificate = report
        for name, loaded in self._loaded.items():
            if loaded.certificate is not None:
                report(name, loaded.certificate.not_after)

    def certificate(self, profile: str = DEFAULT_PROFILE) -> LoadedCertificate | None:
        """The client certificate a profile presents, as last loaded."""
        loaded = self._loaded.get(profile)
        return loaded.certificate if loaded else None

    # --- loading -----------------------------------------------------------------------

    def _candidates(self, name: str) -> tuple[Path, ...]:
        """Every path whose coming, going or changing changes the profile (a file that does
        not exist yet included, and a profile's directory itself)."""
        if name == DEFAULT_PROFILE:
            return tuple(self._default.paths())
        if self._profiles_dir is None or not is_profile_name(name):
            return ()
        directory = self._profiles_dir / name
        own = (directory / f for f in (PROFILE_CA_FILE, PROFILE_CERT_FILE, PROFILE_KEY_FILE))
        default_ca = (self._default.ca,) if self._default.ca is not None else ()
        return (directory, *own, *default_ca)

    def _files(self, name: str) -> ProfileFiles | TlsProblem:
        if name == DEFAULT_PROFILE:
            return self._default
        directory = profile_directory(self._profiles_dir, name)
        if directory is None:
            return configuration_failure(
                f"TLS profile {name!r} is not configured on this coordinator (no directory"
                f" of that name in TCC_PARTICIPANT_TLS_PROFILES_DIR)"
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

    def _refresh(self, name: str) -> _Loaded:
        loaded = self._loaded.get(name)
        if loaded is not None and loaded.fingerprint == _fingerprint(self._candidates(name)):
            loaded.checked_at = self._clock()
            return loaded
        return self._load(name)

    def _load(self, name: str) -> _Loaded:
        previous = self._loaded.get(name)
        fingerprint = _fingerprint(self._candidates(name))  # before reading: see _refresh
        files: ProfileFiles | TlsProblem = configuration_failure(f"profile {name!r}")
        try:
            files = self._files(name)
            if isinstance(files, TlsProblem):
                raise _Unusable(files)
            context = self._build(files)
            certificate = _describe_certificate(files.cert) if files.cert else None
        except Exception as exc:  # a profile must never break a call: it is a problem
            problem = _problem(name, files, exc)
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
                previous.fingerprint = None  # whatever the files become, read them again
                return previous
            fresh = _Loaded(None, fingerprint, problem=problem, checked_at=self._clock())
            self._loaded[name] = fresh
            return fresh
        fresh = _Loaded(context, fingerprint, certificate, checked_at=self._clock())
        self._loaded[name] = fresh
        self._log_loaded(name, files, certificate, previous)
        return fresh

    def _build(self, files: ProfileFiles) -> ssl.SSLContext:
        if self._system_ca:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks host names
        context.minimum_version = self._min_version
        if files.ca is not None:
            if not files.ca.is_file():
                raise _Unusable(
                    configuration_failure(f"profile {files.name!r}: {files.ca} is not a file")
                )
            context.load_verify_locations(cafile=str(files.ca))
        if files.cert is not None:
            context.load_cert_chain(
                str(files.cert),
                str(files.key) if files.key is not None else None,
                # Always a function: given None, OpenSSL would ask for the password of an
                # encrypted key on the terminal (and wait there).
                password=self._password,
            )
        elif files.key is not None:
            raise _Unusable(
                configuration_failure(
                    f"profile {files.name!r}: {files.key} is a key without its certificate"
                    f" ({PROFILE_CERT_FILE})"
                )
            )
        if self.skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _password(self) -> str:
        if self._key_password is None:
            raise _EncryptedKey
        return self._key_password

    def _log_loaded(
        self,
        name: str,
        files: ProfileFiles,
        certificate: LoadedCertificate | None,
        previous: _Loaded | None,
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
        if files.paths() or previous is not None:  # (nothing configured: nothing to say)
            event = "participant_tls_reloaded" if previous else "participant_tls_loaded"
            log.info(event, **fields)
        had_certificate = previous is not None and previous.certificate is not None
        if self._on_certificate is not None and (certificate is not None or had_certificate):
            self._on_certificate(name, certificate.not_after if certificate else None)
        if certificate is not None:
            left = certificate.not_after - dt.datetime.now(dt.UTC)
            if left < EXPIRY_WARNING:
                log.warning(
                    "participant_tls_certificate_expiring",
                    profile=name,
                    not_after=certificate.not_after.isoformat(),
                    days_left=round(left.total_seconds() / 86400, 1),
                )


class _EncryptedKey(Exception):
    """The key is encrypted and no password was configured."""


class _Unusable(Exception):
    def __init__(self, problem: TlsProblem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def profile_directory(profiles_dir: Path | None, name: str) -> Path | None:
    """The directory of the profile ``name``, if this coordinator has one (and may read it)."""
    if profiles_dir is None or not is_profile_name(name):
        return None
    directory = profiles_dir / name
    try:
        return directory if directory.is_dir() else None
    except OSError:
        return None


Fingerprint = tuple[tuple[int, int, int, int] | None, ...]


def _fingerprint(paths: tuple[Path, ...]) -> Fingerprint:
    return tuple(_identity(p) for p in paths)


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _describe_certificate(path: Path) -> LoadedCertificate:
    # Imported here: about 8 MB a process that presents no certificate need not carry.
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(path.read_bytes())  # the first one: the leaf
    return LoadedCertificate(cert.subject.rfc4514_string(), cert.not_valid_after_utc)


def _problem(name: str, files: ProfileFiles | TlsProblem, exc: BaseException) -> TlsProblem:
    """What is wrong, in words, naming the file (never its contents)."""
    if isinstance(exc, _Unusable):
        return exc.problem
    if isinstance(files, TlsProblem):
        return configuration_failure(f"profile {name!r}: {exc}")
    return configuration_failure(f"profile {name!r}: {_why_unusable(files, exc)}")


def _why_unusable(files: ProfileFiles, exc: BaseException) -> str:
    key = files.key or files.cert
    if isinstance(exc, _EncryptedKey):
        return f"the key {key} is encrypted: set TCC_PARTICIPANT_TLS_KEY_PASSWORD"
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError):
        path = exc.filename or next((p for p in files.paths() if not p.is_file()), None)
        return f"cannot read {path or 'its files'}: {exc.strerror or exc}"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if reason == "KEY_VALUES_MISMATCH":
            return f"the key {key} is not the key of {files.cert}"
        if reason in {"NO_CERTIFICATE_OR_CRL_FOUND", "NO_START_LINE"} and files.cert is None:
            return f"no PEM certificate in {files.ca}"
        if files.cert is not None:
            return (
                f"cannot load the certificate {files.cert} with its key {key}: not PEM, or"
                " the key is encrypted and TCC_PARTICIPANT_TLS_KEY_PASSWORD is wrong"
                f" ({exc.reason or 'OpenSSL refused it'})"
            )
        return f"cannot load {files.ca}: {exc.reason or exc}"
    if isinstance(exc, ValueError):
        return f"{files.cert}: not a PEM certificate" if "PEM" in str(exc) else str(exc)
    return f"{type(exc).__name__}: {exc}"
