"""The worker's working set: account states loaded on demand, evicted when unused.

Memory is bounded by ``capacity`` (accounts), not by how many accounts the store
holds. Accounts touched by a batch that is not yet committed are pinned: their memory
is ahead of the store, so evicting them would lose changes. Rolling a batch back is
evicting what it touched: the next use reloads the last commit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from worker.domain.account import AccountState
from worker.domain.state import Account
from worker.store import StateStore


class AccountCache:
    def __init__(self, store: StateStore, capacity: int, event_window: int,
                 tombstone_window: int) -> None:
        self.store = store
        self.capacity = capacity
        self.event_window = event_window
        self.tombstone_window = tombstone_window
        self._states: OrderedDict[str, AccountState] = OrderedDict()
        self._pins: dict[str, int] = {}
        self.loads = 0

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, account_id: object) -> bool:
        return account_id in self._states

    def get(self, account_id: str, rules_version: str) -> AccountState:
        """The account's state: cached, loaded from the store, or new (under
        ``rules_version``). Raises :class:`worker.errors.StoreError` if unreadable."""
        state = self._states.get(account_id)
        if state is not None:
            self._states.move_to_end(account_id)
            return state
        state = self.store.load_account(account_id, event_window=self.event_window,
                                        tombstone_window=self.tombstone_window)
        self.loads += 1
        if state is None:
            state = AccountState(Account(account_id), rules_version=rules_version,
                                 event_window=self.event_window,
                                 tombstone_window=self.tombstone_window)
        self._states[account_id] = state
        return state

    def peek(self, account_id: str) -> AccountState | None:
        return self._states.get(account_id)

    def pin(self, account_ids: set[str]) -> None:
        for account_id in account_ids:
            self._pins[account_id] = self._pins.get(account_id, 0) + 1

    def unpin(self, account_ids: set[str]) -> None:
        for account_id in account_ids:
            left = self._pins.get(account_id, 0) - 1
            if left > 0:
                self._pins[account_id] = left
            else:
                self._pins.pop(account_id, None)

    def forget(self, account_ids: set[str]) -> None:
        """Drop these accounts (and their pins): the next use reloads the last commit."""
        for account_id in account_ids:
            self._states.pop(account_id, None)
            self._pins.pop(account_id, None)

    def forget_where(self, belongs: Callable[[str], bool]) -> None:
        """Drop every account for which ``belongs`` says so (a partition moved)."""
        self.forget({a for a in self._states if belongs(a)})

    def clear(self) -> None:
        self._states.clear()
        self._pins.clear()

    def trim(self) -> int:
        """Evict the least recently used unpinned accounts beyond capacity."""
        evicted = 0
        if len(self._states) <= self.capacity:
            return 0
        for account_id in list(self._states):
            if len(self._states) <= self.capacity:
                break
            if account_id not in self._pins:
                del self._states[account_id]
                evicted += 1
        return evicted
