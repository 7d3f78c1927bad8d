"""An agent's inbox as a snapshot reply (docs/contract.md, "Requests"): what a downstream
service takes as its baseline before applying updates with a greater ``seq``."""

from __future__ import annotations

from typing import Any

from worker.domain.account import AccountState
from worker.domain.reading import categories_of, is_unread


def snapshot(state: AccountState, agent_id: str, category_names: tuple[str, ...],
             rules_version: str, *, categories: list[str] | None = None,
             after: str | None = None, limit: int) -> dict[str, Any]:
    """The agent's inbox after exactly the updates numbered up to its ``seq``.

    Conversations are listed in id order, after ``after``, at most ``limit``;
    ``next_after`` names where the next page starts (None: complete). ``categories``
    keeps conversations in at least one of them; counts always cover the whole inbox.
    """
    wanted = frozenset(categories) if categories is not None else None
    page: dict[str, list[str]] = {}
    unread: list[str] = []
    next_after: str | None = None
    if agent_id in state.account.agents:
        for conversation_id in sorted(state.conversations):
            if after is not None and conversation_id <= after:
                continue
            held = categories_of(state, conversation_id, agent_id)
            if not held or (wanted is not None and not held & wanted):
                continue
            if len(page) == limit:
                next_after = max(page)
                break
            page[conversation_id] = sorted(held)
            if is_unread(state, conversation_id, agent_id):
                unread.append(conversation_id)
    counts = state.counts_of(agent_id)
    unread_counts = state.unread_counts_of(agent_id)
    return {"account_id": state.account_id, "agent_id": agent_id,
            "seq": state.seqs.get(agent_id, 0), "rules_version": rules_version,
            "counts": {name: counts.get(name, 0) for name in category_names},
            "unread_counts": {name: unread_counts.get(name, 0) for name in category_names},
            "conversations": page, "unread": unread, "next_after": next_after}
