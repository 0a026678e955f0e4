"""The coordinator's error tree; the HTTP layer maps each leaf to one status code."""

from __future__ import annotations


class CoordinatorError(Exception):
    """Base of every error the coordinator raises on purpose."""


class NotFound(CoordinatorError):
    """No transaction (or branch) with that id."""


class Forbidden(CoordinatorError):
    """The caller's key does not allow this (403)."""


class Conflict(CoordinatorError):
    """The request contradicts what the log already holds (409)."""


class InvalidInput(CoordinatorError):
    """A value that passed parsing but cannot be accepted (422)."""


class LimitExceeded(CoordinatorError):
    """A configured limit (branches per transaction, ...) would be passed (422)."""


class DatabaseUnavailable(CoordinatorError):
    """Postgres cannot be reached right now; nothing was written (503)."""


class MigrationError(CoordinatorError):
    """The migrations folder or the recorded schema history is not as expected."""


class ServiceStartError(CoordinatorError):
    """A service of `tcc up` / `tcc demo` did not come up."""


class EmbeddedDatabaseError(CoordinatorError):
    """The embedded Postgres could not be started."""


class StartRefused(CoordinatorError):
    """`tcc serve` / `tcc up` will not start: a port is taken, or too few open files allowed."""
