"""`tcc conformance`: runs the protocol's anomalies against a live participant and says,
scenario by scenario, what it saw and what to fix (being built: issue 20, part 3)."""

from __future__ import annotations

import argparse

from coordinator.core.errors import UsageError


async def conformance_command(args: argparse.Namespace) -> int:
    raise UsageError("not available yet")
