"""The coordinator's error tree; the HTTP layer maps each leaf to one status code."""

from __future__ import annotations

from coordinator.core.states import GlobalStatus


class CoordinatorError(Exception):
    """Base of every error the coordinator raises on purpose."""


class NotFound(CoordinatorError):
    """No transaction (or branch) with that id."""


class Forbidden(CoordinatorError):
    """The caller's key does not allow this (403)."""


class Conflict(CoordinatorError):
    """The request contradicts what the log already holds (409)."""


class NotTrying(Conflict):
    """The transaction has left the trying phase, so it takes no more branches (409)."""

    def __init__(self, status: GlobalStatus) -> None:
        super().__init__(f"transaction is {status.value}; branches can only be added while trying")
        self.status = status


class TakenGid(Conflict):
    """The gid cannot be used for a new transaction. The words are the same whoever holds
    it, so that a refusal tells nobody whether another service uses it (409)."""

    def __init__(self, gid: str) -> None:
        super().__init__(
            f"gid {gid!r} cannot be used for a new transaction: it is taken"
            " (omit gid to have one generated)"
        )


class InvalidInput(CoordinatorError):
    """A value that passed parsing but cannot be accepted (422)."""


class LimitExceeded(CoordinatorError):
    """A configured limit (branches per transaction, ...) would be passed (422)."""


class CircuitOpen(CoordinatorError):
    """A participant's circuit breaker is open: a new try to it fails at once rather than
    hold resources elsewhere (503, with when to try again)."""

    def __init__(self, participant: str, reason: str, retry_in_s: float) -> None:
        super().__init__(
            f"participant {participant!r} is not taking new work ({reason}); its calls resume"
            f" once a probe succeeds (in about {max(retry_in_s, 0.0):.0f} s at the earliest)"
        )
        self.participant = participant
        self.retry_in_s = retry_in_s


class DatabaseUnavailable(CoordinatorError):
    """Postgres cannot be reached right now; nothing was written (503)."""


class LogClosed(DatabaseUnavailable):
    """The log is closing: a write it was handed after close, or one a forced close cut
    short, was not confirmed (503; a repeat goes to another coordinator)."""


class MigrationError(CoordinatorError):
    """The migrations folder or the recorded schema history is not as expected."""


class ServiceStartError(CoordinatorError):
    """A service of `tcc up` / `tcc demo` did not come up."""


class EmbeddedDatabaseError(CoordinatorError):
    """The embedded Postgres could not be started."""


class StartRefused(CoordinatorError):
    """`tcc serve` / `tcc up` will not start: a port is taken, or too few open files allowed."""


class UsageError(CoordinatorError):
    """Bad command-line input: one line on stderr, exit 2."""
