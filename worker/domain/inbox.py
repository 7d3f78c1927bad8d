"""Every account in memory: the categoriser as offline replay, rule tests and unit tests
use it. The worker holds accounts in a bounded cache instead (:mod:`worker.accounts`).

Time (rules that test a time fact): before each event, every threshold crossing due at
or before its ``occurred_at`` is made first, in every account, in time order (instants
in order, accounts by id at the same instant); :meth:`Inbox.cross_until` makes the rest
up to a given moment (``inbox-rules replay --until``).
"""

from __future__ import annotations

from datetime import datetime
from heapq import heappop, heappush

from contracts import Event
from worker.domain.account import DEFAULT_EVENT_WINDOW, AccountState
from worker.domain.categoriser import Categoriser
from worker.domain.reading import categories_of
from worker.domain.rules import Rules
from worker.domain.state import Account
from worker.domain.updates import Update


class Inbox:
    """Feed it events, get the category updates a worker would publish."""

    def __init__(self, rules: Rules, event_window: int = DEFAULT_EVENT_WINDOW) -> None:
        self.categoriser = Categoriser(rules)
        self.event_window = event_window
        self.accounts: dict[str, AccountState] = {}
        # (an account's next crossing, account id): the earliest first. An entry whose
        # account moved on is stale and skipped; _scheduled is each account's newest.
        self._due: list[tuple[datetime, str]] = []
        self._scheduled: dict[str, datetime] = {}

    @property
    def rules(self) -> Rules:
        return self.categoriser.rules

    def account(self, account_id: str) -> AccountState:
        state = self.accounts.get(account_id)
        if state is None:
            state = self.accounts[account_id] = AccountState(
                Account(account_id), rules_version=self.rules.version,
                event_window=self.event_window, tracked=False)
        return state

    def handle(self, event: Event) -> list[Update]:
        """Apply one event; duplicates and stale events change nothing and return []
        (but the crossings due before it are made all the same)."""
        state = self.accounts.get(event.account_id) or self.account(event.account_id)
        updates = self.cross_until(event.occurred_at)
        # BadEvent (valid alone, impossible for its conversation) leaves the state as
        # the crossings before it made it: the worker dead-letters such an event.
        updates.extend(self.categoriser.handle(state, event))
        self._schedule(state)
        return updates

    def cross_until(self, moment: datetime) -> list[Update]:
        """Make every crossing due at or before ``moment``, in time order."""
        updates: list[Update] = []
        heap, scheduled = self._due, self._scheduled
        while heap and heap[0][0] <= moment:
            due, account_id = heappop(heap)
            if scheduled.get(account_id) != due:
                continue  # stale: the account moved on since
            del scheduled[account_id]
            state = self.accounts[account_id]
            updates.extend(self.categoriser.cross(state, due))
            self._schedule(state)
        return updates

    def _schedule(self, state: AccountState) -> None:
        due = state.next_due()
        account_id = state.account_id
        if due is not None and self._scheduled.get(account_id) != due:
            self._scheduled[account_id] = due
            heappush(self._due, (due, account_id))
        elif due is None:
            self._scheduled.pop(account_id, None)

    def adopt_rules(self, rules: Rules) -> list[Update]:
        """Switch to new rules and re-categorise every account, in account order."""
        self.categoriser = Categoriser(rules)
        updates: list[Update] = []
        self._due.clear()
        self._scheduled.clear()
        for account_id in sorted(self.accounts):
            state = self.accounts[account_id]
            updates.extend(self.categoriser.adopt(state))
            self._schedule(state)
        return updates

    def categories_of(self, account_id: str, conversation_id: str,
                      agent_id: str) -> frozenset[str]:
        """An agent's current categories for a conversation (empty if unknown)."""
        state = self.accounts.get(account_id)
        if state is None:
            return frozenset()
        return categories_of(state, conversation_id, agent_id)
