"""Hypothesis strategies for random but valid event streams (with duplicates and stale ones)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

ACCOUNTS = ("acc-1", "acc-2")
CONVERSATIONS = ("c-1", "c-2", "c-3")
AGENTS = ("ag-1", "ag-2", "ag-3")
GROUPS = ("g-1", "g-2")


def _data(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    agent = st.sampled_from(AGENTS)
    group = st.sampled_from(GROUPS)
    if kind == "account.updated":
        return st.fixed_dictionaries({
            "plan": st.sampled_from(("free", "standard", "pro")),
            "agents": st.lists(agent, unique=True, max_size=3),
            "groups": st.dictionaries(group, st.lists(agent, unique=True, max_size=3),
                                      max_size=2),
        })
    if kind == "conversation.created":
        return st.fixed_dictionaries({"group_id": st.one_of(st.none(), group)})
    if kind == "message.created":
        return st.one_of(st.just({"author": "visitor"}),
                         st.fixed_dictionaries({"author": st.just("agent"), "agent_id": agent}))
    if kind in ("conversation.assigned", "conversation.unassigned"):
        return st.fixed_dictionaries({"agent_id": agent})
    if kind == "conversation.transferred":
        return st.one_of(st.fixed_dictionaries({"to_agent_id": agent}),
                         st.fixed_dictionaries({"to_group_id": group}))
    return st.just({})


KINDS = ("account.updated", "conversation.created", "message.created",
         "conversation.assigned", "conversation.unassigned", "conversation.transferred",
         "conversation.resolved", "conversation.reopened", "conversation.deleted")
# Creation, messages and joins dominate real traffic; deletes are rare.
WEIGHTED_KINDS = (KINDS * 2 + ("conversation.created", "message.created",
                               "conversation.assigned") * 3)


@st.composite
def raw_event(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(WEIGHTED_KINDS))
    event: dict[str, Any] = {
        "type": kind, "account_id": draw(st.sampled_from(ACCOUNTS)),
        "occurred_at": "2026-11-24T10:00:00Z", "data": draw(_data(kind)),
    }
    if kind != "account.updated":
        event["conversation_id"] = draw(st.sampled_from(CONVERSATIONS))
    return event


@st.composite
def event_stream(draw: st.DrawFn, max_size: int = 40) -> list[dict[str, Any]]:
    """Events with ids and sequences; some re-sent (same id), some stale (older sequence)."""
    stream: list[dict[str, Any]] = []
    sequences: dict[tuple[str, str], int] = {}
    for number, event in enumerate(draw(st.lists(raw_event(), min_size=1, max_size=max_size))):
        scope = (event["account_id"], event.get("conversation_id", ""))
        style = draw(st.sampled_from(("next", "next", "next", "none", "stale")))
        if style == "next":
            sequences[scope] = sequences.get(scope, 0) + 1
            event["sequence"] = sequences[scope]
        elif style == "stale" and sequences.get(scope, 0) > 1:
            event["sequence"] = sequences[scope] - 1
        event["event_id"] = f"e-{number}"
        stream.append(event)
        if stream and draw(st.integers(0, 9)) == 0:
            stream.append(dict(draw(st.sampled_from(stream))))  # a re-sent event
    return stream
