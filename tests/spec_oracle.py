"""A deliberately naive second implementation of the contract, used only as a test oracle.

It recomputes every category of every agent from scratch after each event, with the
category table of the contract written out in Python (the product keeps it in rule files).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Conv:
    status: str = "open"
    group: str | None = None
    joined: set[str] = field(default_factory=set)
    seq: int | None = None


@dataclass
class _Account:
    plan: str = "free"
    agents: set[str] = field(default_factory=set)
    groups: dict[str, set[str]] = field(default_factory=dict)
    seq: int | None = None


class SpecOracle:
    def __init__(self) -> None:
        self.accounts: dict[str, _Account] = {}
        self.convs: dict[tuple[str, str], _Conv] = {}
        self.seen: set[tuple[str, str]] = set()

    def categories(self, account_id: str, conv_id: str, agent: str) -> set[str]:
        account = self.accounts.get(account_id, _Account())
        conv = self.convs.get((account_id, conv_id))
        if conv is None or agent not in account.agents or conv.status == "deleted":
            return set()
        if conv.status == "resolved":
            return {"resolved"}
        groups_in_effect = account.plan == "pro" and bool(account.groups)
        multi = len(account.agents) > 1 or groups_in_effect
        waiting = not conv.joined
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

    def snapshot(self) -> dict[tuple[str, str, str], frozenset[str]]:
        out = {}
        for (account_id, conv_id) in self.convs:
            for agent in self.accounts.get(account_id, _Account()).agents:
                cats = self.categories(account_id, conv_id, agent)
                if cats:
                    out[(account_id, agent, conv_id)] = frozenset(cats)
        return out

    def counts(self, account_id: str, agent: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for (acc, conv_id) in self.convs:
            if acc == account_id:
                for cat in self.categories(acc, conv_id, agent):
                    counts[cat] = counts.get(cat, 0) + 1
        return counts

    def apply(self, event: dict[str, Any]) -> None:
        account_id, kind, seq = event["account_id"], event["type"], event.get("sequence")
        key = (account_id, event["event_id"])
        if key in self.seen:
            return
        self.seen.add(key)
        account = self.accounts.setdefault(account_id, _Account())
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
        agent = data.get("agent_id") or data.get("to_agent_id")
        if agent and not (kind == "message.created" and data.get("author") == "visitor"):
            account.agents.add(agent)
        if conv.status == "deleted":
            return
        if kind == "conversation.created":
            conv.group = data.get("group_id")
        elif kind == "message.created":
            if data["author"] == "visitor" and conv.status == "resolved":
                conv.status = "open"
            elif data["author"] == "agent":
                conv.joined.add(data["agent_id"])
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
            conv.status = "resolved"
        elif kind == "conversation.reopened":
            conv.status = "open"
        elif kind == "conversation.deleted":
            conv.status = "deleted"
