"""`tcc bench --profile`'s sampler against a real process (py-spy, a dev dependency)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from coordinator.devtools import bench_profile
from coordinator.devtools.bench_profile import Part

# A process that spends its CPU checking JSON (one of our parts) until it is stopped.
BUSY_CHECKING_JSON = """
from coordinator.core import jsonsafe
document = {"k%d" % i: [i, str(i), {"x": [1.5, None, True]}] for i in range(2000)}
while True:
    jsonsafe.check_storable(document)
"""


async def test_a_busy_process_is_sampled_and_its_time_given_to_the_part_it_runs(
    tmp_path: Path,
) -> None:
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", BUSY_CHECKING_JSON)
    try:
        found = await bench_profile.record(child.pid, 0.5, 2.0, tmp_path / "busy.raw")
    finally:
        child.kill()
        await child.wait()
    assert not isinstance(found, str), found  # a reason means py-spy could not sample
    assert found[Part.MODELS] > 0.5, found
    assert (tmp_path / "busy.raw").read_text().strip()


async def test_a_process_that_is_gone_gives_py_spys_reason(tmp_path: Path) -> None:
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await child.wait()
    found = await bench_profile.record(child.pid, 0.0, 1.0, tmp_path / "gone.raw")
    assert isinstance(found, str), found
    assert found
