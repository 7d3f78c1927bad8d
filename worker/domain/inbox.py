"""Every account in memory: the categoriser as offline replay, rule tests and unit tests
use it. The worker holds accounts in a bounded cache instead (:mod:`worker.accounts`)."""

from __future__ import annotations

from contracts import Event
from worker.domain.account import DEFAULT_EVENT_WINDOW, AccountState
from worker.domain.categoriser import Categoriser, categories_of
from worker.domain.rules import Rules
from worker.domain.state import Account
from worker.domain.updates import Update


class Inbox:
    """Feed it events, get the category updates a worker would publish."""

    def __init__(self, rules: Rules, event_window: int = DEFAULT_EVENT_WINDOW) -> None:
        self.categoriser = Categoriser(rules)
        self.event_window = event_window
        self.accounts: dict[str, AccountState] = {}

    @property
    def rules(self) -> Rules:
        return self.categoriser.rules

    def account(self, account_id: str) -> AccountState:
        state = self.accounts.get(account_id)
        if state is None:
            state = self.accounts[account_id] = AccountState(
                Account(account_id), rules_version=self.rules.version,
                event_window=self.event_window)
        return state

    def handle(self, event: Event) -> list[Update]:
        """Apply one event; duplicates and stale events change nothing and return []."""
        state = self.accounts.get(event.account_id) or self.account(event.account_id)
        updates = self.categoriser.handle(state, event)
        state.forget_changes()  # nothing stores it: keep the change lists from growing
        return updates

    def adopt_rules(self, rules: Rules) -> list[Update]:
        """Switch to new rules and re-categorise every account, in account order."""
        self.categoriser = Categoriser(rules)
        updates: list[Update] = []
        for account_id in sorted(self.accounts):
            updates.extend(self.categoriser.adopt(self.accounts[account_id]))
            self.accounts[account_id].forget_changes()
        return updates

    def categories_of(self, account_id: str, conversation_id: str,
                      agent_id: str) -> frozenset[str]:
        """An agent's current categories for a conversation (empty if unknown)."""
        state = self.accounts.get(account_id)
        if state is None:
            return frozenset()
        return categories_of(state, conversation_id, agent_id)
