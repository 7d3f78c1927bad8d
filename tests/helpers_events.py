"""Build upstream events for unit tests through the real contract parser."""

from __future__ import annotations

import itertools
from typing import Any

from contracts import Event, parse_event_object
from worker.domain.updates import Update

TIME = "2026-11-24T10:00:00Z"


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
        raw: dict[str, Any] = {
            "event_id": event_id or f"e-{next(self._ids)}",
            "type": type_,
            "account_id": account_id or self.account_id,
            "occurred_at": occurred_at,
            "data": data,
        }
        if conversation_id is not None:
            raw["conversation_id"] = conversation_id
        if sequence is not None:
            raw["sequence"] = sequence
        return parse_event_object(raw)

    def account(self, plan: str, agents: list[str], groups: dict[str, list[str]] | None = None,
                **envelope: Any) -> Event:
        return self("account.updated", plan=plan, agents=agents, groups=groups or {},
                    **envelope)


def by_agent(updates: list[Update]) -> dict[str, Update]:
    """The updates of one event for one conversation, keyed by agent (no agent twice)."""
    keyed = {u.agent_id: u for u in updates}
    assert len(keyed) == len(updates), f"several updates for one agent: {updates}"
    return keyed


def categories(updates: list[Update]) -> dict[tuple[str, str], list[str]]:
    """(agent, conversation) -> categories, for every update of one event."""
    keyed = {(u.agent_id, u.conversation_id): u.categories for u in updates}
    assert len(keyed) == len(updates), f"several updates for one (agent, conversation): {updates}"
    return keyed
