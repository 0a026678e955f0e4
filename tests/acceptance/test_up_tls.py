"""`tcc up --tls`: the samples behind mutual TLS on a locally made CA, the coordinator
presenting its client certificate to them. Real processes, real TLS, 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from coordinator.devtools.children import clean_env, free_port
from coordinator.devtools.localca import LocalCA
from coordinator.devtools.stack import HTTPS_SERVICES, Ports, Stack, StackCerts
from participants import mailsink
from participants.notify.app import message_id
from participants.order.app import mail_gid
from tests.acceptance.test_up_and_demo import _answers, _sample_ports, _start_up
from tests.helpers import eventually
from tests.processes import TCC, run_tcc_async

pytestmark = pytest.mark.slow


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    ports = Ports(
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        notify=free_port(),
        mailsink=free_port(),
    )
    running = Stack(tmp_path / "pgdata", ports, temporary=True, tls=True)
    try:
        await running.start()
        yield running
    finally:
        await running.stop()


async def _json(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, url, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_a_checkout_over_mutual_tls__confirms_and_mails_its_customer(stack: Stack) -> None:
    assert stack.certs is not None
    assert {stack.url(name).split(":")[0] for name in HTTPS_SERVICES} == {"https"}
    coordinator = stack.url("coordinator")
    async with stack.session(60) as http:
        body = {"customer": "alice", "sku": "book", "qty": 2}
        status, placed = await _json(http, "POST", stack.url("order") + "/checkout", json=body)
        assert status == 200, placed
        assert placed["transaction"] == "confirmed"
        gid = placed["order_id"]
        status, detail = await _json(http, "GET", f"{coordinator}/v1/transactions/{gid}")
        assert detail["status"] == "confirmed"
        # Every branch was called over HTTPS (the order's own one too), and confirmed.
        branches = {b["branch_id"]: b for b in detail["branches"]}
        assert set(branches) == {"order", "payment", "stock"}
        for branch in branches.values():
            assert branch["status"] == "confirmed"
            assert branch["confirm_url"].startswith("https://127.0.0.1:")
        status, alice = await _json(http, "GET", stack.url("wallet") + "/accounts/alice")
        assert alice["balance"] == 1000 - 24
        # The registry holds the participants under their https URLs.
        status, registered = await _json(http, "GET", f"{coordinator}/v1/participants")
        urls = {p["name"]: p["base_url"] for p in registered["participants"]}
        assert urls == {
            "wallet": stack.url("wallet") + "/tcc",
            "inventory": stack.url("inventory") + "/tcc",
        }
        assert all(url.startswith("https://") for url in urls.values())

    # The order's confirmation went to notify over mutual TLS too, and out as one mail.
    mid = message_id(mail_gid(gid), "mail")
    delivered = await eventually(
        lambda: asyncio.to_thread(mailsink.read_received, stack.mail_dir),
        lambda got: any(d["message_id"] == mid for d in got),
        timeout_s=60,
        interval_s=0.2,
    )
    (mail,) = [d for d in delivered if d["message_id"] == mid]
    assert mail["to"] == ["alice@example.test"]


async def test_the_samples_answer_no_client_without_a_certificate_from_the_local_ca(
    stack: Stack, tmp_path: Path
) -> None:
    assert stack.certs is not None
    stranger = tmp_path / "stranger"
    LocalCA.create("another CA").issue("someone", client=True).write(
        stranger.with_suffix(".crt"), stranger.with_suffix(".key")
    )
    no_certificate = ssl.create_default_context(cafile=str(stack.certs.ca))
    another_ca = ssl.create_default_context(cafile=str(stack.certs.ca))
    another_ca.load_cert_chain(stranger.with_suffix(".crt"), stranger.with_suffix(".key"))
    for client in (no_certificate, another_ca):
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client), timeout=aiohttp.ClientTimeout(total=10)
        ) as http:
            for name in HTTPS_SERVICES:
                with pytest.raises(aiohttp.ClientError):
                    async with http.get(stack.url(name) + "/") as resp:
                        await resp.read()
    # ... while the stack's own client (the developer's certificate) gets answers.
    async with stack.session(10) as http:
        for name, path in (("wallet", "/accounts"), ("inventory", "/items")):
            async with http.get(stack.url(name) + path) as resp:
                assert resp.status == 200


def test_certificates__are_made_once_and_kept_while_good(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    first = StackCerts.ensure(folder)
    names = ("ca", "samples", "coordinator", "developer")
    assert set(first.made) == {f"{n}.crt" for n in names}
    assert folder.stat().st_mode & 0o777 == 0o700
    assert all(first.key(n).stat().st_mode & 0o777 == 0o600 for n in names)
    before = {n: first.cert(n).read_bytes() for n in names}

    again = StackCerts.ensure(folder)
    assert again.made == ()
    assert {n: again.cert(n).read_bytes() for n in names} == before

    # A certificate about to expire, or whose key is not its own, is made again; alone.
    ca = LocalCA.load(first.ca, first.ca_key)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    ca.issue("old", hosts=("localhost", "127.0.0.1"), not_after=soon).write(
        first.cert("samples"), first.key("samples")
    )
    first.key("developer").write_bytes(first.key("coordinator").read_bytes())
    assert set(StackCerts.ensure(folder).made) == {"samples.crt", "developer.crt"}
    # A server certificate for other hosts, or a certificate from another CA, too.
    ca.issue("elsewhere", hosts=("example.test",)).write(
        first.cert("samples"), first.key("samples")
    )
    LocalCA.create("x").issue("c", client=True).write(
        first.cert("coordinator"), first.key("coordinator")
    )
    assert set(StackCerts.ensure(folder).made) == {"samples.crt", "coordinator.crt"}

    # A CA that is gone takes every certificate with it.
    first.ca.unlink()
    assert set(StackCerts.ensure(folder).made) == {f"{n}.crt" for n in names}
    assert first.cert("coordinator").read_bytes() != before["coordinator"]


async def test_up_tls__says_so_takes_an_order_over_mutual_tls_and_stops(tmp_path: Path) -> None:
    coordinator_port, samples = free_port(), _sample_ports()
    proc = _start_up(tmp_path, coordinator_port, samples, "--tls")
    tls = tmp_path / "tls"
    order = f"https://127.0.0.1:{samples + 2}"
    try:
        deadline = time.monotonic() + 90
        while not (tls / "developer.key").exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline
            await asyncio.sleep(0.3)
        client = ssl.create_default_context(cafile=str(tls / "ca.crt"))
        client.load_cert_chain(tls / "developer.crt", tls / "developer.key")
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client), timeout=aiohttp.ClientTimeout(total=60)
        ) as http:
            while not (
                await _answers(http, f"{order}/orders")
                and await _answers(http, f"http://127.0.0.1:{coordinator_port}/v1/participants")
            ):
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline
                await asyncio.sleep(0.3)
            body = {"customer": "alice", "sku": "book", "qty": 1}
            status, placed = await _json(http, "POST", f"{order}/checkout", json=body)
            assert status == 200, placed
            assert placed["transaction"] == "confirmed"
        # The banner's conformance line: the wallet checked over mutual TLS, as the
        # coordinator calls it.
        code, report, err = await run_tcc_async(
            "conformance",
            "--participant", "wallet",
            "--url", f"http://127.0.0.1:{coordinator_port}",
            "--payload", '{"account": "alice", "amount": 1}',
            "--check-url", f"https://127.0.0.1:{samples}/tcc/check",
            "--participant-tls-ca", str(tls / "ca.crt"),
            "--participant-tls-cert", str(tls / "developer.crt"),
            "--participant-tls-key", str(tls / "developer.key"),
            env=clean_env(),
        )  # fmt: skip
        assert code == 0, report + err
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert f"issued by a local CA in {tls}" in out
    assert f"the local CA {tls / 'ca.crt'}" in out
    assert f"wallet       https://127.0.0.1:{samples}" in out
    assert f"--cacert {tls / 'ca.crt'} --cert {tls / 'developer.crt'}" in out
    assert "made by this run" in out
    assert f"--participant-tls-cert {tls / 'developer.crt'}" in out
    assert "tcc up: stopped" in out


@pytest.mark.parametrize(
    ("flags", "env", "named"),
    [
        (["--participant-tls-ca", "/etc/ssl/ca.pem"], {}, "TCC_PARTICIPANT_TLS_CA"),
        (
            [],
            {"TCC_PARTICIPANT_TLS_INSECURE_SKIP_VERIFY": "true"},
            "TCC_PARTICIPANT_TLS_INSECURE_SKIP_VERIFY",
        ),
    ],
)
def test_up_tls__refuses_participant_tls_settings_given_with_it(
    tmp_path: Path, flags: list[str], env: dict[str, str], named: str
) -> None:
    command = [*TCC, "up", "--tls", "--data-dir", str(tmp_path / "pgdata"), *flags]
    done = subprocess.run(
        [*command, "--port", str(free_port()), "--samples-port", str(_sample_ports())],
        env={**clean_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("tcc up: --tls makes the participants' CA"), done.stderr
    assert named in done.stderr
    assert not (tmp_path / "pgdata").exists()  # refused before anything started
    assert not (tmp_path / "tls").exists()
