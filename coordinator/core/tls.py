"""TLS towards participants, as pure rules: which profile a call uses, and what a failed
handshake means.

A *profile* is a CA bundle to trust and a client certificate to present. The coordinator has
a default one (``TCC_PARTICIPANT_TLS_CA``/``_CERT``/``_KEY``) and may have named ones, each a
directory under ``TCC_PARTICIPANT_TLS_PROFILES_DIR``. A call uses, in this order:

1. the profile its registered participant names (``tls_profile``);
2. the profile of the first ``TCC_PARTICIPANT_TLS_HOSTS`` rule its URL's host matches
   (``.payments.internal=payments, 10.0.0.0/8:8443=mesh``: rules as in the URL allowlist);
3. the default profile.

The files themselves are read (and re-read when they change) by ``coordinator.tlsfiles``;
this module decides nothing that needs a disk or a socket.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.core.urlpolicy import PolicyError, Rule, Target, parse_rule

# A profile is a directory's name: no separators, no leading dot (no "..", no hidden files).
_PROFILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")

# The files of a profile directory, named as a Kubernetes TLS secret (and cert-manager) names
# them, so that a mounted secret is a profile as it stands.
PROFILE_CERT_FILE = "tls.crt"
PROFILE_KEY_FILE = "tls.key"
PROFILE_CA_FILE = "ca.crt"

# The default profile's name where one is needed (metrics, errors); not a directory name.
DEFAULT_PROFILE = "default"


def check_profile_name(name: str) -> str:
    """The name, or ValueError saying what a profile name may be."""
    if not _PROFILE_NAME.fullmatch(name) or name == DEFAULT_PROFILE:
        raise ValueError(
            f"TLS profile {name!r}: 1-64 characters of A-Z a-z 0-9 . _ -, not starting with"
            f" a dot, and not {DEFAULT_PROFILE!r} (the default profile needs no name)"
        )
    return name


def is_profile_name(name: str) -> bool:
    try:
        check_profile_name(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class HostRule:
    rule: Rule
    profile: str


def parse_host_rules(config: str | None) -> list[HostRule]:
    """``rule=profile`` entries, comma-separated; ValueError names a bad one."""
    rules: list[HostRule] = []
    for raw in (config or "").split(","):
        entry = raw.strip()
        if not entry:
            continue
        target, equals, profile = entry.rpartition("=")
        if not equals or not target.strip():
            raise ValueError(
                f"TLS host rule {entry!r}: write it as host=profile (e.g. .pay.internal=pay)"
            )
        try:
            rule = parse_rule(target.strip().lower())
        except PolicyError as exc:
            raise ValueError(f"TLS host rule {entry!r}: {exc}") from exc
        rules.append(HostRule(rule, check_profile_name(profile.strip())))
    return rules


def profile_for(
    registered_profile: str | None, target: Target, host_rules: Sequence[HostRule]
) -> str | None:
    """The named profile a call uses (None: the default profile)."""
    if registered_profile is not None:
        return registered_profile
    for host_rule in host_rules:
        rule = host_rule.rule
        if rule.matches_name(target.host, target.port) or (
            target.address is not None and rule.port_ok(target.port) and rule.covers(target.address)
        ):
            return host_rule.profile
    return None


class TlsFailure(enum.StrEnum):
    """Why a TLS connection to a participant failed: the ``kind`` label of
    ``tcc_participant_tls_failures_total``, each with what to look at."""

    # Their certificate, as we judged it.
    UNTRUSTED_CERTIFICATE = "untrusted_certificate"
    EXPIRED_CERTIFICATE = "expired_certificate"
    HOSTNAME_MISMATCH = "hostname_mismatch"
    # Ours, as they judged it.
    CLIENT_CERTIFICATE_MISSING = "client_certificate_missing"
    CLIENT_CERTIFICATE_REJECTED = "client_certificate_rejected"
    # No common ground, or not TLS at all on the other end.
    PROTOCOL = "protocol"
    # Our own TLS files could not be used (unreadable, mismatched, unknown profile).
    CONFIGURATION = "configuration"
    OTHER = "other"


# OpenSSL's verify codes (X509_V_ERR_*) that have a kind of their own.
_CERT_HAS_EXPIRED = 10
_CERT_NOT_YET_VALID = 9
_HOSTNAME_MISMATCH = 62
_IP_ADDRESS_MISMATCH = 64

# OpenSSL's reasons (the bracketed word of an SSLError) for the alerts a server sends about
# our certificate, and for talking past each other.
_NO_CLIENT_CERT_REASONS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",  # TLS 1.3: the server wanted one, we sent none
    "SSLV3_ALERT_HANDSHAKE_FAILURE",  # TLS 1.2's way of saying the same (among others)
}
_CLIENT_CERT_REJECTED_REASONS = {
    "TLSV1_ALERT_UNKNOWN_CA": "the participant does not trust the CA that issued our client"
    " certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the participant found our client certificate bad",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the participant could not accept our client certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "our client certificate has expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "our client certificate was revoked",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the participant does not support our client"
    " certificate's type",
    "TLSV1_ALERT_ACCESS_DENIED": "the participant denied access to our client certificate",
    "TLSV1_ALERT_DECRYPT_ERROR": "the participant could not verify our client certificate's"
    " signature (is the key the certificate's?)",
}
_PROTOCOL_REASONS = {
    "WRONG_VERSION_NUMBER": "the other end does not speak TLS (plain HTTP on an https URL?)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version both ends accept",
    "UNSUPPORTED_PROTOCOL": "no TLS version both ends accept",
    "NO_PROTOCOLS_AVAILABLE": "no TLS version both ends accept",
    "SSLV3_ALERT_ILLEGAL_PARAMETER": "the handshake broke down (illegal parameter)",
    "NO_SHARED_CIPHER": "no cipher both ends accept",
}


@dataclass(frozen=True, slots=True)
class TlsProblem:
    kind: TlsFailure
    message: str  # the call's error, as the timeline and the console show it


def verify_failure(verify_code: int, verify_message: str) -> TlsProblem:
    """The participant's certificate failed our verification."""
    if verify_code in (_CERT_HAS_EXPIRED, _CERT_NOT_YET_VALID):
        kind = TlsFailure.EXPIRED_CERTIFICATE
        advice = "the participant must renew its certificate (or the clocks disagree)"
    elif verify_code in (_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH):
        kind = TlsFailure.HOSTNAME_MISMATCH
        advice = "the URL's host is not among the names the certificate was issued for"
    else:
        kind = TlsFailure.UNTRUSTED_CERTIFICATE
        advice = "trust its CA with TCC_PARTICIPANT_TLS_CA or the participant's profile"
    return TlsProblem(kind, f"TLS: certificate verify failed: {verify_message} ({advice})")


def alert_failure(reason: str | None, text: str, presented_certificate: bool = False) -> TlsProblem:
    """Any other TLS error, by OpenSSL's reason; ``text`` is the error as raised."""
    reason = (reason or "").upper()
    if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE" and presented_certificate:
        return TlsProblem(
            TlsFailure.PROTOCOL,
            "TLS: handshake failure: the participant refused the handshake (no protocol"
            " version or cipher both ends accept, or it refused our client certificate)"
            f" ({reason.lower()})",
        )
    if reason in _NO_CLIENT_CERT_REASONS:
        detail = (
            "peer did not return a certificate: the participant requires a client"
            " certificate and none was presented (set TCC_PARTICIPANT_TLS_CERT, or give the"
            " participant a tls_profile)"
        )
        if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE":
            detail = (
                "handshake failure: the participant refused the handshake (most often: it"
                " requires a client certificate and none was presented)"
            )
        return TlsProblem(TlsFailure.CLIENT_CERTIFICATE_MISSING, f"TLS: {detail}")
    if reason in _CLIENT_CERT_REJECTED_REASONS:
        return TlsProblem(
            TlsFailure.CLIENT_CERTIFICATE_REJECTED,
            f"TLS: {_CLIENT_CERT_REJECTED_REASONS[reason]} ({reason.lower()})",
        )
    if reason in _PROTOCOL_REASONS:
        return TlsProblem(
            TlsFailure.PROTOCOL, f"TLS: {_PROTOCOL_REASONS[reason]} ({reason.lower()})"
        )
    return TlsProblem(TlsFailure.OTHER, f"TLS: {text}")


def closed_in_handshake(
    presented_certificate: bool, *, during: bool, error: str, only_tls13: bool = False
) -> TlsProblem:
    """The participant closes every connection during our handshake (TLS 1.2) or as soon as
    it ends (TLS 1.3), without saying why (no alert): it refuses our client certificate, or
    our lack of one (or, when we speak TLS 1.3 only, perhaps that). ``error``: the call's own
    error, kept at the end in brackets."""
    when = "during the handshake" if during else "as soon as the handshake ends"
    if during and only_tls13:
        when += " (or it does not speak TLS 1.3, which TCC_PARTICIPANT_TLS_MIN_VERSION asks)"
    if presented_certificate:
        return TlsProblem(
            TlsFailure.CLIENT_CERTIFICATE_REJECTED,
            f"TLS: the participant refused our client certificate: it closes the connection"
            f" {when} (not signed by a CA it trusts, expired or revoked?) [{error}]",
        )
    return TlsProblem(
        TlsFailure.CLIENT_CERTIFICATE_MISSING,
        "TLS: peer did not return a certificate: the participant requires a client"
        f" certificate and none was presented; it closes the connection {when} (set"
        f" TCC_PARTICIPANT_TLS_CERT, or a tls_profile) [{error}]",
    )


def configuration_failure(message: str) -> TlsProblem:
    return TlsProblem(TlsFailure.CONFIGURATION, f"TLS configuration: {message}")
