"""`tcc serve --workers N`: N coordinator processes sharing one port (SO_REUSEPORT).

Each worker is a full coordinator with its own owner id; leases on the shared
database keep them from working on the same transaction at once. The parent only
supervises: it forwards SIGTERM/SIGINT and restarts a worker that dies. It also gives the
workers one metrics directory (PROMETHEUS_MULTIPROC_DIR), so that a scrape, whichever worker
it lands on, reports the whole server (coordinator/metrics.py). When a worker dies, before its
replacement starts, the supervisor folds the dead worker's counters and histograms into the
directory's archive and removes its files: the totals keep its counts and the directory stays
the same size however many workers die.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import structlog

from coordinator.metrics import SHARED_DIR_ENV, prepare_shared_dir, worker_gone

log = structlog.get_logger(__name__)

RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 30.0


class Supervisor:
    def __init__(self, count: int, settings_env: dict[str, str]) -> None:
        """``settings_env``: every setting as TCC_* variables, so workers match the parent."""
        self.count = count
        given = os.environ.get(SHARED_DIR_ENV)
        # The operator's directory is used as given (and emptied); ours goes at exit.
        self.metrics_dir = Path(given) if given else Path(tempfile.mkdtemp(prefix="tcc-metrics-"))
        self.own_metrics_dir = not given
        prepare_shared_dir(self.metrics_dir)
        self.env = {
            **os.environ,
            **settings_env,
            "TCC_WORKERS": "1",
            "TCC_MIGRATE": "false",
            SHARED_DIR_ENV: str(self.metrics_dir),
        }
        self.command = [sys.executable, "-m", "coordinator.cli", "serve", "--reuse-port"]
        self.children: list[subprocess.Popen[bytes]] = []
        self.stopping = False

    def _spawn(self) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(self.command, env=self.env)
        log.info("worker_started", pid=child.pid)
        return child

    def _fold_metrics(self, pid: int) -> None:
        try:
            worker_gone(pid, self.metrics_dir)
        except (OSError, RuntimeError, ValueError) as exc:
            # A damaged file must not stop the restart; its counts may be lost from the totals.
            log.error("worker_metrics_not_folded", pid=pid, error=str(exc))

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
                    self._fold_metrics(child.pid)
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
        if self.own_metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return 0
