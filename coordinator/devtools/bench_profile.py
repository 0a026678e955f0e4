"""`tcc bench --profile`: where a coordinator's CPU goes, by part, over a point's window.

py-spy samples the process (and its workers) while the point is measured, without stopping
it (`--nonblocking`), and writes each sampled stack as one line (`--format raw`: frames from
the outermost to the innermost, `;`-separated, then the count). Each sample is given to the
part of the code that was running: the innermost frame whose file says which part it is
decides; frames of code every part uses (the standard library, aiohttp's streams and writers,
the event loop) are passed over to the frame that called them. The part's share of the samples,
times the point's CPU per transaction, is its milliseconds of CPU per transaction.

A profiled point runs a little slower (the sampling itself): read the shares, not its tx/s.
"""

from __future__ import annotations

import asyncio
import enum
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from coordinator.core.errors import UsageError

SAMPLES_PER_S = 100


class Part(enum.StrEnum):
    HTTP_IN = "HTTP in"
    HTTP_OUT = "HTTP out"
    MODELS = "request/response models"
    LOG_WRITES = "log writes"
    METRICS = "metrics"
    TRACING = "tracing"
    LOGGING = "logging"
    DRIVER = "driver and core"
    LOOP = "event loop and other"


# (marker in a frame's file, the part it makes the sample), tried in order on each frame from
# the innermost out; the first frame with a marker decides. Frames of shared plumbing have
# none and are passed over.
_MARKERS: tuple[tuple[str, Part], ...] = (
    ("prometheus_client/", Part.METRICS),
    ("coordinator/metrics.py", Part.METRICS),
    ("opentelemetry/", Part.TRACING),
    ("coordinator/tracing.py", Part.TRACING),
    ("coordinator/api/tracecontext.py", Part.TRACING),
    ("structlog/", Part.LOGGING),
    ("logging/", Part.LOGGING),
    ("coordinator/logs.py", Part.LOGGING),
    ("pydantic", Part.MODELS),
    ("coordinator/api/schemas.py", Part.MODELS),
    ("coordinator/api/wire.py", Part.MODELS),
    ("coordinator/api/body.py", Part.MODELS),
    ("coordinator/core/jsonsafe.py", Part.MODELS),
    ("orjson", Part.MODELS),
    ("asyncpg/", Part.LOG_WRITES),
    ("coordinator/txlog/", Part.LOG_WRITES),
    ("aiohttp/client", Part.HTTP_OUT),
    ("aiohttp/connector", Part.HTTP_OUT),
    ("aiohttp/resolver", Part.HTTP_OUT),
    ("coordinator/outbound.py", Part.HTTP_OUT),
    ("aiohttp/web_", Part.HTTP_IN),  # not aiohttp/web.py: run_app holds the loop itself
    ("aiohttp/http_parser", Part.HTTP_IN),
    ("coordinator/api/", Part.HTTP_IN),  # middlewares and handlers: the request's own path
    ("coordinator/engine/", Part.DRIVER),
    ("coordinator/core/", Part.DRIVER),
    ("coordinator/dialects/", Part.DRIVER),
    # The null coordinator's own work (its main() holds the loop: not a marker).
    ("begin (coordinator/devtools/null_coordinator.py", Part.DRIVER),
    ("_call (coordinator/devtools/null_coordinator.py", Part.DRIVER),
)


def part_of(frames: list[str]) -> Part:
    """The part a sampled stack (outermost frame first) belongs to."""
    for frame in reversed(frames):
        for marker, part in _MARKERS:
            if marker in frame:
                return part
    return Part.LOOP


def shares(raw_lines: Iterable[str]) -> dict[Part, float]:
    """Each part's share of the samples in py-spy's raw output (0..1, every part present)."""
    counts: Counter[Part] = Counter()
    for line in raw_lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        counts[part_of(stack.split(";"))] += int(count)
    total = sum(counts.values())
    return {part: (counts[part] / total if total else 0.0) for part in Part}


def ms_per_tx(part_shares: dict[Part, float], cpu_ms_per_tx: float | None) -> dict[str, float]:
    """The shares as milliseconds of CPU per transaction (empty without a CPU figure)."""
    if cpu_ms_per_tx is None:
        return {}
    return {part.value: round(share * cpu_ms_per_tx, 3) for part, share in part_shares.items()}


def py_spy() -> str:
    """py-spy's path: beside this Python (a venv's bin) or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("py-spy")
    if found is None:
        raise UsageError("--profile needs py-spy: pip install py-spy")
    return found


async def record(pid: int, delay_s: float, seconds: float, out: Path) -> dict[Part, float] | str:
    """Sample ``pid`` and its children for ``seconds`` after ``delay_s``: the shares, or why
    there are none (py-spy's last line)."""
    await asyncio.sleep(delay_s)
    proc = await asyncio.create_subprocess_exec(
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--nonblocking",
        "--rate",
        str(SAMPLES_PER_S),
        "--duration",
        str(max(1, round(seconds))),
        "--format",
        "raw",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    found = await asyncio.to_thread(_read_shares, out) if proc.returncode == 0 else None
    if found is None:
        lines = err.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"py-spy exited with {proc.returncode}"
    return found


def _read_shares(out: Path) -> dict[Part, float] | None:
    if not out.is_file():
        return None
    with out.open() as raw:
        return shares(raw)
