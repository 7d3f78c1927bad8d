"""A deliberately naive second implementation of the contract, used only as a test oracle.

It recomputes every category of every agent from scratch after each event, with the
category table of the contract written out in Python (the product keeps it in rule files),
and what each agent has not read yet from the order in which things happened.

Time: a snoozed conversation with an ``until`` wakes at that instant. As replay does,
before each event every wake due at or before its ``occurred_at`` happens first, in
time order (accounts by id at one instant): :meth:`SpecOracle.due` lists them and
:meth:`SpecOracle.cross` makes one; :meth:`SpecOracle.apply` does not. An account's
clock (its newest event or wake) never goes back: an event that occurred earlier is
taken to happen at the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

Key = tuple[str, str, str]  # (account, agent, conversation)


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
    # Unread, by the order of events: the number of the event that brought the last
    # visitor message, and per agent of their last read (a read, or writing into it)
    # and of the last message that mentioned them.
    last_visitor: int | None = None
    last_read: dict[str, int] = field(default_factory=dict)
    last_mention: dict[str, int] = field(default_factory=dict)

    def wake(self) -> None:
        self.status, self.until = "open", None


@dataclass
class _Account:
    plan: str = "free"
    agents: set[str] = field(default_factory=set)
    groups: dict[str, set[str]] = field(default_factory=dict)
    seq: int | None = None
    clock: datetime | None = None


class SpecOracle:
    def __init__(self) -> None:
        self.accounts: dict[str, _Account] = {}
        self.convs: dict[tuple[str, str], _Conv] = {}
        self.seen: set[tuple[str, str]] = set()
        self.applied = 0  # events applied so far: their order, for unread

    # -- what agents are shown ---------------------------------------------------
    def categories(self, account_id: str, conv_id: str, agent: str) -> set[str]:
        account = self.accounts.get(account_id, _Account())
        conv = self.convs.get((account_id, conv_id))
        if conv is None or agent not in account.agents or conv.status == "deleted":
            return set()
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

    def unread(self, account_id: str, conv_id: str, agent: str) -> bool:
        """The published flag: a visitor message or a mention of the agent came after
        they last read it, and the conversation is in some category for them."""
        conv = self.convs.get((account_id, conv_id))
        if conv is None or not self.categories(account_id, conv_id, agent):
            return False
        read = conv.last_read.get(agent, -1)
        visitor = conv.last_visitor is not None and conv.last_visitor > read
        return visitor or conv.last_mention.get(agent, -1) > read

    def shown(self, account_id: str, conv_id: str, agent: str) -> Shown:
        return Shown(frozenset(self.categories(account_id, conv_id, agent)),
                     self.unread(account_id, conv_id, agent))

    def snapshot(self) -> dict[Key, Shown]:
        """Every (account, agent, conversation) in some category, and what it shows."""
        out = {}
        for (account_id, conv_id) in self.convs:
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
            if acc != account_id or (unread_only and not self.unread(acc, conv_id, agent)):
                continue
            for cat in self.categories(acc, conv_id, agent):
                counts[cat] = counts.get(cat, 0) + 1
        return counts

    # -- time --------------------------------------------------------------------
    def due(self, moment: datetime) -> list[tuple[datetime, str]]:
        """(instant, account) of every wake due at or before ``moment``, in time
        order, accounts by id at one instant."""
        return sorted({(conv.until, account_id)
                       for (account_id, _), conv in self.convs.items()
                       if conv.status == "snoozed" and conv.until is not None
                       and conv.until <= moment})

    def cross(self, account_id: str, instant: datetime) -> None:
        """Time reaches ``instant`` in the account: what was snoozed until then wakes."""
        for (acc, _), conv in self.convs.items():
            if (acc == account_id and conv.status == "snoozed" and conv.until is not None
                    and conv.until <= instant):
                conv.wake()
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
        if kind == "account.updated":
            if seq is not None and account.seq is not None and seq < account.seq:
                return
            account.plan, account.agents = data["plan"], set(data["agents"])
            account.groups = {g: set(m) for g, m in data.get("groups", {}).items()}
            if seq is not None:
                account.seq = seq if account.seq is None else max(seq, account.seq)
            return
        conv = self.convs.setdefault((account_id, event["conversation_id"]), _Conv())
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
        self._conversation_event(conv, kind, data, now)

    def _conversation_event(self, conv: _Conv, kind: str, data: dict[str, Any],
                            now: datetime) -> None:
        number = self.applied
        if kind == "conversation.created":
            conv.group = data.get("group_id")
        elif kind == "message.created":
            if data["author"] == "visitor":
                if conv.status in ("resolved", "snoozed"):
                    conv.wake()
                conv.last_visitor = number
            else:
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
            conv.status, conv.until = "resolved", None
        elif kind == "conversation.reopened":
            if conv.status in ("resolved", "snoozed"):
                conv.wake()
        elif kind == "conversation.snoozed":
            until = when(data["until"]) if data.get("until") is not None else None
            if until is not None and until <= now:
                conv.wake()  # until a moment already past: it stays (or is) open
            else:
                conv.status, conv.until = "snoozed", until
        elif kind == "conversation.unsnoozed":
            if conv.status == "snoozed":
                conv.wake()
        elif kind == "conversation.deleted":
            conv.status, conv.until = "deleted", None
        # conversation.updated: channel, priority, labels and attributes; no default
        # category depends on them.
