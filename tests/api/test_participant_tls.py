"""Participants behind mutual TLS, end to end on a real coordinator and Postgres: a registered
participant's TLS profile presents its client certificate; a call refused at TLS is a clear,
retried error in the transaction's timeline and in the metrics, until the certificate the
coordinator reads is fixed on disk (no restart); TLS files that cannot be used stop
`tcc serve` in one line."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from tests.certificates import Pki, mtls_participant, pki
from tests.conftest import MakeCoordinator, transaction_detail
from tests.helpers import eventually
from tests.participant_server import FakeParticipant
from tests.processes import run_tcc, tcc_env
from tests.security.test_auth import CONFIG, auth

__all__ = ["mtls_participant", "pki"]  # fixtures


def profile(root: Path, name: str, pki: Pki, *, client: str | None) -> Path:
    """A profile directory as a Kubernetes TLS secret mounts one."""
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.crt").write_bytes(pki.ca.cert_pem)
    if client is not None:
        pki.ca.issue(client, client=True).write(directory / "tls.crt", directory / "tls.key")
    return directory


async def test_a_registered_tls_profile__presents_its_certificate(
    make_coordinator: MakeCoordinator, mtls_participant: FakeParticipant, pki: Pki
) -> None:
    profiles = pki.root / "profiles"
    profile(profiles, "payments", pki, client="tcc-payments")
    c = await make_coordinator(participant_tls_profiles_dir=str(profiles))
    base = f"{mtls_participant.base_url()}/svc"
    status, problem, _ = await c.request(
        "PUT", "/v1/participants/pay", {"base_url": base, "tls_profile": "nowhere"}
    )
    assert status == 422
    assert "tls_profile 'nowhere' is not configured on this coordinator" in problem["detail"]
    status, registered, _ = await c.request(
        "PUT", "/v1/participants/pay", {"base_url": base, "tls_profile": "payments"}
    )
    assert status == 201, registered
    assert registered["tls_profile"] == "payments"

    status, out = await c.post(
        "/v1/transactions",
        {"gid": "over-mtls", "auto": True, "branches": [{"branch_id": "b1", "participant": "pay"}]},
    )
    assert (status, out["status"]) == (201, "confirmed"), out
    assert [(call.phase, call.client_certificate) for call in mtls_participant.calls] == [
        ("try", "tcc-payments"),
        ("confirm", "tcc-payments"),
    ]
    # When the profile's certificate expires (LocalCA issues for 90 days), for alerting.
    _, metrics, _ = await c.request("GET", "/metrics")
    [line] = [
        line
        for line in metrics.splitlines()
        if line.startswith(
            'tcc_participant_tls_certificate_expiry_timestamp_seconds{profile="payments"}'
        )
    ]
    expires = dt.datetime.fromtimestamp(float(line.split()[-1]), dt.UTC)
    assert dt.timedelta(days=89) < expires - dt.datetime.now(dt.UTC) < dt.timedelta(days=91)


async def test_a_refused_handshake__is_retried_with_its_reason_until_the_certificate_is_fixed(
    make_coordinator: MakeCoordinator, mtls_participant: FakeParticipant, pki: Pki
) -> None:
    """The coordinator's profile has no client certificate at first: every call is refused
    at TLS. The transaction's timeline and the metrics say so; once a certificate appears in
    the profile directory, the retried calls go through."""
    profiles = pki.root / "profiles"
    directory = profile(profiles, "payments", pki, client=None)
    c = await make_coordinator(participant_tls_profiles_dir=str(profiles), breaker_open_s=1)
    urls = {
        "confirm_url": f"{mtls_participant.base_url()}/svc/confirm",
        "cancel_url": f"{mtls_participant.base_url()}/svc/cancel",
        "tls_profile": "payments",
    }
    assert (await c.request("PUT", "/v1/participants/pay", urls))[0] == 201
    # Its callers run their tries: the coordinator only confirms.
    assert (await c.post("/v1/transactions", {"gid": "fixme"}))[0] == 201
    branch = {"branch_id": "b1", "participant": "pay"}
    assert (await c.post("/v1/transactions/fixme/branches", branch))[0] in (200, 201)
    assert (await c.post("/v1/transactions/fixme/confirm"))[0] == 202

    def refused(detail: dict[str, Any]) -> bool:
        return any(
            "peer did not return a certificate" in (e["error"] or "") for e in detail["events"]
        )

    txn = await eventually(lambda: transaction_detail(c, "fixme"), refused)
    assert txn["status"] == "confirming"
    [call] = [e for e in txn["events"] if e["kind"] == "confirm_call"]
    assert call["error"].startswith("TLS: peer did not return a certificate")
    _, metrics, _ = await c.request("GET", "/metrics")
    assert (
        'tcc_participant_tls_failures_total{kind="client_certificate_missing",participant="pay"}'
        in metrics
    )
    assert mtls_participant.calls == []

    # The certificate arrives on disk (as a rotated secret would): no restart.
    pki.ca.issue("tcc-fixed", client=True).write(directory / "tls.crt", directory / "tls.key")
    # (The calls failed often enough to open the participant's breaker: the next call is
    # its probe, once the breaker's open time, a second here, is over.)
    done = await eventually(
        lambda: transaction_detail(c, "fixme"), lambda d: d["status"] == "confirmed", timeout_s=60
    )
    assert done["branches"][0]["status"] == "confirmed"
    assert [call.client_certificate for call in mtls_participant.calls] == ["tcc-fixed"]


def test_tls_files_that_cannot_be_used__stop_serve_in_one_line(database_url: str, pki: Pki) -> None:
    cert, _ = pki.issue_client("coordinator")
    _, other_key = pki.issue_client("other")
    cases: dict[str, dict[str, object]] = {
        "cannot read": {"participant_tls_cert": str(pki.path("missing.crt"))},
        "is not the key of": {
            "participant_tls_cert": str(cert),
            "participant_tls_key": str(other_key),
        },
        "absent-ca.pem": {"participant_tls_ca": str(pki.root / "absent-ca.pem")},
        # The supervisor of several workers refuses as one, before any worker starts.
        "missing.crt": {"participant_tls_cert": str(pki.path("missing.crt")), "workers": 2},
    }
    for expected, settings in cases.items():
        result = run_tcc("serve", env=tcc_env(database_url, port=0, insecure=True, **settings))
        # (Its JSON log lines before it are serve's usual start-up lines.)
        lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
        assert result.returncode == 1, result.stderr
        assert len(lines) == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert lines[0].startswith("tcc serve: TLS configuration:"), lines
        assert expected in lines[0], lines
        assert "PRIVATE KEY" not in result.stderr + result.stdout


async def test_a_service_key__keeps_its_participants_tls_profile_but_cannot_choose_one(
    make_coordinator: MakeCoordinator, pki: Pki
) -> None:
    """A profile is a client identity of the coordinator's: an admin assigns it."""
    profiles = pki.root / "profiles"
    profile(profiles, "payments", pki, client="tcc-payments")
    c = await make_coordinator(
        insecure=False, api_keys=CONFIG, participant_tls_profiles_dir=str(profiles)
    )
    base = {"base_url": "https://127.0.0.1:9/shop"}
    chosen = {**base, "tls_profile": "payments"}
    status, out, _ = await c.request("PUT", "/v1/participants/cart", chosen, headers=auth("shop"))
    assert status == 403, out
    assert "only an admin key assigns a participant's tls_profile" in out["detail"]
    status, out, _ = await c.request("PUT", "/v1/participants/cart", base, headers=auth("shop"))
    assert status == 201, out
    assigned = {**chosen, "owner_service": "shop"}
    status, out, _ = await c.request("PUT", "/v1/participants/cart", assigned, headers=auth("ops"))
    assert (status, out["tls_profile"]) == (200, "payments")
    # The service registering again, as services do at every start, keeps it.
    status, out, _ = await c.request("PUT", "/v1/participants/cart", base, headers=auth("shop"))
    assert (status, out["tls_profile"]) == (200, "payments")


async def test_a_coordinator_missing_a_profile__does_not_open_the_shared_breaker(
    make_coordinator: MakeCoordinator, mtls_participant: FakeParticipant, pki: Pki
) -> None:
    """One coordinator of two lacks the participant's profile: its calls fail as a
    configuration problem of its own, which says nothing about the participant, so the
    participant's breaker (every coordinator's) stays closed."""
    profiles = pki.root / "profiles"
    profile(profiles, "payments", pki, client="tcc-payments")
    (pki.root / "empty").mkdir()
    configured = await make_coordinator(participant_tls_profiles_dir=str(profiles))
    lacking = await make_coordinator(participant_tls_profiles_dir=str(pki.root / "empty"))
    urls = {"base_url": f"{mtls_participant.base_url()}/svc", "tls_profile": "payments"}
    assert (await configured.request("PUT", "/v1/participants/pay", urls))[0] == 201
    await eventually(lambda: lacking.get("/v1/participants/pay"), lambda answer: answer[0] == 200)
    for n in range(8):  # more than the 5 failures in a row that open a breaker
        body = {
            "gid": f"lost-{n}",
            "auto": True,
            "branches": [{"branch_id": "b", "participant": "pay"}],
        }
        status, out = await lacking.post("/v1/transactions", body)
        assert status in (200, 201, 202), out
        detail = await transaction_detail(lacking, f"lost-{n}")
        errors = [e["error"] for e in detail["events"] if e["error"]]
        assert any("TLS profile 'payments' is not configured" in e for e in errors), detail
    status, registered = await lacking.get("/v1/participants/pay")
    assert (status, registered["breaker_state"]) == (200, "closed")
