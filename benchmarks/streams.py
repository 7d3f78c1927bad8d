"""Seeded, realistic event streams for the benchmarks (shared by replay and broker runs)."""

from __future__ import annotations

import json
import random
from typing import Any


def generate(agents_per_account: int, *, accounts: int = 4, conversations: int = 2000,
             fanout: str = "light", seed: int = 7) -> list[dict[str, Any]]:
    """A stream of conversation lifecycles over PRO accounts with groups.

    ``fanout="light"``: every chat is routed to a group of 5 agents, so a new chat
    concerns few agents. ``fanout="heavy"``: chats have no group, so every new chat,
    join and resolve changes the inbox of every agent of the account.
    """
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    clock = 0

    def emit(kind: str, account: str, data: dict[str, Any], conversation: str | None = None,
             sequence: int | None = None) -> None:
        nonlocal clock
        clock += 1
        event: dict[str, Any] = {
            "event_id": f"ev-{len(events)}", "type": kind, "account_id": account,
            "occurred_at": f"2026-11-24T10:{clock // 3600 % 60:02d}:{clock % 60:02d}Z",
            "data": data}
        if conversation is not None:
            event["conversation_id"] = conversation
        if sequence is not None:
            event["sequence"] = sequence
        events.append(event)

    roster: dict[str, list[str]] = {}
    groups: dict[str, list[str]] = {}
    for a in range(accounts):
        account = f"acc-{a}"
        agents = [f"ag-{a}-{i}" for i in range(agents_per_account)]
        roster[account] = agents
        group_map = {f"g-{a}-{g}": agents[g * 5 % len(agents):][:5] or agents[:5]
                     for g in range(max(1, len(agents) // 5))}
        groups[account] = list(group_map)
        emit("account.updated", account, {"plan": "pro", "agents": agents, "groups": group_map},
             sequence=1)

    # Interleave many conversations' lifecycles like real traffic.
    live: list[tuple[str, str, list[dict[str, Any]]]] = []
    for c in range(conversations):
        account = f"acc-{c % accounts}"
        agent = rng.choice(roster[account])
        other = rng.choice(roster[account])
        group = rng.choice(groups[account]) if fanout == "light" else None
        steps: list[dict[str, Any]] = [
            {"type": "conversation.created", "data": {"group_id": group}},
            {"type": "message.created", "data": {"author": "visitor"}},
            {"type": "message.created", "data": {"author": "visitor"}},
            {"type": "message.created", "data": {"author": "agent", "agent_id": agent}},
            {"type": "message.created", "data": {"author": "visitor"}},
            {"type": "message.created", "data": {"author": "agent", "agent_id": agent}},
        ]
        if rng.random() < 0.3:
            steps.append({"type": "conversation.transferred", "data": {"to_agent_id": other}})
        if rng.random() < 0.2:
            steps.append({"type": "conversation.assigned", "data": {"agent_id": agent}})
            steps.append({"type": "conversation.unassigned", "data": {"agent_id": agent}})
        steps.append({"type": "conversation.resolved", "data": {}})
        if rng.random() < 0.1:
            steps.append({"type": "message.created", "data": {"author": "visitor"}})
        live.append((account, f"c-{c}", steps))
    cursors = [0] * len(live)
    pending = list(range(len(live)))
    while pending:
        index = rng.choice(pending[:64])  # a window of concurrently active chats
        account, conversation, steps = live[index]
        step = steps[cursors[index]]
        cursors[index] += 1
        emit(step["type"], account, step["data"], conversation, sequence=cursors[index])
        if cursors[index] == len(steps):
            pending.remove(index)
    # Redeliveries happen: re-send 1% of events unchanged.
    for event in rng.sample(events, len(events) // 100):
        events.append(dict(event))
    return events


def as_lines(events: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(event).encode() for event in events]
