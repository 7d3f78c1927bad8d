"""A deliberately naive second implementation of the contract, used only as a test oracle.

It recomputes every category of every agent from scratch after each event, with the
category table of the contract written out in Python (the product keeps it in rule files),
and what each agent has not read yet from the order in which things happened.

Views (docs/views.md): each view's condition is read here, by a small evaluator of the
rule language of its own (:func:`holds`), over the facts of one (agent, conversation)
as this model has them (:meth:`SpecOracle.facts`), the default rules' predicates written
out in Python (:data:`PREDICATES`) and the categories of the table. A view holds only
for an unresolved (open or snoozed) conversation; shared views are every agent's,
personal views their agent's. Custom attributes are not modelled: a view that tests
one is refused (``NotModelled``).

Time: a snoozed conversation with an ``until`` wakes at that instant, and a view that
tests ``conversation.waiting_seconds`` (whole seconds since the conversation began
waiting: since it was first seen, reopened, woken, or written to by the visitor after
an agent) may change when the waiting time reaches a value the view names, or one more.
As replay does, before each event every such instant at or before its ``occurred_at``
comes first, in time order (accounts by id at one instant): :meth:`SpecOracle.next_due`
names the first and :meth:`SpecOracle.cross` makes it (one at a time: a wake starts a
wait, whose instants may come before the event too); :meth:`SpecOracle.catch_up` makes
them all; :meth:`SpecOracle.apply` makes none. An account's clock (its newest event or
instant) never goes back: an event that occurred earlier (it came late) is applied at
the clock - a snooze until a moment the clock has passed has ended by then, woken at its
``until`` - though a wait it starts began at its own ``occurred_at`` (the platform's
clock says when things happened).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

Key = tuple[str, str, str]  # (account, agent, conversation)
Facts = dict[str, Any]  # fact name -> value (None: absent)
# The default rule set's categories, in the order of the badge counts.
CATEGORIES = ("all", "new", "mine", "primary", "resolved")
UNRESOLVED = ("open", "snoozed")
PRIORITIES = ("none", "low", "medium", "high", "urgent")
VIEW_EVENTS = ("account.views_updated", "agent.views_updated")
WAITING = "conversation.waiting_seconds"


class Shown(NamedTuple):
    """What an agent is shown of one conversation: its categories, and whether it is
    unread for them (published only for a conversation in some category)."""

    categories: frozenset[str]
    unread: bool


NOTHING = Shown(frozenset(), False)


def when(text: str) -> datetime:
    """An ISO 8601 time of the contract (``Z`` or an offset)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class _Conv:
    status: str = "open"  # open | snoozed | resolved | deleted
    group: str | None = None
    joined: set[str] = field(default_factory=set)
    seq: int | None = None
    until: datetime | None = None  # snoozed: when it wakes by itself (None: never)
    since: datetime | None = None  # waiting for an agent since then (None: not waiting)
    # Unread, by the order of events: the number of the event that brought the last
    # visitor message, and per agent of their last read (a read, or writing into it)
    # and of the last message that mentioned them.
    last_visitor: int | None = None
    last_read: dict[str, int] = field(default_factory=dict)
    last_mention: dict[str, int] = field(default_factory=dict)
    # The details views test (custom attributes are not modelled).
    channel: str | None = None
    priority: str = "none"
    labels: set[str] = field(default_factory=set)
    last_by: str = "none"  # who wrote last: visitor | agent | none

    def wake(self, at: datetime) -> None:
        """Open again (reopened or woken): waiting again, from ``at``."""
        self.status, self.until, self.since = "open", None, at


@dataclass
class _View:
    view_id: str
    when: dict[str, Any]  # the condition, as the event wrote it


@dataclass
class _Account:
    plan: str = "free"
    agents: set[str] = field(default_factory=set)
    groups: dict[str, set[str]] = field(default_factory=dict)
    seq: int | None = None
    clock: datetime | None = None
    shared: list[_View] = field(default_factory=list)
    personal: dict[str, list[_View]] = field(default_factory=dict)  # agent -> its views

    def views_of(self, agent: str) -> list[_View]:
        return self.shared + self.personal.get(agent, [])

    def waiting_points(self) -> set[int]:
        """Waiting times (seconds) at which a view may change: each value a view's
        test of the waiting time names, and the next second (``equals 3`` changes at 3
        and at 4, ``at_least 3`` at 3, ``greater_than 3`` at 4)."""
        views = [*self.shared, *(v for views in self.personal.values() for v in views)]
        values = {value for view in views for value in _waiting_values(view.when)}
        return {point for value in values for point in (value, value + 1) if point > 0}


class SpecOracle:
    def __init__(self) -> None:
        self.accounts: dict[str, _Account] = {}
        self.convs: dict[tuple[str, str], _Conv] = {}
        self.seen: set[tuple[str, str]] = set()
        self.applied = 0  # events applied so far: their order, for unread

    # -- what agents are shown ---------------------------------------------------
    def categories(self, account_id: str, conv_id: str, agent: str) -> set[str]:
        """The default rules' categories, and the views that hold (``view:<id>``)."""
        account = self.accounts.get(account_id, _Account())
        conv = self.convs.get((account_id, conv_id))
        if conv is None or agent not in account.agents or conv.status == "deleted":
            return set()
        result = self._rule_categories(account, conv, agent)
        if conv.status in UNRESOLVED:
            facts = self.facts(account, conv, agent)
            result |= {f"view:{view.view_id}" for view in account.views_of(agent)
                       if holds(view.when, facts, result)}
        return result

    def _rule_categories(self, account: _Account, conv: _Conv, agent: str) -> set[str]:
        if conv.status == "resolved":
            return {"resolved"}
        groups_in_effect = account.plan == "pro" and bool(account.groups)
        multi = len(account.agents) > 1 or groups_in_effect
        # A snoozed conversation is unresolved but not waiting for anyone.
        waiting = conv.status == "open" and not conv.joined
        if not multi:
            return {"all", "new"} if waiting else {"all"}
        result = {"all"}
        members = account.groups.get(conv.group, set()) if conv.group else set()
        if waiting and (conv.group is None or not groups_in_effect or agent in members):
            result.add("new")
        if agent in conv.joined:
            result.add("mine")
        if result & {"new", "mine"}:
            result.add("primary")
        return result

    def facts(self, account: _Account, conv: _Conv, agent: str) -> Facts:
        """What a view may test of one (agent, conversation), by name."""
        members = account.groups.get(conv.group, set()) if conv.group else set()
        return {
            "conversation.status": conv.status,
            "conversation.has_group": conv.group is not None,
            "conversation.joined_count": len(conv.joined),
            "conversation.channel": conv.channel,
            "conversation.priority": conv.priority,
            "conversation.labels": conv.labels,
            "conversation.last_message_by": conv.last_by,
            "agent.joined": agent in conv.joined,
            "agent.in_group": agent in members,
            "agent.unread": self._after_read(conv, agent, conv.last_visitor),
            "agent.mentioned": self._after_read(conv, agent, conv.last_mention.get(agent)),
            "account.plan": account.plan,
            "account.agent_count": len(account.agents),
            "account.group_count": len(account.groups),
            WAITING: _whole_seconds(conv.since, account.clock),
        }

    @staticmethod
    def _after_read(conv: _Conv, agent: str, number: int | None) -> bool:
        return number is not None and number > conv.last_read.get(agent, -1)

    def category_names(self, account_id: str, agent: str) -> list[str]:
        """The agent's categories in the order of its badge counts: the rules', its
        shared views', then its personal views' (an id of both is one category)."""
        account = self.accounts.get(account_id, _Account())
        views = [f"view:{view.view_id}" for view in account.views_of(agent)]
        return [*CATEGORIES, *dict.fromkeys(views)]

    def unread(self, account_id: str, conv_id: str, agent: str) -> bool:
        return self.shown(account_id, conv_id, agent).unread

    def shown(self, account_id: str, conv_id: str, agent: str) -> Shown:
        """Its categories, and the published flag: a visitor message or a mention of
        the agent came after they last read it, and it is in some category for them."""
        categories = self.categories(account_id, conv_id, agent)
        conv = self.convs.get((account_id, conv_id))
        if conv is None or not categories:
            return NOTHING
        return Shown(frozenset(categories),
                     self._after_read(conv, agent, conv.last_visitor)
                     or self._after_read(conv, agent, conv.last_mention.get(agent)))

    def snapshot(self, only: str | None = None) -> dict[Key, Shown]:
        """Every (account, agent, conversation) in some category (of account ``only``
        if given), and what it shows."""
        out = {}
        for (account_id, conv_id) in self.convs:
            if only is not None and account_id != only:
                continue
            for agent in self.accounts.get(account_id, _Account()).agents:
                shown = self.shown(account_id, conv_id, agent)
                if shown.categories:
                    out[(account_id, agent, conv_id)] = shown
        return out

    def counts(self, account_id: str, agent: str) -> dict[str, int]:
        """Per category, the agent's conversations in it (categories with none left out)."""
        return self._count(account_id, agent, unread_only=False)

    def unread_counts(self, account_id: str, agent: str) -> dict[str, int]:
        """Per category, the agent's unread conversations in it (none: left out)."""
        return self._count(account_id, agent, unread_only=True)

    def unread_ids(self, account_id: str, agent: str) -> list[str]:
        return sorted(conv_id for (acc, conv_id) in self.convs
                      if acc == account_id and self.unread(acc, conv_id, agent))

    def _count(self, account_id: str, agent: str, *, unread_only: bool) -> dict[str, int]:
        counts: dict[str, int] = {}
        for (acc, conv_id) in self.convs:
            if acc != account_id:
                continue
            shown = self.shown(acc, conv_id, agent)
            if unread_only and not shown.unread:
                continue
            for cat in shown.categories:
                counts[cat] = counts.get(cat, 0) + 1
        return counts

    # -- time --------------------------------------------------------------------
    def next_due(self, moment: datetime) -> tuple[datetime, str] | None:
        """The first (instant, account) of :meth:`due`, if any."""
        due = self.due(moment)
        return due[0] if due else None

    def catch_up(self, moment: datetime) -> None:
        """Make every instant due at or before ``moment``, in order."""
        while (due := self.next_due(moment)) is not None:
            self.cross(due[1], due[0])

    def due(self, moment: datetime) -> list[tuple[datetime, str]]:
        """(instant, account) of every wake, and of every waiting time at which a view
        may change, after the account's clock and at or before ``moment``, in time
        order, accounts by id at one instant (as things stand: crossing one may make
        others due)."""
        due = {(conv.until, account_id) for (account_id, _), conv in self.convs.items()
               if conv.status == "snoozed" and conv.until is not None
               and conv.until <= moment}
        for account_id, account in self.accounts.items():
            points = account.waiting_points()
            for (acc, _), conv in self.convs.items():
                if acc != account_id or conv.since is None or not points:
                    continue
                instants = (conv.since + timedelta(seconds=point) for point in points)
                due.update((instant, acc) for instant in instants
                           if account.clock is not None and account.clock < instant <= moment)
        return sorted(due)

    def cross(self, account_id: str, instant: datetime) -> None:
        """Time reaches ``instant`` in the account: what was snoozed until then wakes
        (and waits from then)."""
        for (acc, _), conv in self.convs.items():
            if (acc == account_id and conv.status == "snoozed" and conv.until is not None
                    and conv.until <= instant):
                conv.wake(instant)
        account = self.accounts.setdefault(account_id, _Account())
        account.clock = instant if account.clock is None else max(account.clock, instant)

    # -- events ------------------------------------------------------------------
    def apply(self, event: dict[str, Any]) -> None:
        account_id, kind, seq = event["account_id"], event["type"], event.get("sequence")
        key = (account_id, event["event_id"])
        if key in self.seen:
            return
        self.seen.add(key)
        account = self.accounts.setdefault(account_id, _Account())
        occurred = when(event["occurred_at"])
        now = occurred if account.clock is None else max(account.clock, occurred)
        account.clock = now
        data = event.get("data", {})
        if kind == "account.updated" or kind in VIEW_EVENTS:
            # Account events: one sequence for snapshots and views alike.
            if seq is not None and account.seq is not None and seq < account.seq:
                return
            if seq is not None:
                account.seq = seq if account.seq is None else max(seq, account.seq)
            self._account_event(account, kind, data)
            return
        # A conversation first seen began (waiting) then.
        conv = self.convs.setdefault((account_id, event["conversation_id"]),
                                     _Conv(since=occurred))
        if seq is not None and conv.seq is not None and seq < conv.seq:
            return
        if seq is not None:
            conv.seq = seq if conv.seq is None else max(seq, conv.seq)
        self.applied += 1
        # Any fresh event reveals the agents it names, even for a deleted conversation.
        by_visitor = kind == "message.created" and data.get("author") == "visitor"
        agent = data.get("agent_id") or data.get("to_agent_id")
        if agent and not by_visitor:
            account.agents.add(agent)
        if not by_visitor:
            account.agents.update(data.get("mentions", []))
        if conv.status == "deleted":
            return
        self._conversation_event(conv, kind, data, occurred, now)

    @staticmethod
    def _account_event(account: _Account, kind: str, data: dict[str, Any]) -> None:
        if kind == "account.updated":
            account.plan, account.agents = data["plan"], set(data["agents"])
            account.groups = {g: set(m) for g, m in data.get("groups", {}).items()}
            return
        views = [_View(view["view_id"], view["when"]) for view in data["views"]]
        if kind == "account.views_updated":
            account.shared = views
        else:  # an agent's personal views: the event names an agent of the account
            account.personal[data["agent_id"]] = views
            account.agents.add(data["agent_id"])

    def _conversation_event(self, conv: _Conv, kind: str, data: dict[str, Any],
                            occurred: datetime, now: datetime) -> None:
        """``occurred``: the event's time, when the waits it starts begin; ``now``: the
        account's clock, when it is applied."""
        number = self.applied
        if kind == "conversation.created":
            conv.group = data.get("group_id")
            conv.channel, conv.priority = data.get("channel"), data.get("priority", "none")
            conv.labels = set(data.get("labels", []))
        elif kind == "message.created":
            conv.last_by = data["author"]
            if data["author"] == "visitor":
                if conv.status in ("resolved", "snoozed"):
                    conv.wake(occurred)
                elif conv.since is None:
                    conv.since = occurred  # the first visitor message after an agent's
                conv.last_visitor = number
            else:
                conv.since = None  # answered
                conv.joined.add(data["agent_id"])
                conv.last_read[data["agent_id"]] = number  # writing into it reads it
                for mentioned in data.get("mentions", []):
                    conv.last_mention[mentioned] = number
        elif kind == "conversation.read":
            conv.last_read[data["agent_id"]] = number
        elif kind == "conversation.assigned":
            conv.joined.add(data["agent_id"])
        elif kind == "conversation.unassigned":
            conv.joined.discard(data["agent_id"])
        elif kind == "conversation.transferred":
            if data.get("to_agent_id"):
                conv.joined = {data["to_agent_id"]}
            else:
                conv.joined, conv.group = set(), data["to_group_id"]
        elif kind == "conversation.resolved":
            conv.status, conv.until, conv.since = "resolved", None, None
        elif kind == "conversation.reopened":
            if conv.status in ("resolved", "snoozed"):
                conv.wake(occurred)
        elif kind == "conversation.snoozed":
            until = when(data["until"]) if data.get("until") is not None else None
            if until is None or until > now:
                conv.status, conv.until, conv.since = "snoozed", until, None
            elif until > occurred:
                conv.wake(until)  # came late: by the clock, it has woken already
            elif conv.status != "open" or conv.since is None:
                conv.wake(occurred)  # until already past: snoozed and woken at once
            # else: open and waiting already, it goes on waiting
        elif kind == "conversation.unsnoozed":
            if conv.status == "snoozed":
                conv.wake(occurred)
        elif kind == "conversation.deleted":
            conv.status, conv.until, conv.since = "deleted", None, None
        elif kind == "conversation.updated":  # the fields given replace the old ones
            conv.channel = data.get("channel", conv.channel)
            conv.priority = data.get("priority", conv.priority)
            conv.labels = set(data.get("labels", conv.labels))


# -- views: the rule language, read here ------------------------------------------------
class NotModelled(Exception):  # noqa: N818 - says what it is
    """A view tests a fact this model does not keep."""


def _groups_in_effect(facts: Facts) -> bool:
    return bool(facts["account.plan"] == "pro" and facts["account.group_count"] > 0)


# The default rule set's predicates (rules/inbox.yaml), as docs/categories.md words them.
PREDICATES: dict[str, Callable[[Facts], bool]] = {
    "open": lambda f: f["conversation.status"] == "open",
    "unresolved": lambda f: f["conversation.status"] in UNRESOLVED,
    "waiting": lambda f: f["conversation.status"] == "open" and f["conversation.joined_count"] == 0,
    "groups_in_effect": _groups_in_effect,
    "multi_agent": lambda f: f["account.agent_count"] > 1 or _groups_in_effect(f),
    "routed_to_agent": lambda f: (not f["conversation.has_group"] or not _groups_in_effect(f)
                                  or f["agent.in_group"]),
}


def _whole_seconds(since: datetime | None, now: datetime | None) -> int:
    """Whole seconds from ``since`` to ``now`` (0 when not waiting)."""
    if since is None or now is None or now <= since:
        return 0
    return (now - since) // timedelta(seconds=1)


def _waiting_values(condition: dict[str, Any]) -> list[int]:
    """The values a condition's tests of the waiting time name."""
    if "all" in condition or "any" in condition:
        items = condition.get("all", condition.get("any", []))
        return [value for item in items for value in _waiting_values(item)]
    if "not" in condition:
        return _waiting_values(condition["not"])
    if condition.get("fact") != WAITING:
        return []
    [value] = [v for key, v in condition.items() if key != "fact"]
    return list(value) if isinstance(value, list) else [value]


def holds(condition: dict[str, Any], facts: Facts, categories: set[str]) -> bool:
    """Whether a condition of the rule language holds for one (agent, conversation):
    ``categories`` are its categories under the rules (a view may name them)."""
    if "all" in condition:
        return all(holds(item, facts, categories) for item in condition["all"])
    if "any" in condition:
        return any(holds(item, facts, categories) for item in condition["any"])
    if "not" in condition:
        return not holds(condition["not"], facts, categories)
    if "category" in condition:
        return condition["category"] in categories
    if "predicate" in condition:
        return PREDICATES[condition["predicate"]](facts)
    return fact_test_holds(condition, facts)


def fact_test_holds(test: dict[str, Any], facts: Facts) -> bool:
    """``{fact: F, OPERATOR: VALUE}``. An absent fact (no channel) passes only the
    negations (``not_equals``, ``not_in``) and ``present: false``; priorities compare by
    their order."""
    fact = test["fact"]
    if fact not in facts:
        raise NotModelled(fact)
    [(op, expected)] = [(key, value) for key, value in test.items() if key != "fact"]
    actual = facts[fact]
    if op == "present":
        return (actual is not None) == bool(expected)
    if actual is None:
        return op in ("not_equals", "not_in")
    if fact == "conversation.priority":
        actual = PRIORITIES.index(actual)
        expected = ([PRIORITIES.index(v) for v in expected] if isinstance(expected, list)
                    else PRIORITIES.index(expected))
    return _TESTS[op](actual, expected)


_TESTS: dict[str, Callable[[Any, Any], bool]] = {
    "equals": lambda a, e: a == e, "not_equals": lambda a, e: a != e,
    "in": lambda a, e: a in e, "not_in": lambda a, e: a not in e,
    "greater_than": lambda a, e: a > e, "at_least": lambda a, e: a >= e,
    "less_than": lambda a, e: a < e, "at_most": lambda a, e: a <= e,
    "contains": lambda a, e: e in a, "not_contains": lambda a, e: e not in a,
    "contains_any": lambda a, e: bool(a & set(e)),
    "contains_all": lambda a, e: set(e) <= a,
}
