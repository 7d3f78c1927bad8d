"""Views in the categoriser: each account's views compiled under the rules, and the
categories they add to a conversation (:mod:`worker.domain.views` says what views are).

Shared views hold for agents by their relation to the conversation, like the rules'
categories, so they are evaluated per relation and merged into the categories stored
per relation; personal views are evaluated for their agent alone, and kept per agent.
Every evaluation is cached by the facts it reads, and every cache here is bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

from worker.domain.account import AccountState
from worker.domain.facts import PRIORITY_RANK, WAITING_SECONDS, FactVector
from worker.domain.rules import Rules
from worker.domain.state import NO_PERSONAL, RELATIONS, Account, Conversation, reachable
from worker.domain.updates import CountsEncoder
from worker.domain.views import NO_VIEWS, UNRESOLVED, VIEW_PREFIX, AccountViews, ViewSet
from worker.domain.waiting import waiting_seconds

# (status, has a group, joined count, plan, agent count, group count, waiting seconds,
# last message by, priority rank, a visitor wrote, someone is mentioned): what views
# are evaluated on besides the agent's relation and their detail test results.
ViewFacts = tuple[str, bool, int, str, int, int, int, str, int, bool, bool]
# Compiled view sets kept (by content), unless the worker's settings say otherwise.
DEFAULT_VIEW_SETS = 1024
# Evaluations kept, at most (the cache is emptied when full).
MAX_CACHED = 4096
R = TypeVar("R", bound=Hashable)


class Viewing:
    """Views compiled under one rule set, and evaluated (for one categoriser)."""

    def __init__(self, rules: Rules, view_sets: int = DEFAULT_VIEW_SETS) -> None:
        self.rules = rules
        # Each set by its text, and each account's combination of sets by its value;
        # least recently used out, so memory stays bounded however many accounts have
        # views.
        self._view_sets: OrderedDict[str, ViewSet] = OrderedDict()
        self._in_force: OrderedDict[AccountViews, ViewsInForce] = OrderedDict()
        self._max_view_sets = max(1, view_sets)
        self._viewed: dict[tuple[object, ...], object] = {}
        # Every category set an evaluation made, and every tuple of them per relation,
        # kept once: conversations with the same result share it, as they share the
        # rules' own tuples (sixteen sets of half a dozen names each would be over 10 KB
        # per conversation, for as long as its account is cached). The evaluation cache
        # is emptied whenever a compiled set is dropped; this one only when full.
        self._results: dict[Hashable, Any] = {}

    def in_force(self, views: AccountViews) -> ViewsInForce:
        """An account's views compiled under these rules (cached by value)."""
        in_force = self._in_force.get(views)
        if in_force is None:
            shared = self._view_set(views.shared) if views.shared else None
            personal = {agent: self._view_set(text) for agent, text in views.personal}
            in_force = ViewsInForce(self.rules, shared, personal)
            self._in_force[views] = in_force
            if len(self._in_force) > self._max_view_sets:
                self._in_force.popitem(last=False)
        else:
            self._in_force.move_to_end(views)
        return in_force

    def _view_set(self, text: str) -> ViewSet:
        compiled = self._view_sets.get(text)
        if compiled is None:
            compiled = self._view_sets[text] = self.rules.compile_views(text)
            if len(self._view_sets) > self._max_view_sets:
                self._view_sets.popitem(last=False)
                self._viewed.clear()  # its entries hold the set dropped
        else:
            self._view_sets.move_to_end(text)
        return compiled

    def category_names(self, views: AccountViews, agent_id: str) -> tuple[str, ...]:
        """Every category an agent of an account with these views has, in the order of
        its badge counts: the rules', then its shared views', then its personal ones'."""
        if views is NO_VIEWS:
            return self.rules.categories
        return self.in_force(views).names(agent_id)

    def apply(self, views: ViewsInForce, conversation: Conversation, account: Account,
              waited: int, categories: tuple[frozenset[str], ...],
              ) -> tuple[tuple[frozenset[str], ...], Mapping[str, frozenset[str]]]:
        """The categories per relation with the shared views that hold added, and the
        personal views that hold per agent (``categories``: the rules' alone)."""
        viewed = self._viewed
        if len(viewed) > MAX_CACHED:
            viewed.clear()
        facts = view_facts(conversation, account, waited)
        merged = categories
        shared = views.shared
        if shared is not None:
            details = shared.detail_results(conversation)
            found = viewed.get((shared, facts, details, categories, views.wide))
            if found is None:
                found = viewed[(shared, facts, details, categories, views.wide)] = self._one(
                    tuple(map(self._one, shared_views(shared, facts, details, categories,
                                                      views.wide))))
            merged = found  # type: ignore[assignment]
        if not views.personal:
            return merged, NO_PERSONAL
        personal: dict[str, frozenset[str]] = {}
        members = account.members(conversation.group_id)
        wide = len(categories) > 4
        for agent, view_set in views.personal.items():
            if agent not in account.agents:
                continue
            index = conversation.full_relation(agent, members)
            own = categories[index if wide else index & 3]
            details = view_set.detail_results(conversation)
            held = viewed.get((view_set, facts, details, index, own))
            if held is None:
                held = viewed[(view_set, facts, details, index, own)] = self._one(
                    view_set.evaluate(relation_vector(facts, RELATIONS[index], details), own))
            if held:
                personal[agent] = held  # type: ignore[assignment]
        return merged, (MappingProxyType(personal) if personal else NO_PERSONAL)

    def _one(self, result: R) -> R:
        """The result kept for this value (``result`` itself the first time)."""
        results = self._results
        kept: R | None = results.get(result)
        if kept is None:
            if len(results) >= MAX_CACHED:
                results.clear()
            kept = results[result] = result
        return kept


class ViewsInForce:
    """One account's views compiled under one rule set: its shared set, each agent's
    personal set, the waiting times at which any of them (or a rule) may change, and
    each agent's category names for the badge counts."""

    __slots__ = ("_encoders", "_rules", "personal", "shared", "thresholds", "wide")

    def __init__(self, rules: Rules, shared: ViewSet | None,
                 personal: dict[str, ViewSet]) -> None:
        self._rules = rules
        self.shared = shared
        self.personal = personal
        points = set(rules.thresholds.get(WAITING_SECONDS, ()))
        for view_set in (shared, *personal.values()):
            if view_set is not None:
                points.update(view_set.thresholds)
        self.thresholds: tuple[int, ...] | None = tuple(sorted(points)) or None
        # Agents told apart by unread and mentions when the shared views test them.
        self.wide = shared is not None and shared.wide
        self._encoders: dict[str, CountsEncoder] = {}

    def names(self, agent_id: str) -> tuple[str, ...]:
        names = list(self._rules.categories)
        for view_set in (self.shared, self.personal.get(agent_id)):
            if view_set is not None:
                names.extend(c for c in view_set.categories if c not in names)
        return tuple(names)

    def encoder(self, agent_id: str) -> CountsEncoder:
        encoder = self._encoders.get(agent_id)
        if encoder is None:
            encoder = self._encoders[agent_id] = CountsEncoder(self.names(agent_id))
        return encoder


def view_facts(conversation: Conversation, account: Account, waited: int) -> ViewFacts:
    return (conversation.status, conversation.group_id is not None, len(conversation.joined),
            account.plan, len(account.agents), len(account.groups), waited,
            conversation.last_message_by, PRIORITY_RANK[conversation.priority],
            conversation.visitor_wrote, bool(conversation.mentioned))


def relation_vector(facts: ViewFacts, relation: tuple[bool, bool, bool, bool],
                     details: tuple[bool, ...]) -> FactVector:
    """One agent's fact vector (FACT_NAMES order, then ``details``) from a
    conversation's facts as :meth:`Viewing.apply` keys them."""
    (status, has_group, joined_count, plan, agents, groups, waited, last_by, priority,
     _, _) = facts
    joined, in_group, unread, mentioned = relation
    return (status, has_group, joined_count, joined, in_group, plan, agents,
            groups, waited, last_by, priority, unread, mentioned, *details)


def shared_views(shared: ViewSet, facts: ViewFacts, details: tuple[bool, ...],
                  categories: tuple[frozenset[str], ...], wide: bool,
                  ) -> tuple[frozenset[str], ...]:
    """Per relation, the rules' categories and the shared views that hold (sixteen
    relations when the rules or the views tell unread agents apart). A relation no
    agent can be in keeps the rules' (empty) categories, as in the categoriser's own
    evaluation."""
    has_group, joined_count, wrote, any_mentioned = facts[1], facts[2], facts[9], facts[10]
    rules_wide = len(categories) > 4
    out = []
    for index, relation in enumerate(RELATIONS if wide or rules_wide else RELATIONS[:4]):
        own = categories[index if rules_wide else index & 3]
        if reachable(relation, has_group, joined_count, wrote, any_mentioned):
            held = shared.evaluate(relation_vector(facts, relation, details), own)
            out.append(own | held if held else own)
        else:
            out.append(own)
    return tuple(out)


def preview(state: AccountState, view_set: ViewSet, agents: Sequence[str],
            limit: int) -> dict[str, dict[str, tuple[int, list[str]]]]:
    """What candidate views would hold now in an account, as a view editor previews
    them: view id -> agent -> (how many conversations, the first ``limit`` by id). The
    waiting time is the real one at the account's clock, as explanations show it."""
    account = state.account
    agents = [a for a in agents if a in account.agents]
    found: dict[str, dict[str, tuple[int, list[str]]]] = {
        name.removeprefix(VIEW_PREFIX): {agent: (0, []) for agent in agents}
        for name in view_set.categories}
    now = state.last_occurred_at
    for conversation_id in sorted(state.conversations):
        conversation = state.conversations[conversation_id]
        if conversation.status not in UNRESOLVED:
            continue
        waited = (waiting_seconds(conversation.waiting_since, now) if now is not None else 0)
        facts = view_facts(conversation, account, waited)
        details = view_set.detail_results(conversation)
        members = account.members(conversation.group_id)
        for agent in agents:
            index = conversation.full_relation(agent, members)
            held = view_set.evaluate(relation_vector(facts, RELATIONS[index], details),
                                     conversation.categories_of(agent, account))
            for name in held:
                per_agent = found[name.removeprefix(VIEW_PREFIX)]
                count, ids = per_agent[agent]
                if count < limit:
                    ids.append(conversation_id)
                per_agent[agent] = (count + 1, ids)
    return found
