"""The configured limits on what a client may ask for, checked on the domain records so that
every entry point (the /v1 API, DTM's, the CLI) is held to the same bounds. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coordinator.core import jsonsafe
from coordinator.core.errors import LimitExceeded
from coordinator.core.records import NewBranch, NewTransaction

# The per-transaction option that sets the base of the retry backoff (DTM's retry_interval).
RETRY_INTERVAL_OPTION = "retry_interval"


def json_size(value: Any) -> int:
    """Bytes of the value as compact UTF-8 JSON (as the log stores it)."""
    return len(jsonsafe.dumps(value).encode())


@dataclass(frozen=True, slots=True)
class Limits:
    max_timeout_s: float
    max_call_timeout_s: float
    max_retry_interval_s: float
    max_branches: int
    max_payload_bytes: int
    max_metadata_bytes: int

    def check_transaction(self, new: NewTransaction) -> None:
        self.check_seconds("timeout_s", new.timeout_s, self.max_timeout_s)
        self.check_options(new.call_timeout_s, new.options)
        if len(new.branches) > self.max_branches:
            raise LimitExceeded(f"branches: at most {self.max_branches} per transaction")
        self.check_bytes("metadata", json_size(new.metadata), self.max_metadata_bytes)
        for i, branch in enumerate(new.branches):
            self.check_branch(branch, f"branches.{i}.")

    def check_options(self, call_timeout_s: float | None, options: Mapping[str, Any]) -> None:
        """Options a client may set at begin or again when deciding (DTM's submit)."""
        if call_timeout_s is not None:
            self.check_seconds("call_timeout_s", call_timeout_s, self.max_call_timeout_s)
        interval = options.get(RETRY_INTERVAL_OPTION)
        if isinstance(interval, int | float):
            self.check_seconds(RETRY_INTERVAL_OPTION, interval, self.max_retry_interval_s)

    def check_branch(self, branch: NewBranch, prefix: str = "") -> None:
        self.check_bytes(f"{prefix}payload", json_size(branch.payload), self.max_payload_bytes)
        if branch.data is not None:
            self.check_bytes(f"{prefix}data", len(branch.data.encode()), self.max_payload_bytes)

    @staticmethod
    def check_seconds(field: str, value: float, limit: float) -> None:
        if value > limit:
            raise LimitExceeded(f"{field}: must be at most {limit:g} seconds")

    @staticmethod
    def check_bytes(field: str, size: int, limit: int) -> None:
        if size > limit:
            raise LimitExceeded(f"{field}: {size} bytes; at most {limit} are accepted")
