"""Turn one account's events into category updates: transitions, rule evaluation, diffs.

The cost of an event does not grow with the number of agents. Agents in the same
relation to a conversation (joined it or not, member of its group or not) share one
evaluation, and only agents whose relation or whose relation's categories changed are
looked at. A change that really affects every agent produces an update for each of
them, so that work is paid for by output.

Everything here works on one :class:`AccountState` and a :class:`Rules`; nothing
knows about brokers, stores or what a category means.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from contracts import AccountUpdated, ConversationEvent, Event, agent_ids
from worker.domain.account import AccountState
from worker.domain.facts import FACT_NAMES, FactVector
from worker.domain.rules import Rules
from worker.domain.state import (
    EMPTY_BY_RELATION,
    NO_CATEGORIES,
    RELATIONS,
    Account,
    Conversation,
    apply_conversation_event,
    apply_snapshot,
    is_stale,
    learn_agents,
    new_conversation,
)
from worker.domain.updates import Cause, CountsEncoder, Pair, RulesStamp, Update, format_time

# (conversation_id, agent_id, categories before, categories after)
Change = tuple[str, str, frozenset[str], frozenset[str]]
# (status, has a group, joined count, plan, agent count, group count, waiting seconds
# (bucketed by the rules' thresholds), last message by): the facts one conversation has
# for every agent of its account (see conversation_facts).
ConversationFacts = tuple[str, bool, int, str, int, int, int, str]
FactValue = str | bool | int
# Entries of each of the categoriser's caches, at most (in practice far fewer).
MAX_CACHED = 4096
# Rules adoptions of an account that had no event yet are stamped with this time.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_SECOND = timedelta(seconds=1)
WAITING = "conversation.waiting_seconds"
LAST_MESSAGE_BY = "conversation.last_message_by"


class Categoriser:
    """Applies events to account states under one rule set."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self._counts = CountsEncoder(rules.categories)
        # Both small and bounded by the rules: every distinct (conversation, account)
        # fact combination, and every distinct (before, after) pair of category sets.
        self._evaluated: dict[tuple[object, ...], tuple[frozenset[str], ...]] = {}
        self._pairs: dict[tuple[frozenset[str], frozenset[str]], Pair] = {}
        self._stamp = RulesStamp(rules.version)
        # The waiting times at which a category may change (docs/time.md). None: the
        # rules test no time fact, and time costs nothing (no clock read, no index).
        self._thresholds: tuple[int, ...] | None = tuple(rules.thresholds.get(WAITING, ())) or None
        # Who wrote last splits the cache three ways: only when some rule asks.
        self._by_last = LAST_MESSAGE_BY in rules.tested_facts
        # Work done, only ever growing: one per conversation settled, per agent's
        # change counted and per update built. An account-wide pass over a large
        # account advances it all along, so a watcher on another thread can tell one
        # long event from a stuck loop.
        self.progress = 0

    @property
    def timed(self) -> bool:
        """The rules test a time fact: categories may change as time passes."""
        return self._thresholds is not None

    # -- entry points ------------------------------------------------------
    def handle(self, state: AccountState, event: Event) -> list[Update]:
        """Apply one event; duplicates and stale events change nothing and return [].

        An account still categorised under other rules adopts these first, so the
        event's updates are diffs under the live rules.
        """
        if event.event_id in state.recent:  # a duplicate (hot path: no method call)
            return []
        now = event.occurred_at
        if self._thresholds is not None:
            # Every crossing before the event first (time order), then the event at the
            # account's clock: it never goes back, even for an event that comes late.
            updates = self.cross(state, now)
            if state.last_occurred_at is not None and state.last_occurred_at > now:
                now = state.last_occurred_at
        elif state.rules_version != self._stamp.version:
            updates = self.adopt(state)
        else:
            updates = []
        if isinstance(event, AccountUpdated):
            changes = self._account_updated(state, event, now)
        else:
            changes = self._conversation_event(state, event, now)
        state.remember(event.event_id, event.occurred_at)
        if changes:
            cause = Cause(state.account_id, event.event_id, self._stamp,
                          event.occurred_at)
            updates.extend(self._publishable(state, changes, cause))
        return updates

    def adopt(self, state: AccountState) -> list[Update]:
        """Re-categorise the account under these rules, diffing against what was sent.

        The cause names the adoption's generation in this account, so rolling out B,
        back to A, then B again never reuses an update id for other content; the time
        is the account's last event time, so a retried adoption repeats itself exactly.
        """
        version = self.rules.version
        if state.rules_version == version:
            return []
        if state.rules_version is None and not state.conversations:
            state.set_rules(version, state.rules_generation)  # nothing categorised yet
            return []
        generation = state.rules_generation + 1
        moment = state.last_occurred_at or EPOCH
        changes = self._recategorise(state, state.account, state.account, moment)
        state.set_rules(version, generation)
        cause = Cause(state.account_id, f"rules:{version}:{generation}", self._stamp,
                      moment)
        return self._publishable(state, changes, cause)

    def cross(self, state: AccountState, now: datetime) -> list[Update]:
        """Cross every time threshold of the account due at or before ``now``, one
        instant at a time in time order; each instant's changes are published with
        cause ``time:<instant>`` (UTC) and ``occurred_at`` = the instant, so crossing
        again from the same state repeats them exactly, whenever it runs."""
        if self._thresholds is None:
            return []
        updates = self.adopt(state) if state.rules_version != self.rules.version else []
        account = state.account
        while True:
            instant = state.next_due()
            if instant is None or instant > now:
                return updates
            moment = instant.astimezone(UTC)
            changes: list[Change] = []
            for conversation in state.take_due(instant):
                changes.extend(self._settle(state, account, account, conversation,
                                            conversation, moment))
            state.advance_clock(moment)
            if changes:
                cause = Cause(state.account_id, f"time:{format_time(moment)}",
                              self._stamp, moment)
                updates.extend(self._publishable(state, changes, cause))

    # -- events ------------------------------------------------------------
    def _account_updated(self, state: AccountState, event: AccountUpdated,
                         now: datetime) -> list[Change]:
        old = state.account
        if is_stale(old.last_sequence, event.sequence):
            return []
        new = apply_snapshot(old, event)
        state.set_account(new)
        return self._recategorise(state, old, new, now)

    def _conversation_event(self, state: AccountState, event: ConversationEvent,
                            now: datetime) -> list[Change]:
        conversation_id = event.conversation_id
        old_account = state.account
        # Any event reveals its agents, even one for a deleted conversation.
        mentioned = agent_ids(event)
        account = learn_agents(old_account, mentioned) if mentioned else old_account
        tombstone = state.tombstones.get(conversation_id)
        if tombstone is not None:
            # Deleted is final, but a (fresh) event still reveals its agents.
            sequence, last = event.sequence, tombstone[1]
            if sequence is not None and last is not None and sequence < last:
                return []  # stale
            if sequence is not None and (last is None or sequence > last):
                state.delete_conversation(conversation_id, sequence)
            if account is old_account:
                return []
            state.set_account(account)
            return self._recategorise(state, old_account, account, now)
        old = state.conversations.get(conversation_id)
        if (old is not None and event.sequence is not None and old.last_sequence is not None
                and event.sequence < old.last_sequence):
            return []  # stale (is_stale, inlined on the hot path)
        base = old or new_conversation(event)
        new = apply_conversation_event(base, event)
        if account is not old_account:
            # A newly seen agent can change the account's shape (one agent -> several):
            # the whole account is re-categorised, this conversation included.
            state.set_account(account)
            state.put_conversation(new.with_categories(base.categories))
            return self._recategorise(state, old_account, account, now,
                                      changed={conversation_id: base})
        return self._settle(state, old_account, account, base, new, now)

    # -- categorisation ----------------------------------------------------
    def _recategorise(self, state: AccountState, old_account: Account, account: Account,
                      now: datetime, changed: dict[str, Conversation] | None = None,
                      ) -> list[Change]:
        changes: list[Change] = []
        for conversation_id in sorted(state.conversations):
            conversation = state.conversations[conversation_id]
            before = (changed or {}).get(conversation_id, conversation)
            changes.extend(self._settle(state, old_account, account, before, conversation,
                                        now))
        return changes

    def _settle(self, state: AccountState, old_account: Account, account: Account,
                old: Conversation, new: Conversation, now: datetime) -> list[Change]:
        """Evaluate ``new`` at ``now``, store it, and list every agent whose set changed."""
        self.progress += 1
        if new.status == "deleted":
            # In no category: it leaves the state (a tombstone keeps late events out).
            new = new.with_categories(EMPTY_BY_RELATION)
            state.delete_conversation(new.conversation_id, new.last_sequence)
        else:
            thresholds = self._thresholds
            last_by = new.last_message_by if self._by_last else "none"
            if thresholds is None:
                key, due = conversation_facts(new, account, 0, last_by), None  # no time
            elif new.waiting_since is None:
                key, due = conversation_facts(new, account, 0, last_by), None  # not waiting
            else:
                waited, due = waited_and_due(new.waiting_since, now, thresholds)
                key = conversation_facts(new, account, waited, last_by)
            categories = self._evaluated.get(key) or self._evaluate(key)
            if categories != new.categories or due != new.due_at:
                new = new.with_categories(categories, due)
                state.put_conversation(new)
            elif new is not old:
                state.put_conversation(new)
            # else: an account-wide pass leaves most conversations as they were; writing
            # them would make the store rewrite the whole account every batch.
        if (account is old_account and new.categories == old.categories
                and new.joined == old.joined and new.group_id == old.group_id):
            return []  # every agent keeps its relation, every relation its categories
        conversation_id = new.conversation_id
        return [(conversation_id, agent, before, after)
                for agent, before, after in _changed_agents(old_account, account, old, new)]

    def _evaluate(self, key: ConversationFacts) -> tuple[frozenset[str], ...]:
        """Categories per relation for one (conversation, account) fact combination."""
        categories = self._evaluated.get(key)
        if categories is None:
            # A relation no agent can be in is not evaluated (an engine call costs about
            # a hundred events): nobody is in the group of a conversation without one,
            # and nobody has joined a conversation nobody joined.
            evaluate = self.rules.evaluate
            has_group, joined_count = key[1], key[2]
            categories = tuple(
                evaluate(fact_vector(key, joined, in_group))
                if (has_group or not in_group) and (joined_count or not joined)
                else NO_CATEGORIES
                for joined, in_group in RELATIONS)
            if len(self._evaluated) > MAX_CACHED:
                self._evaluated.clear()
            self._evaluated[key] = categories
        return categories

    def _publishable(self, state: AccountState, changes: list[Change],
                     cause: Cause) -> list[Update]:
        """Apply the count deltas of the whole event, then build its updates.

        Counts are the badge counts *after* the event, so every delta is applied before
        the first update is built.
        """
        if not changes:
            return []
        pairs = self._pairs
        if len(pairs) > MAX_CACHED:
            pairs.clear()
        add_counts = state.add_counts
        changed: list[Pair] = []
        for _, agent, before, after in changes:
            pair = pairs.get((before, after))
            if pair is None:
                pair = pairs[(before, after)] = Pair(before, after)
            add_counts(agent, pair.added, pair.removed)
            changed.append(pair)
            self.progress += 1
        encode = self._counts.encode
        counts = state.counts
        next_seq = state.next_seq
        encoded: dict[str, bytes] = {}
        updates = []
        for (conversation_id, agent, _, _), pair in zip(changes, changed, strict=True):
            counts_json = encoded.get(agent)
            if counts_json is None:
                counts_json = encoded[agent] = encode(counts[agent])
            updates.append(Update(cause, pair, agent, conversation_id, next_seq(agent),
                                  counts_json))
            self.progress += 1
        return updates


def _changed_agents(old_account: Account, account: Account, old: Conversation,
                    new: Conversation) -> Iterator[tuple[str, frozenset[str], frozenset[str]]]:
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


def conversation_facts(conversation: Conversation, account: Account, waited: int = 0,
                       last_by: str | None = None) -> ConversationFacts:
    """The facts a conversation has for every agent of its account: the categoriser's
    cache key. With :func:`fact_vector` this is the only place facts are computed, so
    :func:`facts_of` (explanations, tooling) cannot drift from what was published.
    ``waited`` is ``conversation.waiting_seconds`` (bucketed: see :func:`waited_and_due`);
    ``last_by`` stands for ``conversation.last_message_by`` (the categoriser gives a
    constant when no rule tests it; None: the conversation's)."""
    return (conversation.status, conversation.group_id is not None, len(conversation.joined),
            account.plan, len(account.agents), len(account.groups), waited,
            conversation.last_message_by if last_by is None else last_by)


def fact_vector(key: ConversationFacts, joined: bool, in_group: bool) -> FactVector:
    """One agent's facts, in :data:`~worker.domain.facts.FACT_NAMES` order: the
    conversation's (``key``) and the agent's relation to it."""
    status, has_group, joined_count, plan, agents, groups, waited, last_by = key
    return (status, has_group, joined_count, joined, in_group, plan, agents, groups, waited,
            last_by)


def waiting_seconds(since: datetime | None, now: datetime) -> int:
    """``conversation.waiting_seconds`` at ``now``: whole seconds since ``since`` (0 while
    not waiting, and never below 0 when the clocks disagree)."""
    if since is None or now <= since:
        return 0
    return (now - since) // ONE_SECOND


def waited_and_due(since: datetime, now: datetime, thresholds: tuple[int, ...],
                   ) -> tuple[int, datetime | None]:
    """The waiting time the engine is given at ``now`` - the largest threshold at or
    below the real value, 0 below the first: every test on it has the same truth, and
    the cache sees one value per bucket - and the instant the next threshold is
    reached (None after the last, or when it is past what a datetime can hold)."""
    index = bisect_right(thresholds, waiting_seconds(since, now))
    waited = thresholds[index - 1] if index else 0
    due = _after(since, thresholds[index]) if index < len(thresholds) else None
    return waited, due


def _after(since: datetime, seconds: int) -> datetime | None:
    """``since`` plus ``seconds``, or None ("never due") past the last instant a
    datetime holds, in its own offset or in UTC (crossings are stamped in UTC): an event
    dated 9999-12-31 must not stop the account."""
    try:
        due = since + timedelta(seconds=seconds)
        due.astimezone(UTC)
    except OverflowError:
        return None
    return due


def facts_of(state: AccountState, conversation_id: str, agent_id: str) -> dict[str, FactValue]:
    """The named facts the categories of (agent, conversation) are decided on, exactly
    as the categoriser evaluates them; empty when no decision is made for the pair (the
    conversation is unknown or deleted, or the agent is not one of the account's), like
    :func:`categories_of`, which is then empty too."""
    account = state.account
    conversation = state.conversations.get(conversation_id)
    if conversation is None or agent_id not in account.agents:
        return {}
    # The real waiting time at the account's clock, where its categories were decided
    # (a test has the same truth for it as for the bucketed value the engine was given).
    waited = waiting_seconds(conversation.waiting_since, state.last_occurred_at or EPOCH)
    vector = fact_vector(conversation_facts(conversation, account, waited),
                         agent_id in conversation.joined,
                         agent_id in account.members(conversation.group_id))
    return dict(zip(FACT_NAMES, vector, strict=True))


def categories_of(state: AccountState, conversation_id: str, agent_id: str) -> frozenset[str]:
    """An agent's current categories for a conversation (empty if unknown)."""
    account = state.account
    conversation = state.conversations.get(conversation_id)
    if conversation is None or agent_id not in account.agents:
        return NO_CATEGORIES
    return conversation.categories[conversation.relation_of(agent_id, account)]
