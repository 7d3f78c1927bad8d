"""Views that accounts and agents define: the views in force as account state, and what
the categoriser needs from a compiled set of them.

A view is a condition in the rule files' language, published as the category
``view:<view_id>``: a shared view is every agent's, a personal view its agent's only.
Views hold only for unresolved conversations (open or snoozed): they are working
queues, and a views event then re-categorises exactly the conversations they can hold.

The views in force are kept as the canonical JSON of each set (what the rule compiler
checked and wrote), so that they are stored, compared and compiled as values; the
compiler (:mod:`worker.rulebook.views`) turns a set into a :class:`ViewSet` under the
live rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from worker.domain.facts import FactVector

if TYPE_CHECKING:  # the state module holds the views in force: it imports this one
    from worker.domain.state import Conversation

# The statuses a view can hold for.
UNRESOLVED = frozenset({"open", "snoozed"})
VIEW_PREFIX = "view:"


@dataclass(frozen=True, slots=True)
class AccountViews:
    """The views in force in one account: the shared set and each agent's personal set,
    each as canonical JSON (a list of views; ``""``: none)."""

    shared: str = ""
    # (agent id, its personal views' JSON), by agent id; agents without views left out.
    personal: tuple[tuple[str, str], ...] = ()

    def personal_of(self, agent_id: str) -> str:
        for agent, views in self.personal:
            if agent == agent_id:
                return views
        return ""

    def with_shared(self, views: str) -> AccountViews:
        return _views(views, self.personal)

    def with_personal(self, agent_id: str, views: str) -> AccountViews:
        others = tuple(p for p in self.personal if p[0] != agent_id)
        personal = tuple(sorted((*others, (agent_id, views)))) if views else others
        return _views(self.shared, personal)


NO_VIEWS = AccountViews()


def _views(shared: str, personal: tuple[tuple[str, str], ...]) -> AccountViews:
    """Accounts without views share one value: the categoriser tells them apart by
    identity, at the cost of one comparison per event."""
    if not shared and not personal:
        return NO_VIEWS
    return AccountViews(shared, personal)


def account_views(shared: str, personal: Mapping[str, str]) -> AccountViews:
    """The views in force from their parts (a store's row)."""
    return _views(shared, tuple(sorted((a, v) for a, v in personal.items() if v)))


class ViewSet(Protocol):
    """One compiled set of views (an account's shared set, or one agent's personal set)
    under one rule set."""

    @property
    def categories(self) -> tuple[str, ...]:
        """``view:<view_id>`` of every view in force, in the set's order: the order of
        the badge counts, after the rules' categories."""

    @property
    def thresholds(self) -> tuple[int, ...]:
        """The waiting times at which one of its views may change (as the rules')."""

    @property
    def wide(self) -> bool:
        """Whether a view tests ``agent.unread`` or ``agent.mentioned``: then agents are
        told apart by them (sixteen relations, not four)."""

    def detail_results(self, conversation: Conversation) -> tuple[bool, ...]:
        """Its tests of channel, labels and attributes for one conversation."""

    def evaluate(self, facts: FactVector, categories: frozenset[str]) -> frozenset[str]:
        """The views that hold for one agent's fact vector (the scalar facts, then
        :meth:`detail_results`), ``categories`` being the agent's categories under the
        rules (a view may refer to them)."""
