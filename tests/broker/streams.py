"""Deterministic, valid event streams for the broker tests and the benchmark, and the
offline oracle they are checked against."""

from __future__ import annotations

import json
import random
from typing import Any

from contracts import parse_event
from worker.domain.inbox import Inbox
from worker.rulebook import load_rules

AGENT_POOL = tuple(f"ag-{n}" for n in range(1, 7))
GROUPS = ("g-sales", "g-support")


def event_stream(seed: int, count: int, accounts: int = 4) -> list[dict[str, Any]]:
    """``count`` events over a few accounts: snapshots, chats, joins, transfers,
    resolves, reopens, a few deletes and a few re-sent duplicates."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    conversation_sequence: dict[tuple[str, str], int] = {}
    account_sequence: dict[str, int] = {}
    conversations: dict[str, list[str]] = {}

    def emit(kind: str, account_id: str, data: dict[str, Any],
             conversation_id: str | None = None) -> None:
        event: dict[str, Any] = {
            "event_id": f"s{seed}-e{len(events)}", "type": kind, "account_id": account_id,
            "occurred_at": f"2026-11-24T10:{len(events) // 60 % 60:02d}:{len(events) % 60:02d}Z",
            "data": data}
        if conversation_id is None:
            account_sequence[account_id] = account_sequence.get(account_id, 0) + 1
            event["sequence"] = account_sequence[account_id]
        else:
            key = (account_id, conversation_id)
            conversation_sequence[key] = conversation_sequence.get(key, 0) + 1
            event["conversation_id"] = conversation_id
            event["sequence"] = conversation_sequence[key]
        events.append(event)

    def snapshot(account_id: str) -> None:
        agents = sorted(rng.sample(AGENT_POOL, rng.randint(1, 4)))
        groups = {g: sorted(rng.sample(agents, rng.randint(1, len(agents))))
                  for g in GROUPS if rng.random() < 0.7}
        emit("account.updated", account_id,
             {"plan": rng.choice(("free", "standard", "pro", "pro")), "agents": agents,
              "groups": groups})

    account_ids = [f"acc-{seed}-{n}" for n in range(accounts)]
    for account_id in account_ids:
        snapshot(account_id)
        conversations[account_id] = []
    while len(events) < count:
        account_id = rng.choice(account_ids)
        known = conversations[account_id]
        roll = rng.random()
        if roll < 0.02 and len(events) > 1:
            events.append(dict(rng.choice(events)))  # re-sent: same event id
        elif roll < 0.05:
            snapshot(account_id)
        elif roll < 0.2 or not known:
            conversation_id = f"c-{len(known)}"
            known.append(conversation_id)
            emit("conversation.created", account_id,
                 {"group_id": rng.choice((None, *GROUPS))}, conversation_id)
        else:
            _conversation_event(rng, emit, account_id, rng.choice(known))
    return events[:count]


def _conversation_event(rng: random.Random, emit: Any, account_id: str,
                        conversation_id: str) -> None:
    agent = rng.choice(AGENT_POOL)
    kind, data = rng.choice([
        ("message.created", {"author": "visitor"}),
        ("message.created", {"author": "agent", "agent_id": agent}),
        ("conversation.assigned", {"agent_id": agent}),
        ("conversation.assigned", {"agent_id": agent}),
        ("conversation.unassigned", {"agent_id": agent}),
        ("conversation.transferred", {"to_agent_id": agent}),
        ("conversation.transferred", {"to_group_id": rng.choice(GROUPS)}),
        ("conversation.resolved", {}),
        ("conversation.resolved", {}),
        ("conversation.reopened", {}),
    ])
    if rng.random() < 0.01:
        kind, data = "conversation.deleted", {}
    emit(kind, account_id, data, conversation_id)


def encode(events: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(e).encode() for e in events]


def replay(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The oracle: the updates a clean run publishes, in order, as JSON objects."""
    inbox = Inbox(load_rules(None))
    updates: list[dict[str, Any]] = []
    for body in encode(events):
        for update in inbox.handle(parse_event(body)):
            updates.append(json.loads(update.model_dump_json()))
    return updates


Final = tuple[dict[tuple[str, str, str], list[str]], dict[tuple[str, str], dict[str, int]]]


def final_view(updates: list[dict[str, Any]]) -> Final:
    """What downstream ends up showing: the last categories per (account, agent,
    conversation) and the last counts per (account, agent)."""
    categories: dict[tuple[str, str, str], list[str]] = {}
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for update in updates:
        account, agent = update["account_id"], update["agent_id"]
        categories[(account, agent, update["conversation_id"])] = update["categories"]
        counts[(account, agent)] = update["counts"]
    return categories, counts
