"""Upstream event streams for every test and benchmark.

A stream is a sequence of ops: a :class:`Step` (something happens upstream: an account
snapshot, a chat is created, an agent joins, ...) or a :class:`Resend` (upstream sends an
earlier event again). One :class:`Emitter` gives each op its envelope: the event id, the
sequence number per conversation (per account for account events) and the timestamp.
Two sources of ops share that model:

- :func:`event_stream`: seeded (``random.Random(seed)``), shaped by :class:`Knobs`, with
  named profiles (:data:`PROFILES`): ``mixed`` (the default: broker tests), ``chaos``
  (reliability: stale re-sends, events without a sequence), ``steady`` (a fixed working
  set, for memory), ``light`` and ``heavy`` (the benchmarks' realistic chat lifecycles)
  and ``rich`` (``light`` with the details inboxes sort by: labels, attributes and
  priorities set and changed, reads, mentions, snoozes that wake during the stream;
  ``rich=True`` adds them to any profile) and ``views`` (``rich`` with the account's
  shared views and its agents' personal views defined and edited along the way;
  ``views=RATE`` adds them to any profile);
- :func:`event_streams`: the hypothesis strategy of the property tests: the same ops over
  a tiny universe where ids collide, agents come and go, events arrive for chats never
  created, sequences go missing or stale and events are re-sent, views are drawn from
  the rule language (:func:`view_conditions`); hypothesis shrinks a failing stream op by
  op.

:class:`Events` builds single parsed events for unit tests with the same envelope;
:func:`by_agent` and :func:`categories` key the updates of one event.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

from hypothesis import strategies as st

from contracts import Event, parse_event_object
from contracts.events import MAX_ATTRIBUTE_TEXT, MAX_ATTRIBUTES, PRIORITIES

TIME = "2026-11-24T10:00:00Z"
START = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
PLANS = ("free", "standard", "pro")
Sequencing = Literal["next", "none", "stale"]


# -- the envelope -----------------------------------------------------------------------
def envelope(kind: str, account_id: str, data: dict[str, Any], *, event_id: str,
             occurred_at: str = TIME, conversation_id: str | None = None,
             sequence: int | None = None) -> dict[str, Any]:
    """An upstream event as its JSON carries it (docs/contract.md, "Events")."""
    event: dict[str, Any] = {"event_id": event_id, "type": kind, "account_id": account_id,
                             "occurred_at": occurred_at, "data": data}
    if conversation_id is not None:
        event["conversation_id"] = conversation_id
    if sequence is not None:
        event["sequence"] = sequence
    return event


def iso(moment: datetime) -> str:
    """``2026-11-24T10:00:05Z`` (milliseconds only when there are some)."""
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True)
class Step:
    """Something happens upstream; ``sequence``: numbered next in its scope, left
    without a number, or numbered below the last one of its scope (stale);
    ``until_in``: a snooze's ``until``, in seconds after the event's ``occurred_at``
    (the emitter stamps both; zero or less: a moment already past)."""

    kind: str
    account_id: str
    data: dict[str, Any] = field(default_factory=dict)
    conversation_id: str | None = None
    sequence: Sequencing = "next"
    until_in: float | None = None


@dataclass(frozen=True)
class Resend:
    """Upstream sends event number ``pick`` (modulo the events so far) again: the same
    event, or with ``stale`` its content under a new id (older than what followed it)."""

    pick: int
    stale: bool = False


Op = Step | Resend


class Emitter:
    """Turns ops into events: ids ``<prefix>-e<n>``, one sequence counter per
    conversation (per account for account events), one tick of ``step`` seconds per
    event from ``start``."""

    def __init__(self, prefix: str = "e", start: datetime = START, step: float = 1.0) -> None:
        self.prefix = prefix
        self.start = start
        self.step = step
        self.events: list[dict[str, Any]] = []
        self._sequences: dict[tuple[str, str], int] = {}

    def __call__(self, op: Op) -> dict[str, Any]:
        number = len(self.events)
        if isinstance(op, Resend):
            event = copy.deepcopy(self.events[op.pick % number])
            if op.stale and "sequence" in event:
                event["event_id"] = f"{event['event_id']}-stale-{number}"
        else:
            occurred = self.start + timedelta(seconds=number * self.step)
            data = copy.deepcopy(op.data)
            if op.until_in is not None:
                data["until"] = iso(occurred + timedelta(seconds=op.until_in))
            event = envelope(
                op.kind, op.account_id, data, event_id=f"{self.prefix}-e{number}",
                occurred_at=iso(occurred), conversation_id=op.conversation_id,
                sequence=self._sequence(op))
        self.events.append(event)
        return event

    def _sequence(self, op: Step) -> int | None:
        scope = (op.account_id, op.conversation_id or "")
        last = self._sequences.get(scope, 0)
        if op.sequence == "next":
            self._sequences[scope] = last + 1
            return last + 1
        if op.sequence == "stale" and last > 1:
            return last - 1
        return None


def conversation_steps(agent: str, group: str) -> list[tuple[str, dict[str, Any]]]:
    """What can happen to a live chat (kind, data), weighted by repetition."""
    return [
        ("message.created", {"author": "visitor"}),
        ("message.created", {"author": "agent", "agent_id": agent}),
        ("conversation.assigned", {"agent_id": agent}),
        ("conversation.assigned", {"agent_id": agent}),
        ("conversation.unassigned", {"agent_id": agent}),
        ("conversation.transferred", {"to_agent_id": agent}),
        ("conversation.transferred", {"to_group_id": group}),
        ("conversation.resolved", {}),
        ("conversation.resolved", {}),
        ("conversation.reopened", {}),
    ]


# -- the details inboxes sort by (rich streams) -------------------------------------------
CHANNELS = ("web", "email", "whatsapp", "messenger", "sms")
LABELS = ("vip", "billing", "bug", "refund", "sales", "spam", "follow-up", "feedback",
          "returning", "enterprise", "trial", "churn-risk")
# As many names as the contract allows attributes: no merge of them can hold more.
ATTRIBUTE_KEYS = ("order_id", "cart_value", "country", "language", "plan", "seats",
                  "returning", "score", "source", "campaign", "device", "browser", "os",
                  "city", "company", "industry", "lifetime_value", "orders", "last_order",
                  "newsletter", "nps", "tier", "region", "currency", "referrer", "ticket",
                  "sla_minutes", "verified", "age_days", "rating", "coupon", "topic")
assert len(ATTRIBUTE_KEYS) == MAX_ATTRIBUTES
_WORDS = ("alpha", "beta", "gamma", "Berlin", "Lisbon", "Osaka", "premium", "basic",
          "yes", "no", "android", "ios", "chrome", "firefox", "EUR", "USD", "summer-sale")
Scripted = tuple[str, dict[str, Any], float | None]  # (kind, data, until_in)
# The event types only rich streams have (mentions come in message.created).
RICH_TYPES = frozenset({"conversation.updated", "conversation.snoozed",
                        "conversation.unsnoozed", "conversation.read"})


class Details:
    """The details of a rich stream's conversations, drawn from ``rng``: labels and
    attributes at creation for most of them, then changes (``conversation.updated``) that
    replace the channel, priority or labels and merge attributes (nulls remove keys).
    Attribute names come from :data:`ATTRIBUTE_KEYS` (32, the contract's limit) and at
    most 6 of the 12 labels are set: every merge stays valid. Each conversation's keys are
    remembered so that removals mostly name a key it has."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.keys: dict[tuple[str, str], set[str]] = {}

    def value(self) -> str | int | float | bool:
        rng = self.rng
        roll = rng.random()
        if roll < 0.4:
            return rng.choice(_WORDS)
        if roll < 0.5:  # a long text, up to the contract's limit
            text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(10, 60)))
            return text[:MAX_ATTRIBUTE_TEXT]
        if roll < 0.75:
            return rng.randint(0, 100_000)
        if roll < 0.9:
            return round(rng.uniform(0, 1000), 2)
        return rng.random() < 0.5

    def created(self, key: tuple[str, str], group_id: str | None) -> dict[str, Any]:
        """``conversation.created`` data: most with labels and attributes."""
        rng = self.rng
        data: dict[str, Any] = {"group_id": group_id}
        if rng.random() < 0.6:
            data["channel"] = rng.choice(CHANNELS)
        if rng.random() < 0.5:
            data["priority"] = rng.choice(PRIORITIES)
        if rng.random() < 0.8:
            data["labels"] = sorted(rng.sample(LABELS, rng.randint(1, 4)))
        keys: set[str] = set()
        if rng.random() < 0.8:
            keys = set(rng.sample(ATTRIBUTE_KEYS, rng.randint(1, 8)))
            data["attributes"] = {name: self.value() for name in sorted(keys)}
        self.keys[key] = keys
        return data

    def changes(self, key: tuple[str, str]) -> dict[str, Any]:
        """``conversation.updated`` data: one to three fields; attributes most often."""
        rng = self.rng
        keys = self.keys.setdefault(key, set())
        fields = set(rng.sample(("channel", "priority", "labels", "attributes",
                                 "attributes"), rng.randint(1, 3)))
        data: dict[str, Any] = {}
        if "channel" in fields:
            data["channel"] = rng.choice((None, *CHANNELS))
        if "priority" in fields:
            data["priority"] = rng.choice(PRIORITIES)
        if "labels" in fields:
            data["labels"] = sorted(rng.sample(LABELS, rng.randint(0, 6)))
        if "attributes" in fields:
            data["attributes"] = self._attribute_changes(keys)
        return data

    def _attribute_changes(self, keys: set[str]) -> dict[str, Any]:
        rng = self.rng
        present = sorted(keys)
        changes: dict[str, Any] = {}
        if rng.random() < 0.05:  # fill up to the limit
            changes = {name: self.value() for name in ATTRIBUTE_KEYS if name not in keys}
        for name in rng.sample(present, min(len(present), rng.randint(0, 2))):
            changes[name] = None
        if rng.random() < 0.05:
            changes[rng.choice(ATTRIBUTE_KEYS)] = None  # maybe a key it does not have
        for name in rng.sample(ATTRIBUTE_KEYS, rng.randint(0, 3)):
            changes.setdefault(name, self.value())
        keys.difference_update(name for name, value in changes.items() if value is None)
        keys.update(name for name, value in changes.items() if value is not None)
        return dict(sorted(changes.items()))


def _answer(rng: random.Random, agent: str, team: Sequence[str]) -> list[Scripted]:
    """An agent's message, sometimes mentioning one or two others; often followed by a
    read of that agent, and by reads of some of those mentioned."""
    data: dict[str, Any] = {"author": "agent", "agent_id": agent}
    others = [a for a in team if a != agent]
    mentions = (rng.sample(others, min(len(others), rng.randint(1, 2)))
                if others and rng.random() < 0.3 else [])
    if mentions:
        data["mentions"] = mentions
    steps: list[Scripted] = [("message.created", data, None)]
    if rng.random() < 0.6:
        steps.append(("conversation.read", {"agent_id": agent}, None))
    steps += [("conversation.read", {"agent_id": a}, None)
              for a in mentions if rng.random() < 0.5]
    return steps


def _snooze(rng: random.Random) -> list[Scripted]:
    """Snoozed a few seconds (it wakes during the stream), or until unsnoozed, or for
    an hour and woken by the visitor writing."""
    roll = rng.random()
    if roll < 0.6:
        return [("conversation.snoozed", {}, float(rng.randint(2, 8)))]
    if roll < 0.85:
        return [("conversation.snoozed", {}, None), ("conversation.unsnoozed", {}, None)]
    return [("conversation.snoozed", {}, 3600.0), ("message.created", {"author": "visitor"},
                                                   None)]


def rich_step(rng: random.Random, details: Details, key: tuple[str, str], agent: str,
              team: Sequence[str]) -> Scripted:
    """One step of a rich stream's random walk: details changed, a snooze (mostly
    short; sometimes with no end, or one already past), an unsnooze, a read, or an
    agent's message mentioning others."""
    roll = rng.random()
    if roll < 0.25:
        return "conversation.updated", details.changes(key), None
    if roll < 0.5:
        until = rng.choice((None, -1.0, 0.0, 2.0, 3.0, 5.0, 8.0, 8.0))
        return "conversation.snoozed", {}, until
    if roll < 0.65:
        return "conversation.unsnoozed", {}, None
    if roll < 0.85:
        return "conversation.read", {"agent_id": rng.choice(team)}, None
    return _answer(rng, agent, team)[0]


# -- views (conditions accounts and agents define) ----------------------------------------
VIEWS_TYPES = frozenset({"account.views_updated", "agent.views_updated"})
# What the views of generated streams name: the default rule set's categories and
# predicates (rules/inbox.yaml; the shipped examples keep them), and facts every rule set
# has. No custom attribute: which ones a rule set declares is its own choice
# (:func:`view_conditions` takes them).
VIEW_CATEGORIES = ("all", "new", "mine", "primary", "resolved")
VIEW_PREDICATES = ("open", "unresolved", "waiting", "groups_in_effect", "multi_agent",
                   "routed_to_agent")
_ORDERING = ("greater_than", "at_least", "less_than", "at_most")
_LISTS = ("in", "not_in", "contains_any", "contains_all")
_ATTRIBUTE_OPERATORS = {"string": ("equals", "not_equals", "in", "not_in", "present"),
                        "integer": ("equals", "not_equals", "in", "not_in", "present",
                                    *_ORDERING),
                        "boolean": ("equals", "not_equals", "present")}
_ATTRIBUTE_OPERATORS["number"] = _ATTRIBUTE_OPERATORS["integer"]
# Values attribute tests compare with (and fact vectors hold, so that tests may hold).
ATTRIBUTE_TEST_VALUES: dict[str, tuple[Any, ...]] = {
    "string": ("gold", "platinum", "silver"), "integer": (0, 10, 11, 1000),
    "number": (0, 10.5, 999.5, 1000), "boolean": (True, False)}
# A fact test: (fact, its operators, the values they take; a list operator takes one
# to three of them, ``present`` true or false).
FactTestShape = tuple[str, tuple[str, ...], tuple[Any, ...]]


def view_test_shapes(labels: Sequence[str], channels: Sequence[str],
                     attributes: dict[str, str] | None = None, waiting: Sequence[int] = (),
                     ) -> list[FactTestShape]:
    """The fact tests views of a stream make: every operator the rule language has,
    over the labels and channels the stream's conversations have, over the custom
    attributes given (key -> declared type), and over the waiting time compared with
    the values ``waiting`` gives (none: no test of it)."""
    labels, channels = tuple(labels), tuple(channels)
    shapes: list[FactTestShape] = [
        ("conversation.priority", ("equals", "not_equals", "in", "not_in", *_ORDERING),
         PRIORITIES),
        ("conversation.labels", ("contains", "not_contains", "contains_any", "contains_all"),
         labels),
        ("conversation.channel", ("equals", "not_equals", "in", "not_in", "present"),
         channels),
        ("agent.unread", ("equals", "not_equals"), (True, False)),
        ("agent.mentioned", ("equals",), (True, False)),
        ("agent.joined", ("equals",), (True, False)),
        ("agent.in_group", ("equals",), (True, False)),
        ("conversation.has_group", ("equals",), (True, False)),
        ("conversation.status", ("equals", "not_equals", "in"), ("open", "snoozed",
                                                                 "resolved")),
        ("conversation.joined_count", ("equals", "greater_than", "at_most"), (0, 1, 2)),
        ("conversation.last_message_by", ("equals", "not_equals"),
         ("visitor", "agent", "none")),
        ("account.plan", ("equals", "not_equals"), PLANS),
        ("account.agent_count", ("greater_than", "at_most"), (1, 2)),
        ("account.group_count", ("equals", "greater_than"), (0, 1)),
    ]
    shapes += [(f"conversation.attributes.{key}", _ATTRIBUTE_OPERATORS[kind],
                ATTRIBUTE_TEST_VALUES[kind]) for key, kind in sorted((attributes or {}).items())]
    if waiting:
        shapes.append(("conversation.waiting_seconds", ("equals", "not_equals", "in",
                                                        *_ORDERING), tuple(waiting)))
    return shapes


def _fact_test(fact: str, op: str, value: Any) -> dict[str, Any]:
    return {"fact": fact, op: value}


def _seeded_test(rng: random.Random, shape: FactTestShape) -> dict[str, Any]:
    fact, operators, values = shape
    op = rng.choice(operators)
    if op == "present":
        return _fact_test(fact, op, rng.random() < 0.5)
    if op in _LISTS:
        return _fact_test(fact, op, rng.sample(values, rng.randint(1, min(3, len(values)))))
    return _fact_test(fact, op, rng.choice(values))


def seeded_condition(rng: random.Random, shapes: Sequence[FactTestShape],
                     depth: int = 0) -> dict[str, Any]:
    """A view's condition drawn from ``rng``: fact tests, references to the default
    rules' categories and predicates, and all/any/not of them (two levels at most)."""
    roll = rng.random()
    if depth < 2 and roll < 0.3:
        items = [seeded_condition(rng, shapes, depth + 1) for _ in range(rng.randint(1, 3))]
        return {rng.choice(("all", "any")): items}
    if depth < 2 and roll < 0.4:
        return {"not": seeded_condition(rng, shapes, depth + 1)}
    if roll < 0.55:
        return {"category": rng.choice(VIEW_CATEGORIES)}
    if roll < 0.65:
        return {"predicate": rng.choice(VIEW_PREDICATES)}
    return _seeded_test(rng, rng.choice(shapes))


# Views an account's admins or its agents define (over the default rules and the
# labels and channels of rich streams).
VIEW_CATALOGUE: tuple[dict[str, Any], ...] = (
    {"view_id": "vip-waiting", "name": "VIP waiting", "when": {"all": [
        {"category": "new"}, {"fact": "conversation.labels", "contains": "vip"}]}},
    {"view_id": "urgent-email", "name": "Urgent email", "when": {"all": [
        {"predicate": "unresolved"}, {"fact": "conversation.priority", "at_least": "high"},
        {"fact": "conversation.channel", "equals": "email"}]}},
    {"view_id": "unread-mine", "name": "Unread, mine", "when": {"all": [
        {"category": "mine"}, {"fact": "agent.unread", "equals": True}]}},
    {"view_id": "mentions", "name": "Mentions", "when": {
        "fact": "agent.mentioned", "equals": True}},
    {"view_id": "messaging", "name": "Messaging apps", "when": {
        "fact": "conversation.channel", "in": ["whatsapp", "messenger", "sms"]}},
    {"view_id": "no-channel", "name": "Unknown channel", "when": {
        "fact": "conversation.channel", "present": False}},
    {"view_id": "billing", "name": "Billing, not spam", "when": {"all": [
        {"fact": "conversation.labels", "contains_any": ["billing", "refund"]},
        {"not": {"fact": "conversation.labels", "contains": "spam"}}]}},
    {"view_id": "snoozed", "name": "Snoozed", "when": {
        "fact": "conversation.status", "equals": "snoozed"}},
    {"view_id": "unassigned-hot", "name": "Unassigned, high priority", "when": {"all": [
        {"fact": "conversation.joined_count", "equals": 0},
        {"fact": "conversation.priority", "in": ["high", "urgent"]}]}},
    {"view_id": "colleagues", "name": "Colleagues' chats", "when": {"all": [
        {"not": {"category": "mine"}}, {"fact": "conversation.joined_count",
                                         "greater_than": 0}]}},
    {"view_id": "needs-reply", "name": "Needs a reply", "when": {"any": [
        {"fact": "conversation.last_message_by", "equals": "visitor"},
        {"fact": "conversation.labels", "contains": "follow-up"}]}},
    {"view_id": "quiet", "name": "Low priority, mine or new", "when": {"all": [
        {"category": "primary"}, {"fact": "conversation.priority", "at_most": "low"}]}},
    {"view_id": "at-risk", "name": "Enterprise at risk", "when": {
        "fact": "conversation.labels", "contains_all": ["churn-risk", "enterprise"]}},
    {"view_id": "my-group", "name": "My group's queue", "when": {"all": [
        {"fact": "agent.in_group", "equals": True}, {"predicate": "waiting"}]}},
    {"view_id": "waiting-long", "name": "Waiting over 30 s", "when": {"all": [
        {"predicate": "waiting"}, {"fact": "conversation.waiting_seconds", "at_least": 30}]}},
)


class SeededViews:
    """The views events of a stream with views, drawn from ``rng``: the account's
    shared set or one agent's personal set replaced by a few views of the catalogue
    (the same ids in both: a personal view may share a shared view's id), sometimes
    one made up (:func:`seeded_condition`), sometimes none (every view removed)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.shapes = view_test_shapes(LABELS, CHANNELS, waiting=(10, 30, 60))
        self.made_up = itertools.count()

    def views(self, at_least: int = 0) -> list[dict[str, Any]]:
        rng = self.rng
        views = copy.deepcopy(rng.sample(VIEW_CATALOGUE, rng.randint(at_least, 5)))
        if rng.random() < 0.4:
            number = next(self.made_up)
            views.append({"view_id": f"custom-{number}", "name": f"Custom {number}",
                          "when": seeded_condition(rng, self.shapes)})
        return views

    def step(self, account: str, team: Sequence[str]) -> Step:
        if self.rng.random() < 0.5:
            return self.shared(account)
        return Step("agent.views_updated", account,
                    {"agent_id": self.rng.choice(team), "views": self.views()})

    def shared(self, account: str, at_least: int = 0) -> Step:
        return Step("account.views_updated", account, {"views": self.views(at_least)})


# -- the seeded generator ---------------------------------------------------------------
@dataclass(frozen=True)
class Knobs:
    """What a seeded stream looks like. Rates are per event."""

    seed: int = 0
    count: int | None = 1000  # events; None: as many as the lifecycles make
    accounts: int = 4  # named acc-<seed>-<n>
    # "walk": random steps over the live chats; "lifecycles": scripted, realistic chats
    # (created, messages, maybe a transfer or a join and leave, resolved), 64 at a time.
    traffic: Literal["walk", "lifecycles"] = "walk"
    # Agents per account: a fixed PRO team ag-<a>-<i> with a group per 5 agents. None:
    # each snapshot draws a team of 1-4 from a pool of `pool` agents, with `groups`.
    agents: int | None = None
    pool: int = 6
    groups: tuple[str, ...] = ("g-sales", "g-support")
    # lifecycles: the chats in the stream; walk: chats created up front per account.
    conversations: int = 0
    routed: bool = True  # lifecycles: every chat routed to a group (else none is)
    revisit: bool = False  # lifecycles: then every chat again until twice as long
    snapshots: float = 0.03  # walk: account.updated (a new team and plan)
    creates: float = 0.15  # walk: new chats
    deletes: float = 0.01  # walk: share of chat steps that delete it
    duplicates: float = 0.02  # re-sent events (same event id)
    recent: int | None = None  # re-send only among the last `recent` events
    stale: float = 0.0  # walk: older events again under a new id
    unsequenced: float = 0.0  # walk: events without a sequence
    start: datetime = START
    step: float = 1.0  # seconds between events
    prefix: str | None = None  # of event ids; default s<seed>
    # The details inboxes sort by (:class:`Details`), reads, mentions and snoozes, drawn
    # from a second generator: lifecycles get them in their script, the walk in a third
    # of its chat steps.
    rich: bool = False
    # Views events per event (:class:`SeededViews`), drawn from a generator of their
    # own; with any, each account starts with shared views. 0: none (and the stream is
    # exactly what it was before views).
    views: float = 0.0


_LIFECYCLES = Knobs(seed=7, count=None, traffic="lifecycles", agents=2, conversations=2000,
                    duplicates=0.01)
PROFILES: dict[str, Knobs] = {
    # snapshots, chats, joins, transfers, resolves, reopens, a few deletes and re-sends.
    "mixed": Knobs(),
    # Also stale re-sends and events without a sequence; fewer later snapshots (each
    # re-categorises the whole account: a plan or team change is rarer than a chat).
    "chaos": Knobs(snapshots=0.006, stale=0.03, unsequenced=0.02),
    # A fixed working set created first, then steps on it over and over: memory should
    # stop growing once all of it is known.
    "steady": Knobs(accounts=10, conversations=100, snapshots=0.002, creates=0.0,
                    deletes=0.0, duplicates=0.01, recent=50),
    # Benchmarks: PRO accounts; every chat routed to a group of 5 (few agents concerned)...
    "light": _LIFECYCLES,
    # ...or to none (each new chat, join and resolve changes every agent's inbox).
    "heavy": replace(_LIFECYCLES, routed=False),
    # light with labels, attributes, priorities, reads, mentions and snoozes.
    "rich": replace(_LIFECYCLES, rich=True),
    # rich with shared and personal views defined and edited now and then.
    "views": replace(_LIFECYCLES, rich=True, views=0.005),
}


def event_stream(seed: int | None = None, count: int | None = None,
                 accounts: int | None = None, *, profile: str = "mixed",
                 **knobs: Any) -> list[dict[str, Any]]:
    """A seeded, valid stream: ``profile`` with any :class:`Knobs` field overridden."""
    given = {"seed": seed, "count": count, "accounts": accounts}
    chosen: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    return generate(replace(PROFILES[profile], **chosen, **knobs))


def generate(knobs: Knobs) -> list[dict[str, Any]]:
    """The stream ``knobs`` describe (the same knobs, the same stream)."""
    rng = random.Random(knobs.seed)
    emit = Emitter(knobs.prefix or f"s{knobs.seed}", knobs.start, knobs.step)
    ops = _walk(rng, knobs) if knobs.traffic == "walk" else _lifecycles(rng, knobs)
    for op in ops:
        if knobs.count is not None and len(emit.events) >= knobs.count:
            break
        emit(op)
    return emit.events


def soak_stream(conversations: int, seed: int = 11) -> tuple[list[dict[str, Any]], int]:
    """The light stream, then its chats written into, answered and resolved again (new
    event ids) until about twice as long: after the first part the state stops growing.
    Also a dedup window every account fills in the first part (the window is per
    account: sized to the whole first part, it would keep growing through the second)."""
    first = event_stream(seed, profile="light", conversations=conversations)
    per_account = Counter(str(event["account_id"]) for event in first)
    return (event_stream(seed, profile="light", conversations=conversations, revisit=True),
            min(per_account.values()))


def _team(account: int, size: int) -> tuple[list[str], dict[str, list[str]]]:
    """A fixed team of ``size`` agents and a group per 5 of them."""
    agents = [f"ag-{account}-{i}" for i in range(size)]
    groups = {f"g-{account}-{g}": agents[g * 5 % size:][:5] or agents[:5]
              for g in range(max(1, size // 5))}
    return agents, groups


def _walk(rng: random.Random, k: Knobs) -> Iterator[Op]:
    accounts = [f"acc-{k.seed}-{n}" for n in range(k.accounts)]
    pool = [f"ag-{n}" for n in range(1, k.pool + 1)]
    teams = [_team(a, k.agents) for a in range(k.accounts)] if k.agents else []
    live: dict[str, list[str]] = {account: [] for account in accounts}
    extra = random.Random(f"rich-{k.seed}")  # draws nothing unless rich
    details = Details(extra)
    views = SeededViews(random.Random(f"views-{k.seed}"))  # draws nothing without views

    def snapshot(a: int) -> Step:
        if teams:
            agents, groups = teams[a]
            plan = "pro"
        else:
            agents = sorted(rng.sample(pool, rng.randint(1, min(4, len(pool)))))
            groups = {g: sorted(rng.sample(agents, rng.randint(1, len(agents))))
                      for g in k.groups if rng.random() < 0.7}
            plan = rng.choice(("free", "standard", "pro", "pro"))
        return Step("account.updated", accounts[a],
                    {"plan": plan, "agents": agents, "groups": groups})

    def group_names(a: int) -> tuple[str, ...]:
        return tuple(teams[a][1]) if teams else k.groups

    def create(a: int) -> Step:
        known = live[accounts[a]]
        known.append(f"c-{len(known)}")
        group = rng.choice((None, *group_names(a)))
        data = details.created((accounts[a], known[-1]), group) if k.rich else {
            "group_id": group}
        return Step("conversation.created", accounts[a], data, known[-1])

    def chat_step(a: int, conversation: str) -> Step:
        agent = rng.choice(teams[a][0] if teams else pool)
        kind, data = rng.choice(conversation_steps(agent, rng.choice(group_names(a))))
        until: float | None = None
        if k.rich and extra.random() < 1 / 3:
            kind, data, until = rich_step(extra, details, (accounts[a], conversation), agent,
                                          teams[a][0] if teams else pool)
        if rng.random() < k.deletes:
            kind, data, until = "conversation.deleted", {}, None
        unsequenced = k.unsequenced and rng.random() < k.unsequenced
        return Step(kind, accounts[a], data, conversation, "none" if unsequenced else "next",
                    until)

    def team(a: int) -> Sequence[str]:
        return teams[a][0] if teams else pool

    emitted = 0
    for a in range(k.accounts):
        yield snapshot(a)
        emitted += 1
        if k.views:
            yield views.shared(accounts[a], at_least=1)
            emitted += 1
        for _ in range(k.conversations):
            yield create(a)
            emitted += 1
    resend_below, stale_below, snapshot_below, create_below = itertools.accumulate(
        (k.duplicates, k.stale, k.snapshots, k.creates))
    while True:
        if k.views and views.rng.random() < k.views:
            chosen = views.rng.randrange(k.accounts)
            yield views.step(accounts[chosen], team(chosen))
            emitted += 1
            continue
        a = rng.randrange(k.accounts)
        roll = rng.random()
        op: Op
        if roll < stale_below and emitted > 1:
            if k.recent is None:
                pick = rng.randrange(emitted)
            else:
                pick = emitted - rng.randint(1, min(k.recent, emitted))
            op = Resend(pick, stale=roll >= resend_below)
        elif roll < snapshot_below:
            op = snapshot(a)
        elif roll < create_below or not live[accounts[a]]:
            op = create(a)
        else:
            op = chat_step(a, rng.choice(live[accounts[a]]))
        yield op
        emitted += 1


def _lifecycles(rng: random.Random, k: Knobs) -> Iterator[Op]:
    accounts = [f"acc-{k.seed}-{n}" for n in range(k.accounts)]
    teams = [_team(a, k.agents or 2) for a in range(k.accounts)]
    for account, (agents, groups) in zip(accounts, teams, strict=True):
        yield Step("account.updated", account,
                   {"plan": "pro", "agents": agents, "groups": groups})
    views = SeededViews(random.Random(f"views-{k.seed}"))  # draws nothing without views
    emitted = len(accounts)
    if k.views:
        for account in accounts:
            yield views.shared(account, at_least=1)
            emitted += 1
    chats: list[tuple[str, str, list[Scripted]]] = []
    extra = random.Random(f"rich-{k.seed}")  # draws nothing unless rich
    details = Details(extra)
    for c in range(k.conversations):
        agents, groups = teams[c % k.accounts]
        agent, other = rng.choice(agents), rng.choice(agents)
        group = rng.choice(list(groups)) if k.routed else None
        visitor: Scripted = ("message.created", {"author": "visitor"}, None)
        answer: Scripted = ("message.created", {"author": "agent", "agent_id": agent}, None)
        transfer, join_and_leave, written_after = (rng.random() < 0.3, rng.random() < 0.2,
                                                   rng.random() < 0.1)
        if k.rich:
            steps = _rich_chat(extra, details, (accounts[c % k.accounts], f"c-{c}"), group,
                               agents, agent, other)
        else:
            steps = [("conversation.created", {"group_id": group}, None), visitor, visitor,
                     answer, visitor, answer]
        if transfer:
            steps.append(("conversation.transferred", {"to_agent_id": other}, None))
        if join_and_leave:
            steps += [("conversation.assigned", {"agent_id": agent}, None),
                      ("conversation.unassigned", {"agent_id": agent}, None)]
        steps.append(("conversation.resolved", {}, None))
        if written_after:
            steps.append(visitor)
        chats.append((accounts[c % k.accounts], f"c-{c}", steps))
    # Interleave the chats like real traffic: a window of 64 active at a time.
    cursors = [0] * len(chats)
    pending = list(range(len(chats)))
    appeared: list[int] = []
    while pending:
        if k.views and views.rng.random() < k.views:
            a = views.rng.randrange(k.accounts)
            yield views.step(accounts[a], teams[a][0])
            emitted += 1
        index = rng.choice(pending[:64])
        account, conversation, steps = chats[index]
        if cursors[index] == 0:
            appeared.append(index)
        kind, data, until = steps[cursors[index]]
        cursors[index] += 1
        yield Step(kind, account, data, conversation, until_in=until)
        emitted += 1
        if cursors[index] == len(steps):
            pending.remove(index)
    for pick in rng.sample(range(emitted), int(emitted * k.duplicates)):
        yield Resend(pick)
    if k.revisit and chats:
        first = emitted + int(emitted * k.duplicates)
        for _ in range(max(1, -(-first // (3 * len(chats))))):
            for index in appeared:
                account, conversation, _steps = chats[index]
                agent = teams[index % k.accounts][0][0]
                yield Step("message.created", account, {"author": "visitor"}, conversation)
                yield Step("message.created", account, {"author": "agent", "agent_id": agent},
                           conversation)
                yield Step("conversation.resolved", account, {}, conversation)


def _rich_chat(rng: random.Random, details: Details, key: tuple[str, str],
               group: str | None, team: Sequence[str], agent: str, other: str,
               ) -> list[Scripted]:
    """A lifecycle's chat up to its resolution, rich: created with details, visitor
    messages between agents' answers (reads and mentions after them), sometimes a read
    by another agent, details changed, maybe a snooze (before the first answer too: it
    leaves ``new`` and comes back when it wakes)."""
    visitor: Scripted = ("message.created", {"author": "visitor"}, None)
    steps: list[Scripted] = [("conversation.created", details.created(key, group), None),
                             visitor, visitor]
    if rng.random() < 0.15:
        steps += _snooze(rng)
    steps += _answer(rng, agent, team)
    if rng.random() < 0.5:
        steps.append(("conversation.updated", details.changes(key), None))
    steps.append(visitor)
    if rng.random() < 0.2:
        steps.append(("conversation.read", {"agent_id": other}, None))
    steps += _answer(rng, agent, team)
    if rng.random() < 0.4:
        steps += _snooze(rng)
    if rng.random() < 0.3:
        steps.append(("conversation.updated", details.changes(key), None))
    return steps


# -- the hypothesis strategy ------------------------------------------------------------
TINY_ACCOUNTS = ("acc-1", "acc-2")
TINY_CONVERSATIONS = ("c-1", "c-2", "c-3")
TINY_AGENTS = ("ag-1", "ag-2", "ag-3")
TINY_GROUPS = ("g-1", "g-2")
TINY_LABELS = ("l-1", "l-2", "l-3")
TINY_KEYS = ("k-1", "k-2", "k-3", "k-4")  # fewer than the contract's 32: merges stay valid
TINY_CHANNELS = ("web", "email")
TINY_VIEW_IDS = ("v-1", "v-2", "v-3")  # shared and personal views share them
# Chats and their steps dominate real traffic; snapshots and deletes are rarer. The
# details, reads, mentions and snoozes come after the rest (hypothesis shrinks towards
# the first families).
_FAMILIES = (("snapshot",) * 2 + ("created",) * 5 + ("deleted",) * 2 + ("step",) * 18
             + ("updated",) * 2 + ("snoozed",) * 4 + ("unsnoozed",) * 2 + ("read",) * 3
             + ("mention",) * 2 + ("views",) * 3)
_SEQUENCING: tuple[Sequencing, ...] = ("next", "next", "next", "none", "stale")
# A snooze's until, seconds after the event (one event a second): soon (it wakes a few
# events later; at 1.0 exactly when the next one occurs), between two events, none (only
# an event wakes it), now, past, or later than the stream.
_UNTIL_IN = (2.0, 1.0, 3.0, 2.5, None, 5.0, 0.0, -1.0, 3600.0)
_VALUES = st.one_of(st.booleans(), st.integers(-(2**53), 2**53),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=5), st.text(min_size=MAX_ATTRIBUTE_TEXT,
                                                 max_size=MAX_ATTRIBUTE_TEXT))
_DETAILS: dict[str, st.SearchStrategy[Any]] = {
    "channel": st.one_of(st.none(), st.sampled_from(TINY_CHANNELS)),
    "priority": st.sampled_from(PRIORITIES),
    "labels": st.lists(st.sampled_from(TINY_LABELS), unique=True, max_size=3)}
_CREATED = st.fixed_dictionaries({}, optional={
    **_DETAILS, "attributes": st.dictionaries(st.sampled_from(TINY_KEYS), _VALUES)})
_UPDATED = st.fixed_dictionaries({}, optional={
    **_DETAILS,
    "attributes": st.dictionaries(st.sampled_from(TINY_KEYS), st.none() | _VALUES)})


def _drawn_test(shape: FactTestShape) -> st.SearchStrategy[dict[str, Any]]:
    fact, operators, values = shape

    def with_operator(op: str) -> st.SearchStrategy[dict[str, Any]]:
        value: st.SearchStrategy[Any]
        if op == "present":
            value = st.booleans()
        elif op in _LISTS:
            value = st.lists(st.sampled_from(values), min_size=1, max_size=3, unique=True)
        else:
            value = st.sampled_from(values)
        return value.map(partial(_fact_test, fact, op))

    return st.sampled_from(operators).flatmap(with_operator)


def view_conditions(*, categories: Sequence[str] = VIEW_CATEGORIES,
                    predicates: Sequence[str] = VIEW_PREDICATES,
                    labels: Sequence[str] = TINY_LABELS, channels: Sequence[str] = TINY_CHANNELS,
                    attributes: dict[str, str] | None = None, waiting: Sequence[int] = (),
                    max_leaves: int = 5) -> st.SearchStrategy[dict[str, Any]]:
    """Views' conditions in the rule language: fact tests (half the leaves; every
    operator, :func:`view_test_shapes`), references to ``categories`` and ``predicates``,
    and all/any/not of them, at most ``max_leaves`` leaves (far from the limit of 64
    condition nodes)."""
    tests = st.one_of(*(_drawn_test(shape)
                        for shape in view_test_shapes(labels, channels, attributes, waiting)))
    leaves = st.one_of(tests, st.sampled_from(categories).map(lambda name: {"category": name}),
                       tests, st.sampled_from(predicates).map(lambda name: {"predicate": name}))

    def combined(inner: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
        items = st.lists(inner, min_size=1, max_size=3)
        return st.one_of(items.map(lambda c: {"all": c}), items.map(lambda c: {"any": c}),
                         inner.map(lambda c: {"not": c}))

    return st.recursive(leaves, combined, max_leaves=max_leaves)


TINY_WAITING = (1, 2, 4)  # seconds: streams have an event a second
TINY_CONDITIONS = view_conditions(waiting=TINY_WAITING)


@st.composite
def view_lists(draw: st.DrawFn, conditions: st.SearchStrategy[dict[str, Any]] = TINY_CONDITIONS,
               ids: Sequence[str] = TINY_VIEW_IDS, min_size: int = 0) -> list[dict[str, Any]]:
    """A set of views (a views event's ``views``): distinct ids, maybe none."""
    chosen = draw(st.lists(st.sampled_from(ids), unique=True, min_size=min_size,
                           max_size=len(ids)))
    return [{"view_id": view_id, "name": f"View {view_id}", "when": draw(conditions)}
            for view_id in chosen]


@st.composite
def tiny_view_steps(draw: st.DrawFn, account: str | None = None) -> Step:
    """The shared views of an account, or the personal views of one of its agents (who
    may not be one of its agents yet), replaced."""
    account = account or draw(st.sampled_from(TINY_ACCOUNTS))
    sequence = draw(st.sampled_from(_SEQUENCING))
    views = draw(view_lists())
    if draw(st.booleans()):
        return Step("account.views_updated", account, {"views": views}, sequence=sequence)
    return Step("agent.views_updated", account,
                {"agent_id": draw(st.sampled_from(TINY_AGENTS)), "views": views},
                sequence=sequence)


@st.composite
def tiny_steps(draw: st.DrawFn) -> Step:
    """One step in the tiny universe: snapshots may name no agent, or group members
    who are not agents; any step may concern a chat never created; chats get details,
    reads, mentions (of the author too) and snoozes; views are defined (and removed)."""
    account = draw(st.sampled_from(TINY_ACCOUNTS))
    family = draw(st.sampled_from(_FAMILIES))
    if family == "views":
        return draw(tiny_view_steps(account))
    sequence = draw(st.sampled_from(_SEQUENCING))
    agent = st.sampled_from(TINY_AGENTS)
    group = st.sampled_from(TINY_GROUPS)
    if family == "snapshot":
        return Step("account.updated", account, {
            "plan": draw(st.sampled_from(PLANS)),
            "agents": draw(st.lists(agent, unique=True, max_size=3)),
            "groups": draw(st.dictionaries(group, st.lists(agent, unique=True, max_size=3),
                                           max_size=2))}, sequence=sequence)
    conversation = draw(st.sampled_from(TINY_CONVERSATIONS))
    until: float | None = None
    if family == "created":
        kind, data = "conversation.created", {"group_id": draw(st.one_of(st.none(), group)),
                                              **draw(_CREATED)}
    elif family == "deleted":
        kind, data = "conversation.deleted", {}
    elif family == "updated":
        kind, data = "conversation.updated", draw(_UPDATED)
    elif family == "snoozed":
        kind, data, until = "conversation.snoozed", {}, draw(st.sampled_from(_UNTIL_IN))
    elif family == "unsnoozed":
        kind, data = "conversation.unsnoozed", {}
    elif family == "read":
        kind, data = "conversation.read", {"agent_id": draw(agent)}
    elif family == "mention":
        kind, data = "message.created", {
            "author": "agent", "agent_id": draw(agent),
            "mentions": draw(st.lists(agent, unique=True, min_size=1, max_size=2))}
    else:
        kind, data = draw(st.sampled_from(conversation_steps(draw(agent), draw(group))))
    return Step(kind, account, data, conversation, sequence, until)


@st.composite
def event_streams(draw: st.DrawFn, max_size: int = 40,
                  steps: st.SearchStrategy[Step] | None = None,
                  min_size: int = 1) -> list[dict[str, Any]]:
    """Valid streams of ``min_size`` to ``max_size`` steps (of :func:`tiny_steps`
    unless ``steps`` says) in the tiny universe; after about one step in ten, an
    earlier event is re-sent (same id)."""
    emit = Emitter("h")
    drawn = tiny_steps() if steps is None else steps
    for step in draw(st.lists(drawn, min_size=min_size, max_size=max_size)):
        emit(step)
        if draw(st.integers(0, 9)) == 0:
            emit(Resend(draw(st.integers(0, len(emit.events) - 1))))
    return emit.events


# -- encoding and single events ---------------------------------------------------------
def encode(events: Iterable[dict[str, Any]]) -> list[bytes]:
    """One message body (a JSON line) per event."""
    return [json.dumps(event).encode() for event in events]


as_lines = encode  # the benchmarks' name for it


def type_counts(events: Iterable[dict[str, Any]]) -> Counter[str]:
    return Counter(str(event["type"]) for event in events)


class Events:
    """Makes valid events with fresh ids: ``ev("conversation.assigned", "c-1", agent_id="ag-1")``.

    Every event is built as the JSON object upstream would send and parsed by
    :func:`contracts.parse_event_object`, so tests go through the contract.
    """

    def __init__(self, account_id: str = "acc-1") -> None:
        self.account_id = account_id
        self._ids = itertools.count(1)

    def __call__(self, type_: str, conversation_id: str | None = None, *,
                 event_id: str | None = None, sequence: int | None = None,
                 account_id: str | None = None, occurred_at: str = TIME,
                 **data: Any) -> Event:
        return parse_event_object(envelope(
            type_, account_id or self.account_id, data,
            event_id=event_id or f"e-{next(self._ids)}", occurred_at=occurred_at,
            conversation_id=conversation_id, sequence=sequence))

    def account(self, plan: str, agents: list[str], groups: dict[str, list[str]] | None = None,
                **fields: Any) -> Event:
        """An ``account.updated`` snapshot; ``fields``: envelope fields (``sequence``...)."""
        return self("account.updated", plan=plan, agents=agents, groups=groups or {},
                    **fields)


class _Keyed(Protocol):
    """What the unit tests read of an update (the contract's or the domain's)."""

    @property
    def agent_id(self) -> str: ...
    @property
    def conversation_id(self) -> str: ...
    @property
    def categories(self) -> list[str]: ...


U = TypeVar("U", bound=_Keyed)


def by_agent(updates: Sequence[U]) -> dict[str, U]:
    """The updates of one event for one conversation, keyed by agent (no agent twice)."""
    keyed = {u.agent_id: u for u in updates}
    assert len(keyed) == len(updates), f"several updates for one agent: {updates}"
    return keyed


def categories(updates: Sequence[_Keyed]) -> dict[tuple[str, str], list[str]]:
    """(agent, conversation) -> categories, for every update of one event."""
    keyed = {(u.agent_id, u.conversation_id): u.categories for u in updates}
    assert len(keyed) == len(updates), f"several updates for one (agent, conversation): {updates}"
    return keyed
