"""Turn one account's events into category updates: transitions, rule evaluation, diffs.

The cost of an event does not grow with the number of agents. Agents in the same
relation to a conversation (joined it or not, member of its group or not, and - under
rules that test them - unread or mentioned) share one evaluation, and only agents whose
relation, relation's categories or unread flag changed are looked at. A change that
really affects every agent produces an update for each of them, so that work is paid
for by output.

Everything here works on one :class:`AccountState` and a :class:`Rules`; nothing
knows about brokers, stores or what a category means.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from contracts import (
    AccountEvent,
    AccountUpdated,
    AgentViewsUpdated,
    BadEvent,
    ConversationEvent,
    Event,
    agent_ids,
)
from contracts.events import AccountViewsUpdated
from worker.domain.account import AccountState
from worker.domain.facts import (
    ATTRIBUTE_PREFIX,
    DETAIL_FACTS,
    PRIORITY_RANK,
    UNREAD_FACTS,
    WAITING_SECONDS,
)
from worker.domain.reading import NO_DETAILS, ConversationFacts, fact_vector
from worker.domain.rules import Rules
from worker.domain.state import (
    EMPTY_BY_RELATION,
    NO_CATEGORIES,
    NO_PERSONAL,
    RELATIONS,
    Account,
    Conversation,
    apply_conversation_event,
    apply_snapshot,
    is_stale,
    learn_agents,
    new_conversation,
    reachable,
    wake,
    with_views,
)
from worker.domain.updates import Cause, CountsEncoder, Pair, RulesStamp, Update, format_time
from worker.domain.viewing import DEFAULT_VIEW_SETS, Viewing
from worker.domain.views import NO_VIEWS, UNRESOLVED
from worker.domain.waiting import waited_and_due

# (conversation_id, agent_id, categories before, categories after, unread before,
# unread after)
Change = tuple[str, str, frozenset[str], frozenset[str], bool, bool]
# Entries of each of the categoriser's caches, at most (in practice far fewer).
MAX_CACHED = 4096
# Rules adoptions of an account that had no event yet are stamped with this time.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PRIORITY = "conversation.priority"
LAST_MESSAGE_BY = "conversation.last_message_by"


class Categoriser:
    """Applies events to account states under one rule set."""

    def __init__(self, rules: Rules, view_sets: int = DEFAULT_VIEW_SETS) -> None:
        self.rules = rules
        self._counts = CountsEncoder(rules.categories)
        # The views in force, compiled under these rules.
        self.views = Viewing(rules, view_sets)
        # Both small and bounded by the rules: every distinct (conversation, account)
        # fact combination, and every distinct (before, after) pair of category sets.
        self._evaluated: dict[tuple[object, ...], tuple[frozenset[str], ...]] = {}
        self._pairs: dict[tuple[frozenset[str], frozenset[str]], Pair] = {}
        self._stamp = RulesStamp(rules.version)
        # The waiting times at which a category may change (docs/time.md). None: the
        # rules test no time fact, and time costs nothing (no clock read, no index).
        self._thresholds: tuple[int, ...] | None = (
            tuple(rules.thresholds.get(WAITING_SECONDS, ())) or None)
        # Who wrote last splits the cache three ways, priorities five, detail tests and
        # unread agents more: each only when some rule asks.
        tested = rules.tested_facts
        self._by_last = LAST_MESSAGE_BY in tested
        self._by_priority = PRIORITY in tested
        self._by_details = any(f in DETAIL_FACTS or f.startswith(ATTRIBUTE_PREFIX)
                               for f in tested)
        # Sixteen relations (joined, in group, unread, mentioned) or four.
        self._by_unread = any(f in UNREAD_FACTS for f in tested)
        self._relations = RELATIONS if self._by_unread else RELATIONS[:4]
        # Work done, only ever growing: one per conversation settled, per agent's
        # change counted and per update built. An account-wide pass over a large
        # account advances it all along, so a watcher on another thread can tell one
        # long event from a stuck loop.
        self.progress = 0

    # -- entry points ------------------------------------------------------
    def handle(self, state: AccountState, event: Event) -> list[Update]:
        """Apply one event; duplicates and stale events change nothing and return [].

        An account still categorised under other rules adopts these first, so the
        event's updates are diffs under the live rules. An event its conversation cannot
        hold raises :class:`contracts.BadEvent` before it changes anything (the
        crossings due before it are made, as they would be for any event).
        """
        if event.event_id in state.recent:  # a duplicate (hot path: no method call)
            return []
        now = event.occurred_at
        due = None if self._thresholds is not None else state.next_due()
        if self._thresholds is not None or (due is not None and due <= now):
            # Every crossing before the event first (time order), then the event at the
            # account's clock: it never goes back, even for an event that comes late.
            updates = self.cross(state, now)
        elif state.rules_version != self._stamp.version:
            updates = self.adopt(state)
        else:
            updates = []
        if state.last_occurred_at is not None and state.last_occurred_at > now:
            now = state.last_occurred_at
        if not isinstance(event, AccountEvent):
            changes = self._conversation_event(state, event, now)
        elif isinstance(event, AccountUpdated):
            changes = self._account_updated(state, event, now)
        else:
            changes = self._views_updated(state, event, now)
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
        updates = self.adopt(state) if state.rules_version != self.rules.version else []
        account = state.account
        while True:
            instant = state.next_due()
            if instant is None or instant > now:
                return updates
            moment = instant.astimezone(UTC)
            changes: list[Change] = []
            for conversation in state.take_due(instant):
                until = conversation.snoozed_until
                woken = (wake(conversation, instant)
                         if until is not None and until <= instant else conversation)
                changes.extend(self._settle(state, account, account, conversation,
                                            woken, moment))
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

    def _views_updated(self, state: AccountState,
                       event: AccountViewsUpdated | AgentViewsUpdated, now: datetime,
                       ) -> list[Change]:
        """The account's shared views, or one agent's personal views, replaced: checked
        against the rules first (every problem is bad input, and nothing changes), then
        the account re-categorised (only the agents whose views changed can move)."""
        old = state.account
        if is_stale(old.last_sequence, event.sequence):
            return []
        data = event.data
        if isinstance(event, AgentViewsUpdated):
            text, problems = self.rules.check_views(
                {"agent_id": event.data.agent_id, "views": data.views}, True)
            views = old.views.with_personal(event.data.agent_id, text)
        else:
            text, problems = self.rules.check_views({"views": data.views}, False)
            views = old.views.with_shared(text)
        if problems:
            raise BadEvent(f"{event.type}: {'; '.join(problems)}")
        account = with_views(learn_agents(old, agent_ids(event)), views, event.sequence)
        state.set_account(account)
        return self._recategorise(state, old, account, now)

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
        new = apply_conversation_event(base, event, now)
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
            new = new.with_categories(EMPTY_BY_RELATION, None, NO_PERSONAL)
            state.delete_conversation(new.conversation_id, new.last_sequence)
        else:
            views = (None if account.views is NO_VIEWS or new.status not in UNRESOLVED
                     else self.views.in_force(account.views))
            thresholds = self._thresholds if views is None else views.thresholds
            waited, due = 0, new.snoozed_until  # not waiting while snoozed: wakes then
            if thresholds is not None and new.waiting_since is not None:
                waited, due = waited_and_due(new.waiting_since, now, thresholds)
            key = (new.status, new.group_id is not None, len(new.joined), account.plan,
                   len(account.agents), len(account.groups), waited,
                   new.last_message_by if self._by_last else "none",
                   PRIORITY_RANK[new.priority] if self._by_priority else 0,
                   self.rules.detail_results(new) if self._by_details else NO_DETAILS,
                   self._by_unread and new.visitor_wrote,
                   self._by_unread and bool(new.mentioned))
            categories = self._evaluated.get(key) or self._evaluate(key)
            personal = NO_PERSONAL
            if views is not None:
                categories, personal = self.views.apply(views, new, account, waited,
                                                        categories)
            if (categories != new.categories or due != new.due_at
                    or (personal is not new.personal and personal != new.personal)):
                new = new.with_categories(categories, due, personal)
                state.put_conversation(new)
            elif new is not old:
                state.put_conversation(new)
            # else: an account-wide pass leaves most conversations as they were; writing
            # them would make the store rewrite the whole account every batch.
        if (account is old_account and new.categories == old.categories
                and new.joined == old.joined and new.group_id == old.group_id
                and new.readers == old.readers and new.mentioned == old.mentioned
                and new.visitor_wrote == old.visitor_wrote
                and (new.personal is old.personal or new.personal == old.personal)):
            return []  # every agent keeps its relation, categories and unread flag
        conversation_id = new.conversation_id
        return [(conversation_id, *change)
                for change in _changed_agents(old_account, account, old, new)]

    def _evaluate(self, key: ConversationFacts) -> tuple[frozenset[str], ...]:
        """Categories per relation for one (conversation, account) fact combination."""
        categories = self._evaluated.get(key)
        if categories is None:
            # A relation no agent can be in is not evaluated (an engine call costs about
            # a hundred events).
            evaluate = self.rules.evaluate
            has_group, joined_count, any_unread, any_mentioned = key[1], key[2], key[10], key[11]
            categories = tuple(
                evaluate(fact_vector(key, *relation))
                if reachable(relation, has_group, joined_count, any_unread, any_mentioned)
                else NO_CATEGORIES
                for relation in self._relations)
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
        add, counts, unread_counts = state.add_to, state.counts, state.unread_counts
        changed: list[Pair] = []
        for _, agent, before, after, unread_before, unread_after in changes:
            pair = pairs.get((before, after))
            if pair is None:
                pair = pairs[(before, after)] = Pair(before, after)
            moved = pair.moved
            if moved:
                add(counts, agent, pair.added, pair.removed)
            if unread_before or unread_after:
                if unread_before and unread_after:
                    if moved:
                        add(unread_counts, agent, pair.added, pair.removed)
                elif unread_after:
                    add(unread_counts, agent, pair.categories, ())
                else:
                    add(unread_counts, agent, (), before)
            changed.append(pair)
            self.progress += 1  # per change: a watcher tells a long event from a stuck loop
        views = state.account.views
        in_force = None if views is NO_VIEWS else self.views.in_force(views)
        next_seq = state.next_seq
        encoded: dict[str, bytes] = {}
        updates = []
        for (conversation_id, agent, _, _, _, unread), pair in zip(changes, changed, strict=True):
            counts_json = encoded.get(agent)
            if counts_json is None:
                encode = (self._counts.encode if in_force is None
                          else in_force.encoder(agent).encode)
                counts_json = encoded[agent] = encode(counts.get(agent, _NONE),
                                                      unread_counts.get(agent, _NONE))
            updates.append(Update(cause, pair, agent, conversation_id, next_seq(agent),
                                  counts_json, unread))
            self.progress += 1
        return updates


_NONE: dict[str, int] = {}


def _class_changed(old: tuple[frozenset[str], ...], new: tuple[frozenset[str], ...],
                   base: int) -> bool:
    """Whether the categories of agents neither joined nor members (``base`` 0), or
    members not joined (1), changed in any of their relations."""
    if len(old) != len(new):
        return True  # other rules: every relation is new
    return any(old[r] != new[r] for r in range(base, len(old), 4))


def _candidates(old_account: Account, account: Account, old: Conversation,
                new: Conversation, old_members: frozenset[str], new_members: frozenset[str],
                ) -> set[str]:
    """Agents whose relation may have changed, or whose relation's categories, unread
    flag or personal views did."""
    old_cats, new_cats = old.categories, new.categories
    candidates: set[str] = set(old.joined | new.joined)
    if old_members != new_members:
        candidates |= old_members ^ new_members
    if _class_changed(old_cats, new_cats, 1):  # member of the group, not joined
        candidates |= old_members | new_members
    if old_account.agents != account.agents:
        candidates |= old_account.agents ^ account.agents
    if _class_changed(old_cats, new_cats, 0) or old.visitor_wrote != new.visitor_wrote:
        candidates |= old_account.agents | account.agents  # everybody else
    elif old.readers != new.readers:
        candidates |= old.readers ^ new.readers
    if old.mentioned != new.mentioned:
        candidates |= old.mentioned ^ new.mentioned
    old_personal, new_personal = old.personal, new.personal
    if old_personal is not new_personal:
        candidates.update(a for a in old_personal.keys() | new_personal.keys()
                          if old_personal.get(a) != new_personal.get(a))
    return candidates


def _changed_agents(old_account: Account, account: Account, old: Conversation,
                    new: Conversation,
                    ) -> Iterator[tuple[str, frozenset[str], frozenset[str], bool, bool]]:
    """(agent, categories before, after, unread before, after) of every agent whose
    categories or unread flag changed. The flag is published only for a conversation in
    some category."""
    old_cats, new_cats = old.categories, new.categories
    old_members = old_account.members(old.group_id)
    new_members = account.members(new.group_id)
    candidates = _candidates(old_account, account, old, new, old_members, new_members)
    old_personal, new_personal = old.personal, new.personal
    old_agents, new_agents = old_account.agents, account.agents
    old_joined, new_joined = old.joined, new.joined
    # The relation index inlined (Conversation.relation_of; a call per agent is most of
    # this loop's cost): the unread bits count only in sixteen-relation category tuples.
    old_wrote, old_readers, old_mentioned = old.visitor_wrote, old.readers, old.mentioned
    new_wrote, new_readers, new_mentioned = new.visitor_wrote, new.readers, new.mentioned
    old_wide, new_wide = len(old_cats) > 4, len(new_cats) > 4
    for agent in sorted(candidates):
        if agent in old_agents:
            unread = old_wrote and agent not in old_readers
            mentioned = agent in old_mentioned
            index = 2 * (agent in old_joined) + (agent in old_members)
            before = old_cats[index + 4 * unread + 8 * mentioned if old_wide else index]
            if old_personal:
                own = old_personal.get(agent)
                if own:
                    before = before | own
            unread_before = (unread or mentioned) and bool(before)
        else:
            before, unread_before = NO_CATEGORIES, False
        if agent in new_agents:
            unread = new_wrote and agent not in new_readers
            mentioned = agent in new_mentioned
            index = 2 * (agent in new_joined) + (agent in new_members)
            after = new_cats[index + 4 * unread + 8 * mentioned if new_wide else index]
            if new_personal:
                own = new_personal.get(agent)
                if own:
                    after = after | own
            unread_after = (unread or mentioned) and bool(after)
        else:
            after, unread_after = NO_CATEGORIES, False
        if before != after or unread_before != unread_after:
            yield agent, before, after, unread_before, unread_after
