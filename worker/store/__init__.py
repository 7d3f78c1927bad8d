"""Where the worker's state survives restarts: the protocol every store implements.

State is kept per account: a store loads one account when an event for it arrives
(start-up reads nothing but the schema) and writes, once per batch and in one
transaction, exactly what the batch changed (:class:`AccountWrite`, one per account).

Implementations: :mod:`worker.store.sqlite` (the embedded default) and
:mod:`worker.store.memory` (tests and tools).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

from worker.domain.account import AccountState, AccountWrite


class StateStore(Protocol):
    """Durable per-account state."""

    def load_account(self, account_id: str, *, event_window: int,
                     tombstone_window: int) -> AccountState | None:
        """The account as of the last commit, or None if it was never stored. Raises
        :class:`worker.errors.StoreError` if the store cannot be read."""

    def commit(self, writes: Sequence[AccountWrite]) -> None:
        """Write every account change of one batch in one transaction, or raise
        :class:`worker.errors.StoreError` having written nothing
        (:class:`worker.errors.StoreConflictError` when another worker wrote first)."""

    def accounts_behind(self, rules_version: str, after: str, limit: int) -> list[str]:
        """Up to ``limit`` stored accounts, in id order after ``after``, whose categories
        were computed under other rules than ``rules_version`` (the rules sweep)."""

    def due_accounts(self, now: datetime, limit: int) -> list[str]:
        """Up to ``limit`` stored accounts with a time crossing due at or before ``now``,
        the earliest due first (from an index by due time: no scan)."""

    def next_due(self) -> datetime | None:
        """The earliest time crossing due in the stored accounts (None: none is)."""

    def changed_elsewhere(self) -> bool:
        """True if another worker committed since our last :meth:`resync` or commit."""

    def resync(self) -> None:
        """Our cached accounts were dropped: take the store as it is now as our base."""

    def close(self) -> None:
        """Release the store."""



_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def micros(moment: datetime) -> int:
    """A due time as stored: whole microseconds since the epoch (exact, ordered)."""
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)
