"""What the BatchedWriter reports (its hooks) and how it tells bad rows from a lost link."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import exc


class WriterHooks(Protocol):
    """What the writer reports, for metrics (no global registry: the owner wires these)."""

    def buffer_depth(self, depth: int) -> None:
        """Rounds waiting in memory, including the batch being written."""

    def batch_written(self, ok: bool, rounds: int) -> None:
        """A write attempt of `rounds` rounds finished, ok or not."""

    def rows_written(self, rounds: int, step_results: int) -> None:
        """Rows that reached the database."""

    def database_error(self, error: BaseException) -> None:
        """A write failed with this error (use its type for labels, never its text)."""

    def rounds_dropped(self, rounds: int, why: str) -> None:
        """Rounds given up: `overflow` (buffer full), `rejected` (bad data), `shutdown`."""


class NoHooks:
    """Hooks that do nothing."""

    def buffer_depth(self, depth: int) -> None:
        pass

    def batch_written(self, ok: bool, rounds: int) -> None:
        pass

    def rows_written(self, rounds: int, step_results: int) -> None:
        pass

    def database_error(self, error: BaseException) -> None:
        pass

    def rounds_dropped(self, rounds: int, why: str) -> None:
        pass


def is_permanent(error: BaseException) -> bool:
    """True when writing the same rows again cannot succeed (the rows are bad, not the link).

    Connection, lock, timeout and schema problems are transient: they heal when the database
    is back or migrated. Integrity and data errors, and values that cannot be bound, are not.
    """
    if isinstance(error, exc.IntegrityError | exc.DataError):
        return True
    if isinstance(error, exc.StatementError) and not isinstance(error, exc.DBAPIError):
        return True  # failed while binding parameters, before reaching the database
    return isinstance(error, TypeError | ValueError)
