"""`tcc serve` and `tcc up` on a port that is already taken: one line naming it and its
holder, exit 1, nothing started."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from coordinator.devtools.children import clean_env
from tests.processes import free_port, run_tcc, tcc_env

pytestmark = pytest.mark.slow


@contextmanager
def listening_on(port: int = 0) -> Iterator[int]:
    """A socket of this test process listening on 127.0.0.1; yields its port."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        yield int(holder.getsockname()[1])


def assert_one_line_naming(stderr: str, *parts: str) -> None:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for part in parts:
        assert part in lines[0], lines[0]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve__on_a_taken_port__says_who_holds_it_and_exits_1(
    database_url: str, workers: str
) -> None:
    with listening_on() as port:
        result = run_tcc(
            "serve", "--port", str(port), "--workers", workers, env=tcc_env(database_url)
        )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stdout
    assert_one_line_naming(
        result.stderr, "tcc serve: ", f"127.0.0.1:{port}", f"pid {os.getpid()} ("
    )


def consecutive_free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports on 127.0.0.1 (a few bases are tried)."""
    for _ in range(50):
        base = free_port()
        if base + count <= 65535 and all(_free(base + i) for i in range(count)):
            return base
    raise AssertionError(f"no {count} consecutive free ports found")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("taken", ["coordinator", "inventory"])
def test_up__with_one_of_its_ports_taken__fails_before_starting_anything(
    tmp_path: Path, taken: str
) -> None:
    samples = consecutive_free_ports(3)
    coordinator = free_port()
    port = coordinator if taken == "coordinator" else samples + 1
    data_dir = tmp_path / "pgdata"
    with listening_on(port):
        result = run_tcc(
            "up",
            "--data-dir",
            str(data_dir),
            "--port",
            str(coordinator),
            "--samples-port",
            str(samples),
            env=clean_env(),
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    assert_one_line_naming(
        result.stderr, "tcc up: ", f"127.0.0.1:{port} ({taken})", f"pid {os.getpid()} ("
    )
    # Neither Postgres nor a child ever started: no data folder, no log folder.
    assert not data_dir.exists()
    assert not (tmp_path / "logs").exists()
