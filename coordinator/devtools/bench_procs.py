"""Processes `tcc bench` starts and measures: CPU time and memory from /proc (Linux).

`tcc serve --workers N` is a supervisor with N worker processes, so a coordinator's cost is
that of its whole process tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import aiohttp

from coordinator.core.errors import ServiceStartError
from coordinator.devtools.children import Managed

_PROC = Path("/proc")
_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def has_proc() -> bool:
    return (_PROC / "self" / "stat").exists()


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """root and every process descending from it."""
    parents: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (their own, not that of children already gone)."""
    ticks = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / _TICKS_PER_S


def rss_bytes(pid: int) -> int:
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_cpu_seconds(root: int | None) -> float:
    return cpu_seconds(process_tree(root)) if root is not None and has_proc() else 0.0


def tree_rss(root: int | None) -> tuple[int, int] | None:
    """(the largest process, the sum) of a process tree's resident memory, in bytes."""
    if root is None or not has_proc():
        return None
    sizes = [rss_bytes(pid) for pid in process_tree(root)]
    return max(sizes, default=0), sum(sizes)


def pid_of(proc: Managed) -> int | None:
    return proc.proc.pid if proc.proc is not None and proc.alive else None


def stop_tree(proc: Managed) -> None:
    """SIGTERM (then SIGKILL after a timeout) for the process, then SIGKILL for any of its
    descendants still there: a supervisor killed in its turn leaves its workers behind."""
    root = pid_of(proc)
    family = process_tree(root) if root is not None and has_proc() else []
    proc.terminate()
    for pid in family[1:]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


async def wait_ready(proc: Managed, url: str, timeout_s: float = 90.0) -> None:
    """Poll url until it answers 200; fail at once, with the log's last lines, if the
    process exits."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if not proc.alive:
                raise ServiceStartError(f"{proc.name} exited at start-up: {log_tail(proc)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise ServiceStartError(f"{proc.name} not ready after {timeout_s:g}s: {log_tail(proc)}")


def log_tail(proc: Managed, lines: int = 3) -> str:
    try:
        text = proc.log_path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"(no log at {proc.log_path})"
    return " | ".join(text[-lines:]) + f" (log: {proc.log_path})"
