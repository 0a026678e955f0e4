"""What `tcc serve` loads: never the developer tooling."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import coordinator.cli, coordinator.api.app, coordinator.engine.runtime, coordinator.api.server
from coordinator.cli import build_parser
build_parser().parse_args(["serve", "--insecure"])
print(sorted(m for m in sys.modules if m.startswith("coordinator.devtools")))
"""


def test_serving_modules__never_load_developer_tooling() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
