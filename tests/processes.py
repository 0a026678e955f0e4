"""Real `tcc` processes for acceptance tests: started, probed, killed."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

TCC = [sys.executable, "-m", "coordinator.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcc_env(database_url: str, **settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCC_")}
    env["TCC_DATABASE_URL"] = database_url
    env["TCC_LOG_FORMAT"] = "json"
    env["TCC_INSECURE"] = "true"
    env["TCC_PARTICIPANT_ALLOW"] = "127.0.0.0/8"
    for name, value in settings.items():
        env[f"TCC_{name.upper()}"] = str(value)
    return env


def run_tcc(
    *args: str, env: dict[str, str], timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TCC, *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


class CoordinatorProcess:
    """`tcc serve` in a subprocess on 127.0.0.1, logging to a file."""

    def __init__(self, database_url: str, log_dir: Path, **settings: object) -> None:
        self.port = free_port()
        self.env = tcc_env(database_url, host="127.0.0.1", port=self.port, **settings)
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        with open(self.log_dir / f"coordinator-{self.port}-{self.starts}.log", "wb") as log:
            return subprocess.Popen([*TCC, "serve"], env=self.env, stdout=log, stderr=log)

    async def start(self, timeout_s: float = 30.0) -> None:
        self.proc = self._spawn()
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"tcc serve exited with {self.proc.returncode}: {self.logs()}"
                    )
                try:
                    async with session.get(f"{self.base}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"tcc serve did not become ready: {self.logs()}")

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


async def run_tcc_async(
    *args: str, env: dict[str, str], timeout_s: float = 60
) -> tuple[int, str, str]:
    """Like run_tcc, but the event loop keeps serving (e.g. a fake participant) meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        *TCC, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
