"""HTTPS for a participant, with client certificates required: the server side every sample
shares (`--tls-cert`, `--tls-key`, `--tls-client-ca`, or their TCC_SERVE_TLS_* variables).

With a certificate and its key the service answers HTTPS only; with a client CA too, a caller
must present a certificate that CA issued, or the handshake fails (mutual TLS: the coordinator
presents its TCC_PARTICIPANT_TLS_CERT). TLS 1.2 is the oldest version accepted. A bad option is
a `TlsOptionError` whose message is one line that names the option and the file.
"""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CERT_ENV = "TCC_SERVE_TLS_CERT"
KEY_ENV = "TCC_SERVE_TLS_KEY"
CLIENT_CA_ENV = "TCC_SERVE_TLS_CLIENT_CA"


class TlsOptionError(ValueError):
    """A TLS option that cannot be served: its message is one line for the operator."""


@dataclass(frozen=True)
class ServerTls:
    cert: Path  # PEM: the server certificate, then any intermediates
    key: Path | None = None  # PEM, unencrypted; None: the key is in the certificate's file
    client_ca: Path | None = None  # PEM bundle: require a client certificate it issued

    def context(self) -> ssl.SSLContext:
        """The server's SSL context; TlsOptionError if a file is missing, unreadable, not
        PEM, or the key is not the certificate's."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        cert_text = _read("--tls-cert", self.cert)
        if "-----BEGIN CERTIFICATE-----" not in cert_text:
            raise TlsOptionError(f"--tls-cert {self.cert}: no PEM certificate in it")
        key_option, key_path = ("--tls-key", self.key) if self.key else ("--tls-cert", self.cert)
        if "PRIVATE KEY-----" not in _read(key_option, key_path):
            raise TlsOptionError(
                f"{key_option} {key_path}: no PEM private key in it"
                + ("" if self.key else " (give the key with --tls-key)")
            )
        try:
            context.load_cert_chain(self.cert, self.key, password=_no_password)
        except _Encrypted:
            raise TlsOptionError(
                f"{key_option} {key_path}: the key is encrypted; give it unencrypted"
                " (readable by this service's user only)"
            ) from None
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise TlsOptionError(
                    f"{key_option} {key_path} is not the key of the certificate in"
                    f" --tls-cert {self.cert}"
                ) from None
            raise TlsOptionError(
                f"--tls-cert {self.cert} with {key_option} {key_path}: {_say(exc)}"
            ) from None
        if self.client_ca is not None:
            if "-----BEGIN CERTIFICATE-----" not in _read("--tls-client-ca", self.client_ca):
                raise TlsOptionError(f"--tls-client-ca {self.client_ca}: no PEM certificate in it")
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except ssl.SSLError as exc:
                raise TlsOptionError(f"--tls-client-ca {self.client_ca}: {_say(exc)}") from None
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def add_options(parser: argparse.ArgumentParser, env: Mapping[str, str] | None = None) -> None:
    """--tls-cert, --tls-key and --tls-client-ca, each defaulting to its variable."""
    env = os.environ if env is None else env
    group = parser.add_argument_group(
        "HTTPS", "serve HTTPS instead of HTTP; with --tls-client-ca, require client certificates"
    )
    group.add_argument(
        "--tls-cert",
        type=Path,
        default=env.get(CERT_ENV) or None,
        metavar="PEM",
        help=f"the server certificate, with its chain (env {CERT_ENV})",
    )
    group.add_argument(
        "--tls-key",
        type=Path,
        default=env.get(KEY_ENV) or None,
        metavar="PEM",
        help=f"its private key, unencrypted (env {KEY_ENV}; default: in --tls-cert's file)",
    )
    group.add_argument(
        "--tls-client-ca",
        type=Path,
        default=env.get(CLIENT_CA_ENV) or None,
        metavar="PEM",
        help="require a client certificate issued by a CA in this bundle, and verify it"
        f" (env {CLIENT_CA_ENV})",
    )


def from_options(args: argparse.Namespace) -> ServerTls | None:
    """The TLS the parsed options ask for, or None for plain HTTP."""
    cert, key, client_ca = args.tls_cert, args.tls_key, args.tls_client_ca
    if cert is None:
        given = [n for n, v in (("--tls-key", key), ("--tls-client-ca", client_ca)) if v]
        if given:
            verb = "needs" if len(given) == 1 else "need"
            raise TlsOptionError(f"{' and '.join(given)} {verb} --tls-cert, the server certificate")
        return None
    return ServerTls(cert, key, client_ca)


def server_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The SSL context the parsed options ask for (None: plain HTTP); TlsOptionError if bad."""
    tls = from_options(args)
    return None if tls is None else tls.context()


class _Encrypted(Exception):
    """OpenSSL asked for the key's password (rather than prompting on a terminal)."""


def _no_password() -> bytes:
    raise _Encrypted


def _read(option: str, path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        raise TlsOptionError(f"{option} {path}: no such file") from None
    except IsADirectoryError:
        raise TlsOptionError(f"{option} {path}: a directory, not a PEM file") from None
    except OSError as exc:
        raise TlsOptionError(f"{option} {path}: cannot read it ({exc.strerror})") from None


def _say(exc: ssl.SSLError) -> str:
    """OpenSSL's complaint in a few words (its reason code, lower case), or its message."""
    if exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    return str(exc)
