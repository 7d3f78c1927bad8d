"""What an agent's state reads as: the facts and categories of one (agent,
conversation), as the categoriser decided them, for explanations, snapshots and tools."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from worker.domain.account import AccountState
from worker.domain.facts import (
    ATTRIBUTE_PREFIX,
    FACT_NAMES,
    PRIORITY_RANK,
    FactValue,
    FactVector,
    detail_value,
)
from worker.domain.state import NO_CATEGORIES, Account, Conversation
from worker.domain.waiting import waiting_seconds

# (status, has a group, joined count, plan, agent count, group count, waiting seconds
# (bucketed by the rules' thresholds), last message by, priority rank, detail test
# results, some agent is unread, some agent is mentioned): the facts one conversation
# has for every agent of its account (see conversation_facts).
ConversationFacts = tuple[str, bool, int, str, int, int, int, str, int, tuple[bool, ...],
                          bool, bool]
NO_DETAILS: tuple[bool, ...] = ()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def conversation_facts(conversation: Conversation, account: Account, waited: int = 0,
                       details: tuple[bool, ...] = NO_DETAILS) -> ConversationFacts:
    """The facts a conversation has for every agent of its account, every one of them
    (the categoriser's cache key, built inline on its hot path, leaves out those its
    rules do not test). With :func:`fact_vector` this is how :func:`facts_of` computes
    the facts explanations and tooling show. ``waited`` is
    ``conversation.waiting_seconds``; ``details`` the rules' detail test results."""
    return (conversation.status, conversation.group_id is not None, len(conversation.joined),
            account.plan, len(account.agents), len(account.groups), waited,
            conversation.last_message_by, PRIORITY_RANK[conversation.priority], details,
            conversation.visitor_wrote, bool(conversation.mentioned))


def fact_vector(key: ConversationFacts, joined: bool, in_group: bool, unread: bool = False,
                mentioned: bool = False) -> FactVector:
    """One agent's facts as the engine takes them: in
    :data:`~worker.domain.facts.FACT_NAMES` order, then the detail test results: the
    conversation's (``key``) and the agent's relation to it."""
    (status, has_group, joined_count, plan, agents, groups, waited, last_by, priority,
     details, _, _) = key
    return (status, has_group, joined_count, joined, in_group, plan, agents, groups, waited,
            last_by, priority, unread, mentioned, *details)


def facts_of(state: AccountState, conversation_id: str, agent_id: str,
             attributes: Mapping[str, str] | None = None) -> dict[str, FactValue | None]:
    """The named facts the categories of (agent, conversation) are decided on, exactly
    as the categoriser evaluates them: priorities by name, the channel (None: absent),
    the labels as a frozenset, and every declared custom attribute (``attributes``:
    key -> type; None when absent or of another type). Empty when no decision is made
    for the pair (the conversation is unknown or deleted, or the agent is not one of
    the account's), like :func:`categories_of`, which is then empty too."""
    account = state.account
    conversation = state.conversations.get(conversation_id)
    if conversation is None or agent_id not in account.agents:
        return {}
    # The real waiting time at the account's clock, where its categories were decided
    # (a test has the same truth for it as for the bucketed value the engine was given).
    waited = waiting_seconds(conversation.waiting_since, state.last_occurred_at or _EPOCH)
    vector = fact_vector(conversation_facts(conversation, account, waited),
                         agent_id in conversation.joined,
                         agent_id in account.members(conversation.group_id),
                         conversation.unread_by(agent_id), agent_id in conversation.mentioned)
    facts: dict[str, FactValue | None] = dict(zip(FACT_NAMES, vector, strict=True))
    facts["conversation.priority"] = conversation.priority  # by name, not by rank
    facts["conversation.channel"] = conversation.channel
    facts["conversation.labels"] = conversation.labels  # type: ignore[assignment]
    for key in sorted(attributes or {}):
        name = ATTRIBUTE_PREFIX + key
        facts[name] = detail_value(  # type: ignore[assignment]
            name, conversation.channel, conversation.labels, conversation.attributes,
            attributes or {})
    return facts


def is_unread(state: AccountState, conversation_id: str, agent_id: str) -> bool:
    """What the agent's last update of the conversation said of ``unread``."""
    conversation = state.conversations.get(conversation_id)
    return (conversation is not None and conversation.is_unread_for(agent_id)
            and bool(categories_of(state, conversation_id, agent_id)))


def categories_of(state: AccountState, conversation_id: str, agent_id: str) -> frozenset[str]:
    """An agent's current categories for a conversation (empty if unknown)."""
    account = state.account
    conversation = state.conversations.get(conversation_id)
    if conversation is None or agent_id not in account.agents:
        return NO_CATEGORIES
    return conversation.categories_of(agent_id, account)
