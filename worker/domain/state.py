"""Business state as plain data, changed by pure transition functions.

What a conversation *is* (status, group, who joined) lives here; which inbox
categories that puts it in lives only in the rule files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import NamedTuple

from contracts import (
    AccountUpdated,
    AgentAssigned,
    AgentUnassigned,
    ConversationCreated,
    ConversationDeleted,
    ConversationEvent,
    ConversationReopened,
    ConversationResolved,
    ConversationTransferred,
    MessageCreated,
)

# An agent's relation to a conversation: (joined it, member of its group). Agents in
# the same relation share one evaluation, so categories are stored per relation.
Relation = tuple[bool, bool]
RELATIONS: tuple[Relation, ...] = ((False, False), (False, True), (True, False), (True, True))
NO_CATEGORIES: frozenset[str] = frozenset()
EMPTY_BY_RELATION: tuple[frozenset[str], ...] = (NO_CATEGORIES,) * 4


def relation_index(joined: bool, in_group: bool) -> int:
    return 2 * joined + in_group


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    plan: str = "free"
    agents: frozenset[str] = frozenset()
    groups: dict[str, frozenset[str]] = field(default_factory=dict)
    last_sequence: int | None = None

    def members(self, group_id: str | None) -> frozenset[str]:
        if group_id is None:
            return frozenset()
        return self.groups.get(group_id, frozenset())


class Conversation(NamedTuple):
    """Immutable; a NamedTuple rather than a frozen dataclass because one is built for
    every event, and a frozen dataclass's ``__init__`` costs several times more."""

    account_id: str
    conversation_id: str
    status: str = "open"  # open | resolved | deleted
    group_id: str | None = None
    joined: frozenset[str] = frozenset()
    last_sequence: int | None = None
    # Categories per relation (index: relation_index), as last evaluated against the
    # current account and rules. Stored, not recomputed, so a rules change can be
    # diffed against what downstream was told.
    categories: tuple[frozenset[str], ...] = EMPTY_BY_RELATION
    # Since when it waits for an agent (the occurred_at of its creation, its reopening,
    # or the first visitor message after the last agent message); None: not waiting.
    waiting_since: datetime | None = None
    last_message_by: str = "none"  # none | visitor | agent
    # The next instant at which a time threshold of the rules is crossed (None: none
    # is ahead): set with the categories, from the same evaluation.
    due_at: datetime | None = None

    def with_categories(self, categories: tuple[frozenset[str], ...],
                        due_at: datetime | None = None) -> Conversation:
        # Straight from the tuple: _replace costs several times more, the generated
        # __new__ a function call more, and this runs for every event.
        return _new(Conversation, (self.account_id, self.conversation_id, self.status,
                                   self.group_id, self.joined, self.last_sequence, categories,
                                   self.waiting_since, self.last_message_by, due_at))

    def relation_of(self, agent_id: str, account: Account) -> int:
        return relation_index(agent_id in self.joined,
                              agent_id in account.members(self.group_id))


# Conversations are built with the tuple's own constructor: every field given, in order
# (the NamedTuple's generated __new__ would cost one more Python call per event).
_new = tuple.__new__
_NOBODY: frozenset[str] = frozenset()


def apply_snapshot(account: Account, event: AccountUpdated) -> Account:
    """An account snapshot replaces plan, agents and groups (learned agents included)."""
    snapshot = event.data
    return replace(
        account,
        plan=snapshot.plan,
        agents=frozenset(snapshot.agents),
        groups={g: frozenset(members) for g, members in snapshot.groups.items()},
        last_sequence=_next_sequence(account.last_sequence, event.sequence),
    )


def learn_agents(account: Account, agents: Sequence[str]) -> Account:
    unknown = [a for a in agents if a not in account.agents]
    if not unknown:
        return account
    return replace(account, agents=account.agents | frozenset(unknown))


def apply_conversation_event(conversation: Conversation, event: ConversationEvent) -> Conversation:
    """The conversation after one event. A deleted conversation stays deleted.

    Waiting (for an agent) starts when the conversation is first seen (created),
    reopened, or written to by the visitor after an agent's message; an agent's message
    ends it, and so do resolving and deleting. It is stamped with the event's
    ``occurred_at``: the platform's clock, never the worker's."""
    sequence = event.sequence  # the highest applied (inlined _next_sequence: hot path)
    last = conversation.last_sequence
    if sequence is None or (last is not None and last > sequence):
        sequence = last
    status, group_id, joined = conversation.status, conversation.group_id, conversation.joined
    waiting, last_by = conversation.waiting_since, conversation.last_message_by
    if status == "deleted":
        return Conversation(conversation.account_id, conversation.conversation_id, status,
                            group_id, joined, sequence, conversation.categories)
    if isinstance(event, ConversationCreated):
        group_id = event.data.group_id
    elif isinstance(event, MessageCreated):
        if event.data.author == "visitor":
            if status == "resolved":
                status = "open"  # a visitor writing into a resolved chat reopens it
                waiting = event.occurred_at
            elif waiting is None:
                waiting = event.occurred_at  # the first visitor message after an agent's
            last_by = "visitor"
        else:
            if event.data.agent_id is not None and event.data.agent_id not in joined:
                joined = joined | {event.data.agent_id}  # an agent who replies joins
            waiting, last_by = None, "agent"
    elif isinstance(event, AgentAssigned):
        joined = joined | {event.data.agent_id}
    elif isinstance(event, AgentUnassigned):
        joined = joined - {event.data.agent_id}
    elif isinstance(event, ConversationTransferred):
        if event.data.to_agent_id is not None:
            joined = frozenset({event.data.to_agent_id})
        else:
            joined, group_id = frozenset(), event.data.to_group_id
    elif isinstance(event, ConversationResolved):
        status, waiting = "resolved", None
    elif isinstance(event, ConversationReopened):
        if status == "resolved":
            waiting = event.occurred_at
        status = "open"
    elif isinstance(event, ConversationDeleted):
        status, waiting = "deleted", None
    return _new(Conversation, (conversation.account_id, conversation.conversation_id, status,
                               group_id, joined, sequence, conversation.categories, waiting,
                               last_by, conversation.due_at))


def new_conversation(event: ConversationEvent) -> Conversation:
    """The conversation an event finds when its conversation was never seen: it came
    into being (and started waiting for an agent) when this event occurred."""
    return _new(Conversation, (event.account_id, event.conversation_id, "open", None, _NOBODY,
                               None, EMPTY_BY_RELATION, event.occurred_at, "none", None))


def is_stale(last_sequence: int | None, sequence: int | None) -> bool:
    """An event older than one already applied changes nothing."""
    return sequence is not None and last_sequence is not None and sequence < last_sequence


def _next_sequence(last: int | None, sequence: int | None) -> int | None:
    if sequence is None:
        return last
    return sequence if last is None else max(last, sequence)


