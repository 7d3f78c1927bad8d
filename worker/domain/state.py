"""Business state as plain data, changed by pure transition functions.

What a conversation *is* (status, group, who joined) lives here; which inbox
categories that puts it in lives only in the rule files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import NamedTuple

from contracts import (
    AccountUpdated,
    AgentAssigned,
    AgentUnassigned,
    BadEvent,
    ConversationCreated,
    ConversationDeleted,
    ConversationEvent,
    ConversationRead,
    ConversationReopened,
    ConversationResolved,
    ConversationSnoozed,
    ConversationTransferred,
    ConversationUnsnoozed,
    ConversationUpdated,
    MessageCreated,
)
from contracts.events import MAX_ATTRIBUTES
from worker.domain.views import NO_VIEWS, AccountViews

# An agent's relation to a conversation: (joined it, member of its group, unread by a
# visitor message, mentioned). Agents in the same relation share one evaluation, so
# categories are stored per relation: four of them (the first two bits) under rules
# that test neither agent.unread nor agent.mentioned, sixteen under rules that do.
Relation = tuple[bool, bool, bool, bool]
RELATIONS: tuple[Relation, ...] = tuple(
    (bool(i & 2), bool(i & 1), bool(i & 4), bool(i & 8)) for i in range(16))
NO_CATEGORIES: frozenset[str] = frozenset()
EMPTY_BY_RELATION: tuple[frozenset[str], ...] = (NO_CATEGORIES,) * 4
AttributeValue = str | int | float | bool
NO_ATTRIBUTES: Mapping[str, AttributeValue] = MappingProxyType({})
NO_PERSONAL: Mapping[str, frozenset[str]] = MappingProxyType({})


def relation_index(joined: bool, in_group: bool, unread: bool = False,
                   mentioned: bool = False) -> int:
    return 2 * joined + in_group + 4 * unread + 8 * mentioned


def reachable(relation: Relation, has_group: bool, joined_count: int, any_unread: bool,
              any_mentioned: bool) -> bool:
    """Whether some agent can be in ``relation`` to a conversation: nobody is in the
    group of one without a group, has joined one nobody joined, or is unread (or
    mentioned) where nobody is. A relation nobody can be in is not evaluated."""
    joined, in_group, unread, mentioned = relation
    return ((has_group or not in_group) and (bool(joined_count) or not joined)
            and (any_unread or not unread) and (any_mentioned or not mentioned))


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    plan: str = "free"
    agents: frozenset[str] = frozenset()
    groups: dict[str, frozenset[str]] = field(default_factory=dict)
    last_sequence: int | None = None
    views: AccountViews = NO_VIEWS

    def members(self, group_id: str | None) -> frozenset[str]:
        if group_id is None:
            return frozenset()
        return self.groups.get(group_id, frozenset())


class Conversation(NamedTuple):
    """Immutable; a NamedTuple rather than a frozen dataclass because one is built for
    every event, and a frozen dataclass's ``__init__`` costs several times more."""

    account_id: str
    conversation_id: str
    status: str = "open"  # open | snoozed | resolved | deleted
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
    # The details inboxes sort by (docs/contract.md): all optional, all bounded by the
    # event contract's limits.
    channel: str | None = None
    priority: str = "none"
    labels: frozenset[str] = frozenset()
    attributes: Mapping[str, AttributeValue] = NO_ATTRIBUTES
    # While snoozed: when it wakes by itself (None: only an event wakes it).
    snoozed_until: datetime | None = None
    # Unread: a visitor has written (ever), and who read everything since the last
    # visitor message; the agents mentioned since they last read it.
    visitor_wrote: bool = False
    readers: frozenset[str] = frozenset()
    mentioned: frozenset[str] = frozenset()
    # The personal views that hold for it, of each agent with one that does (under the
    # views in force when it was last evaluated; shared views are in ``categories``).
    personal: Mapping[str, frozenset[str]] = NO_PERSONAL

    def with_categories(self, categories: tuple[frozenset[str], ...],
                        due_at: datetime | None = None,
                        personal: Mapping[str, frozenset[str]] | None = None) -> Conversation:
        # Straight from the tuple: _replace costs several times more, the generated
        # __new__ a function call more, and this runs for every event.
        return _new(Conversation, (self.account_id, self.conversation_id, self.status,
                                   self.group_id, self.joined, self.last_sequence, categories,
                                   self.waiting_since, self.last_message_by, due_at,
                                   *self[10:18],
                                   self.personal if personal is None else personal))

    def unread_by(self, agent_id: str) -> bool:
        """``agent.unread``: a visitor message came after the agent last read it."""
        return self.visitor_wrote and agent_id not in self.readers

    def full_relation(self, agent_id: str, members: frozenset[str]) -> int:
        """The agent's relation among all sixteen (``members``: of its group)."""
        return relation_index(agent_id in self.joined, agent_id in members,
                              self.unread_by(agent_id), agent_id in self.mentioned)

    def relation_of(self, agent_id: str, account: Account) -> int:
        """The index of the agent's relation in :attr:`categories` (its length says
        whether the rules tell unread and mentioned agents apart)."""
        index = 2 * (agent_id in self.joined) + (agent_id in account.members(self.group_id))
        if len(self.categories) > 4:
            index += 4 * self.unread_by(agent_id) + 8 * (agent_id in self.mentioned)
        return index

    def categories_of(self, agent_id: str, account: Account) -> frozenset[str]:
        """One agent's categories (the caller knows the agent is the account's)."""
        categories = self.categories[self.relation_of(agent_id, account)]
        personal = self.personal.get(agent_id)
        return categories | personal if personal else categories

    def is_unread_for(self, agent_id: str) -> bool:
        """What an update's ``unread`` says (before the agent's categories are known):
        unread by a visitor message or mentioned since the agent last read it."""
        return (self.visitor_wrote and agent_id not in self.readers) or agent_id in self.mentioned


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


def with_views(account: Account, views: AccountViews, sequence: int | None) -> Account:
    """A views event: the views in force replaced (views events count in the account's
    ``sequence``, with its snapshots)."""
    return replace(account, views=views,
                   last_sequence=_next_sequence(account.last_sequence, sequence))


def learn_agents(account: Account, agents: Sequence[str]) -> Account:
    unknown = [a for a in agents if a not in account.agents]
    if not unknown:
        return account
    return replace(account, agents=account.agents | frozenset(unknown))


def apply_conversation_event(conversation: Conversation, event: ConversationEvent,
                             now: datetime | None = None) -> Conversation:
    """The conversation after one event, applied at ``now`` (the account's clock: past
    ``occurred_at`` for a late event; None: at ``occurred_at``). Deleted stays deleted.
    Waiting starts when first seen, reopened, woken, or written to by the visitor after
    an agent (stamped with ``occurred_at``, never the worker's clock); an agent's
    message, a snooze, resolving and deleting end it. :class:`BadEvent` for a change the
    conversation cannot hold (more attributes than the contract allows)."""
    sequence = event.sequence  # the highest applied (inlined _next_sequence: hot path)
    last = conversation.last_sequence
    if sequence is None or (last is not None and last > sequence):
        sequence = last
    status, group_id, joined = conversation.status, conversation.group_id, conversation.joined
    waiting, last_by = conversation.waiting_since, conversation.last_message_by
    if status == "deleted":
        return _new(Conversation, (conversation.account_id, conversation.conversation_id,
                                   status, group_id, joined, sequence, conversation.categories,
                                   None, last_by, None, *conversation[10:]))
    (channel, priority, labels, attributes, until, visitor_wrote, readers,
     mentioned) = conversation[10:18]
    if isinstance(event, MessageCreated):
        if event.data.author == "visitor":
            if status != "open":
                status, until = "open", None  # reopens a resolved chat, wakes a snoozed one
                waiting = event.occurred_at
            elif waiting is None:
                waiting = event.occurred_at  # the first visitor message after an agent's
            last_by, visitor_wrote, readers = "visitor", True, _NOBODY
        else:
            joined, readers, mentioned = _agent_wrote(event, joined, readers, mentioned)
            waiting, last_by = None, "agent"
    elif isinstance(event, ConversationCreated):
        group_id = event.data.group_id
        channel, priority, labels, attributes = _created_details(event)
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
        status, waiting, until = "resolved", None, None
    elif isinstance(event, ConversationReopened | ConversationUnsnoozed | ConversationSnoozed):
        status, waiting, until = _snooze_or_wake(event, status, waiting, until, now)
    elif isinstance(event, ConversationRead):
        readers, mentioned = readers | {event.data.agent_id}, mentioned - {event.data.agent_id}
    elif isinstance(event, ConversationUpdated):
        channel, priority, labels, attributes = _changed_details(
            event, channel, priority, labels, attributes)
    elif isinstance(event, ConversationDeleted):
        status, waiting, until = "deleted", None, None
    return _new(Conversation, (conversation.account_id, conversation.conversation_id, status,
                               group_id, joined, sequence, conversation.categories, waiting,
                               last_by, conversation.due_at, channel, priority, labels,
                               attributes, until, visitor_wrote, readers, mentioned,
                               conversation.personal))


def _snooze_or_wake(event: ConversationReopened | ConversationUnsnoozed | ConversationSnoozed,
                    status: str, waiting: datetime | None, until: datetime | None,
                    applied: datetime | None = None,
                    ) -> tuple[str, datetime | None, datetime | None]:
    """(status, waiting since, snoozed until) after a snooze, an unsnooze or a reopening,
    applied at ``applied`` (the account's clock; None: the event's ``occurred_at``).
    Waking (unsnoozed, reopened, or a snooze until a moment already past) waits again
    from the event, as a reopening does. A snooze that came late, until a moment the
    account's clock has passed since it occurred, has ended when it is applied: woken
    at ``until``, and waiting from then (its wake is no crossing: one made in the past
    would be made again under an update id already published, with other content)."""
    now = event.occurred_at
    if isinstance(event, ConversationSnoozed):
        wake = event.data.until
        if wake is None or wake > (now if applied is None or applied < now else applied):
            return "snoozed", None, wake
        if wake > now:  # came late: it has woken by now
            return "open", wake, None
        return "open", (now if status != "open" or waiting is None else waiting), None
    if status == "snoozed" or (status == "resolved" and isinstance(event, ConversationReopened)):
        return "open", now, None
    return status, waiting, until


def _agent_wrote(event: MessageCreated, joined: frozenset[str], readers: frozenset[str],
                 mentioned: frozenset[str],
                 ) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """An agent's message: the agent joins (replying joins) and has read it (writing
    reads), and the agents it mentions have something unread."""
    data = event.data
    agent = data.agent_id
    assert agent is not None  # an agent's message names its author (the contract)
    if agent not in joined:
        joined = joined | {agent}
    if agent not in readers:
        readers = readers | {agent}
    mentions = getattr(data, "mentions", ())
    if mentions or agent in mentioned:
        mentioned = (mentioned | frozenset(mentions)) - {agent}
    return joined, readers, mentioned


def _created_details(event: ConversationCreated,
                     ) -> tuple[str | None, str, frozenset[str], Mapping[str, AttributeValue]]:
    data = event.data
    attributes = MappingProxyType(dict(data.attributes)) if data.attributes else NO_ATTRIBUTES
    return data.channel, data.priority, frozenset(data.labels), attributes


def _changed_details(event: ConversationUpdated, channel: str | None, priority: str,
                     labels: frozenset[str], attributes: Mapping[str, AttributeValue],
                     ) -> tuple[str | None, str, frozenset[str], Mapping[str, AttributeValue]]:
    """``conversation.updated``: the fields given replace the old ones, attributes merge
    key by key (a null removes the key)."""
    data = event.data
    given = data.model_fields_set
    if "channel" in given:
        channel = data.channel
    if "priority" in given:
        priority = data.priority
    if "labels" in given:
        labels = frozenset(data.labels)
    if "attributes" in given and data.attributes:
        merged = dict(attributes)
        for key, value in data.attributes.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        if len(merged) > MAX_ATTRIBUTES:
            raise BadEvent(f"data.attributes: conversation {event.conversation_id} would have "
                           f"{len(merged)} attributes after this update (at most "
                           f"{MAX_ATTRIBUTES})")
        attributes = MappingProxyType(merged) if merged else NO_ATTRIBUTES
    return channel, priority, labels, attributes


def wake(conversation: Conversation, moment: datetime) -> Conversation:
    """A snoozed conversation whose ``until`` came: open again, and waiting from the
    wake, as if reopened."""
    return conversation._replace(status="open", waiting_since=moment, snoozed_until=None)


def new_conversation(event: ConversationEvent) -> Conversation:
    """The conversation an event finds when its conversation was never seen: it came
    into being (and started waiting for an agent) when this event occurred."""
    return Conversation(event.account_id, event.conversation_id, "open", None, _NOBODY,
                        None, EMPTY_BY_RELATION, event.occurred_at, "none", None)


def is_stale(last_sequence: int | None, sequence: int | None) -> bool:
    """An event older than one already applied changes nothing."""
    return sequence is not None and last_sequence is not None and sequence < last_sequence


def _next_sequence(last: int | None, sequence: int | None) -> int | None:
    if sequence is None:
        return last
    return sequence if last is None else max(last, sequence)


