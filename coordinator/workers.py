"""`tcc serve --workers N`: N coordinator processes sharing one port (SO_REUSEPORT).

Each worker is a full coordinator with its own owner id; leases on the shared
database keep them from working on the same transaction at once. The parent only
supervises: it forwards SIGTERM/SIGINT and restarts a worker that dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

import structlog

log = structlog.get_logger(__name__)

RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 30.0


class Supervisor:
    def __init__(self, count: int, settings_env: dict[str, str]) -> None:
        """``settings_env``: every setting as TCC_* variables, so workers match the parent."""
        self.count = count
        self.env = {**os.environ, **settings_env, "TCC_WORKERS": "1", "TCC_MIGRATE": "false"}
        self.command = [sys.executable, "-m", "coordinator.cli", "serve", "--reuse-port"]
        self.children: list[subprocess.Popen[bytes]] = []
        self.stopping = False

    def _spawn(self) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(self.command, env=self.env)
        log.info("worker_started", pid=child.pid)
        return child

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.children = [self._spawn() for _ in range(self.count)]
        while not self.stopping:
            for i, child in enumerate(self.children):
                code = child.poll()
                if code is not None and not self.stopping:
                    log.error("worker_died", pid=child.pid, exit_code=code)
                    time.sleep(RESTART_DELAY_S)  # a worker that cannot start must not spin
                    self.children[i] = self._spawn()
            time.sleep(0.2)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in self.children:
            try:
                child.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("worker_killed_after_timeout", pid=child.pid)
                child.kill()
                child.wait()
        log.info("workers_stopped", count=self.count)
        return 0
