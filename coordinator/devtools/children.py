"""Child processes that harnesses start, kill and restart: chaos runs, `tcc up`, the demo."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    """This process's environment without TCC_* settings, for children configured explicitly."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TCC_")}


def log_path_of(log_dir: Path, name: str) -> Path:
    """Where a managed child's output goes (appended across restarts and runs)."""
    return log_dir / f"{name}.log"


class Managed:
    """One child process that chaos may kill and restart on the same port."""

    def __init__(self, name: str, command: list[str], env: dict[str, str] | None, log_dir: Path):
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_path_of(log_dir, name)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=log)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its socket but answers nothing, like a hung service."""
        if self.proc is not None and self.alive:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.alive:
            self.proc.send_signal(signal.SIGCONT)

    def terminate(self) -> None:
        if self.proc is not None and self.alive:
            self.proc.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
