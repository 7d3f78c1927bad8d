"""A hand-written plain-Python categoriser of the contract: the yardstick for ``replay``.

    python -m benchmarks.baseline EVENTS.jsonl    # ('-' reads stdin)

``inbox-rules replay`` must be at least as fast as what a competent engineer would
write by hand without a rules engine. This is that program: ``json.loads`` per line,
the validation a real service needs (known type, required fields, types, the contract's
limits), dedup by (account_id, event_id), stale sequences dropped, state in dicts and
sets, the category tables of the contract written out in Python (with the choices
docs/categories.md "How the events are read" makes), badge counts and unread counts per
agent, and the updates of the contract "Output" serialised with ``json.dumps`` in the
product's publish order. It is incremental: an event re-categorises only the
conversation it names, or every conversation of the account when the account's plan,
agents or groups change.

Time passes by the events, as in ``inbox-rules replay``: a snoozed conversation wakes at
its ``until``, and before each event every wake due at or before its ``occurred_at`` is
made first (in time order; accounts by id, then conversations by id, at one instant),
published with cause ``time:<until in UTC>``. A plain heap of (until, account,
conversation) does it; an entry whose conversation moved on is skipped when popped.
Each account has a clock (its newest event or wake) that never goes back: an event that
came late is applied at it, so a snooze until a moment the clock has passed is over.

Unread, per agent: a visitor ever wrote and the agent has not read since the last
visitor message (reading is ``conversation.read`` or writing a message), or a message
mentioned the agent since they last read. An update says it (``unread``) only for a
conversation in some category, and ``unread_counts`` counts those per category.

Deliberately standard library only (no ``worker.*``): it must stay an independent
implementation, so ``tests/test_baseline.py`` can show both do the same work.

Ids are checked as the contract's events require (1-128 letters, digits, ``-``, ``_``, ``:``;
they become routing keys): a service that skipped it would publish to broken routing
keys. Timestamps are parsed with ``datetime.fromisoformat`` (snoozes compare them) and
written back as the product writes them (UTC as ``Z``). Not done, as the brief for a
yardstick allows: a bounded dedup window, and the exotic timestamp spellings one parser
takes and the other does not.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from heapq import heappop, heappush
from typing import Any, BinaryIO

# Published categories, in the order the product's counts use (rules/inbox.yaml).
CATEGORIES = ("all", "new", "mine", "primary", "resolved")
MAX_MESSAGE_BYTES = 64 * 1024
RULES_VERSION = "baseline"

ACCOUNT_UPDATED = "account.updated"
CONVERSATION_TYPES = frozenset({
    "conversation.created", "message.created", "conversation.assigned",
    "conversation.unassigned", "conversation.transferred", "conversation.resolved",
    "conversation.reopened", "conversation.deleted", "conversation.updated",
    "conversation.snoozed", "conversation.unsnoozed", "conversation.read",
})
# Types whose ``data`` is required (the others default to an empty one).
DATA_REQUIRED = frozenset({
    ACCOUNT_UPDATED, "message.created", "conversation.assigned", "conversation.unassigned",
    "conversation.transferred", "conversation.updated", "conversation.read",
})
PLANS = frozenset({"free", "standard", "pro"})
PRIORITIES = ("none", "low", "medium", "high", "urgent")
# The contract's limits (docs/contract.md).
MAX_EVENT_ID = 256
MAX_SEQUENCE = 2**63 - 1
MAX_LABELS = 50
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_TEXT = 256
MAX_MENTIONS = 50
INT64 = 2**63
MAX_ROUTING_KEY = 255

# Every category set an agent can have, built once (updates compare and sort them).
NONE: frozenset[str] = frozenset()
RESOLVED = frozenset({"resolved"})
ALL = frozenset({"all"})
ALL_NEW = frozenset({"all", "new"})
ALL_NEW_PRIMARY = frozenset({"all", "new", "primary"})
ALL_MINE_PRIMARY = frozenset({"all", "mine", "primary"})


class BadEvent(ValueError):  # noqa: N818 - named for what it is
    """A line the categoriser cannot use; replay reports it and skips it."""


@dataclass(slots=True)
class Account:
    """What an account snapshot (or, without one, the events) told us."""

    plan: str = "free"
    agents: frozenset[str] = frozenset()
    groups: dict[str, frozenset[str]] = field(default_factory=dict)
    sequence: int | None = None
    # Derived once per change, read for every agent of every event.
    sorted_agents: list[str] = field(default_factory=list)
    groups_in_effect: bool = False
    multi_agent: bool = False

    def __post_init__(self) -> None:
        self.sorted_agents = sorted(self.agents)
        # docs/categories.md: groups are in effect on PRO only, and only if there is at least one.
        self.groups_in_effect = self.plan == "pro" and bool(self.groups)
        self.multi_agent = len(self.agents) > 1 or self.groups_in_effect


@dataclass(slots=True)
class Conversation:
    """A conversation's state; replaced, never mutated, so the old one can be diffed."""

    status: str = "open"  # open | snoozed | resolved | deleted
    group: str | None = None
    joined: frozenset[str] = frozenset()
    sequence: int | None = None
    until: datetime | None = None  # while snoozed: when it wakes by itself (UTC)
    visitor_wrote: bool = False  # ever
    readers: frozenset[str] = NONE  # who read it since the last visitor message
    mentioned: frozenset[str] = NONE  # mentioned since they last read it
    attributes: frozenset[str] = NONE  # the custom attributes' keys (for their limit)


# What an unknown conversation looks like to every agent: in no category, never unread.
GONE = Conversation(status="deleted")


def categorise(account: Account, conversation: Conversation, agent: str) -> frozenset[str]:
    """The contract's categories for one agent and one conversation."""
    if agent not in account.agents:
        return NONE
    status = conversation.status
    if status == "open":
        joined = conversation.joined
        waiting = not joined
        if not account.multi_agent:
            return ALL_NEW if waiting else ALL
        if agent in joined:
            return ALL_MINE_PRIMARY
        if waiting and (conversation.group is None or not account.groups_in_effect
                        or agent in account.groups.get(conversation.group, NONE)):
            return ALL_NEW_PRIMARY
        return ALL
    if status == "snoozed":  # unresolved, never waiting
        if account.multi_agent and agent in conversation.joined:
            return ALL_MINE_PRIMARY
        return ALL
    if status == "resolved":
        return RESOLVED
    return NONE  # deleted


def is_unread(conversation: Conversation, agent: str) -> bool:
    """A visitor message since the agent last read it, or a mention since then (the
    update says so only for a conversation in some category)."""
    return ((conversation.visitor_wrote and agent not in conversation.readers)
            or agent in conversation.mentioned)


def update_id(rules_version: str, account_id: str, cause: str, agent_id: str,
              conversation_id: str) -> str:
    """Deterministic per (cause, agent, conversation) under one rule set, the same hash
    as the product's."""
    name = "\x1f".join((rules_version, account_id, cause, agent_id, conversation_id))
    return hashlib.blake2b(name.encode(), digest_size=16,
                           person=b"inbox-rules-upd").hexdigest()


def format_time(moment: datetime) -> str:
    """How the product writes a timestamp: ISO 8601, UTC as ``Z``."""
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


# One encoder for every update (json.dumps with options would build one per call).
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

# The contract's events: ids are 1-128 letters, digits, '-', '_' and ':'.
_ID = re.compile(r"[A-Za-z0-9_:\-]{1,128}")


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadEvent(f"{name}: expected a non-empty string")
    return value


def _id(value: Any, name: str) -> str:
    if not isinstance(value, str) or _ID.fullmatch(value) is None:
        raise BadEvent(f"{name}: expected 1-128 letters, digits, '-', '_' or ':'")
    return value


def _ids(value: Any, name: str, most: int) -> None:
    if not isinstance(value, list) or len(value) > most:
        raise BadEvent(f"{name}: expected a list of at most {most} ids")
    for item in value:
        _id(item, f"{name}[]")


def _time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise BadEvent(f"{name}: expected an ISO 8601 date-time")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise BadEvent(f"{name}: expected an ISO 8601 date-time") from None


def parse(line: bytes) -> dict[str, Any]:
    """Decode and validate one event line; raise :class:`BadEvent` saying why not.

    ``occurred_at`` (and a snooze's ``until``) come back as datetimes; ``at`` is added:
    ``occurred_at`` with an offset (none given: UTC), to compare with snoozes."""
    if len(line) > MAX_MESSAGE_BYTES:
        raise BadEvent(f"message too large: {len(line)} bytes")
    try:
        event = json.loads(line.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError alike
        raise BadEvent(f"invalid JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise BadEvent("event must be a JSON object")
    kind = event.get("type")
    if kind != ACCOUNT_UPDATED and kind not in CONVERSATION_TYPES:
        raise BadEvent(f"type: unknown event type {kind!r}")
    if len(_string(event.get("event_id"), "event_id")) > MAX_EVENT_ID:
        raise BadEvent(f"event_id: at most {MAX_EVENT_ID} characters")
    account_id = _id(event.get("account_id"), "account_id")
    occurred = event["occurred_at"] = _time(event.get("occurred_at"), "occurred_at")
    event["at"] = occurred if occurred.tzinfo is not None else occurred.replace(tzinfo=UTC)
    sequence = event.get("sequence")
    if sequence is not None and (type(sequence) is not int or not 0 <= sequence <= MAX_SEQUENCE):
        raise BadEvent("sequence: expected a non-negative 64-bit integer")
    data = event.get("data")
    if data is None:
        if kind in DATA_REQUIRED:
            raise BadEvent("data: field required")
        event["data"] = data = {}
    elif not isinstance(data, dict):
        raise BadEvent("data: expected an object")
    if kind == ACCOUNT_UPDATED:
        _check_snapshot(data)
    else:
        _id(event.get("conversation_id"), "conversation_id")
        _check_conversation_data(kind, data)
    if len(account_id) >= MAX_ROUTING_KEY - 128:
        # An update goes to "<account_id>.<agent_id>": it must fit AMQP's 255 bytes.
        for agent in _named_agents(kind, data):
            if len(account_id) + 1 + len(agent) > MAX_ROUTING_KEY:
                raise BadEvent(f"account_id and agent id {agent[:20]!r} make a routing key "
                               f"longer than {MAX_ROUTING_KEY} bytes")
    return event


def _check_conversation_data(kind: str, data: dict[str, Any]) -> None:
    if kind == "message.created":
        author = data.get("author")
        if author == "agent":
            _id(data.get("agent_id"), "data.agent_id")
            if "mentions" in data:
                _ids(data["mentions"], "data.mentions", MAX_MENTIONS)
        elif author == "visitor":
            if data.get("agent_id") is not None:
                _id(data["agent_id"], "data.agent_id")
        else:
            raise BadEvent("data.author: expected 'visitor' or 'agent'")
    elif kind == "conversation.created":
        if data.get("group_id") is not None:
            _id(data["group_id"], "data.group_id")
        _check_details(data, removable=False)
    elif kind in ("conversation.assigned", "conversation.unassigned", "conversation.read"):
        _id(data.get("agent_id"), "data.agent_id")
    elif kind == "conversation.transferred":
        to_agent, to_group = data.get("to_agent_id"), data.get("to_group_id")
        if (to_agent is None) == (to_group is None):
            raise BadEvent("data: exactly one of to_agent_id or to_group_id is required")
        _id(to_agent if to_group is None else to_group, "data.to_*_id")
    elif kind == "conversation.snoozed":
        until = data.get("until")
        if until is not None:
            moment = _time(until, "data.until")
            if moment.tzinfo is None:
                raise BadEvent("data.until: expected a date-time with a timezone")
            data["until"] = moment.astimezone(UTC)
    elif kind == "conversation.updated":
        _check_details(data, removable=True)


def _check_details(data: dict[str, Any], removable: bool) -> None:
    """Channel, priority, labels and custom attributes, as far as they are given
    (``removable``: an attribute may be null, which removes it)."""
    if data.get("channel") is not None:
        _id(data["channel"], "data.channel")
    if "priority" in data and data["priority"] not in PRIORITIES:
        raise BadEvent(f"data.priority: expected one of {', '.join(PRIORITIES)}")
    if "labels" in data:
        _ids(data["labels"], "data.labels", MAX_LABELS)
    if "attributes" in data:
        attributes = data["attributes"]
        if not isinstance(attributes, dict) or len(attributes) > MAX_ATTRIBUTES:
            raise BadEvent(f"data.attributes: expected an object of at most "
                           f"{MAX_ATTRIBUTES} keys")
        for key, value in attributes.items():
            _id(key, "data.attributes")
            if not _attribute_ok(value, removable):
                raise BadEvent(f"data.attributes.{key}: expected a string of at most "
                               f"{MAX_ATTRIBUTE_TEXT} characters, a 64-bit integer, a "
                               f"finite number or a boolean")


def _attribute_ok(value: Any, removable: bool) -> bool:
    kind = type(value)
    if kind is bool:
        return True
    if kind is int:
        return bool(-INT64 <= value < INT64)
    if kind is float:
        return math.isfinite(value)
    if kind is str:
        return len(value) <= MAX_ATTRIBUTE_TEXT
    return value is None and removable


def _check_snapshot(data: dict[str, Any]) -> None:
    if data.get("plan") not in PLANS:
        raise BadEvent("data.plan: expected free, standard or pro")
    agents = data.get("agents")
    if not isinstance(agents, list):
        raise BadEvent("data.agents: expected a list")
    for agent in agents:
        _id(agent, "data.agents[]")
    groups = data.setdefault("groups", {})
    if not isinstance(groups, dict):
        raise BadEvent("data.groups: expected an object")
    for group, members in groups.items():
        _id(group, "data.groups")
        if not isinstance(members, list):
            raise BadEvent("data.groups: expected lists of agent ids")
        for agent in members:
            _id(agent, "data.groups[]")


def _named_agents(kind: str, data: dict[str, Any]) -> list[str]:
    """The agents an event names (the account may be known only from its events): an
    agent author and whom they mention, an assignee, a reader, a transfer target; a
    snapshot's agents and group members."""
    if kind == "message.created":
        if data["author"] != "agent":
            return []
        mentions = data.get("mentions")
        return [data["agent_id"], *mentions] if mentions else [data["agent_id"]]
    if kind in ("conversation.assigned", "conversation.unassigned", "conversation.read"):
        return [data["agent_id"]]
    if kind == "conversation.transferred":
        return [data["to_agent_id"]] if data.get("to_agent_id") is not None else []
    if kind == ACCOUNT_UPDATED:
        return [*data["agents"], *(a for members in data["groups"].values() for a in members)]
    return []


def _is_stale(last: int | None, sequence: int | None) -> bool:
    """Older than one already applied; equal is not stale (docs/categories.md)."""
    return sequence is not None and last is not None and sequence < last


def _next_sequence(last: int | None, sequence: int | None) -> int | None:
    if sequence is None:
        return last
    return sequence if last is None else max(last, sequence)


def _transition(old: Conversation, kind: str, data: dict[str, Any],
                sequence: int | None, at: datetime) -> Conversation:
    """The conversation after one event (applied at ``at``, the account's clock);
    deleted is final. Raises :class:`BadEvent` for more custom attributes than a
    conversation may hold."""
    sequence = _next_sequence(old.sequence, sequence)
    status, group, joined, until = old.status, old.group, old.joined, old.until
    if status == "deleted":
        return Conversation(status, group, joined, sequence)
    visitor_wrote, readers, mentioned = old.visitor_wrote, old.readers, old.mentioned
    attributes = old.attributes
    if kind == "message.created":
        if data["author"] == "visitor":
            # Reopens a resolved chat, wakes a snoozed one; nobody has read it now.
            status, until, visitor_wrote, readers = "open", None, True, NONE
        else:
            agent = data["agent_id"]
            if agent not in joined:
                joined = joined | {agent}  # an agent who replies joins...
            if agent not in readers:
                readers = readers | {agent}  # ...and has read it
            mentions = data.get("mentions")
            if mentions or agent in mentioned:
                mentioned = (mentioned | frozenset(mentions or ())) - {agent}
    elif kind == "conversation.created":
        group = data.get("group_id")
        attributes = frozenset(data.get("attributes") or ())
    elif kind == "conversation.assigned":
        joined = joined | {data["agent_id"]}
    elif kind == "conversation.unassigned":
        joined = joined - {data["agent_id"]}
    elif kind == "conversation.transferred":
        if data.get("to_agent_id") is not None:
            joined = frozenset({data["to_agent_id"]})
        else:
            joined, group = frozenset(), data["to_group_id"]
    elif kind == "conversation.resolved":
        status, until = "resolved", None
    elif kind == "conversation.reopened":
        if status != "open":
            status, until = "open", None
    elif kind == "conversation.unsnoozed":
        if status == "snoozed":
            status, until = "open", None
    elif kind == "conversation.snoozed":
        until = data.get("until")
        if until is not None and until <= at:
            status, until = "open", None  # snoozed until a moment already past
        else:
            status = "snoozed"
    elif kind == "conversation.read":
        agent = data["agent_id"]
        if agent not in readers:
            readers = readers | {agent}
        if agent in mentioned:
            mentioned = mentioned - {agent}
    elif kind == "conversation.updated":
        changes = data.get("attributes")
        if changes:
            keys = set(attributes)
            for key, value in changes.items():
                if value is None:
                    keys.discard(key)
                else:
                    keys.add(key)
            if len(keys) > MAX_ATTRIBUTES:
                raise BadEvent(f"data.attributes: the conversation would have {len(keys)} "
                               f"attributes (at most {MAX_ATTRIBUTES})")
            attributes = frozenset(keys)
    elif kind == "conversation.deleted":
        status, until = "deleted", None
    return Conversation(status, group, joined, sequence, until, visitor_wrote, readers,
                        mentioned, attributes)


def _looks_the_same(old: Conversation, new: Conversation) -> bool:
    """Nothing an agent's categories or unread flag depend on changed."""
    return (old.status == new.status and old.joined == new.joined and old.group == new.group
            and old.readers == new.readers and old.mentioned == new.mentioned
            and old.visitor_wrote == new.visitor_wrote)


# (conversation_id, agent_id, categories before, after, unread before, after)
Change = tuple[str, str, frozenset[str], frozenset[str], bool, bool]


def _diff(changes: list[Change], conversation_id: str, agents: Iterable[str],
          old_account: Account, old: Conversation, account: Account,
          new: Conversation) -> None:
    """Append the change of every agent whose categories or unread flag changed."""
    for agent_id in agents:
        was = categorise(old_account, old, agent_id)
        now = categorise(account, new, agent_id)
        unread_was = bool(was) and is_unread(old, agent_id)
        unread_now = bool(now) and is_unread(new, agent_id)
        if was != now or unread_was != unread_now:
            changes.append((conversation_id, agent_id, was, now, unread_was, unread_now))


class Categoriser:
    """State and category logic: feed it validated events, get update lines back."""

    def __init__(self, rules_version: str = RULES_VERSION) -> None:
        self.rules_version = rules_version
        self.seen: set[tuple[str, str]] = set()
        self.accounts: dict[str, Account] = {}
        self.conversations: dict[str, dict[str, Conversation]] = {}
        self.counts: dict[tuple[str, str], dict[str, int]] = {}
        self.unread_counts: dict[tuple[str, str], dict[str, int]] = {}
        # Last ``seq`` per (account, agent): the contract numbers each agent's updates 1, 2, ...
        self.seqs: dict[tuple[str, str], int] = {}
        # (until, account_id, conversation_id) of snoozes that wake by themselves.
        self.wakes: list[tuple[datetime, str, str]] = []
        # Per account, its newest event time or wake instant.
        self.clocks: dict[str, datetime] = {}
        # (before, after) -> the update's categories, added and removed: a few dozen
        # pairs of the category sets above, sorted once each.
        self.sorted_lists: dict[tuple[frozenset[str], frozenset[str]],
                                tuple[list[str], list[str], list[str]]] = {}

    def wake_until(self, moment: datetime) -> list[bytes]:
        """Wake every snoozed conversation whose ``until`` is at or before ``moment``:
        one instant at a time, accounts by id; each (instant, account) is one cause."""
        wakes, lines = self.wakes, []
        while wakes and wakes[0][0] <= moment:
            instant, account_id, _ = wakes[0]
            conversations = self.conversations[account_id]
            account = self.accounts[account_id]
            changes: list[Change] = []
            while wakes and wakes[0][0] == instant and wakes[0][1] == account_id:
                conversation_id = heappop(wakes)[2]
                old = conversations[conversation_id]
                if old.until != instant:
                    continue  # woken, resolved, deleted or snoozed again since
                new = Conversation("open", old.group, old.joined, old.sequence, None,
                                   old.visitor_wrote, old.readers, old.mentioned,
                                   old.attributes)
                conversations[conversation_id] = new
                _diff(changes, conversation_id, account.sorted_agents, account, old,
                      account, new)
            if instant > self.clocks.get(account_id, instant):
                self.clocks[account_id] = instant
            if changes:
                text = format_time(instant)
                lines += self._updates(account_id, changes, f"time:{text}", text)
        return lines

    def handle(self, event: dict[str, Any]) -> list[bytes]:
        """Apply one event (the wakes due by then made, see :meth:`wake_until`);
        duplicates and stale events change nothing and give []."""
        account_id, event_id = event["account_id"], event["event_id"]
        key = (account_id, event_id)
        if key in self.seen:
            return []
        if event["type"] == ACCOUNT_UPDATED:
            changes = self._account_updated(account_id, event)
        else:
            changes = self._conversation_event(account_id, event)
        self.seen.add(key)  # not for an event refused half-way (BadEvent)
        clock = self.clocks.get(account_id)
        if clock is None or event["at"] > clock:
            self.clocks[account_id] = event["at"]
        if not changes:
            return []
        return self._updates(account_id, changes, event_id,
                             format_time(event["occurred_at"]))

    def _account(self, account_id: str) -> Account:
        account = self.accounts.get(account_id)
        if account is None:
            account = self.accounts[account_id] = Account()
        return account

    def _account_updated(self, account_id: str, event: dict[str, Any]) -> list[Change]:
        old = self._account(account_id)
        if _is_stale(old.sequence, event.get("sequence")):
            return []
        data = event["data"]
        new = Account(data["plan"], frozenset(data["agents"]),
                      {g: frozenset(m) for g, m in data["groups"].items()},
                      _next_sequence(old.sequence, event.get("sequence")))
        self.accounts[account_id] = new
        conversations = self.conversations.get(account_id, {})
        return self._recategorise_account(old, new, conversations, conversations)

    def _conversation_event(self, account_id: str, event: dict[str, Any]) -> list[Change]:
        conversation_id = event["conversation_id"]
        conversations = self.conversations.setdefault(account_id, {})
        old = conversations.get(conversation_id)
        if old is not None and _is_stale(old.sequence, event.get("sequence")):
            return []
        kind, data = event["type"], event["data"]
        clock = self.clocks.get(account_id)
        new = _transition(old or Conversation(), kind, data, event.get("sequence"),
                          event["at"] if clock is None or clock < event["at"] else clock)
        conversations[conversation_id] = new
        if new.until is not None and (old is None or new.until is not old.until):
            heappush(self.wakes, (new.until, account_id, conversation_id))
        account = self._account(account_id)
        named = _named_agents(kind, data)
        unknown = [agent for agent in named if agent not in account.agents] if named else named
        if unknown:
            # A newly seen agent can change the account's shape (one agent ->
            # several): every conversation of the account is re-categorised.
            learned = Account(account.plan, account.agents.union(unknown), account.groups,
                              account.sequence)
            self.accounts[account_id] = learned
            before = dict(conversations)
            if old is None:
                del before[conversation_id]
            else:
                before[conversation_id] = old
            return self._recategorise_account(account, learned, before, conversations)
        changes: list[Change] = []
        if old is None or not _looks_the_same(old, new):
            _diff(changes, conversation_id, account.sorted_agents, account, old or GONE,
                  account, new)
        return changes

    @staticmethod
    def _recategorise_account(old_account: Account, account: Account,
                              before: dict[str, Conversation],
                              after: dict[str, Conversation]) -> list[Change]:
        """Every conversation (sorted by id) for every agent, old or new."""
        agents = sorted(old_account.agents | account.agents)
        changes: list[Change] = []
        for conversation_id in sorted(after):
            _diff(changes, conversation_id, agents, old_account,
                  before.get(conversation_id, GONE), account, after[conversation_id])
        return changes

    def _updates(self, account_id: str, changes: list[Change], cause: str,
                 occurred_at: str) -> list[bytes]:
        """Counts are the badge (and unread) counts after the whole cause: apply all,
        then write."""
        counts, unread_counts, seqs = self.counts, self.unread_counts, self.seqs
        for _, agent_id, was, now, unread_was, unread_now in changes:
            key = (account_id, agent_id)
            if was != now:
                agent_counts = counts.get(key)
                if agent_counts is None:
                    agent_counts = counts[key] = dict.fromkeys(CATEGORIES, 0)
                for category in was - now:
                    agent_counts[category] -= 1
                for category in now - was:
                    agent_counts[category] += 1
            if unread_was or unread_now:
                agent_unread = unread_counts.get(key)
                if agent_unread is None:
                    agent_unread = unread_counts[key] = dict.fromkeys(CATEGORIES, 0)
                if unread_was:
                    for category in was:
                        agent_unread[category] -= 1
                if unread_now:
                    for category in now:
                        agent_unread[category] += 1
        zeros = dict.fromkeys(CATEGORIES, 0)
        sorted_lists = self.sorted_lists
        lines = []
        for conversation_id, agent_id, was, now, _, unread in changes:
            lists = sorted_lists.get((was, now))
            if lists is None:
                lists = sorted_lists[(was, now)] = (sorted(now), sorted(now - was),
                                                    sorted(was - now))
            key = (account_id, agent_id)
            seq = seqs[key] = seqs.get(key, 0) + 1
            lines.append(_encode({
                "update_id": update_id(self.rules_version, account_id, cause, agent_id,
                                       conversation_id),
                "account_id": account_id,
                "agent_id": agent_id,
                "conversation_id": conversation_id,
                "seq": seq,
                "categories": lists[0],
                "added": lists[1],
                "removed": lists[2],
                "counts": counts.get(key, zeros),
                "unread_counts": unread_counts.get(key, zeros),
                "unread": unread,
                "cause_event_id": cause,
                "rules_version": self.rules_version,
                "occurred_at": occurred_at,
            }).encode() + b"\n")
        return lines


def baseline_replay(lines: Iterable[bytes], *, rules_version: str = RULES_VERSION,
                    bad: list[tuple[int, str]] | None = None) -> Iterator[bytes]:
    """The update lines (each ending in a newline) the events produce, in publish order.

    A bad line is skipped; with ``bad`` given, ``(line number, reason)`` is appended.
    """
    categoriser = Categoriser(rules_version)
    wakes = categoriser.wakes
    for number, line in enumerate(lines, start=1):
        body = line.rstrip(b"\r\n")
        if not body.strip():
            continue
        try:
            event = parse(body)
        except BadEvent as exc:
            if bad is not None:
                bad.append((number, str(exc)))
            continue
        if wakes and wakes[0][0] <= event["at"]:
            yield from categoriser.wake_until(event["at"])
        try:
            updates = categoriser.handle(event)
        except BadEvent as exc:  # a change the conversation cannot hold
            if bad is not None:
                bad.append((number, str(exc)))
            continue
        yield from updates


def main(argv: list[str] | None = None) -> int:
    """Like ``inbox-rules replay EVENTS.jsonl``: updates to stdout, bad lines to stderr."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmarks.baseline EVENTS.jsonl ('-' for stdin)",
              file=sys.stderr)
        return 2
    bad: list[tuple[int, str]] = []
    source: BinaryIO = sys.stdin.buffer if args[0] == "-" else open(args[0], "rb")  # noqa: SIM115
    with source:
        out = sys.stdout.buffer
        for update in baseline_replay(source, bad=bad):
            out.write(update)
        out.flush()
    for number, reason in bad:
        print(f"line {number}: {reason}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
