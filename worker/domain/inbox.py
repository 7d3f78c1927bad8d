"""Turn events into category updates: state transitions, rule evaluation, diffing.

The cost of an event does not grow with the number of agents. Agents in the same
relation to a conversation (joined it or not, member of its group or not) share one
evaluation, and only agents whose relation or whose relation's categories changed are
looked at. A change that really affects every agent produces an update for each of
them, so that work is paid for by output.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime

from contracts import AccountUpdated, CategoryUpdate, ConversationEvent, Event
from worker.domain.state import (
    EMPTY_BY_RELATION,
    NO_CATEGORIES,
    RELATIONS,
    Account,
    Conversation,
    State,
    agents_mentioned,
    apply_conversation_event,
    apply_snapshot,
    is_stale,
    learn_agents,
)
from worker.rulebook import CompiledRules

# (agent_id, categories before, categories after)
AgentChange = tuple[str, frozenset[str], frozenset[str]]
# (account_id, conversation_id, agent_id, categories before, categories after)
Change = tuple[str, str, str, frozenset[str], frozenset[str]]


def update_id_for(account_id: str, cause_event_id: str, agent_id: str,
                  conversation_id: str) -> str:
    """Deterministic per (cause event, agent, conversation): downstream dedups by it."""
    name = "\x1f".join((account_id, cause_event_id, agent_id, conversation_id))
    # blake2b is ~10x cheaper than uuid5 and just as deterministic; 128 bits, hex.
    return hashlib.blake2b(name.encode(), digest_size=16, person=b"inbox-rules-upd").hexdigest()


class Inbox:
    """The categoriser: feed it events, get the category updates to publish."""

    def __init__(self, rules: CompiledRules, state: State | None = None) -> None:
        self.rules = rules
        self.state = state if state is not None else State()
        if self.state.rules_version is None:
            self.state.rules_version = rules.version

    # -- entry points ------------------------------------------------------
    def handle(self, event: Event) -> list[CategoryUpdate]:
        """Apply one event; duplicates and stale events change nothing and return []."""
        state = self.state
        if state.has_seen(event.account_id, event.event_id):
            return []
        if isinstance(event, AccountUpdated):
            changes = self._account_updated(event)
        else:
            changes = self._conversation_event(event)
        state.remember(event.account_id, event.event_id)
        return self._publishable(changes, event.event_id, event.occurred_at)

    def adopt_rules(self, rules: CompiledRules, occurred_at: datetime) -> list[CategoryUpdate]:
        """Switch to new rules and re-categorise everything, diffing against what was sent."""
        self.rules = rules
        changes: list[Change] = []
        for account_id in sorted(self.state.accounts.keys() | self.state.conversations.keys()):
            account = self.state.account(account_id)
            changes.extend(self._recategorise_account(account, account))
        self.state.rules_version = rules.version
        return self._publishable(changes, f"rules:{rules.version}", occurred_at)

    # -- events ------------------------------------------------------------
    def _account_updated(self, event: AccountUpdated) -> list[Change]:
        old = self.state.account(event.account_id)
        if is_stale(old.last_sequence, event.sequence):
            return []
        new = apply_snapshot(old, event)
        self.state.put_account(new)
        return self._recategorise_account(old, new)

    def _conversation_event(self, event: ConversationEvent) -> list[Change]:
        state = self.state
        old_account = state.account(event.account_id)
        old = state.conversation(event.account_id, event.conversation_id)
        if old is not None and is_stale(old.last_sequence, event.sequence):
            return []
        base = old or Conversation(event.account_id, event.conversation_id)
        new = apply_conversation_event(base, event)
        # Any event reveals its agents, even one for a deleted conversation.
        account = learn_agents(old_account, agents_mentioned(event))
        if account is not old_account:
            # A newly seen agent can change the account's shape (one agent -> several):
            # the whole account is re-categorised, this conversation included.
            state.put_account(account)
            state.put_conversation(replace(new, categories=base.categories))
            return self._recategorise_account(old_account, account,
                                              changed={new.conversation_id: base})
        return self._settle(old_account, account, base, new)

    # -- categorisation ----------------------------------------------------
    def _recategorise_account(self, old_account: Account, account: Account,
                              changed: dict[str, Conversation] | None = None,
                              ) -> list[Change]:
        changes: list[Change] = []
        conversations = sorted(self.state.conversations_of(account.account_id),
                               key=lambda c: c.conversation_id)
        for conversation in conversations:
            before = (changed or {}).get(conversation.conversation_id, conversation)
            changes.extend(self._settle(old_account, account, before, conversation))
        return changes

    def _settle(self, old_account: Account, account: Account, old: Conversation,
                new: Conversation) -> list[Change]:
        """Evaluate ``new``, store it, and emit an update for every agent whose set changed."""
        categories = self._evaluate(account, new)
        if new is not old or categories != new.categories:
            # An account-wide pass leaves most conversations as they were: writing
            # them would make the store rewrite the whole account every batch.
            new = replace(new, categories=categories)
            self.state.put_conversation(new)
        return [(account.account_id, new.conversation_id, agent, before, after)
                for agent, before, after in self._changed_agents(old_account, account, old, new)]

    def _evaluate(self, account: Account, conversation: Conversation) -> tuple[frozenset[str], ...]:
        evaluate = self.rules.evaluate
        shared = (conversation.status, conversation.group_id is not None,
                  len(conversation.joined))
        account_facts = (account.plan, len(account.agents), len(account.groups))
        return tuple(evaluate((*shared, joined, in_group, *account_facts))
                     for joined, in_group in RELATIONS)

    @staticmethod
    def _changed_agents(old_account: Account, account: Account, old: Conversation,
                        new: Conversation) -> Iterator[AgentChange]:
        old_cats, new_cats = old.categories, new.categories
        old_members = old_account.members(old.group_id)
        new_members = account.members(new.group_id)
        # Agents whose relation may have changed, or whose relation's categories did.
        candidates: set[str] = set(old.joined | new.joined)
        if old_members != new_members:
            candidates |= old_members ^ new_members
        if old_cats[1] != new_cats[1]:  # member of the group, not joined
            candidates |= old_members | new_members
        if old_account.agents != account.agents:
            candidates |= old_account.agents ^ account.agents
        if old_cats[0] != new_cats[0]:  # neither joined nor a member: everybody else
            candidates |= old_account.agents | account.agents
        old_agents, new_agents = old_account.agents, account.agents
        old_joined, new_joined = old.joined, new.joined
        for agent in sorted(candidates):
            before = (old_cats[2 * (agent in old_joined) + (agent in old_members)]
                      if agent in old_agents else NO_CATEGORIES)
            after = (new_cats[2 * (agent in new_joined) + (agent in new_members)]
                     if agent in new_agents else NO_CATEGORIES)
            if before != after:
                yield agent, before, after

    def _publishable(self, changes: list[Change], cause: str,
                     occurred_at: datetime) -> list[CategoryUpdate]:
        """Apply the count deltas of the whole event, then build its updates.

        Counts are the badge counts *after* the event, so every delta is applied before
        the first update is built.
        """
        state = self.state
        for account_id, _, agent, before, after in changes:
            counts = state.counts_of(account_id, agent)
            for category in before - after:
                counts[category] = counts.get(category, 0) - 1
            for category in after - before:
                counts[category] = counts.get(category, 0) + 1
            state.touch_counts(account_id, agent)
        names, version = self.rules.categories, self.rules.version
        # A fan-out repeats the same (before, after) pair for many agents: sort once.
        lists: dict[tuple[frozenset[str], frozenset[str]],
                    tuple[list[str], list[str], list[str]]] = {}
        updates = []
        for account_id, conversation_id, agent, before, after in changes:
            counts = state.counts[account_id][agent]
            pair = lists.get((before, after))
            if pair is None:
                pair = lists[(before, after)] = (
                    sorted(after), sorted(after - before), sorted(before - after))
            updates.append(CategoryUpdate(
                update_id=update_id_for(account_id, cause, agent, conversation_id),
                account_id=account_id,
                agent_id=agent,
                conversation_id=conversation_id,
                categories=pair[0],
                added=pair[1],
                removed=pair[2],
                counts={name: counts.get(name, 0) for name in names},
                cause_event_id=cause,
                rules_version=version,
                occurred_at=occurred_at,
            ))
        return updates


def categories_of(state: State, account_id: str, conversation_id: str,
                  agent_id: str) -> frozenset[str]:
    """An agent's current categories for a conversation (empty if unknown)."""
    account = state.account(account_id)
    conversation = state.conversation(account_id, conversation_id)
    if conversation is None or agent_id not in account.agents:
        return NO_CATEGORIES
    return conversation.categories[conversation.relation_of(agent_id, account)]


__all__ = ["EMPTY_BY_RELATION", "Inbox", "categories_of", "update_id_for"]
