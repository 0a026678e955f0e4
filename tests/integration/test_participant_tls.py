"""Participant calls over real TLS: a participant that requires a client certificate, served
with certificates of a CA made for the test, called by the coordinator's own caller.

Each case is a real handshake on 127.0.0.1: the right client certificate is accepted; none,
one from another CA, an expired server certificate, a certificate for another host and plain
HTTP on an https URL each fail with a clear error of their kind; a client certificate
rotated on disk is presented on the next connection, without a restart, and a rotation caught
half-way keeps the last good one."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from coordinator.core.records import OutboundCall
from coordinator.core.tls import TlsFailure, parse_host_rules
from coordinator.outbound import HttpCaller
from coordinator.tlsfiles import ParticipantTls, TlsConfigError
from tests.certificates import Pki, mtls_participant, openssl_server, pki
from tests.participant_server import FakeParticipant

__all__ = ["mtls_participant", "pki"]  # fixtures

_NOW = dt.datetime.now(dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def call(
    tls: ParticipantTls, url: str, profile: str | None = None
) -> tuple[int | None, str, TlsFailure | None]:
    async with aiohttp.ClientSession() as session:
        caller = HttpCaller(session, 65_536, None, tls)
        result = await caller.send(
            OutboundCall("POST", url, {}, b'{"gid": "g", "branch_id": "b"}', tls_profile=profile),
            timeout_s=10,
        )
    return result.http_status, result.error or "", result.tls_failure


def trusting(pki: Pki, client: tuple[Path, Path] | None, **extra: Any) -> ParticipantTls:
    cert, key = client if client else (None, None)
    tls = ParticipantTls(ca=pki.path("ca.crt"), cert=cert, key=key, **extra)
    tls.load_all()
    return tls


async def test_the_right_client_certificate__is_accepted(
    pki: Pki, mtls_participant: FakeParticipant
) -> None:
    tls = trusting(pki, pki.issue_client("coordinator"))
    status, error, failure = await call(tls, f"{mtls_participant.base_url()}/svc/confirm")
    assert (status, error, failure) == (200, "", None)
    assert mtls_participant.calls[-1].client_certificate == "coordinator"


async def test_no_client_certificate__fails_saying_the_participant_wanted_one(
    pki: Pki, mtls_participant: FakeParticipant
) -> None:
    tls = trusting(pki, None)
    # An asyncio server drops the connection without its alert: a second handshake, and
    # its being dropped unasked, tells why.
    status, error, failure = await call(tls, f"{mtls_participant.base_url()}/svc/confirm")
    assert status is None
    assert failure is TlsFailure.CLIENT_CERTIFICATE_MISSING
    assert error.startswith("TLS: peer did not return a certificate")
    assert "closes the connection as soon as the handshake ends" in error
    assert mtls_participant.calls == []
    # OpenSSL's own server sends its alert, and the error names it.
    async with openssl_server(pki) as url:
        status, error, failure = await call(tls, url)
    assert (status, failure) == (None, TlsFailure.CLIENT_CERTIFICATE_MISSING)
    assert error.startswith("TLS: peer did not return a certificate")


async def test_a_client_certificate_from_another_ca__is_refused_by_the_participant(
    pki: Pki, mtls_participant: FakeParticipant
) -> None:
    tls = trusting(pki, pki.issue_client("stranger", ca=pki.other_ca))
    status, error, failure = await call(tls, f"{mtls_participant.base_url()}/svc/confirm")
    assert (status, failure) == (None, TlsFailure.CLIENT_CERTIFICATE_REJECTED)
    assert error.startswith("TLS: the participant refused our client")
    assert mtls_participant.calls == []
    async with openssl_server(pki) as url:
        status, error, failure = await call(tls, url)
    assert status is None
    assert failure is TlsFailure.CLIENT_CERTIFICATE_REJECTED
    assert "does not trust the CA" in error


async def test_an_expired_server_certificate__fails_verification_as_expired(pki: Pki) -> None:
    expired = pki.issue_server(
        "expired", not_before=_NOW - dt.timedelta(days=30), not_after=_NOW - dt.timedelta(days=1)
    )
    fake = FakeParticipant(pki.server_context(*expired))
    await fake.start()
    try:
        tls = trusting(pki, pki.issue_client("coordinator"))
        status, error, failure = await call(tls, f"{fake.base_url()}/svc/confirm")
    finally:
        await fake.stop()
    assert status is None
    assert failure is TlsFailure.EXPIRED_CERTIFICATE
    assert error.startswith("TLS: certificate verify failed: certificate has expired")


async def test_an_untrusted_server__and_one_for_another_host__fail_verification(
    pki: Pki, mtls_participant: FakeParticipant
) -> None:
    client = pki.issue_client("coordinator")
    # Trusting only the other CA (and not the system's store, which never has the test CA).
    untrusting = ParticipantTls(ca=pki.path("other-ca.crt"), cert=client[0], key=client[1])
    status, error, failure = await call(untrusting, f"{mtls_participant.base_url()}/svc/confirm")
    assert (status, failure) == (None, TlsFailure.UNTRUSTED_CERTIFICATE)
    assert "certificate verify failed" in error
    # A certificate issued for another name than the URL's host.
    fake = FakeParticipant(
        pki.server_context(*pki.issue_server("elsewhere", hosts=("elsewhere.test",)))
    )
    await fake.start()
    try:
        status, error, failure = await call(trusting(pki, client), f"{fake.base_url()}/svc/confirm")
    finally:
        await fake.stop()
    assert (status, failure) == (None, TlsFailure.HOSTNAME_MISMATCH)
    assert "127.0.0.1" in error


async def test_a_participant_dropping_a_request_over_tls__is_not_called_a_tls_failure(
    pki: Pki,
) -> None:
    """A participant that accepted the handshake and then failed (it crashed, it closed the
    connection) is not blamed on certificates: the second handshake is kept waiting."""

    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    app = web.Application()
    app.router.add_post("/{tail:.*}", drop)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    context = pki.server_context(*pki.issue_server("dropper"), require_client=False)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        status, error, failure = await call(trusting(pki, None), f"https://127.0.0.1:{port}/x")
    finally:
        await runner.cleanup()
    assert (status, failure) == (None, None)
    assert "TLS" not in error


async def test_plain_http_on_an_https_url__is_a_protocol_failure(pki: Pki) -> None:
    plain = FakeParticipant()
    await plain.start()
    try:
        url = f"https://127.0.0.1:{plain.port}/svc/confirm"
        status, error, failure = await call(trusting(pki, None), url)
    finally:
        await plain.stop()
    assert (status, failure) == (None, TlsFailure.PROTOCOL)
    assert "does not speak TLS" in error


async def test_a_rotated_client_certificate__is_presented_without_a_restart(
    pki: Pki, mtls_participant: FakeParticipant, clock: Clock
) -> None:
    cert, key = pki.path("client.crt"), pki.path("client.key")
    pki.ca.issue("first", client=True).write(cert, key)
    tls = ParticipantTls(ca=pki.path("ca.crt"), cert=cert, key=key, clock=clock)
    tls.load_all()
    url = f"{mtls_participant.base_url()}/svc/confirm"
    assert (await call(tls, url))[0] == 200
    assert mtls_participant.calls[-1].client_certificate == "first"

    # Rotated on disk (each file replaced in one rename, as a secret mount does).
    pki.ca.issue("second", client=True).write(cert, key)
    assert (await call(tls, url))[0] == 200  # within the second: not looked at yet
    assert mtls_participant.calls[-1].client_certificate == "first"
    clock.now += 1.5
    assert (await call(tls, url))[0] == 200
    assert mtls_participant.calls[-1].client_certificate == "second"
    certificate = tls.certificate()
    assert certificate is not None
    assert certificate.subject == "CN=second"

    # Caught half-way: a new certificate beside the old key. The last good pair stays.
    pki.ca.issue("third", client=True).write(cert, pki.path("unused.key"))
    clock.now += 1.5
    assert (await call(tls, url))[0] == 200
    assert mtls_participant.calls[-1].client_certificate == "second"
    # ... until its key arrives too.
    pki.ca.issue("third", client=True).write(cert, key)
    clock.now += 1.5
    assert (await call(tls, url))[0] == 200
    assert mtls_participant.calls[-1].client_certificate == "third"


async def test_profiles__by_registration_and_by_host_rule(
    pki: Pki, mtls_participant: FakeParticipant, tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles"
    for name in ("payments", "mesh"):
        directory = profiles / name
        directory.mkdir(parents=True)
        pki.ca.issue(f"as-{name}", client=True).write(directory / "tls.crt", directory / "tls.key")
        (directory / "ca.crt").write_bytes(pki.ca.cert_pem)
    tls = ParticipantTls(
        profiles_dir=profiles,
        host_rules=parse_host_rules("127.0.0.0/8=mesh"),
        system_ca=False,
        ca=pki.path("other-ca.crt"),  # the default profile trusts another CA only
    )
    tls.load_all()
    url = f"{mtls_participant.base_url()}/svc/confirm"
    assert (await call(tls, url, profile="payments"))[0] == 200
    assert mtls_participant.calls[-1].client_certificate == "as-payments"
    assert (await call(tls, url))[0] == 200  # no profile registered: the host rule's
    assert mtls_participant.calls[-1].client_certificate == "as-mesh"
    status, error, failure = await call(tls, url, profile="missing")
    assert (status, failure) == (None, TlsFailure.CONFIGURATION)
    assert "TLS profile 'missing' is not configured" in error
    localhost = url.replace("127.0.0.1", "localhost")  # no rule: the default profile
    assert (await call(tls, localhost))[2] is TlsFailure.UNTRUSTED_CERTIFICATE


def test_unusable_files__refuse_to_load_with_one_clear_line(pki: Pki) -> None:
    cert, key = pki.issue_client("coordinator")
    _, other_key = pki.issue_client("other")
    cases = {
        "cannot read": ParticipantTls(cert=pki.path("nowhere.crt")),
        "is not the key of": ParticipantTls(cert=cert, key=other_key),
        "no PEM certificate": ParticipantTls(ca=key.parent / "empty.pem"),
    }
    (key.parent / "empty.pem").write_text("not a certificate\n")
    for expected, tls in cases.items():
        with pytest.raises(TlsConfigError) as refused:
            tls.load_all()
        message = str(refused.value)
        assert expected in message, message
        assert "\n" not in message
        assert "PRIVATE KEY" not in message


async def test_rotation_on_a_shared_session__new_connections_present_the_new_certificate(
    pki: Pki, mtls_participant: FakeParticipant, clock: Clock
) -> None:
    """The coordinator's calls share one pool of kept-alive connections: a rotated
    certificate must not be hidden behind a connection made with the old one."""
    cert, key = pki.path("client.crt"), pki.path("client.key")
    pki.ca.issue("before", client=True).write(cert, key)
    tls = ParticipantTls(ca=pki.path("ca.crt"), cert=cert, key=key, clock=clock)
    tls.load_all()
    url = f"{mtls_participant.base_url()}/svc/confirm"
    async with aiohttp.ClientSession() as session:
        caller = HttpCaller(session, 65_536, None, tls)
        for _ in range(3):  # the same kept-alive connection each time
            assert (await caller.send(OutboundCall("POST", url, {}, b"{}"), 10)).http_status == 200
        pki.ca.issue("after", client=True).write(cert, key)
        clock.now += 1.5
        assert (await caller.send(OutboundCall("POST", url, {}, b"{}"), 10)).http_status == 200
    assert [c.client_certificate for c in mtls_participant.calls] == ["before"] * 3 + ["after"]


async def test_an_encrypted_key__is_read_with_its_password_and_refused_in_one_line_without(
    pki: Pki, mtls_participant: FakeParticipant
) -> None:
    cert, key = pki.issue_client("coordinator")
    locked = serialization.load_pem_private_key(key.read_bytes(), None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"open sesame"),
    )
    key.write_bytes(locked)
    with_password = trusting(pki, (cert, key), key_password="open sesame")
    assert (await call(with_password, f"{mtls_participant.base_url()}/svc/confirm"))[0] == 200
    # Without it, OpenSSL would ask on the terminal and wait: it is refused at once instead.
    for password in (None, "wrong"):
        with pytest.raises(TlsConfigError) as refused:
            ParticipantTls(cert=cert, key=key, key_password=password).load_all()
        assert str(key) in str(refused.value)
        assert "TCC_PARTICIPANT_TLS_KEY_PASSWORD" in str(refused.value)
        assert "open sesame" not in str(refused.value)


@pytest.fixture
async def tls12_participant(pki: Pki) -> AsyncIterator[FakeParticipant]:
    """A participant that speaks TLS 1.2 at most: it judges client certificates during the
    handshake (and, being asyncio, drops the connection without an alert)."""
    context = pki.server_context(*pki.issue_server("old-participant"))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    fake = FakeParticipant(context)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def test_a_tls_1_2_participant__refusing_a_certificate_in_the_handshake__is_named(
    pki: Pki, tls12_participant: FakeParticipant
) -> None:
    url = f"{tls12_participant.base_url()}/svc/confirm"
    assert (await call(trusting(pki, pki.issue_client("ok")), url))[0] == 200
    status, error, failure = await call(trusting(pki, None), url)
    assert (status, failure) == (None, TlsFailure.CLIENT_CERTIFICATE_MISSING)
    assert "closes the connection during the handshake" in error
    stranger = trusting(pki, pki.issue_client("stranger", ca=pki.other_ca))
    status, error, failure = await call(stranger, url)
    assert (status, failure) == (None, TlsFailure.CLIENT_CERTIFICATE_REJECTED)
    assert "SSLContext object" not in error


async def test_min_version_1_3__refuses_a_tls_1_2_participant(
    pki: Pki, tls12_participant: FakeParticipant
) -> None:
    tls = trusting(pki, pki.issue_client("ok"), min_version="1.3")
    async with openssl_server(pki, "-tls1_2") as url:
        status, error, failure = await call(tls, url)
    assert (status, failure) == (None, TlsFailure.PROTOCOL)
    assert "no TLS version both ends accept" in error
    # An asyncio server says nothing: the error names the version among the suspects.
    status, error, _ = await call(tls, f"{tls12_participant.base_url()}/svc/confirm")
    assert status is None
    assert "or it does not speak TLS 1.3" in error


async def test_skip_verify__accepts_any_server_and_says_so(
    pki: Pki, mtls_participant: FakeParticipant
) -> None:
    client = pki.issue_client("coordinator")
    strict = ParticipantTls(cert=client[0], key=client[1])  # does not trust the test CA
    url = f"{mtls_participant.base_url()}/svc/confirm"
    assert (await call(strict, url))[2] is TlsFailure.UNTRUSTED_CERTIFICATE
    lax = ParticipantTls(cert=client[0], key=client[1], skip_verify=True)
    with structlog.testing.capture_logs() as logs:
        lax.load_all()
    assert [e["log_level"] for e in logs if e["event"] == "participant_tls_verification_off"] == [
        "warning"
    ]
    assert (await call(lax, url))[0] == 200


def test_a_host_rule_naming_a_missing_profile__refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "mesh").mkdir()
    tls = ParticipantTls(
        profiles_dir=tmp_path, host_rules=parse_host_rules(".internal=mesh, 10.0.0.0/8=nosuch")
    )
    with pytest.raises(TlsConfigError) as refused:
        tls.load_all()
    assert "'nosuch'" in str(refused.value)


async def test_a_profile_directory_made_later__is_picked_up(
    pki: Pki, mtls_participant: FakeParticipant, tmp_path: Path, clock: Clock
) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    tls = ParticipantTls(profiles_dir=profiles, ca=pki.path("ca.crt"), clock=clock)
    url = f"{mtls_participant.base_url()}/svc/confirm"
    assert (await call(tls, url, profile="late"))[2] is TlsFailure.CONFIGURATION
    (profiles / "late").mkdir()  # empty at first: the default CA, no certificate
    clock.now += 1.5
    assert (await call(tls, url, profile="late"))[2] is TlsFailure.CLIENT_CERTIFICATE_MISSING
    pki.ca.issue("late", client=True).write(profiles / "late/tls.crt", profiles / "late/tls.key")
    clock.now += 1.5
    assert (await call(tls, url, profile="late"))[0] == 200
