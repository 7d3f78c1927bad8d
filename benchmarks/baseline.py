"""A hand-written plain-Python categoriser of the contract: the yardstick for ``replay``.

    python -m benchmarks.baseline EVENTS.jsonl    # ('-' reads stdin)

``inbox-rules replay`` must be at least as fast as what a competent engineer would
write by hand without a rules engine. This is that program: ``json.loads`` per line,
the validation a real service needs (known type, required fields, types), dedup by
(account_id, event_id), stale sequences dropped, state in dicts and sets, the category
tables of the contract written out in Python (with the choices docs/categories.md "How
the events are read" makes), badge counts per agent, and the updates of the contract
"Output" serialised with ``json.dumps`` in the product's publish order. It is
incremental: an event re-categorises only the conversation it names, or every
conversation of the account when the account's plan, agents or groups change.

Deliberately standard library only (no ``worker.*``): it must stay an independent
implementation, so ``tests/test_baseline.py`` can show both do the same work.

Ids are checked as the contract's events require (1-128 letters, digits, ``-``, ``_``, ``:``;
they become routing keys): a service that skipped it would publish to broken routing
keys. Not done, as the brief for a yardstick allows: parsing of ``occurred_at`` (it
must be a string and is passed through), a bounded dedup window.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

# Published categories, in the order the product's counts use (rules/inbox.yaml).
CATEGORIES = ("all", "new", "mine", "primary", "resolved")
MAX_MESSAGE_BYTES = 64 * 1024
RULES_VERSION = "baseline"

ACCOUNT_UPDATED = "account.updated"
CONVERSATION_TYPES = frozenset({
    "conversation.created", "message.created", "conversation.assigned",
    "conversation.unassigned", "conversation.transferred", "conversation.resolved",
    "conversation.reopened", "conversation.deleted",
})
PLANS = frozenset({"free", "standard", "pro"})

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

    status: str = "open"  # open | resolved | deleted
    group: str | None = None
    joined: frozenset[str] = frozenset()
    sequence: int | None = None


def categorise(account: Account, conversation: Conversation | None,
               agent: str) -> frozenset[str]:
    """The contract's categories for one agent and one conversation."""
    if conversation is None or agent not in account.agents:
        return NONE
    status = conversation.status
    if status == "resolved":
        return RESOLVED
    if status == "deleted":
        return NONE
    waiting = not conversation.joined
    if not account.multi_agent:
        return ALL_NEW if waiting else ALL
    if agent in conversation.joined:
        return ALL_MINE_PRIMARY
    if waiting and (conversation.group is None or not account.groups_in_effect
                    or agent in account.groups.get(conversation.group, NONE)):
        return ALL_NEW_PRIMARY
    return ALL


def update_id(rules_version: str, account_id: str, cause: str, agent_id: str,
              conversation_id: str) -> str:
    """Deterministic per (cause, agent, conversation) under one rule set, the same hash
    as the product's."""
    name = "\x1f".join((rules_version, account_id, cause, agent_id, conversation_id))
    return hashlib.blake2b(name.encode(), digest_size=16,
                           person=b"inbox-rules-upd").hexdigest()


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


def parse(line: bytes) -> dict[str, Any]:
    """Decode and validate one event line; raise :class:`BadEvent` saying why not."""
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
    _string(event.get("event_id"), "event_id")
    _id(event.get("account_id"), "account_id")
    _string(event.get("occurred_at"), "occurred_at")
    sequence = event.get("sequence")
    if sequence is not None and (type(sequence) is not int or sequence < 0):
        raise BadEvent("sequence: expected a non-negative integer")
    data = event.get("data")
    if data is None:
        if kind in (ACCOUNT_UPDATED, "message.created", "conversation.assigned",
                    "conversation.unassigned", "conversation.transferred"):
            raise BadEvent("data: field required")
        event["data"] = data = {}
    elif not isinstance(data, dict):
        raise BadEvent("data: expected an object")
    if kind == ACCOUNT_UPDATED:
        _check_snapshot(data)
        return event
    _id(event.get("conversation_id"), "conversation_id")
    if kind == "conversation.created":
        if data.get("group_id") is not None:
            _id(data["group_id"], "data.group_id")
    elif kind == "message.created":
        author = data.get("author")
        if author == "agent":
            _id(data.get("agent_id"), "data.agent_id")
        elif author != "visitor":
            raise BadEvent("data.author: expected 'visitor' or 'agent'")
    elif kind in ("conversation.assigned", "conversation.unassigned"):
        _id(data.get("agent_id"), "data.agent_id")
    elif kind == "conversation.transferred":
        to_agent, to_group = data.get("to_agent_id"), data.get("to_group_id")
        if (to_agent is None) == (to_group is None):
            raise BadEvent("data: exactly one of to_agent_id or to_group_id is required")
        _id(to_agent if to_group is None else to_group, "data.to_*_id")
    return event


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


def _mentioned_agent(kind: str, data: dict[str, Any]) -> str | None:
    """The agent an event reveals: the account may be known only from its events."""
    agent: str | None = None
    if kind == "message.created":
        agent = data["agent_id"] if data["author"] == "agent" else None
    elif kind in ("conversation.assigned", "conversation.unassigned"):
        agent = data["agent_id"]
    elif kind == "conversation.transferred":
        agent = data.get("to_agent_id")
    return agent


def _is_stale(last: int | None, sequence: int | None) -> bool:
    """Older than one already applied; equal is not stale (docs/categories.md)."""
    return sequence is not None and last is not None and sequence < last


def _next_sequence(last: int | None, sequence: int | None) -> int | None:
    if sequence is None:
        return last
    return sequence if last is None else max(last, sequence)


def _transition(old: Conversation, kind: str, data: dict[str, Any],
                sequence: int | None) -> Conversation:
    """The conversation after one event; deleted is final."""
    sequence = _next_sequence(old.sequence, sequence)
    status, group, joined = old.status, old.group, old.joined
    if status == "deleted":
        return Conversation(status, group, joined, sequence)
    if kind == "conversation.created":
        group = data.get("group_id")
    elif kind == "message.created":
        if data["author"] == "visitor":
            if status == "resolved":
                status = "open"  # a visitor writing into a resolved chat reopens it
        else:
            joined = joined | {data["agent_id"]}  # an agent who replies joins
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
        status = "resolved"
    elif kind == "conversation.reopened":
        status = "open"
    elif kind == "conversation.deleted":
        status = "deleted"
    return Conversation(status, group, joined, sequence)


# (conversation_id, agent_id, categories before, categories after)
Change = tuple[str, str, frozenset[str], frozenset[str]]


class Categoriser:
    """State and category logic: feed it validated events, get update lines back."""

    def __init__(self, rules_version: str = RULES_VERSION) -> None:
        self.rules_version = rules_version
        self.seen: set[tuple[str, str]] = set()
        self.accounts: dict[str, Account] = {}
        self.conversations: dict[str, dict[str, Conversation]] = {}
        self.counts: dict[tuple[str, str], dict[str, int]] = {}
        # Last ``seq`` per (account, agent): the contract numbers each agent's updates 1, 2, ...
        self.seqs: dict[tuple[str, str], int] = {}

    def handle(self, event: dict[str, Any]) -> list[bytes]:
        """Apply one event; duplicates and stale events change nothing and give []."""
        account_id, event_id = event["account_id"], event["event_id"]
        key = (account_id, event_id)
        if key in self.seen:
            return []
        self.seen.add(key)
        if event["type"] == ACCOUNT_UPDATED:
            changes = self._account_updated(account_id, event)
        else:
            changes = self._conversation_event(account_id, event)
        return self._updates(account_id, changes, event_id, event["occurred_at"])

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
        new = _transition(old or Conversation(), kind, data, event.get("sequence"))
        conversations[conversation_id] = new
        account = self._account(account_id)
        agent = _mentioned_agent(kind, data)
        if agent is not None and agent not in account.agents:
            # A newly seen agent can change the account's shape (one agent ->
            # several): every conversation of the account is re-categorised.
            learned = Account(account.plan, account.agents | {agent}, account.groups,
                              account.sequence)
            self.accounts[account_id] = learned
            before = dict(conversations)
            if old is None:
                del before[conversation_id]
            else:
                before[conversation_id] = old
            return self._recategorise_account(account, learned, before, conversations)
        changes: list[Change] = []
        for agent_id in account.sorted_agents:
            was, now = categorise(account, old, agent_id), categorise(account, new, agent_id)
            if was != now:
                changes.append((conversation_id, agent_id, was, now))
        return changes

    @staticmethod
    def _recategorise_account(old_account: Account, account: Account,
                              before: dict[str, Conversation],
                              after: dict[str, Conversation]) -> list[Change]:
        """Every conversation (sorted by id) for every agent, old or new."""
        agents = sorted(old_account.agents | account.agents)
        changes: list[Change] = []
        for conversation_id in sorted(after):
            old, new = before.get(conversation_id), after[conversation_id]
            for agent_id in agents:
                was = categorise(old_account, old, agent_id)
                now = categorise(account, new, agent_id)
                if was != now:
                    changes.append((conversation_id, agent_id, was, now))
        return changes

    def _updates(self, account_id: str, changes: list[Change], cause: str,
                 occurred_at: str) -> list[bytes]:
        """Counts are the badge counts after the whole event: apply all, then write."""
        counts, seqs = self.counts, self.seqs
        for _, agent_id, was, now in changes:
            agent_counts = counts.get((account_id, agent_id))
            if agent_counts is None:
                agent_counts = counts[(account_id, agent_id)] = dict.fromkeys(CATEGORIES, 0)
            for category in was - now:
                agent_counts[category] -= 1
            for category in now - was:
                agent_counts[category] += 1
        lines = []
        for conversation_id, agent_id, was, now in changes:
            seq = seqs[(account_id, agent_id)] = seqs.get((account_id, agent_id), 0) + 1
            lines.append(json.dumps({
                "update_id": update_id(self.rules_version, account_id, cause, agent_id,
                                       conversation_id),
                "account_id": account_id,
                "agent_id": agent_id,
                "conversation_id": conversation_id,
                "seq": seq,
                "categories": sorted(now),
                "added": sorted(now - was),
                "removed": sorted(was - now),
                "counts": counts[(account_id, agent_id)],
                "cause_event_id": cause,
                "rules_version": self.rules_version,
                "occurred_at": occurred_at,
            }, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        return lines


def baseline_replay(lines: Iterable[bytes], *, rules_version: str = RULES_VERSION,
                    bad: list[tuple[int, str]] | None = None) -> Iterator[bytes]:
    """The update lines (each ending in a newline) the events produce, in publish order.

    A bad line is skipped; with ``bad`` given, ``(line number, reason)`` is appended.
    """
    categoriser = Categoriser(rules_version)
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
        yield from categoriser.handle(event)


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
